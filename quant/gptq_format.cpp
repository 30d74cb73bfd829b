#include "quant/gptq_format.h"

#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "quant/pack.h"

#include <fstream>
#include <numeric>

namespace qforge::quant {
namespace {

constexpr int64_t kWordBits = 32;

std::string dtype_of(const torch::Tensor& t) { return std::string(c10::toString(t.scalar_type())); }

[[noreturn]] void fail(const std::string& layer, const std::string& what) {
  throw Error("GPTQ format, layer " + layer + ": " + what + ".");
}

void check_bits(int bits, const std::string& layer) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
    fail(layer, "bits " + std::to_string(bits) + " cannot be stored (the format packs 2, 3, 4 or 8 bits)");
}

// Values per run of whole words along a packed dimension, and the words of one run: 32 / gcd(32, b) values in
// b / gcd(32, b) words (3 bits: 32 values in 3 words; 4 bits: 8 values in 1 word).
int64_t run_values(int bits) { return kWordBits / std::gcd<int64_t>(kWordBits, bits); }
int64_t run_words(int bits) { return bits / std::gcd<int64_t>(kWordBits, bits); }

void check_input_features(int64_t in, int bits, const std::string& layer) {
  if (in <= 0 || in % kWordBits != 0)
    fail(layer, std::to_string(in) + " input features cannot be packed: qweight [in * " + std::to_string(bits) +
                    " / 32, out] needs in to be a positive multiple of 32");
}

void check_output_features(int64_t out, int bits, const std::string& layer) {
  const int64_t run = run_values(bits);
  if (out <= 0 || out % run != 0)
    fail(layer, std::to_string(out) + " output features cannot be packed: qzeros [groups, out * " +
                    std::to_string(bits) + " / 32] needs out to be a positive multiple of " + std::to_string(run) +
                    " at " + std::to_string(bits) + " bits");
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "packed words are read as little-endian int32");

// values int64 [N, M] (N a multiple of run_values(bits), each in [0, 2^bits)) -> int32 [N * bits / 32, M]: each
// column as one LSB-first bit stream (pack_bit_rows, pack.h), read as little-endian 32-bit words. A run of
// run_values(bits) values fills whole words, so runs never share a word.
torch::Tensor pack_rows(const torch::Tensor& values, int bits) {
  const torch::Tensor bytes = pack_bit_rows(values.t().to(torch::kByte).contiguous(), bits);  // [M, N * bits / 8]
  return bytes.view(torch::kInt).t().contiguous();
}

// The inverse: int32 words [R, M] -> int64 [R * 32 / bits, M].
torch::Tensor unpack_rows(const torch::Tensor& packed, int bits) {
  // A fresh row-major copy: a view of it as bytes needs unit stride along words even when R is 1.
  const torch::Tensor words = torch::empty({packed.size(1), packed.size(0)}, torch::kInt).copy_(packed.t());
  const torch::Tensor bytes = words.view(torch::kByte);  // [M, R * 4]
  return unpack_bit_rows(bytes, bits, packed.size(0) * kWordBits / bits).t().to(torch::kLong);
}

// Exact integers of `t` as int64 (throws when a value is not an integer).
torch::Tensor integers(const torch::Tensor& t, const std::string& name, const std::string& layer) {
  if (!t.is_floating_point()) return t.to(torch::kLong);
  const torch::Tensor d = t.to(torch::kDouble);
  if (!torch::equal(d, d.round())) fail(layer, name + " holds a value that is not an integer");
  return d.to(torch::kLong);
}

void check_range(const torch::Tensor& v, int64_t low, int64_t high, const std::string& name,
                 const std::string& layer) {
  if (v.numel() == 0) return;
  const int64_t lo = v.min().item<int64_t>(), hi = v.max().item<int64_t>();
  if (lo < low || hi > high)
    fail(layer, name + " holds values in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], outside [" +
                    std::to_string(low) + ", " + std::to_string(high) + "]");
}

// Zero points [groups, out] from qzeros, for outputs [out_start, out_start + outs).
torch::Tensor zeros_of(const GptqPacked& packed, int bits, GptqCheckpointFormat format, int64_t out_start,
                       int64_t outs) {
  const int64_t n = run_values(bits), w = run_words(bits);
  const int64_t first = out_start / n, last = (out_start + outs + n - 1) / n;  // covering runs
  const torch::Tensor words = packed.qzeros.narrow(1, first * w, (last - first) * w);
  torch::Tensor zeros = unpack_rows(words.t(), bits).t().narrow(1, out_start - first * n, outs);
  if (format == GptqCheckpointFormat::kV1) zeros = zeros + 1;
  return zeros;
}

// scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]) for the inputs of `g_idx` and the codes `q` [ins, outs].
torch::Tensor dequantize_part(const torch::Tensor& q, const torch::Tensor& zeros, const torch::Tensor& scales,
                              const torch::Tensor& g_idx) {
  const torch::Tensor g = g_idx.to(torch::kLong);
  const torch::Tensor difference = (q - zeros.index_select(0, g)).to(torch::kFloat);
  return (scales.to(torch::kFloat).index_select(0, g) * difference).t().contiguous();
}

void check_slice(int64_t start, int64_t length, int64_t size, const char* what, const std::string& layer) {
  if (start < 0 || length <= 0 || start + length > size)
    fail(layer, std::string(what) + " [" + std::to_string(start) + ", " + std::to_string(start + length) +
                    ") is not a non-empty range inside the weight's " + std::to_string(size));
}

}  // namespace

