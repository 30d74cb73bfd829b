#include "quant/ptq.h"

#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/model/sites.h"
#include "quant/calibration.h"
#include "quant/qat.h"

#include <fmt/format.h>

#include <chrono>
#include <map>
#include <memory>

namespace qforge::quant {
namespace {

using model::LinearInput;
using model::LinearSite;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The linears of one block that are quantized together: all of them, or one shared input at a time.
std::vector<std::vector<LinearInput>> groups_of(bool true_sequential) {
  const std::vector<LinearInput> order = {LinearInput::kAttentionIn, LinearInput::kAttentionOut, LinearInput::kMlpIn,
                                          LinearInput::kMlpHidden};
  if (!true_sequential) return {order};
  std::vector<std::vector<LinearInput>> groups;
  for (LinearInput input : order) groups.push_back({input});
  return groups;
}

// The block's calibration activations, one tensor per forward batch, and their positions.
struct Activations {
  std::vector<torch::Tensor> hidden, positions;
};

class Quantizer {
 public:
  Quantizer(model::CausalLM& model, const PtqSettings& settings, const PtqHooks& hooks)
      : tp_(model.tp()), settings_(settings), hooks_(hooks), options_(settings.gptq_options()) {}

  // Checks every linear's settings before any work is done.
  void check(const std::vector<LinearSite>& linears) const {
    for (const LinearSite& site : linears) {
      const bool shard = site.row_parallel && settings_.row_parallel == "shard";
      const int64_t columns = site.weight.size(1) * (site.row_parallel && !shard ? tp_.size() : 1);
      check_gptq_options(options_, columns, site.name);
    }
  }

  // Observes the input of `site` (the first linear reading that input) into a new accumulator.
  std::pair<std::unique_ptr<HessianAccumulator>, model::Site::Handle> observe(const LinearSite& site) {
    const auto dtype = settings_.hessian_dtype == "float64" ? torch::kDouble : torch::kFloat;
    const int64_t rows = site.row_parallel ? site.weight.size(1) : site.weight.size(1) / tp_.size();
    auto accumulator = std::make_unique<HessianAccumulator>(rows, rows * tp_.size(), dtype, site.weight.device());
    HessianAccumulator* sums = accumulator.get();
    dist::Communicator* tp = &tp_;
    const bool row_parallel = site.row_parallel;
    auto handle = site.input->observe([sums, tp, row_parallel, rows](const torch::Tensor& x) {
      if (row_parallel) {  // this rank holds features rank*rows ..; the other rows need the whole input
        sums->add(x, tp->size() == 1 ? x : tp->all_gather(x.contiguous(), -1), x.size(0));
      } else {  // the input is whole on every rank: each takes its own block of rows
        sums->add(x.narrow(-1, tp->rank() * rows, rows), x, x.size(0));
      }
    });
    return {std::move(accumulator), handle};
  }

  // Quantizes one linear in place given the full sum X^T X over the job, on the host (undefined: no calibration).
  LinearReport quantize(const LinearSite& site, const torch::Tensor& sum, int64_t sequences) {
    torch::NoGradGuard no_grad;
    const auto start = Clock::now();
    const int n = tp_.size(), r = tp_.rank();
    const bool split_rows = site.row_parallel && n > 1;  // row-parallel: columns are split over TP
    const bool shard = split_rows && settings_.row_parallel == "shard";
    // GPTQ runs on the CPU (quant/gptq.cpp); one linear's weight and Hessian cross, once each way.
    // A copy: on a CPU fp32 model .to() would alias the parameter, which is overwritten below.
    torch::Tensor local = site.weight.detach().to(torch::kCPU, torch::kFloat, false, /*copy=*/true);
    // Rows with all their columns: the unit GPTQ quantizes exactly.
    // In shard mode these rows serve only the error report.
    const bool errors = settings_.errors && sum.defined();
    torch::Tensor full_rows = split_rows && (!shard || errors) ? rows_of(tp_.all_gather(local.contiguous(), 1)) : local;
    torch::Tensor target = shard ? local : full_rows;
    torch::Tensor hessian;
    if (sum.defined()) {
      const int64_t width = local.size(1);
      // The whole sum [n, n], or (shard mode without errors) this rank's row block [width, n].
      const bool row_block = sum.size(0) != sum.size(1);
      torch::Tensor block = shard ? sum.narrow(0, row_block ? 0 : r * width, width).narrow(1, r * width, width) : sum;
      hessian = (block * (2.0 / static_cast<double>(sequences))).to(torch::kFloat);
    }
    const bool gptq = settings_.uses_gptq();
    QF_CHECK(!gptq || hessian.defined(), site.name + ": GPTQ needs calibration data");
    QF_CHECK(!hooks_.quantize || !shard, site.name + ": a method's own weight grids need ptq.row_parallel exact");
    const GptqResult result = hooks_.quantize ? hooks_.quantize(site, target, hessian)
                              : gptq          ? gptq_quantize(target, hessian, options_)
                                              : rtn_quantize(target, options_);
    const torch::Tensor& q = result.weight;
    if (split_rows && !shard) {  // back to this rank's columns
      assign_columns(q, local.size(1), site.weight);
    } else {
      site.weight.copy_(q);
    }
    if (!hooks_.quantize) grids_[site.name + ".weight"] = grid_of(result, split_rows, shard);

    LinearReport report;
    report.name = site.name;
    report.rows = site.row_parallel ? local.size(0) : local.size(0) * n;
    report.columns = site.row_parallel ? local.size(1) * n : local.size(1);
    report.seconds = seconds_since(start);
    if (!errors) return report;
    // Errors over the whole weight: each rank takes its rows with all columns, the TP group adds them up.
    torch::Tensor q_rows = shard ? rows_of(tp_.all_gather(q.contiguous(), 1)) : q;
    report.error = summed(reconstruction_error(full_rows, q_rows, sum));
    report.rtn_error = summed(reconstruction_error(full_rows, rtn_quantize(full_rows, options_).weight, sum));
    if (gptq) report.gptq_error = report.error;
    return report;
  }

