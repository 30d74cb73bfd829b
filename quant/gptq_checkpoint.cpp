#include "quant/gptq_checkpoint.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/quantized_checkpoint.h"
#include "framework/model/sites.h"

#include <fmt/format.h>

#include <filesystem>
#include <limits>
#include <set>

namespace qforge::quant {
namespace {
namespace fs = std::filesystem;

// "model.layers.0.mlp.up_proj" for "model.layers.0.mlp.up_proj.weight"; "" for names that are not weights.
std::string module_of(const std::string& weight_name) {
  static const std::string suffix = ".weight";
  if (weight_name.size() <= suffix.size() ||
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

bool packable(const std::vector<int64_t>& shape, int bits) {
  return shape.size() == 2 && shape[1] > 0 && shape[1] % 32 == 0 && shape[0] > 0 &&
         shape[0] % gptq_run_values(bits) == 0;
}

// How far, in grid steps, a weight may lie from its grid point and still count as on it: relative to its distance
// from the zero point, 2^-8 (a fake-quantized weight stored in bf16 is off by at most 2^-9 of that; in fp32 by
// 2^-24), plus 1e-3 of a step. A latent (not fake-quantized) weight is typically off by up to half a step.
constexpr double kOnGridRelTol = 1.0 / 256;
constexpr double kOnGridAbsTol = 1e-3;

// q = round(w / scale) + zero for every element of this rank's weight shard, uint8; throws when a weight is off
// its grid or a code leaves [0, 2^bits - 1].
torch::Tensor codes_of(const model::WeightEntry& e, const QuantizedLinear& q, int bits, const std::string& module) {
  const torch::Tensor w = e.param.detach().to(torch::kCPU, torch::kFloat);
  const torch::Tensor g = (e.spec.dim == 1 ? q.g_idx.narrow(0, e.spec.start, w.size(1)) : q.g_idx).to(torch::kLong);
  if (q.scales.size(0) != w.size(0) || g.size(0) != w.size(1))
    throw Error(fmt::format("GPTQ export of {}: scales {} and g_idx {} do not fit this rank's weight {}", module,
                            shape_text(q.scales.sizes()), shape_text(q.g_idx.sizes()), shape_text(w.sizes())));
  const torch::Tensor s = q.scales.to(torch::kCPU, torch::kFloat).index_select(1, g);
  const torch::Tensor z = q.zeros.to(torch::kCPU, torch::kFloat).index_select(1, g);
  const torch::Tensor steps = torch::where(s != 0, w / s, torch::zeros_like(w));
  const torch::Tensor rounded = steps.round();
  const torch::Tensor distance = (steps - rounded).abs();
  const bool off_grid = w.numel() && (distance > steps.abs() * kOnGridRelTol + kOnGridAbsTol).any().item<bool>();
  const double off = w.numel() ? distance.max().item<double>() : 0.0;
  const bool zero_scale_nonzero_weight = w.numel() && ((s == 0) & (w != 0)).any().item<bool>();
  if (off_grid || zero_scale_nonzero_weight)
    throw Error(fmt::format("GPTQ export of {}: the weight is not on the grid its scales describe (off by up to {:.3g} "
                            "steps); export the fake-quantized weights", module, off));
  const torch::Tensor codes = rounded + z;
  const int64_t maxq = (int64_t{1} << bits) - 1;
  if (codes.numel() && (codes.min().item<double>() < 0 || codes.max().item<double>() > maxq))
    throw Error(fmt::format("GPTQ export of {}: codes in [{}, {}] leave [0, {}]", module, codes.min().item<double>(),
                            codes.max().item<double>(), maxq));
  return codes.to(torch::kByte);
}

bool trivial_groups(const torch::Tensor& g_idx, int64_t group_size) {
  return torch::equal(g_idx.to(torch::kLong), natural_gptq_groups(0, g_idx.size(0), group_size));
}

std::string regex_escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string(".^$|()[]{}*+?\\").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// quantization_config: the settings, and which decoder linears are not packed (for the loaders that honour it).
nlohmann::json config_json(const GptqQuantizationConfig& config, model::CausalLM& model,
                           const std::set<std::string>& packed) {
  nlohmann::json json = gptq_quantization_config_json(config);
  std::vector<std::string> unpacked;
  nlohmann::json in_block = nlohmann::json::array();
  for (const model::LinearSite& site : model::decoder_linears(model)) {
    if (!packed.count(site.name)) unpacked.push_back(site.name);
    const std::string block = ".layers.0.";  // names inside a block, as transformers lists them
    if (site.layer == 0 && packed.count(site.name))
      in_block.push_back(site.name.substr(site.name.find(block) + block.size()));
  }
  if (unpacked.empty()) return json;
  json["modules_in_block_to_quantize"] = nlohmann::json::array({in_block});  // transformers / optimum
  nlohmann::json dynamic = nlohmann::json::object();                       // GPTQModel: "-:" skips a module
  for (const std::string& name : unpacked) dynamic["-:^" + regex_escaped(name) + "$"] = nlohmann::json::object();
  json["dynamic"] = dynamic;
  return json;
}

}  // namespace

void check_gptq_bits(int bits, const std::string& key, const std::string& hint) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
    throw UsageError(fmt::format("{} = {} cannot be stored in the GPTQ checkpoint format (it packs 2, 3, 4 or 8 bits){}",
                                 key, bits, hint.empty() ? "" : "; " + hint));
}

GptqExportReport export_gptq(model::CausalLM& model, const GptqExport& quantized, const std::string& dir, bool write,
                             int64_t max_shard_bytes,
                             const std::function<nlohmann::json(const nlohmann::json&)>& quantization_config) {
  GptqExportReport report;
  if (!write) return report;
  const int bits = quantized.config.bits;
  check_gptq_bits(bits, "bits");
  dist::Communicator& tp = model.tp();
  const bool writer = tp.rank() == 0;

  GptqQuantizationConfig config = quantized.config;
  double min_zero = std::numeric_limits<double>::infinity();
  for (const auto& [name, q] : quantized.linears)
    if (q.zeros.numel()) min_zero = std::min(min_zero, q.zeros.min().item<double>());
  torch::Tensor lowest = torch::tensor({min_zero}, torch::kDouble);
  tp.all_reduce(lowest, dist::ReduceOp::kMin);
  config.checkpoint_format = lowest.item<double>() >= 1 ? GptqCheckpointFormat::kV1 : GptqCheckpointFormat::kV2;
  report.checkpoint_format = gptq_checkpoint_format_name(config.checkpoint_format);

  // What each parameter becomes, in the model's order.
  const auto& entries = model.weights().entries();
  std::vector<const QuantizedLinear*> packing(entries.size(), nullptr);
  std::vector<io::TensorSpec> plan;
  std::set<std::string> packed_modules;
  for (size_t i = 0; i < entries.size(); ++i) {
    const model::WeightEntry& e = entries[i];
    const auto it = quantized.linears.find(e.name);
    const std::string module = module_of(e.name);
    if (it == quantized.linears.end() || !packable(e.full_shape, bits)) {
      if (it != quantized.linears.end()) report.kept.push_back(module);
      plan.push_back({e.name, torch::kHalf, e.full_shape});
      continue;
    }
    packing[i] = &it->second;
    packed_modules.insert(module);
    report.packed.push_back(module);
    const int64_t out = e.full_shape[0], in = e.full_shape[1], groups = it->second.scales.size(1);
    plan.push_back({module + ".qweight", torch::kInt, {in * bits / 32, out}});
    plan.push_back({module + ".qzeros", torch::kInt, {groups, out * bits / 32}});
    plan.push_back({module + ".scales", torch::kHalf, {groups, out}});
    plan.push_back({module + ".g_idx", torch::kInt, {in}});
  }
  if (writer && !report.kept.empty())
    log::warn("GPTQ export: {} quantized linear(s) have shapes the format cannot pack at {} bits (inputs a multiple of "
              "32, outputs of {}); kept as fp16 weights: {}{}", report.kept.size(), bits, gptq_run_values(bits),
              report.kept.front(), report.kept.size() > 1 ? ", ..." : "");

  std::unique_ptr<io::CheckpointWriter> out;
  if (writer) out = std::make_unique<io::CheckpointWriter>(dir, plan, max_shard_bytes);
  bool desc_act = false;
  log::Progress progress("GPTQ export " + dir, static_cast<int64_t>(entries.size()), "tensors", 5.0);
  for (size_t i = 0; i < entries.size(); ++i) {
    const model::WeightEntry& e = entries[i];
    if (!packing[i]) {
      torch::Tensor full = model::gather_full(e, tp);
      if (writer) {
        torch::Tensor half = full.to(torch::kCPU, torch::kHalf);
        if (!torch::isfinite(half).all().item<bool>())
          throw Error(fmt::format("GPTQ export: tensor '{}' holds values beyond fp16's range (largest |x| {:.4g})",
                                  e.name, full.abs().max().item<double>()));
        out->write(e.name, half);
      }
      progress.advance();
      continue;
    }
    const QuantizedLinear& q = *packing[i];
    const std::string module = module_of(e.name);
    const torch::Tensor codes = codes_of(e, q, bits, module);
    const bool sharded = !e.spec.replicated() && tp.size() > 1;
    const torch::Tensor all_codes = sharded ? tp.all_gather(codes, e.spec.dim) : codes;
    const bool split_rows = sharded && e.spec.dim == 0;  // column-parallel: scales hold this rank's rows
    const torch::Tensor scales = q.scales.to(torch::kCPU, torch::kFloat).contiguous();
    const torch::Tensor zeros = q.zeros.to(torch::kCPU, torch::kFloat).contiguous();
    const torch::Tensor all_scales = split_rows ? tp.all_gather(scales, 0) : scales;
    const torch::Tensor all_zeros = split_rows ? tp.all_gather(zeros, 0) : zeros;
    if (writer) {
      const torch::Tensor g_idx = q.g_idx.to(torch::kCPU, torch::kLong);
      const GptqPacked p = pack_gptq(all_codes, all_scales, all_zeros, g_idx, bits, config.checkpoint_format, module);
      desc_act = desc_act || !trivial_groups(g_idx, config.group_size);
      out->write(module + ".qweight", p.qweight);
      out->write(module + ".qzeros", p.qzeros);
      out->write(module + ".scales", p.scales);
      out->write(module + ".g_idx", p.g_idx);
    }
    progress.advance();
  }
  if (!writer) return report;
  report.bytes = out->commit();
  config.desc_act = desc_act;
  const nlohmann::json quantization = config_json(config, model, packed_modules);
  nlohmann::json model_json = model.config().to_json();
  model_json["torch_dtype"] = "float16";
  model_json["quantization_config"] = quantization_config ? quantization_config(quantization) : quantization;
  const std::string quantize_config = quantization.dump(2) + "\n", config_text = model_json.dump(2) + "\n";
  write_file_atomically((fs::path(dir) / "quantize_config.json").string(), quantize_config);
  write_file_atomically((fs::path(dir) / "config.json").string(), config_text);
  report.bytes += static_cast<int64_t>(quantize_config.size() + config_text.size());
  return report;
}

// ---- reading ---------------------------------------------------------------------------------------------------

namespace {

class GptqReader : public model::QuantizedWeightReader {
 public:
  GptqReader(GptqQuantizationConfig config, const io::Checkpoint& checkpoint, std::string config_path)
      : config_(config), checkpoint_(checkpoint), config_path_(std::move(config_path)) {}

