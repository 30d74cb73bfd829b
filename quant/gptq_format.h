// The GPTQ checkpoint format, as AutoGPTQ writes it and transformers, vLLM, AutoGPTQ and GPTQModel load it.
//
// Per quantized linear <m> with `in` input and `out` output features, b bits and `groups` groups:
//   <m>.qweight int32 [in * b / 32, out]   the codes q[i, o], packed along the input
//   <m>.qzeros  int32 [groups, out * b / 32] the zero points, packed along the output
//   <m>.scales  fp16  [groups, out]
//   <m>.g_idx   int32 [in]                the group of each input feature
// Packing: along the packed dimension every run of 32 values is one LSB-first bit stream of b * 32 bits stored in
// b consecutive words (value j of the run at bits [j * b, j * b + b) of the stream; word k holds stream bits
// [32k, 32k + 32), its bit 0 the lowest). At 2, 4, 8 bits a word holds 32 / b whole values; at 3 bits values 10
// and 21 of a run straddle two words. The dequantized weight is
//   W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]).
// checkpoint_format "gptq" (v1, AutoGPTQ's default) stores zero - 1 in qzeros, so a zero of 0 cannot be stored;
// "gptq_v2" (GPTQModel) stores the zero as is.
//
// Shapes the format holds: bits 2, 3, 4 or 8; `in` a multiple of 32 (AutoGPTQ's packer needs whole runs of 32
// along the input at every width); `out` a multiple of 32 / gcd(32, b) (3 bits: 32; 2: 16; 4: 8; 8: 4) so that
// qzeros holds whole words. Anything else is refused with a qforge::Error naming the layer and the shape.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace qforge::quant {

enum class GptqCheckpointFormat { kV1, kV2 };  // "gptq" (zero - 1 stored), "gptq_v2" (zero stored)

// The tensors of one linear as the checkpoint stores them: int32, int32, fp16, int32 (shapes above).
struct GptqPacked {
  torch::Tensor qweight, qzeros, scales, g_idx;
};

// From GptqResult-style integers: codes int32 [out, in] in [0, 2^bits - 1], scales fp32 [out, groups], zeros
// [out, groups] (any dtype; integer-valued, in [0, 2^bits - 1]), g_idx int32/int64 [in] in [0, groups). Scales
// are rounded to fp16. Throws qforge::Error naming `layer` for what the format cannot hold: bits not in
// {2, 3, 4, 8}; in not a multiple of 32 or out not a multiple of 32 / gcd(32, bits); a zero of 0 in v1; codes,
// zeros or g_idx out of range; a scale that is not finite or leaves fp16's range (overflows, or a nonzero scale
// that rounds to 0); shapes that disagree.
GptqPacked pack_gptq(const torch::Tensor& codes, const torch::Tensor& scales, const torch::Tensor& zeros,
                     const torch::Tensor& g_idx, int bits, GptqCheckpointFormat format, const std::string& layer);

// The integers a packed linear holds, in the file's orientation except for the codes.
struct GptqUnpacked {
  torch::Tensor codes;   // int32 [out, in] in [0, 2^bits - 1]
  torch::Tensor zeros;   // int32 [groups, out]: the zero points themselves (v1: stored + 1, in [1, 2^bits])
  torch::Tensor scales;  // fp32 [groups, out] (the fp16 values, exactly)
  torch::Tensor g_idx;   // int32 [in]
};

// Checks every tensor's dtype and shape against the others (in from g_idx, out and groups from scales) and g_idx's
// range; throws qforge::Error naming `layer`, the tensor and the expected shape.
void check_gptq_packed(const GptqPacked& packed, int bits, const std::string& layer);

GptqUnpacked unpack_gptq(const GptqPacked& packed, int bits, GptqCheckpointFormat format, const std::string& layer);

// The fp32 weight [out, in]: scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o]), one fp32 product per element.
torch::Tensor dequantize_gptq(const GptqPacked& packed, int bits, GptqCheckpointFormat format,
                              const std::string& layer);

