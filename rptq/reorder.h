// RPTQ's channel reorders of one decoder layer: K-Means clusters of channels by their (max, min) statistics, and
// the permutations that make every cluster contiguous, fused into the model so inference runs no explicit
// reorder: the norms write their outputs in cluster order (NormImpl::output_index), the weights' rows and columns
// are permuted (R5 moves channels across TP ranks: every rank ends with its contiguous slice of the new order),
// and under RoPE the q/k heads keep rotate-half pairs together (AttentionImpl::rope_index).
#pragma once

#include "rptq/settings.h"
#include "rptq/statistics.h"

#include <array>

namespace qforge::rptq {

// R1..R5 as indexes 0..4.
enum Reorder { kR1 = 0, kR2, kR3, kR4, kR5 };
constexpr int kReorderCount = 5;
const char* reorder_name(int r);  // "R1".."R5"

struct LayerReorder {
  // Per reorder, [rows, columns] with rows the kv heads (R2, R3) or 1 (R1, R4: hidden; R5: intermediate):
  // index[r][g][j] is the original channel at new place j of row g; labels[r][g][j] its cluster (0..k-1, clusters
  // contiguous in label order). Not reordered: the identity, one cluster.
  std::array<torch::Tensor, kReorderCount> index, labels;
  std::array<int64_t, kReorderCount> clusters{};  // per row
};

// The reorder that serves each site: kAttnNorm R1, kQ/kK R2, kV/kAttnOut R3, kMlpNorm R4, kMlpHidden R5.
int reorder_of(SiteKind kind);

// Throws UsageError naming the key when a reorder cannot be built: more clusters than channels (R2 under RoPE:
// than rotate-half pairs of a head), or a post-norm model (OPT-350m: the norms' outputs feed the residual stream).
void check_reorder_settings(const model::ModelConfig& config, const RptqSettings& settings);

// K-Means on the statistics of every site (global, every rank the same): cluster_layer computes, and
// agree_on_reorder makes rank 0's result everyone's (collective over the TP group and `dp`).
LayerReorder cluster_layer(const std::array<SampleStats, kSiteCount>& stats, const model::ModelConfig& config,
                           const RptqSettings& settings);
LayerReorder identity_reorder(const model::ModelConfig& config);
void agree_on_reorder(LayerReorder& reorder, const model::ModelConfig& config, dist::Communicator& tp,
                      dist::Communicator& dp);

// Applies `reorder` to decoder layer `layer` of `model` (this rank's shards; collective over the TP group for R5).
// The layer computes the same function as before, up to rounding.
void apply_reorder(model::CausalLM& model, int64_t layer, const LayerReorder& reorder);

// The index of each site's channels in the new order, per its own rows ([heads, d] for kQ and kAttnOut: each q
// head takes its kv head's row) and the cluster of each: {index, labels} as [rows, columns] of site_layout.
std::pair<torch::Tensor, torch::Tensor> site_order(const LayerReorder& reorder, SiteKind kind,
                                                   const model::ModelConfig& config);

}  // namespace qforge::rptq
