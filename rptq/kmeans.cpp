#include "rptq/kmeans.h"

#include "framework/common/error.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace qforge::rptq {
namespace {

// Points of one K-Means problem: row-major doubles [n, d].
struct Points {
  const double* x;
  int64_t n, d;
  const double* row(int64_t i) const { return x + i * d; }
};

double squared_distance(const double* a, const double* b, int64_t d) {
  double sum = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double diff = a[j] - b[j];
    sum += diff * diff;
  }
  return sum;
}

// A uniform double in [0, 1) from the top 53 bits (the same on every platform, unlike std distributions).
double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// sklearn's _kmeans_plusplus: the first center a uniformly drawn point; each next one the best of 2 + floor(ln k)
// candidates drawn with probability proportional to the squared distance to the closest center so far, "best"
// being the lowest potential (sum of those distances) once it is added. Returns centers [k, d].
std::vector<double> plus_plus(const Points& p, int64_t k, std::mt19937_64& rng) {
  std::vector<double> centers(k * p.d);
  const int trials = 2 + static_cast<int>(std::log(static_cast<double>(k)));
  const int64_t first = std::min(p.n - 1, static_cast<int64_t>(uniform(rng) * static_cast<double>(p.n)));
  std::copy(p.row(first), p.row(first) + p.d, centers.begin());
  std::vector<double> closest(p.n), cumulative(p.n), trial(p.n), best(p.n);
  double potential = 0;
  for (int64_t i = 0; i < p.n; ++i) potential += closest[i] = squared_distance(p.row(i), p.row(first), p.d);
  std::vector<double> draws(trials);
  for (int64_t c = 1; c < k; ++c) {
    std::partial_sum(closest.begin(), closest.end(), cumulative.begin());
    for (double& draw : draws) draw = uniform(rng) * potential;  // all drawn first, as sklearn's rand_vals
    double best_potential = std::numeric_limits<double>::infinity();
    int64_t best_id = 0;
    for (const double draw : draws) {
      // np.searchsorted(cumsum, draw) (side "left"), clipped to the last point.
      const int64_t id = std::min<int64_t>(
          p.n - 1, std::lower_bound(cumulative.begin(), cumulative.end(), draw) - cumulative.begin());
      double trial_potential = 0;
      for (int64_t i = 0; i < p.n; ++i)
        trial_potential += trial[i] = std::min(closest[i], squared_distance(p.row(i), p.row(id), p.d));
      if (trial_potential < best_potential) {  // the first of equal candidates, as np.argmin
        best_potential = trial_potential;
        best_id = id;
        best.swap(trial);
      }
    }
    std::copy(p.row(best_id), p.row(best_id) + p.d, centers.begin() + c * p.d);
    closest.swap(best);
    potential = best_potential;
  }
  return centers;
}

// Each point's nearest center (the lower index on a tie) and its squared distance to it.
void assign(const Points& p, const std::vector<double>& centers, int64_t k, std::vector<int64_t>& labels,
            std::vector<double>& distance) {
  at::parallel_for(0, p.n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double nearest = std::numeric_limits<double>::infinity();
      int64_t label = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double dist = squared_distance(p.row(i), centers.data() + c * p.d, p.d);
        if (dist < nearest) {
          nearest = dist;
          label = c;
        }
      }
      labels[i] = label;
      distance[i] = nearest;
    }
  });
}

// The means of the clusters `labels` makes (summed in point order: deterministic whatever the threads). An empty
// cluster takes the next point farthest from its center (sklearn's _relocate_empty_clusters_dense); a cluster
// that its relocated points leave empty keeps its former center.
std::vector<double> means(const Points& p, const std::vector<double>& centers, int64_t k,
                          const std::vector<int64_t>& labels, const std::vector<double>& distance) {
  std::vector<double> sums(k * p.d, 0.0);
  std::vector<int64_t> counts(k, 0);
  for (int64_t i = 0; i < p.n; ++i) {
    ++counts[labels[i]];
    for (int64_t j = 0; j < p.d; ++j) sums[labels[i] * p.d + j] += p.row(i)[j];
  }
  std::vector<int64_t> empty;
  for (int64_t c = 0; c < k; ++c)
    if (counts[c] == 0) empty.push_back(c);
  if (!empty.empty()) {
    std::vector<int64_t> far(p.n);
    std::iota(far.begin(), far.end(), 0);
    const auto farther = [&](int64_t a, int64_t b) {
      return distance[a] > distance[b] || (distance[a] == distance[b] && a < b);
    };
    std::partial_sort(far.begin(), far.begin() + static_cast<int64_t>(empty.size()), far.end(), farther);
    for (size_t e = 0; e < empty.size(); ++e) {
      const int64_t point = far[e], from = labels[point], to = empty[e];
      for (int64_t j = 0; j < p.d; ++j) {
        sums[from * p.d + j] -= p.row(point)[j];
        sums[to * p.d + j] = p.row(point)[j];
      }
      --counts[from];
      counts[to] = 1;
    }
  }
  std::vector<double> result(k * p.d);
  for (int64_t c = 0; c < k; ++c)
    for (int64_t j = 0; j < p.d; ++j)
      result[c * p.d + j] = counts[c] > 0 ? sums[c * p.d + j] / static_cast<double>(counts[c]) : centers[c * p.d + j];
  return result;
}

struct Run {
  std::vector<int64_t> labels;
  std::vector<double> centers;
  double inertia = 0;
  int iterations = 0;
};