  bool load(const model::WeightEntry& e) const override {
    const std::string module = module_of(e.name);
    if (module.empty() || !checkpoint_.contains(module + ".qweight")) return false;
    const int bits = config_.bits;
    if (e.full_shape.size() != 2) fail(module, "qweight stands for a weight that is not a matrix");
    const int64_t out = e.full_shape[0], in = e.full_shape[1];
    const int64_t groups = group_count(module, in);
    expect(module + ".qweight", torch::kInt, {in * bits / 32, out}, in % 32 == 0 && out % gptq_run_values(bits) == 0);
    expect(module + ".qzeros", torch::kInt, {groups, out * bits / 32}, true);
    expect(module + ".scales", torch::kHalf, {groups, out}, true);
    if (config_.desc_act) expect(module + ".g_idx", torch::kInt, {in}, true);

    // This rank's block: rows (outputs) [r0, r0 + rows) x columns (inputs) [c0, c0 + cols).
    const model::ShardSpec& spec = e.spec;
    int64_t r0 = 0, rows = out, c0 = 0, cols = in;
    if (spec.dim == 0) std::tie(r0, rows) = std::pair{spec.start, spec.stored_length()};
    if (spec.dim == 1) std::tie(c0, cols) = std::pair{spec.start, spec.stored_length()};
    torch::NoGradGuard no_grad;
    if (spec.dim >= 0 && spec.stored_length() < spec.length) e.param.zero_();  // padding past the stored rows
    if (rows == 0 || cols == 0) return true;
    const torch::Tensor scales = checkpoint_.read(module + ".scales", torch::kHalf, 1, r0, rows);
    const torch::Tensor qzeros = checkpoint_.read(module + ".qzeros", torch::kInt);
    // A block of whole input runs at a time: the int64 temporaries of unpacking stay small at any width.
    const int64_t n = gptq_run_values(bits), w = gptq_run_words(bits);
    const int64_t step = std::max<int64_t>(n, kInputsPerBlock / n * n);
    // Whole rows of outputs (row-parallel, replicated) are read per block of runs; a column-parallel shard's
    // columns of qweight (its packed words, b / 32 of the fp32 shard) once.
    const torch::Tensor shard_words =
        spec.dim == 0 ? checkpoint_.read(module + ".qweight", torch::kInt, 1, r0, rows) : torch::Tensor();
    for (int64_t c = c0; c < c0 + cols;) {
      const int64_t end = std::min(c0 + cols, (c / n * n) + step), count = end - c;
      const int64_t first = c / n, last = (end + n - 1) / n;  // the runs covering [c, end)
      const torch::Tensor qweight =
          shard_words.defined() ? shard_words.narrow(0, first * w, (last - first) * w)
                                : checkpoint_.read(module + ".qweight", torch::kInt, 0, first * w, (last - first) * w);
      const torch::Tensor block = dequantize_gptq_block(qweight, qzeros, scales, groups_of(module, c, count, groups),
                                                        bits, config_.checkpoint_format, r0, c, module);
      e.param.narrow(0, 0, rows).narrow(1, c - c0, count).copy_(block);
      c = end;
    }
    return true;
  }