std::string gptq_checkpoint_format_name(GptqCheckpointFormat format) {
  return format == GptqCheckpointFormat::kV1 ? "gptq" : "gptq_v2";
}

GptqPacked pack_gptq(const torch::Tensor& codes, const torch::Tensor& scales, const torch::Tensor& zeros,
                     const torch::Tensor& g_idx, int bits, GptqCheckpointFormat format, const std::string& layer) {
  check_bits(bits, layer);
  if (codes.dim() != 2 || codes.is_floating_point())
    fail(layer, "codes must be an integer [out, in] tensor, got " + dtype_of(codes) + " " + shape_text(codes.sizes()));
  const int64_t out = codes.size(0), in = codes.size(1);
  check_input_features(in, bits, layer);
  check_output_features(out, bits, layer);
  if (scales.dim() != 2 || scales.size(0) != out || scales.size(1) < 1)
    fail(layer, "scales " + shape_text(scales.sizes()) + " must be [out, groups] = [" + std::to_string(out) +
                    ", groups]");
  const int64_t groups = scales.size(1);
  if (!zeros.sizes().equals(scales.sizes()))
    fail(layer, "zeros " + shape_text(zeros.sizes()) + " must have the scales' shape " + shape_text(scales.sizes()));
  if (g_idx.dim() != 1 || g_idx.size(0) != in || g_idx.is_floating_point())
    fail(layer, "g_idx must be an integer [in] = [" + std::to_string(in) + "] tensor, got " + dtype_of(g_idx) + " " +
                    shape_text(g_idx.sizes()));
  const int64_t maxq = (int64_t{1} << bits) - 1;
  const torch::Tensor q = codes.to(torch::kLong);
  check_range(q, 0, maxq, "codes", layer);
  const torch::Tensor g = g_idx.to(torch::kLong);
  check_range(g, 0, groups - 1, "g_idx", layer);
  const torch::Tensor z = integers(zeros, "zeros", layer);
  check_range(z, 0, maxq, "zeros", layer);
  if (format == GptqCheckpointFormat::kV1 && z.min().item<int64_t>() == 0)
    fail(layer, "a zero point of 0 cannot be stored in checkpoint_format \"gptq\" (v1 stores zero - 1); "
                "write checkpoint_format \"gptq_v2\" instead");

  const torch::Tensor s16 = fp16_scales(scales, "GPTQ format, layer " + layer);

  GptqPacked packed;
  packed.qweight = pack_rows(q.t(), bits);
  packed.qzeros = pack_rows(format == GptqCheckpointFormat::kV1 ? z - 1 : z, bits).t().contiguous();
  packed.scales = s16.t().contiguous();
  packed.g_idx = g.to(torch::kInt).contiguous();
  return packed;
}

