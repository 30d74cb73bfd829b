// RPTQ (Yuan et al.) in qforge's PTQ walk: block by block on calibration sequences, each block fed the previous
// quantized block's outputs, as the reference does:
//   1. statistics: per-channel min/max per sample at R1..R5 of the full-precision block (rptq/statistics.h),
//      global over TP and DP;
//   2. K-Means on one rank, broadcast; the reorder fused into the block (rptq/reorder.h);
//   3. static activation quantizers from the same statistics, per cluster (rptq/act_sites.h), attached;
//   4. the block's weights by GPTQ (quant/ptq.h) on the permuted weights, its Hessians seeing the quantized
//      activations: ptq's grid (standard groups), or one range per (row, input cluster) (rptq.weight_ranges).
// The result does not depend on TP or DP: statistics are reduced, clustering is global, parameters per channel.
#pragma once

#include "quant/ptq.h"
#include "rptq/act_sites.h"

#include <string>
#include <vector>

namespace qforge::rptq {

struct RptqLayer {
  LayerReorder reorder;
  LayerQuantizers rptq, per_tensor;  // per-cluster parameters, and the per-tensor baseline's, same statistics
};

struct RptqResult {
  quant::PtqReport ptq;
  std::vector<RptqLayer> layers;
  double cluster_seconds = 0;  // K-Means, on the rank that ran it
};

// Settings with rptq.setting applied (ptq.wbits, rptq.act_bits, kv_only), checked against the model: throws
// UsageError naming the key (clusters against channels, post-norm models, weight_ranges with shard mode).
std::pair<quant::PtqSettings, RptqSettings> resolve_settings(const quant::PtqSettings& ptq, const RptqSettings& rptq,
                                                             const model::ModelConfig& config);

// Runs RPTQ on `model` with this DP rank's calibration `sequences` [n, T]. Leaves the model reordered, its
// weights fake-quantized and the activation quantizers of settings.activations attached. Collective over the
// model's TP group and `dp`. Settings as resolve_settings returns them.
RptqResult run_rptq(model::CausalLM& model, const torch::Tensor& sequences, const quant::PtqSettings& ptq,
                    const RptqSettings& settings, dist::Communicator& dp);

// Replaces the activation quantizers of every layer: "rptq", "per_tensor" (static, from `layers`), "per_token"
// (LLM-QAT's dynamic per-token ranges at A bits on every linear input and the KV cache) or "none".
void use_activations(model::CausalLM& model, const std::vector<RptqLayer>& layers, const RptqSettings& settings,
                     const std::string& mode);

}  // namespace qforge::rptq