  // Every quantized linear's grid, for the GPTQ checkpoint (moved out once all are quantized).
  std::map<std::string, QuantizedLinear> take_grids() { return std::move(grids_); }

 private:
  // The grid in the layout export_gptq takes: the scales of the weight shard's rows (all rows when the layer is
  // row-parallel), the groups of the whole input.
  QuantizedLinear grid_of(const GptqResult& r, bool split_rows, bool shard) const {
    if (!split_rows) return {r.scales, r.zeros, r.g_idx};
    if (!shard) return {tp_.all_gather(r.scales.contiguous(), 0), tp_.all_gather(r.zeros.contiguous(), 0), r.g_idx};
    // Each rank quantized its own columns: its groups follow the groups of the ranks before it.
    const int64_t groups = r.scales.size(1);
    torch::Tensor g_idx = r.g_idx.to(torch::kLong) + static_cast<int64_t>(tp_.rank()) * groups;
    return {tp_.all_gather(r.scales.contiguous(), 1), tp_.all_gather(r.zeros.contiguous(), 1),
            tp_.all_gather(g_idx.contiguous(), 0)};
  }

  // Gathers every rank's quantized rows and keeps this rank's `width` columns, into `weight`.
  void assign_columns(const torch::Tensor& q_rows, int64_t width, const torch::Tensor& weight) const {
    weight.copy_(tp_.all_gather(q_rows.contiguous(), 0).narrow(1, tp_.rank() * width, width));
  }

  // This rank's 1/tp of the rows of a full-width weight (a copy: the full weight is freed).
  torch::Tensor rows_of(const torch::Tensor& full) const {
    const int64_t rows = full.size(0) / tp_.size();
    return full.narrow(0, tp_.rank() * rows, rows).clone();
  }

  double summed(double value) const {
    if (tp_.size() == 1) return value;
    torch::Tensor t = torch::tensor({value}, torch::kDouble);
    tp_.all_reduce(t, dist::ReduceOp::kSum);
    return t.item<double>();
  }

