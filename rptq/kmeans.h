// K-Means of activation channels, as RPTQ clusters them (sklearn KMeans(n_clusters, n_init=10, random_state=0) on
// the per-channel features concat(max..., min...)), and the reorder that makes each cluster contiguous.
//
// The algorithm is sklearn's "lloyd": greedy k-means++ seeding (2 + floor(ln k) candidates per new center, the
// one lowering the potential most kept), then Lloyd iterations until the labels stop changing or the centers
// move by at most tol (sum of squared shifts, tol scaled by the mean per-feature variance of the points), then
// one more assignment so that labels and centers agree; of n_init runs the lowest inertia wins (the first on a
// tie). sklearn's random stream cannot be reproduced: runs draw from std::mt19937_64, so labels can differ from
// sklearn's where two partitions have (nearly) the same inertia; compare partitions or inertia, never raw labels.
//
// Empty clusters (duplicate points, k close to n): as sklearn, after an assignment each empty cluster takes, as
// its new center, one of the points farthest from their assigned centers (largest distance first, lower point
// index first on a tie), which leaves its former cluster's sums. Distances are exact squared differences in
// double (not sklearn's ||x||^2 - 2 x.c + ||c||^2).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace qforge::rptq {

struct KMeansOptions {
  int64_t clusters = 8;
  int n_init = 10;        // runs from different k-means++ seeds; the lowest inertia wins
  int max_iter = 300;
  double tol = 1e-4;      // sklearn's: relative to the mean per-feature variance of the points
  uint64_t seed = 0;
};

struct KMeansResult {
  torch::Tensor labels;   // int64 [n]: clusters numbered in order of first appearance (channel 0's cluster is 0)
  torch::Tensor centers;  // double [clusters, d], in that numbering (a cluster left empty numbered last)
  double inertia = 0;     // sum of squared distances to the assigned centers
  int iterations = 0;     // of the winning run
};

// Deterministic Lloyd K-Means with sklearn's greedy k-means++ init (2 + floor(ln k) local trials), on points
// [n, d] (any floating dtype, computed in double). Throws UsageError when clusters < 1 or > n, n_init or max_iter
// < 1, or tol < 0; Error when points is not a finite 2-dimensional floating tensor.
KMeansResult kmeans(const torch::Tensor& points, const KMeansOptions& options);

// The reorder index: channels sorted by label, stable (channel order kept inside a cluster) -> int64 [n]; and
// the cluster sizes in label order -> int64 [clusters] (labels must lie in [0, clusters)).
torch::Tensor reorder_index(const torch::Tensor& labels);
torch::Tensor cluster_sizes(const torch::Tensor& labels, int64_t clusters);

}  // namespace qforge::rptq
