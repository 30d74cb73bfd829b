#include "quant/qat.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <map>
#include <memory>
#include <sstream>

namespace qforge::quant {
namespace {

const char* bits_expected() { return "W-A-KV bit widths, each 2..8 or 16 for full precision (e.g. 4-8-4)"; }

bool valid_bit_width(int bits) { return bits == 16 || (bits >= 2 && bits <= 8); }

// The three widths of "W-A-KV", or false when `text` is not of that form.
bool split_bits(const std::string& text, BitWidths& out) {
  std::vector<int> widths;
  std::stringstream parts(text);
  std::string part;
  while (std::getline(parts, part, '-')) {
    if (part.empty() || part.size() > 2 || part.find_first_not_of("0123456789") != std::string::npos) return false;
    widths.push_back(std::stoi(part));
  }
  if (widths.size() != 3 || text.back() == '-') return false;
  for (int w : widths)
    if (!valid_bit_width(w)) return false;
  out = {widths[0], widths[1], widths[2]};
  return true;
}

Granularity weight_granularity_of(const std::string& name) {
  if (name == "tensor") return Granularity::kTensor;
  if (name == "channel") return Granularity::kChannel;
  if (name == "group") return Granularity::kGroup;
  throw UsageError(fmt::format("quant.weight_granularity must be one of: tensor, channel, group, got '{}'", name));
}

Granularity act_granularity_of(const std::string& name) {
  if (name == "token") return Granularity::kToken;
  if (name == "tensor") return Granularity::kTensor;
  throw UsageError(fmt::format("quant.act_granularity must be one of: token, tensor, got '{}'", name));
}

bool kv_pre_rope(const std::string& place) {
  if (place == "pre_rope") return true;
  if (place == "post_rope") return false;
  throw UsageError(fmt::format("quant.kv_place must be one of: pre_rope, post_rope, got '{}'", place));
}

// The TP group when a range spans a dimension TP splits (and there is more than one rank), else none.
dist::Communicator* reduce_over(model::CausalLM& model, bool spans_split_dimension) {
  return spans_split_dimension && model.tp().size() > 1 ? &model.tp() : nullptr;
}

bool weight_range_spans_split(const LinearSite& site, Granularity granularity) {
  if (granularity == Granularity::kTensor) return true;
  return granularity == Granularity::kChannel && site.row_parallel;  // groups always lie inside a shard
}

void check_groups(const LinearSite& site, const QuantSpec& spec, int tp) {
  if (!spec.enabled() || spec.granularity != Granularity::kGroup) return;
  const int64_t rows = site.weight.size(0), columns = site.weight.size(1);
  if (columns % spec.group_size == 0) return;
  if (site.row_parallel && tp > 1)
    throw UsageError(
        fmt::format("quant.group_size = {} does not divide the {} input columns of {} that each of "
                    "parallel.tp = {} ranks holds (weight [{}, {}])",
                    spec.group_size, columns, site.name, tp, rows, columns * tp));
  throw UsageError(fmt::format("quant.group_size = {} does not divide the {} input columns of {} (weight [{}, {}])",
                               spec.group_size, columns, site.name, site.row_parallel ? rows : rows * tp, columns));
}

model::TensorHook quantizer_hook(const QuantSpec& spec, dist::Communicator* tp) {
  if (!spec.enabled()) return {};
  return [spec, tp](const torch::Tensor& x) { return fake_quantize(x, spec, tp); };
}

// The input quantizer of linears that read one activation (q, k, v; gate, up): the first of them to run computes
// x̂, the others get that same tensor (one rounding, one backward mask, instead of one per linear). x̂ is held only
// from the first call to the last sibling's in the same forward pass.
class SharedInputQuantizer {
 public:
  SharedInputQuantizer(QuantSpec spec, dist::Communicator* tp, int users) : spec_(spec), tp_(tp), users_(users) {}

  torch::Tensor operator()(const torch::Tensor& x) {
    if (remaining_ > 0 && x.unsafeGetTensorImpl() == input_.unsafeGetTensorImpl() && x._version() == version_) {
      torch::Tensor y = output_;
      if (--remaining_ == 0) input_ = output_ = torch::Tensor();
      return y;
    }
    torch::Tensor y = fake_quantize(x, spec_, tp_);
    remaining_ = users_ - 1;
    input_ = remaining_ > 0 ? x : torch::Tensor();
    output_ = remaining_ > 0 ? y : torch::Tensor();
    version_ = x._version();
    return y;
  }

