#include "quant/pack.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "framework/io/safetensors.h"
#include "framework/model/checkpoint_io.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

namespace qforge::quant {
namespace fs = std::filesystem;
namespace {

// Codes of a symmetric weight are stored shifted into [1, 2^b - 1]: the packed stream holds unsigned values.
int64_t stored_offset(const PackedTensor& p) { return p.symmetric ? int64_t{1} << (p.bits - 1) : 0; }

int64_t packed_row_bytes(int64_t columns, int bits) { return (columns * bits + 7) / 8; }

// Rows packed together: bounds the [rows, columns, bits] temporary to about 16 MiB.
int64_t rows_per_block(int64_t columns, int bits) { return std::max<int64_t>(1, (int64_t{1} << 24) / (columns * bits)); }

void check_weight_spec(const torch::Tensor& weight, const QuantSpec& spec) {
  check_spec(spec);
  if (!spec.enabled()) throw UsageError("pack() needs a bit width of 2..8; 16 means full precision");
  if (weight.dim() != 2 || weight.size(0) == 0 || weight.size(1) == 0)
    throw Error(fmt::format("pack() needs a non-empty weight [out, in], got shape {}", shape_text(weight.sizes())));
  const Granularity g = spec.granularity;
  if (g != Granularity::kTensor && g != Granularity::kChannel && g != Granularity::kGroup)
    throw UsageError(fmt::format("pack() packs weights per tensor, channel or group, not per {}", to_string(g)));
}

void check_packed_shapes(const PackedTensor& p) {
  QF_CHECK(p.shape.size() == 2, fmt::format("a packed weight has shape {}, expected [out, in]", shape_text(p.shape)));
  const int64_t out = p.shape[0], in = p.shape[1];
  const std::vector<int64_t> codes = {out, packed_row_bytes(in, p.bits)};
  if (p.codes.sizes() != torch::IntArrayRef(codes))
    throw Error(fmt::format("packed codes of a weight {} at {} bits have shape {}, expected {}", shape_text(p.shape),
                            p.bits, shape_text(p.codes.sizes()), shape_text(codes)));
  std::vector<int64_t> scales = {out, 1};
  if (p.granularity == Granularity::kTensor) scales = {1, 1};
  if (p.granularity == Granularity::kGroup) scales = {out, in / p.group_size};
  if (p.scales.sizes() != torch::IntArrayRef(scales) || (!p.symmetric && p.zeros.sizes() != torch::IntArrayRef(scales)))
    throw Error(fmt::format("packed scales (and zeros) of a weight {} per {} have shape {}, expected {}",
                            shape_text(p.shape), to_string(p.granularity), shape_text(p.scales.sizes()),
                            shape_text(scales)));
}

// ---- checkpoint layout ------------------------------------------------------------------------------------

std::string without_suffix(const std::string& name, const std::string& suffix) {
  const bool has = name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  return has ? name.substr(0, name.size() - suffix.size()) : "";
}

Granularity weight_granularity_named(const std::string& name) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kGroup})
    if (name == to_string(g)) return g;
  throw Error(fmt::format("{}: weight granularity '{}' is not one of tensor, channel, group", kQuantizationFileName, name));
}

nlohmann::json settings_json(const QuantSettings& s) {
  return {{"bits", s.bits},
          {"weight_granularity", s.weight_granularity},
          {"group_size", s.group_size},
          {"weight_symmetric", s.weight_symmetric},
          {"act_granularity", s.act_granularity},
          {"act_symmetric", s.act_symmetric},
          {"kv_place", s.kv_place},
          {"kv_symmetric", s.kv_symmetric},
          {"ste_clip", s.ste_clip},
          {"exclude", s.exclude}};
}

nlohmann::json quantization_json(const QuantSettings& settings, const std::vector<std::string>& modules) {
  const QuantSpec w = settings.weight_spec();
  return {{"format", "qforge-packed-v1"},
          {"weight",
           {{"bits", w.bits},
            {"symmetric", w.symmetric},
            {"granularity", to_string(w.granularity)},
            {"group_size", w.group_size},
            {"describe", describe(w)}}},
          {"layout",
           "<linear>.qweight: uint8 [out, ceil(in * bits / 8)], each row's codes bit-packed least significant bit "
           "first, symmetric codes stored as q + 2^(bits-1); <linear>.scales: float16 [out, groups]; "
           "<linear>.qzeros: uint8 [out, groups] (asymmetric); weight = (q - zero) * scale"},
          {"quantized_modules", modules},
          {"qat", settings_json(settings)}};
}

QuantSpec weight_spec_from(const nlohmann::json& quantization) {
  const nlohmann::json& w = quantization.at("weight");
  return {w.at("bits").get<int>(), w.at("symmetric").get<bool>(),
          weight_granularity_named(w.at("granularity").get<std::string>()), w.at("group_size").get<int64_t>(), 0.0};
}

