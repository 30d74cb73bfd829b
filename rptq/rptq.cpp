#include "rptq/rptq.h"

#include "framework/common/error.h"
#include "framework/log/log.h"
#include "quant/qat.h"
#include "rptq/weight_ranges.h"

#include <fmt/format.h>

#include <chrono>

namespace qforge::rptq {
namespace {

// Bounds of the input clusters of a decoder linear (contiguous after the reorder): [clusters + 1] over its columns.
torch::Tensor input_bounds(const model::LinearSite& site, const LayerReorder& reorder, const model::ModelConfig& c) {
  auto bounds_of_labels = [](const torch::Tensor& labels, int64_t clusters) {
    return bounds_of(torch::bincount(labels, {}, clusters));
  };
  switch (site.input_kind) {
    case model::LinearInput::kAttentionIn: return bounds_of_labels(reorder.labels[kR1][0], reorder.clusters[kR1]);
    case model::LinearInput::kMlpIn: return bounds_of_labels(reorder.labels[kR4][0], reorder.clusters[kR4]);
    case model::LinearInput::kMlpHidden: return bounds_of_labels(reorder.labels[kR5][0], reorder.clusters[kR5]);
    case model::LinearInput::kAttentionOut: {  // per q head, its kv head's clusters
      const int64_t group = c.num_heads / c.num_kv_heads, d = c.head_dim();
      std::vector<torch::Tensor> parts = {torch::zeros({1}, torch::kLong)};
      const int64_t clusters = reorder.clusters[kR3];
      for (int64_t h = 0; h < c.num_heads; ++h)  // each head's bounds but its leading 0, offset to its columns
        parts.push_back(bounds_of_labels(reorder.labels[kR3][h / group], clusters).narrow(0, 1, clusters) + h * d);
      return torch::cat(parts);
    }
  }
  throw Error("unknown linear input");
}

void attach_mode(model::CausalLM& model, int64_t layer, const RptqLayer& plan, const std::string& mode) {
  attach_static(model, layer, mode == "per_tensor" ? plan.per_tensor : plan.rptq);
}

}  // namespace

std::pair<quant::PtqSettings, RptqSettings> resolve_settings(const quant::PtqSettings& ptq, const RptqSettings& rptq,
                                                             const model::ModelConfig& config) {
  quant::PtqSettings p = ptq;
  RptqSettings r = rptq;
  if (!r.setting.empty()) {
    const SettingBits bits = parse_setting(r.setting);
    p.wbits = bits.wbits;
    r.act_bits = bits.act_bits;
    r.kv_only = bits.kv_only;
  }
  check_reorder_settings(config, r);
  if (r.weight_ranges == "clusters" && p.row_parallel != "exact")
    throw UsageError("rptq.weight_ranges clusters needs ptq.row_parallel exact (each range spans a whole cluster)");
  if (r.weight_ranges == "clusters" && p.act_order)
    throw UsageError("rptq.weight_ranges clusters is fixed per column block: ptq.act_order must be false");
  return {p, r};
}

RptqResult run_rptq(model::CausalLM& model, const torch::Tensor& sequences, const quant::PtqSettings& ptq,
                    const RptqSettings& settings, dist::Communicator& dp) {
  torch::NoGradGuard no_grad;
  const model::ModelConfig& config = model.config();
  dist::Communicator& tp = model.tp();
  torch::Tensor count = torch::tensor({sequences.defined() ? sequences.size(0) : int64_t{0}}, torch::kLong);
  dp.all_reduce(count, dist::ReduceOp::kSum);
  const int64_t samples = count.item<int64_t>();
  if (samples == 0)
    throw UsageError("ptq.method rptq needs calibration sequences: set ptq.calib (--calib) or ptq.calib_corpus");
  const bool root = tp.rank() == 0 && dp.rank() == 0;

  RptqResult result;
  result.layers.resize(model.layers.size());
  quant::PtqHooks hooks;
  hooks.before_block = [&](int64_t layer, const std::function<void()>& run_block) {
    std::array<SampleStats, kSiteCount> stats;
    {
      LayerStatistics observed(model, layer);
      run_block();
      stats = observed.gather(dp, samples);
    }
    const auto start = std::chrono::steady_clock::now();
    LayerReorder reorder = root ? cluster_layer(stats, config, settings) : identity_reorder(config);
    result.cluster_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    agree_on_reorder(reorder, config, tp, dp);
    apply_reorder(model, layer, reorder);
    RptqLayer& plan = result.layers[static_cast<std::size_t>(layer)];
    plan.rptq = static_quantizers(stats, reorder, config, settings, RangeScope::kCluster);
    plan.per_tensor = static_quantizers(stats, reorder, config, settings, RangeScope::kTensor);
    plan.reorder = std::move(reorder);
  };
  // GPTQ's Hessians come from the block's full-precision (reordered) inputs, as the reference's; the activation
  // quantizers are attached for the pass that feeds the next block (propagate: all) or after it (weights).
  hooks.propagate = [&](int64_t layer, const std::function<void()>& run_block) {
    const RptqLayer& plan = result.layers[static_cast<std::size_t>(layer)];
    if (settings.propagate == "all") attach_mode(model, layer, plan, settings.activations);
    run_block();
    attach_mode(model, layer, plan, settings.activations);
  };
  if (settings.weight_ranges == "clusters") {
    const quant::GptqOptions options = ptq.gptq_options();
    hooks.quantize = [&](const model::LinearSite& site, const torch::Tensor& rows, const torch::Tensor& hessian) {
      const LayerReorder& reorder = result.layers[static_cast<std::size_t>(site.layer)].reorder;
      const quant::FixedGrid grid = cluster_weight_grid(rows, input_bounds(site, reorder, config), ptq.wbits);
      return ptq.uses_gptq() ? quant::gptq_quantize_fixed(rows, hessian, grid, options)
                             : quant::rtn_quantize_fixed(rows, grid);
    };
  }
  result.ptq = quant::run_ptq(model, sequences, ptq, dp, hooks);
  return result;
}

void use_activations(model::CausalLM& model, const std::vector<RptqLayer>& layers, const RptqSettings& settings,
                     const std::string& mode) {
  quant::detach_quantizers(model);
  for (std::size_t layer = 0; layer < model.layers.size(); ++layer) detach_layer(model, static_cast<int64_t>(layer));
  if (mode == "none") return;
  if (mode == "per_token") {
    if (settings.act_bits == 16) return;
    quant::QuantSettings q;
    const std::string a = std::to_string(settings.act_bits);
    q.bits = settings.kv_only ? "16-16-" + a : "16-" + a + "-" + a;
    quant::attach_quantizers(model, q);
    return;
  }
  QF_CHECK(layers.size() == model.layers.size(), "RPTQ: no quantizers for every layer");
  for (std::size_t layer = 0; layer < layers.size(); ++layer)
    attach_mode(model, static_cast<int64_t>(layer), layers[layer], mode);
}

}  // namespace qforge::rptq