 private:
  QuantSpec spec_;
  dist::Communicator* tp_;
  int users_;
  torch::Tensor input_, output_;  // the activation being shared and its x̂
  int64_t version_ = 0;
  int remaining_ = 0;  // siblings still to call
};

// Attaches the weight quantizers of `sites` (the linears of one layer that read one activation, quant.exclude
// applied) and their shared input quantizer.
void attach_to_linears(model::CausalLM& model, const std::vector<LinearSite>& sites, const QuantSettings& settings) {
  const QuantSpec weight = settings.weight_spec(), act = settings.act_spec();
  for (const LinearSite& site : sites) {
    check_groups(site, weight, model.tp().size());
    site.weight_site->transform =
        quantizer_hook(weight, reduce_over(model, weight_range_spans_split(site, weight.granularity)));
  }
  if (!act.enabled() || sites.empty()) return;
  // A row-parallel layer's input holds this rank's slice of the features; a column-parallel one's is whole.
  auto shared = std::make_shared<SharedInputQuantizer>(act, reduce_over(model, sites.front().row_parallel),
                                                       static_cast<int>(sites.size()));
  for (const LinearSite& site : sites)
    site.input->transform = [shared](const torch::Tensor& x) { return (*shared)(x); };
}

}  // namespace

BitWidths parse_bits(const std::string& text) {
  BitWidths widths;
  if (!split_bits(text, widths))
    throw UsageError(fmt::format("quant.bits must be {}, got '{}'", bits_expected(), text));
  return widths;
}

std::string QuantSettings::bits_format_problem(const std::string& text) {
  BitWidths unused;
  return split_bits(text, unused) ? std::string() : bits_expected();
}

QuantSpec QuantSettings::weight_spec() const {
  return {parse_bits(bits).weight, weight_symmetric, weight_granularity_of(weight_granularity), group_size, ste_clip};
}

QuantSpec QuantSettings::act_spec() const {
  return {parse_bits(bits).act, act_symmetric, act_granularity_of(act_granularity), group_size, ste_clip};
}

QuantSpec QuantSettings::kv_spec() const {
  const Granularity granularity = kv_pre_rope(kv_place) ? Granularity::kToken : Granularity::kHead;
  return {parse_bits(bits).kv, kv_symmetric, granularity, group_size, ste_clip};
}

std::string QuantSettings::describe() const {
  std::string kv = quant::describe(kv_spec());
  if (kv_spec().enabled()) kv += fmt::format(" ({})", kv_place);
  return fmt::format("W {}, A {}, KV {}", quant::describe(weight_spec()), quant::describe(act_spec()), kv);
}

bool is_excluded(const std::string& name, const std::vector<std::string>& exclude) {
  for (const std::string& pattern : exclude)
    if (!pattern.empty() && name.find(pattern) != std::string::npos) return true;
  return false;
}

AttachReport attach_quantizers(model::CausalLM& model, const QuantSettings& settings) {
  detach_quantizers(model);
  AttachReport report;
  std::map<std::pair<int64_t, model::LinearInput>, std::vector<LinearSite>> by_input;  // linears sharing an input
  for (const LinearSite& site : decoder_linears(model))
    if (!is_excluded(site.name, settings.exclude)) by_input[{site.layer, site.input_kind}].push_back(site);
  const bool any = settings.weight_spec().enabled() || settings.act_spec().enabled();
  for (const auto& [input, sites] : by_input) {
    attach_to_linears(model, sites, settings);
    if (any) report.quantized_linears += static_cast<int64_t>(sites.size());
  }

  const QuantSpec kv = settings.kv_spec();
  if (!kv.enabled()) return report;
  const bool pre_rope = kv.granularity == Granularity::kToken;
  // Pre-RoPE ranges span every key/value head, which TP splits; post-RoPE ones lie inside one head.
  dist::Communicator* tp = reduce_over(model, pre_rope);
  for (auto& layer : model.layers) {
    auto& attention = *layer->attention;
    (pre_rope ? attention.k_site : attention.k_cache_site).transform = quantizer_hook(kv, tp);
    (pre_rope ? attention.v_site : attention.v_cache_site).transform = quantizer_hook(kv, tp);
    ++report.attention_layers;
  }
  return report;
}

void detach_quantizers(model::CausalLM& model) {
  for (const LinearSite& site : decoder_linears(model)) {
    site.input->transform = nullptr;
    site.weight_site->transform = nullptr;
  }
  for (auto& layer : model.layers)
    for (model::Site* site : {&layer->attention->k_site, &layer->attention->v_site, &layer->attention->k_cache_site,
                              &layer->attention->v_cache_site})
      site->transform = nullptr;
}

void bake_weight_quantizers(model::CausalLM& model) {
  torch::NoGradGuard no_grad;
  for (LinearSite& site : decoder_linears(model))
    if (site.weight_site->transform) site.weight.copy_(site.weight_site->transform(site.weight));
}

GptqExport qat_gptq_export(model::CausalLM& model, const QuantSettings& settings) {
  const QuantSpec spec = settings.weight_spec();
  GptqExport exported;
  if (!spec.enabled()) return exported;
  check_gptq_bits(spec.bits, "quant.bits (the weight width)");
  const bool grouped = spec.granularity == Granularity::kGroup;
  exported.config.bits = spec.bits;
  exported.config.group_size = grouped ? spec.group_size : -1;
  exported.config.sym = spec.symmetric;
  exported.config.damp_percent = 0;  // no Hessian: QAT's grid is min-max
  exported.config.true_sequential = false;
  torch::NoGradGuard no_grad;
  const int tp = model.tp().size();
  for (const LinearSite& site : decoder_linears(model)) {
    if (is_excluded(site.name, settings.exclude)) continue;
    const QuantizedTensor q =
        quantize(site.weight.detach(), spec, reduce_over(model, weight_range_spans_split(site, spec.granularity)));
    const int64_t rows = site.weight.size(0), in = site.weight.size(1) * (site.row_parallel ? tp : 1);
    torch::Tensor scales = q.scales.to(torch::kFloat).expand({rows, q.scales.size(1)}).contiguous();
    torch::Tensor zeros = spec.symmetric ? torch::full_like(scales, static_cast<double>(int64_t{1} << (spec.bits - 1)))
                                         : q.zeros.to(torch::kFloat).expand({rows, q.zeros.size(1)}).contiguous();
    if (grouped && site.row_parallel && tp > 1) {  // this rank's groups -> every group of the row
      scales = model.tp().all_gather(scales, 1);
      zeros = model.tp().all_gather(zeros, 1);
    }
    torch::Tensor g_idx =
        grouped ? torch::arange(in, torch::kLong).div(spec.group_size, "floor") : torch::zeros({in}, torch::kLong);
    exported.linears[site.name + ".weight"] = {scales, zeros, g_idx};
  }
  return exported;
}

}  // namespace qforge::quant