 private:
  // Inputs dequantized per step (int64 unpacking temporaries of 8 bytes x inputs x outputs).
  static constexpr int64_t kInputsPerBlock = 256;

  // The groups of inputs [c, c + count): stored g_idx with desc_act, else i / group_size as the loaders assume.
  torch::Tensor groups_of(const std::string& module, int64_t c, int64_t count, int64_t groups) const {
    if (!config_.desc_act) return natural_gptq_groups(c, count, config_.group_size);
    torch::Tensor g_idx = checkpoint_.read(module + ".g_idx", torch::kInt, 0, c, count);
    const int64_t low = g_idx.min().item<int64_t>(), high = g_idx.max().item<int64_t>();
    if (low < 0 || high >= groups)
      fail(module, fmt::format("g_idx holds groups in [{}, {}], outside the {} of its scales", low, high, groups));
    return g_idx;
  }

  [[noreturn]] void fail(const std::string& module, const std::string& what) const {
    throw Error(fmt::format("{}: GPTQ linear {}: {}", checkpoint_.dir(), module, what));
  }

  int64_t group_count(const std::string& module, int64_t in) const {
    const std::string name = module + ".scales";
    if (!checkpoint_.contains(name)) fail(module, "the checkpoint has qweight but no scales");
    const auto& shape = checkpoint_.info(name).shape;
    if (shape.size() != 2 || shape[0] < 1) fail(module, "scales " + shape_text(shape) + " must be [groups, out]");
    if (!config_.desc_act) {
      const int64_t expected = config_.group_size < 0 ? 1 : (in + config_.group_size - 1) / config_.group_size;
      if (shape[0] != expected)
        fail(module, fmt::format("scales hold {} groups; {} input features in groups of {} (desc_act false) make {}",
                                 shape[0], in, config_.group_size, expected));
    }
    return shape[0];
  }

