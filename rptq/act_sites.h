// Static activation quantizers at RPTQ's sites of a decoder layer: per-channel parameters (one range per cluster of
// the reordered channels, or one per site: the per-tensor baseline) calibrated from the layer's statistics, and
// their attachment to the framework's sites. Precision as the reference: norm outputs at max(8, A) bits; q, k, v
// and the inputs of o_proj and fc2/down at A bits; softmax probabilities on a fixed 8-bit [0, 1] grid; with
// kv_only, k and v alone.
#pragma once

#include "rptq/act_quant.h"
#include "rptq/reorder.h"

namespace qforge::rptq {

struct SiteQuantizer {
  int bits = 16;             // 16: none
  StaticQuantParams params;  // scale, zero: fp32 [rows, columns] of site_layout, channels in the reordered order
};

struct LayerQuantizers {
  std::array<SiteQuantizer, kSiteCount> sites;  // by SiteKind
  int probs_bits = 16;
};

// Bits of each site under `settings` (16: not quantized).
int site_bits(SiteKind kind, const RptqSettings& settings);
int probs_bits(const RptqSettings& settings);

enum class RangeScope { kCluster, kTensor };

// Parameters from the job's statistics (sample order matters for the moving average), permuted by `reorder`: one
// range per cluster of each row (kCluster; q and the attention output use their kv head's clusters) or one per
// site (kTensor). The same on every rank.
LayerQuantizers static_quantizers(const std::array<SampleStats, kSiteCount>& stats, const LayerReorder& reorder,
                                  const model::ModelConfig& config, const RptqSettings& settings, RangeScope scope);

// Sets the quantizers of `layer` as its sites' transforms (this rank's slice of each site's channels); sites at 16
// bits get none. detach_layer clears them.
void attach_static(model::CausalLM& model, int64_t layer, const LayerQuantizers& quantizers);
void detach_layer(model::CausalLM& model, int64_t layer);

// Probabilities on the fixed grid of 2^bits - 1 steps over [0, 1], straight-through.
torch::Tensor quantize_probabilities(const torch::Tensor& p, int bits);

}  // namespace qforge::rptq