void check_gptq_packed(const GptqPacked& packed, int bits, const std::string& layer) {
  check_bits(bits, layer);
  const auto expect = [&](const torch::Tensor& t, const char* name, torch::ScalarType dtype,
                          std::vector<int64_t> shape) {
    if (!t.defined() || t.scalar_type() != dtype || !t.sizes().equals(shape))
      fail(layer, std::string(name) + " is " +
                      (t.defined() ? dtype_of(t) + " " + shape_text(t.sizes()) : std::string("missing")) +
                      ", expected " + std::string(c10::toString(dtype)) + " " + shape_text(shape));
  };
  if (!packed.g_idx.defined() || packed.g_idx.dim() != 1) fail(layer, "g_idx must be a 1-d [in] tensor");
  if (!packed.scales.defined() || packed.scales.dim() != 2) fail(layer, "scales must be a 2-d [groups, out] tensor");
  const int64_t in = packed.g_idx.size(0), groups = packed.scales.size(0), out = packed.scales.size(1);
  check_input_features(in, bits, layer);
  check_output_features(out, bits, layer);
  if (groups < 1) fail(layer, "scales " + shape_text(packed.scales.sizes()) + " hold no group");
  expect(packed.g_idx, "g_idx", torch::kInt, {in});
  expect(packed.scales, "scales", torch::kHalf, {groups, out});
  expect(packed.qweight, "qweight", torch::kInt, {in * bits / kWordBits, out});
  expect(packed.qzeros, "qzeros", torch::kInt, {groups, out * bits / kWordBits});
  check_range(packed.g_idx.to(torch::kLong), 0, groups - 1, "g_idx", layer);
}

GptqUnpacked unpack_gptq(const GptqPacked& packed, int bits, GptqCheckpointFormat format, const std::string& layer) {
  check_gptq_packed(packed, bits, layer);
  GptqUnpacked result;
  result.codes = unpack_rows(packed.qweight, bits).t().to(torch::kInt).contiguous();
  result.zeros = zeros_of(packed, bits, format, 0, packed.scales.size(1)).to(torch::kInt).contiguous();
  result.scales = packed.scales.to(torch::kFloat);
  result.g_idx = packed.g_idx.clone();
  return result;
}

torch::Tensor dequantize_gptq(const GptqPacked& packed, int bits, GptqCheckpointFormat format,
                              const std::string& layer) {
  check_gptq_packed(packed, bits, layer);
  const int64_t out = packed.scales.size(1);
  return dequantize_part(unpack_rows(packed.qweight, bits), zeros_of(packed, bits, format, 0, out), packed.scales,
                         packed.g_idx);
}

torch::Tensor dequantize_gptq_rows(const GptqPacked& packed, int bits, GptqCheckpointFormat format, int64_t row_start,
                                   int64_t rows, const std::string& layer) {
  check_gptq_packed(packed, bits, layer);
  check_slice(row_start, rows, packed.scales.size(1), "rows (output features)", layer);
  return dequantize_gptq_block(packed.qweight.narrow(1, row_start, rows), packed.qzeros,
                               packed.scales.narrow(1, row_start, rows), packed.g_idx, bits, format, row_start, 0,
                               layer);
}

torch::Tensor dequantize_gptq_columns(const GptqPacked& packed, int bits, GptqCheckpointFormat format,
                                      int64_t col_start, int64_t cols, const std::string& layer) {
  check_gptq_packed(packed, bits, layer);
  check_slice(col_start, cols, packed.g_idx.size(0), "columns (input features)", layer);
  const int64_t n = run_values(bits), w = run_words(bits);
  const int64_t first = col_start / n, last = (col_start + cols + n - 1) / n;  // covering runs of qweight rows
  return dequantize_gptq_block(packed.qweight.narrow(0, first * w, (last - first) * w), packed.qzeros, packed.scales,
                               packed.g_idx.narrow(0, col_start, cols), bits, format, 0, col_start, layer);
}

torch::Tensor natural_gptq_groups(int64_t start, int64_t count, int64_t group_size) {
  if (group_size < 0) return torch::zeros({count}, torch::kLong);
  return torch::arange(start, start + count, torch::kLong).div(group_size, "floor");
}

int64_t gptq_run_values(int bits) { return run_values(bits); }
int64_t gptq_run_words(int bits) { return run_words(bits); }