// sklearn's _kmeans_single_lloyd from the given centers: stops when an assignment repeats the previous one
// ("strict convergence") or the centers moved by at most `tolerance` in all (sum of squared shifts); after the
// latter (or max_iter) the points are assigned once more so that labels and centers agree.
Run lloyd(const Points& p, std::vector<double> centers, int64_t k, int max_iter, double tolerance) {
  Run run;
  run.labels.assign(p.n, -1);
  std::vector<int64_t> previous(p.n, -1);
  std::vector<double> distance(p.n);
  bool strict = false;
  int iteration = 0;
  for (; iteration < max_iter; ++iteration) {
    assign(p, centers, k, run.labels, distance);
    std::vector<double> moved = means(p, centers, k, run.labels, distance);
    double shift = 0;
    for (size_t j = 0; j < moved.size(); ++j) shift += (moved[j] - centers[j]) * (moved[j] - centers[j]);
    centers.swap(moved);
    if (run.labels == previous) {
      strict = true;
      break;
    }
    if (shift <= tolerance) break;
    previous = run.labels;
  }
  if (!strict) assign(p, centers, k, run.labels, distance);
  run.iterations = std::min(iteration + 1, max_iter);
  for (int64_t i = 0; i < p.n; ++i)
    run.inertia += squared_distance(p.row(i), centers.data() + run.labels[i] * p.d, p.d);
  run.centers = std::move(centers);
  return run;
}

// sklearn's _tolerance: tol times the mean over features of the points' (population) variance.
double absolute_tolerance(const Points& p, double tol) {
  double total = 0;
  for (int64_t j = 0; j < p.d; ++j) {
    double mean = 0, variance = 0;
    for (int64_t i = 0; i < p.n; ++i) mean += p.row(i)[j];
    mean /= static_cast<double>(p.n);
    for (int64_t i = 0; i < p.n; ++i) variance += (p.row(i)[j] - mean) * (p.row(i)[j] - mean);
    total += variance / static_cast<double>(p.n);
  }
  return tol * total / static_cast<double>(p.d);
}

}  // namespace

KMeansResult kmeans(const torch::Tensor& points, const KMeansOptions& options) {
  QF_CHECK(points.defined() && points.dim() == 2 && points.is_floating_point(),
           "kmeans needs floating points [n, d]");
  const int64_t n = points.size(0), d = points.size(1), k = options.clusters;
  if (k < 1 || k > n)
    throw UsageError(fmt::format("rptq: K-Means needs 1..{} clusters for {} points, got {}", n, n, k));
  if (options.n_init < 1 || options.max_iter < 1 || !(options.tol >= 0))
    throw UsageError(fmt::format("rptq: K-Means needs n_init >= 1, max_iter >= 1 and tol >= 0, got {}, {}, {}",
                                 options.n_init, options.max_iter, options.tol));
  torch::NoGradGuard no_grad;
  const torch::Tensor x = points.detach().to(torch::kCPU, torch::kDouble).contiguous();
  QF_CHECK(torch::isfinite(x).all().item<bool>(), "kmeans needs finite points");
  const Points p{x.data_ptr<double>(), n, d};
  const double tolerance = absolute_tolerance(p, options.tol);

  Run best;
  best.inertia = std::numeric_limits<double>::infinity();
  for (int run = 0; run < options.n_init; ++run) {
    std::seed_seq seeds{static_cast<uint32_t>(options.seed), static_cast<uint32_t>(options.seed >> 32),
                        static_cast<uint32_t>(run)};
    std::mt19937_64 rng(seeds);
    Run candidate = lloyd(p, plus_plus(p, k, rng), k, options.max_iter, tolerance);
    if (candidate.inertia < best.inertia) best = std::move(candidate);
  }

  // Renumber: clusters in order of first appearance; any left empty after them, in their former order.
  std::vector<int64_t> number(k, -1);
  int64_t next = 0;
  for (const int64_t label : best.labels)
    if (number[label] < 0) number[label] = next++;
  for (int64_t c = 0; c < k; ++c)
    if (number[c] < 0) number[c] = next++;
  KMeansResult result;
  result.labels = torch::empty({n}, torch::kInt64);
  result.centers = torch::empty({k, d}, torch::kDouble);
  int64_t* labels = result.labels.data_ptr<int64_t>();
  double* centers = result.centers.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) labels[i] = number[best.labels[i]];
  for (int64_t c = 0; c < k; ++c)
    std::copy(best.centers.begin() + c * d, best.centers.begin() + (c + 1) * d, centers + number[c] * d);
  result.inertia = best.inertia;
  result.iterations = best.iterations;
  return result;
}

torch::Tensor reorder_index(const torch::Tensor& labels) {
  QF_CHECK(labels.defined() && labels.dim() == 1, "reorder_index needs 1-dimensional labels");
  const torch::Tensor l = labels.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* label = l.data_ptr<int64_t>();
  torch::Tensor index = torch::arange(l.size(0), torch::kInt64);
  int64_t* order = index.data_ptr<int64_t>();
  std::stable_sort(order, order + l.size(0), [&](int64_t a, int64_t b) { return label[a] < label[b]; });
  return index;
}

torch::Tensor cluster_sizes(const torch::Tensor& labels, int64_t clusters) {
  QF_CHECK(labels.defined() && labels.dim() == 1, "cluster_sizes needs 1-dimensional labels");
  const torch::Tensor l = labels.to(torch::kCPU, torch::kInt64);
  QF_CHECK(l.numel() == 0 || (l.min().item<int64_t>() >= 0 && l.max().item<int64_t>() < clusters),
           fmt::format("cluster_sizes needs labels in [0, {})", clusters));
  return torch::bincount(l, /*weights=*/{}, clusters);
}

}  // namespace qforge::rptq