// What one tensor-parallel rank needs, without unpacking the rest: rows [row_start, row_start + rows) of the
// dequantized weight (output features: a column-parallel shard), or its columns [col_start, col_start + cols)
// (input features: a row-parallel shard). Any non-empty range inside the weight is allowed; only the runs of
// packed words that cover it are unpacked (qweight's columns, or 32-input runs of its rows; qzeros' words of the
// covering outputs). Equal, bitwise, to the same slice of dequantize_gptq. Throws qforge::Error naming `layer`
// for a range outside the weight.
torch::Tensor dequantize_gptq_rows(const GptqPacked& packed, int bits, GptqCheckpointFormat format, int64_t row_start,
                                   int64_t rows, const std::string& layer);
torch::Tensor dequantize_gptq_columns(const GptqPacked& packed, int bits, GptqCheckpointFormat format,
                                      int64_t col_start, int64_t cols, const std::string& layer);

// The groups GPTQ's loaders assume without act-order for inputs [start, start + count): i / group_size, or 0 for
// group_size -1 (one group per row); int64.
torch::Tensor natural_gptq_groups(int64_t start, int64_t count, int64_t group_size);

// Packed runs along a packed dimension: gptq_run_values(bits) values fill gptq_run_words(bits) whole words
// (3 bits: 32 values in 3 words; 4 bits: 8 in 1).
int64_t gptq_run_values(int bits);
int64_t gptq_run_words(int bits);

// A block of the dequantized weight from the parts of a checkpoint that cover it, for a loader that reads only
// what one tensor-parallel rank needs: rows (outputs) [out_start, out_start + outs), columns (inputs)
// [in_start, in_start + ins). `qweight_runs` int32 holds qweight's rows of the input runs covering the columns
// (starting at run in_start / gptq_run_values(bits)) and its columns [out_start, out_start + outs); `qzeros` is
// whole [groups, out * bits / 32]; `scales` fp16 [groups, outs] the covered outputs' columns; `g_idx` [ins] the
// covered inputs' groups. Returns fp32 [outs, ins], bitwise the same block of dequantize_gptq.
torch::Tensor dequantize_gptq_block(const torch::Tensor& qweight_runs, const torch::Tensor& qzeros,
                                    const torch::Tensor& scales, const torch::Tensor& g_idx, int bits,
                                    GptqCheckpointFormat format, int64_t out_start, int64_t in_start,
                                    const std::string& layer);

// The `quantization_config` of config.json (also the whole of AutoGPTQ's quantize_config.json).
struct GptqQuantizationConfig {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per output row
  bool desc_act = false;     // act-order
  bool sym = true;
  GptqCheckpointFormat checkpoint_format = GptqCheckpointFormat::kV1;
  bool static_groups = false;
  double damp_percent = 0.01;
  bool true_sequential = true;
};

// {"quant_method": "gptq", "bits", "group_size", "desc_act", "sym", "checkpoint_format": "gptq" | "gptq_v2",
// "static_groups", "damp_percent", "true_sequential"}.
nlohmann::json gptq_quantization_config_json(const GptqQuantizationConfig& config);

// Parses such an object (`source` names the file in errors). quant_method ("gptq"), bits and group_size are
// required; the other keys take AutoGPTQ's defaults (above; checkpoint_format absent: v1); keys qforge does not
// use (lm_head, model_name_or_path, ...) are ignored. Throws qforge::Error naming `source` and the key for a
// missing required key, a wrong JSON type, bits not in {2, 3, 4, 8}, group_size 0 or < -1, damp_percent outside
// [0, 1), or a quant_method or checkpoint_format other than those above.
GptqQuantizationConfig parse_gptq_quantization_config(const nlohmann::json& json, const std::string& source);

// Reads `path`: a config.json with a "quantization_config" object, or a quantize_config.json (the object itself).
// Throws qforge::Error naming the file when it cannot be read or is not valid JSON, and as the parser does.
GptqQuantizationConfig read_gptq_quantization_config(const std::string& path);

// "gptq" / "gptq_v2".
std::string gptq_checkpoint_format_name(GptqCheckpointFormat format);

}  // namespace qforge::quant