torch::Tensor dequantize_gptq_block(const torch::Tensor& qweight_runs, const torch::Tensor& qzeros,
                                    const torch::Tensor& scales, const torch::Tensor& g_idx, int bits,
                                    GptqCheckpointFormat format, int64_t out_start, int64_t in_start,
                                    const std::string& layer) {
  check_bits(bits, layer);
  const int64_t n = run_values(bits), ins = g_idx.size(0), outs = scales.size(1);
  const int64_t skip = in_start - in_start / n * n;  // inputs of the first run before in_start
  if (qweight_runs.dim() != 2 || qweight_runs.size(1) != outs || qweight_runs.size(0) % run_words(bits) != 0 ||
      qweight_runs.size(0) / run_words(bits) * n < skip + ins)
    fail(layer, "qweight part " + shape_text(qweight_runs.sizes()) + " does not cover inputs [" +
                    std::to_string(in_start) + ", " + std::to_string(in_start + ins) + ") of " + std::to_string(outs) +
                    " outputs");
  GptqPacked zeros_only;
  zeros_only.qzeros = qzeros;
  const torch::Tensor q = unpack_rows(qweight_runs, bits).narrow(0, skip, ins);
  return dequantize_part(q, zeros_of(zeros_only, bits, format, out_start, outs), scales, g_idx);
}

nlohmann::json gptq_quantization_config_json(const GptqQuantizationConfig& config) {
  return {{"quant_method", "gptq"},
          {"bits", config.bits},
          {"group_size", config.group_size},
          {"desc_act", config.desc_act},
          {"sym", config.sym},
          {"checkpoint_format", gptq_checkpoint_format_name(config.checkpoint_format)},
          {"static_groups", config.static_groups},
          {"damp_percent", config.damp_percent},
          {"true_sequential", config.true_sequential}};
}

GptqQuantizationConfig parse_gptq_quantization_config(const nlohmann::json& json, const std::string& source) {
  const auto bad = [&](const std::string& key, const std::string& what) {
    return Error("GPTQ quantization config " + source + ": key \"" + key + "\" " + what + ".");
  };
  if (!json.is_object()) throw Error("GPTQ quantization config " + source + ": expected a JSON object.");
  const auto field = [&](const std::string& key, bool required) -> const nlohmann::json* {
    const auto it = json.find(key);
    if (it == json.end()) {
      if (required) throw bad(key, "is missing");
      return nullptr;
    }
    return &*it;
  };
  const auto boolean = [&](const std::string& key, bool& value) {
    if (const auto* v = field(key, false)) {
      if (!v->is_boolean()) throw bad(key, "must be true or false, got " + v->dump());
      value = v->get<bool>();
    }
  };
  GptqQuantizationConfig config;
  const auto* method = field("quant_method", true);
  if (!method->is_string() || method->get<std::string>() != "gptq")
    throw bad("quant_method", "must be \"gptq\", got " + method->dump());
  // An integer JSON holds as unsigned above int64's range would wrap (2^64 - 1 to -1): not an integer here.
  const auto integer = [&](const std::string& key) {
    const auto* v = field(key, true);
    if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX))
      throw bad(key, "must be an integer, got " + v->dump());
    return v->get<int64_t>();
  };
  const int64_t bits = integer("bits");
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
    throw bad("bits", "must be 2, 3, 4 or 8, got " + std::to_string(bits));
  config.bits = static_cast<int>(bits);
  config.group_size = integer("group_size");
  if (config.group_size == 0 || config.group_size < -1)
    throw bad("group_size", "must be -1 (one group per row) or positive, got " + std::to_string(config.group_size));
  boolean("desc_act", config.desc_act);
  boolean("sym", config.sym);
  boolean("static_groups", config.static_groups);
  boolean("true_sequential", config.true_sequential);
  if (const auto* damp = field("damp_percent", false)) {
    if (!damp->is_number()) throw bad("damp_percent", "must be a number, got " + damp->dump());
    config.damp_percent = damp->get<double>();
    if (!(config.damp_percent >= 0 && config.damp_percent < 1))
      throw bad("damp_percent", "must be in [0, 1), got " + damp->dump());
  }
  if (const auto* format = field("checkpoint_format", false)) {
    const std::string name = format->is_string() ? format->get<std::string>() : "";
    if (name == "gptq") config.checkpoint_format = GptqCheckpointFormat::kV1;
    else if (name == "gptq_v2") config.checkpoint_format = GptqCheckpointFormat::kV2;
    else throw bad("checkpoint_format", "must be \"gptq\" or \"gptq_v2\", got " + format->dump());
  }
  return config;
}

GptqQuantizationConfig read_gptq_quantization_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("GPTQ quantization config " + path + ": cannot open the file.");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error("GPTQ quantization config " + path + ": not valid JSON (" + e.what() + ").");
  }
  if (json.is_object() && json.contains("quantization_config"))
    return parse_gptq_quantization_config(json["quantization_config"], path + " (quantization_config)");
  return parse_gptq_quantization_config(json, path);
}

}  // namespace qforge::quant