  void expect(const std::string& name, torch::ScalarType dtype, const std::vector<int64_t>& shape, bool holdable) const {
    if (!holdable)
      fail(name, fmt::format("config.json ({}) implies a weight {} that {} bits cannot pack", config_path_,
                             shape_text(std::vector<int64_t>{shape[1], shape[0] * 32 / config_.bits}), config_.bits));
    if (!checkpoint_.contains(name)) fail(name, "the tensor is missing");
    const io::TensorInfo& info = checkpoint_.info(name);
    if (info.dtype != dtype || info.shape != shape)
      fail(name, fmt::format("the tensor is {} {}; config.json ({}, {} bits) implies {} {}",
                             io::safetensors_dtype_name(info.dtype), shape_text(info.shape), config_path_,
                             config_.bits, io::safetensors_dtype_name(dtype), shape_text(shape)));
  }

  GptqQuantizationConfig config_;
  const io::Checkpoint& checkpoint_;
  std::string config_path_;
};

}  // namespace

void register_gptq_reader() {
  model::register_quantized_format(
      "gptq", [](const nlohmann::json& json, const std::string& config_path, const io::Checkpoint& checkpoint) {
        GptqQuantizationConfig config = parse_gptq_quantization_config(json, config_path + " (quantization_config)");
        return std::make_unique<GptqReader>(config, checkpoint, config_path);
      });
}

}  // namespace qforge::quant