// The linears whose weights export_packed packs: none when weights stay in full precision.
std::set<std::string> packed_linears(model::CausalLM& model, const QuantSettings& settings) {
  std::set<std::string> names;
  if (!settings.weight_spec().enabled()) return names;
  for (const LinearSite& site : decoder_linears(model))
    if (!is_excluded(site.name, settings.exclude)) names.insert(site.name);
  return names;
}

void add_packed(std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& linear,
                const PackedTensor& p) {
  tensors.emplace_back(linear + ".qweight", p.codes);
  tensors.emplace_back(linear + ".scales", p.scales);
  if (!p.symmetric) tensors.emplace_back(linear + ".qzeros", p.zeros);
}

// The safetensors files of the checkpoint in `dir` (the single file, or the index and its shards).
std::vector<fs::path> safetensors_files(const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors")) return {dir / "model.safetensors"};
  const fs::path index = dir / "model.safetensors.index.json";
  std::set<std::string> shards;
  for (const auto& [name, file] : nlohmann::json::parse(std::ifstream(index)).at("weight_map").items())
    shards.insert(file.get<std::string>());
  std::vector<fs::path> files = {index};
  for (const std::string& shard : shards) files.push_back(dir / shard);
  return files;
}

int64_t bytes_of(const std::vector<fs::path>& files) {
  int64_t total = 0;
  for (const fs::path& file : files) total += static_cast<int64_t>(fs::file_size(file));
  return total;
}

// Copies this rank's shard of the full tensor `full` into the parameter of `e` (under no_grad).
void copy_shard(const model::WeightEntry& e, const torch::Tensor& full) {
  if (e.spec.replicated()) {
    e.param.copy_(full);
    return;
  }
  const int64_t stored = e.spec.stored_length();
  if (stored < e.spec.length) e.param.narrow(e.spec.dim, stored, e.spec.length - stored).zero_();
  if (stored > 0) e.param.narrow(e.spec.dim, 0, stored).copy_(full.narrow(e.spec.dim, e.spec.start, stored));
}

PackedTensor read_packed(const io::Checkpoint& checkpoint, const std::string& linear, const QuantSpec& spec,
                         const std::vector<int64_t>& shape) {
  PackedTensor p;
  p.codes = checkpoint.read(linear + ".qweight", torch::kByte);
  p.scales = checkpoint.read(linear + ".scales", torch::kHalf);
  if (!spec.symmetric) p.zeros = checkpoint.read(linear + ".qzeros", torch::kByte);
  p.bits = spec.bits;
  p.symmetric = spec.symmetric;
  p.granularity = spec.granularity;
  p.group_size = spec.group_size;
  p.shape = shape;
  return p;
}

// uint8 [rows, n] of values < 2^bits -> uint8 [rows, ceil(n * bits / 8)], LSB first.
torch::Tensor pack_rows(const torch::Tensor& codes, int bits) {
  const int64_t rows = codes.size(0), stream_bits = codes.size(1) * bits;
  torch::Tensor stream = codes.unsqueeze(-1).bitwise_right_shift(torch::arange(bits, torch::kByte)).bitwise_and(1);
  stream = stream.reshape({rows, stream_bits});
  const int64_t padding = packed_row_bytes(codes.size(1), bits) * 8 - stream_bits;
  stream = torch::constant_pad_nd(stream, {0, padding}).view({rows, -1, 8});
  torch::Tensor place_values = torch::bitwise_left_shift(torch::ones({8}, torch::kByte), torch::arange(8, torch::kByte));
  return (stream * place_values).sum(-1, /*keepdim=*/false, torch::kByte);
}

// The inverse: uint8 [rows, ceil(n * bits / 8)] -> uint8 [rows, n].
torch::Tensor unpack_rows(const torch::Tensor& bytes, int bits, int64_t columns) {
  const int64_t rows = bytes.size(0);
  torch::Tensor stream = bytes.unsqueeze(-1).bitwise_right_shift(torch::arange(8, torch::kByte)).bitwise_and(1);
  stream = stream.reshape({rows, -1}).narrow(1, 0, columns * bits).reshape({rows, columns, bits});
  torch::Tensor place_values = torch::bitwise_left_shift(torch::ones({bits}, torch::kByte), torch::arange(bits, torch::kByte));
  return (stream * place_values).sum(-1, /*keepdim=*/false, torch::kByte);
}

template <class RowFunction>
torch::Tensor by_row_blocks(const torch::Tensor& rows, int64_t block, RowFunction function) {
  std::vector<torch::Tensor> parts;
  for (int64_t start = 0; start < rows.size(0); start += block)
    parts.push_back(function(rows.narrow(0, start, std::min(block, rows.size(0) - start))));
  return torch::cat(parts, 0);
}

}  // namespace

// ---- bit streams and fp16 scales ---------------------------------------------------------------------------

torch::Tensor pack_bit_rows(const torch::Tensor& codes, int bits) {
  return by_row_blocks(codes, rows_per_block(codes.size(1), bits),
                       [&](const torch::Tensor& rows) { return pack_rows(rows, bits); });
}

torch::Tensor unpack_bit_rows(const torch::Tensor& bytes, int bits, int64_t columns) {
  return by_row_blocks(bytes, rows_per_block(columns, bits),
                       [&](const torch::Tensor& rows) { return unpack_rows(rows, bits, columns); });
}