  dist::Communicator& tp_;
  const PtqSettings& settings_;
  const PtqHooks& hooks_;
  GptqOptions options_;
  std::map<std::string, QuantizedLinear> grids_;
};

void run_block(model::CausalLM& model, int64_t layer, Activations& activations, bool keep_outputs) {
  torch::NoGradGuard no_grad;
  for (std::size_t b = 0; b < activations.hidden.size(); ++b) {
    torch::Tensor out = model.layers[layer](activations.hidden[b], activations.positions[b], nullptr, nullptr);
    if (keep_outputs) activations.hidden[b] = out;
  }
}

}  // namespace

GptqOptions PtqSettings::gptq_options() const {
  GptqOptions o;
  o.bits = wbits;
  o.group_size = group_size;
  o.symmetric = sym;
  o.act_order = act_order;
  o.static_groups = static_groups;
  o.block_size = block_size;
  o.percdamp = percdamp;
  return o;
}

GptqQuantizationConfig PtqSettings::gptq_config() const {
  GptqQuantizationConfig c;
  c.bits = wbits;
  c.group_size = group_size;
  c.desc_act = act_order;
  c.sym = sym;
  c.static_groups = static_groups;
  c.damp_percent = uses_gptq() ? percdamp : 0.0;
  c.true_sequential = true_sequential;
  return c;
}

std::string PtqSettings::describe() const {
  const std::string groups = group_size < 0 ? "per-row" : fmt::format("g{}", group_size);
  std::string text = fmt::format("{} w{} {} {}", method, wbits, groups, sym ? "sym" : "asym");
  if (uses_gptq()) {
    if (act_order) text += static_groups ? " act-order static-groups" : " act-order";
    if (!true_sequential) text += " not-true-sequential";
  }
  return text;
}

nlohmann::json PtqReport::to_json(const PtqSettings& settings) const {
  nlohmann::json layers = nlohmann::json::array();
  double error = 0, rtn = 0;
  for (const LinearReport& l : linears) {
    nlohmann::json entry = {{"name", l.name}, {"shape", {l.rows, l.columns}}, {"seconds", l.seconds}};
    if (l.error >= 0) {
      entry["error"] = l.error;
      entry["rtn_error"] = l.rtn_error;
      if (l.gptq_error >= 0) entry["gptq_error"] = l.gptq_error;
      error += l.error;
      rtn += l.rtn_error;
    }
    layers.push_back(entry);
  }
  nlohmann::json settings_json = {
      {"method", settings.method},           {"wbits", settings.wbits},
      {"group_size", settings.group_size},   {"sym", settings.sym},
      {"act_order", settings.act_order},     {"static_groups", settings.static_groups},
      {"block_size", settings.block_size},   {"percdamp", settings.percdamp},
      {"true_sequential", settings.true_sequential}, {"row_parallel", settings.row_parallel},
      {"hessian_dtype", settings.hessian_dtype}};
  nlohmann::json json = {{"settings", settings_json}, {"linears", layers}, {"seconds", seconds}};
  if (sequences > 0) {
    json["calibration"] = {{"sequences", sequences}, {"seq_len", seq_len}};
    json["total_error"] = error;
    json["total_rtn_error"] = rtn;
  }
  return json;
}

PtqReport run_ptq(model::CausalLM& model, const torch::Tensor& sequences, const PtqSettings& settings,
                  dist::Communicator& dp, const PtqHooks& hooks) {
  torch::NoGradGuard no_grad;
  const auto start = Clock::now();
  std::vector<LinearSite> linears;
  for (const LinearSite& site : model::decoder_linears(model))
    if (!is_excluded(site.name, settings.exclude)) linears.push_back(site);
  Quantizer quantizer(model, settings, hooks);
  quantizer.check(linears);

  PtqReport report;
  const bool calibrated = sequences.defined();
  torch::Tensor sequence_count = torch::tensor({calibrated ? sequences.size(0) : int64_t{0}}, torch::kLong);
  dp.all_reduce(sequence_count, dist::ReduceOp::kSum);
  report.sequences = sequence_count.item<int64_t>();
  report.seq_len = calibrated ? sequences.size(1) : 0;
  if (settings.uses_gptq() && report.sequences == 0)
    throw UsageError("ptq.method " + settings.method +
                     " needs calibration sequences: set ptq.calib (--calib) or ptq.calib_corpus (--calib-corpus)");

  Activations activations;
  if (calibrated) {
    for (int64_t first = 0; first < sequences.size(0); first += settings.batch_size) {
      torch::Tensor ids = sequences.narrow(0, first, std::min(settings.batch_size, sequences.size(0) - first));
      torch::Tensor positions = model.default_positions(ids.size(0), ids.size(1));
      activations.positions.push_back(positions);
      activations.hidden.push_back(model.embed(ids, positions));
    }
  }

  const auto layers = static_cast<int64_t>(model.layers.size());
  log::Progress progress("ptq", layers, "layers");
  for (int64_t layer = 0; layer < layers; ++layer) {
    if (hooks.before_block) hooks.before_block(layer, [&] { run_block(model, layer, activations, false); });
    for (const std::vector<LinearInput>& group : groups_of(settings.true_sequential)) {
      std::vector<const LinearSite*> members;
      for (const LinearSite& site : linears)
        for (LinearInput input : group)
          if (site.layer == layer && site.input_kind == input) members.push_back(&site);
      if (members.empty()) continue;
      // One accumulator per shared input, filled by one pass of the block over the calibration sequences.
      std::map<LinearInput, std::unique_ptr<HessianAccumulator>> sums;
      if (report.sequences > 0) {
        std::vector<std::pair<model::Site*, model::Site::Handle>> handles;
        for (const LinearSite* site : members) {
          if (sums.count(site->input_kind)) continue;
          auto [accumulator, handle] = quantizer.observe(*site);
          sums[site->input_kind] = std::move(accumulator);
          handles.emplace_back(site->input, handle);
        }
        run_block(model, layer, activations, /*keep_outputs=*/false);
        for (auto& [site, handle] : handles) site->remove(handle);
      }
      std::map<LinearInput, torch::Tensor> full_sums;
      for (auto& [input, accumulator] : sums) {
        accumulator->reduce(dp);
        // GPTQ runs on the host. Without the error report, shard mode needs only this rank's rows of the sum.
        const bool own_rows = !settings.errors && settings.row_parallel == "shard" && model.tp().size() > 1 &&
                              (input == LinearInput::kAttentionOut || input == LinearInput::kMlpHidden);
        full_sums[input] = own_rows ? accumulator->sum().cpu() : accumulator->gathered_sum(model.tp()).cpu();
        accumulator.reset();
      }
      for (const LinearSite* site : members) {
        auto it = full_sums.find(site->input_kind);
        report.linears.push_back(quantizer.quantize(*site, it == full_sums.end() ? torch::Tensor() : it->second,
                                                    report.sequences));
      }
    }
    auto propagate = [&] { run_block(model, layer, activations, /*keep_outputs=*/true); };
    if (hooks.propagate) {
      hooks.propagate(layer, propagate);
    } else {
      propagate();
    }
    progress.advance();
  }
  report.quantized.config = settings.gptq_config();
  report.quantized.linears = quantizer.take_grids();
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace qforge::quant