torch::Tensor fp16_scales(const torch::Tensor& scales, const std::string& where) {
  const torch::Tensor s32 = scales.to(torch::kFloat);
  if (!torch::isfinite(s32).all().item<bool>()) throw Error(where + ": a scale is not finite");
  const torch::Tensor half = s32.to(torch::kHalf);
  if (!torch::isfinite(half).all().item<bool>())
    throw Error(fmt::format("{}: a scale of magnitude {} overflows fp16 (scales are stored as fp16)", where,
                            s32.abs().max().item<double>()));
  if (((half == 0) & (s32 != 0)).any().item<bool>())
    throw Error(fmt::format("{}: a nonzero scale of {} underflows to 0 in fp16 (scales are stored as fp16)", where,
                            s32.abs().min().item<double>()));
  return half;
}

PackedTensor pack(const torch::Tensor& weight, const QuantSpec& spec) {
  check_weight_spec(weight, spec);
  const QuantizedTensor q = quantize(weight, spec);
  PackedTensor p;
  p.bits = spec.bits;
  p.symmetric = spec.symmetric;
  p.granularity = spec.granularity;
  p.group_size = spec.granularity == Granularity::kGroup ? spec.group_size : 0;
  p.shape = weight.sizes().vec();
  torch::Tensor stored = (q.codes + stored_offset(p)).to(torch::kByte);
  p.codes = pack_bit_rows(stored, p.bits);
  p.scales = fp16_scales(q.scales, fmt::format("pack() of a weight {}", shape_text(weight.sizes())));
  if (!p.symmetric) p.zeros = q.zeros.to(torch::kByte);
  return p;
}

torch::Tensor unpack(const PackedTensor& p) {
  check_spec(p.spec());
  check_packed_shapes(p);
  const int64_t columns = p.shape[1];
  torch::Tensor stored = unpack_bit_rows(p.codes, p.bits, columns);
  QuantizedTensor q;
  q.codes = stored.to(torch::kInt) - stored_offset(p);
  q.scales = p.scales.to(torch::kFloat);
  if (!p.symmetric) q.zeros = p.zeros.to(torch::kInt);
  return dequantize(q, p.spec());
}

int64_t export_packed(model::CausalLM& model, const QuantSettings& settings, const std::string& dir, bool write,
                      int64_t max_shard_bytes) {
  const QuantSpec spec = settings.weight_spec();
  const std::set<std::string> linears = packed_linears(model, settings);
  const bool writer = write && model.tp().rank() == 0;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const model::WeightEntry& e : model.weights().entries()) {
    torch::Tensor full = model::gather_full(e, model.tp()).cpu();  // collective: every rank, every entry
    if (!writer) continue;
    const std::string linear = without_suffix(e.name, ".weight");
    if (linears.count(linear)) add_packed(tensors, linear, pack(full, spec));
    else tensors.emplace_back(e.name, full);
  }
  torch::Tensor bytes = torch::zeros({1}, torch::kLong);
  if (writer) {
    const nlohmann::json quantization = quantization_json(settings, {linears.begin(), linears.end()});
    fs::create_directories(dir);
    io::save_checkpoint(dir, tensors, max_shard_bytes, {{"format", "pt"}, {"quantization", quantization.dump()}});
    write_file_atomically((fs::path(dir) / "config.json").string(), model.config().to_json().dump(2) + "\n");
    write_file_atomically((fs::path(dir) / kQuantizationFileName).string(), quantization.dump(2) + "\n");
    std::vector<fs::path> files = safetensors_files(dir);
    files.push_back(fs::path(dir) / "config.json");
    files.push_back(fs::path(dir) / kQuantizationFileName);
    bytes.fill_(bytes_of(files));
  }
  if (write) model.tp().broadcast(bytes, 0);
  return bytes.item<int64_t>();
}

std::shared_ptr<model::CausalLM> load_packed(const std::string& dir, dist::Communicator& tp) {
  const fs::path quantization_path = fs::path(dir) / kQuantizationFileName;
  std::ifstream quantization_file(quantization_path);
  if (!quantization_file)
    throw Error(fmt::format("{}: no {}; not a packed checkpoint from export_packed", dir, kQuantizationFileName));
  const QuantSpec spec = weight_spec_from(nlohmann::json::parse(quantization_file));
  auto model = std::make_shared<model::CausalLM>(
      model::ModelConfig::from_file((fs::path(dir) / "config.json").string()), tp);
  io::Checkpoint checkpoint(dir);
  torch::NoGradGuard no_grad;
  for (const model::WeightEntry& e : model->weights().entries()) {
    const std::string linear = without_suffix(e.name, ".weight");
    if (!linear.empty() && checkpoint.contains(linear + ".qweight"))
      copy_shard(e, unpack(read_packed(checkpoint, linear, spec, e.full_shape)));
    else
      model::load_entry(e, checkpoint, dir);
  }
  model->eval();
  return model;
}

}  // namespace qforge::quant
