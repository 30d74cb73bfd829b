// Integer weights for deployment: the codes of quantize(), bit-packed, with fp16 scales, written as a Hugging Face
// style checkpoint that does not depend on the TP size it was exported from.
//
// A packed weight [out, in] at b bits:
//   codes  uint8 [out, ceil(in * b / 8)]: each row's codes as one bit stream, code j in bits [j*b, (j+1)*b),
//          least significant bit first; symmetric codes q in [-qmax, qmax] are stored as q + 2^(b-1);
//   scales float16 [out, groups]: [1, 1] per-tensor, [out, 1] per-channel, [out, in / group_size] per-group;
//   zeros  uint8, the scales' shape: the integer zero points (asymmetric only).
// Because scales are stored as fp16, unpack(pack(w)) equals dequantize() of quantize(w)'s codes with the scales
// rounded to fp16 — not fake_quantize(w) exactly, which keeps fp32 scales; the two differ by at most
// |q - z| * |scale - fp16(scale)| <= (2^b - 1) * max(scale * 2^-11, 2^-25) per element (2^-25: half the spacing
// of fp16's subnormals, below 6.1e-5).
#pragma once

#include "framework/model/transformer.h"
#include "quant/qat.h"
#include "quant/quantizer.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qforge::quant {

struct PackedTensor {
  torch::Tensor codes;   // uint8 [out, ceil(in * bits / 8)]
  torch::Tensor scales;  // float16 [out, groups]
  torch::Tensor zeros;   // uint8 [out, groups]; asymmetric only
  int bits = 16;
  bool symmetric = true;
  Granularity granularity = Granularity::kChannel;
  int64_t group_size = 0;
  std::vector<int64_t> shape;  // the weight's [out, in]
  QuantSpec spec() const { return {bits, symmetric, granularity, group_size, 0.0}; }
};

// LSB-first bit streams, shared by this layout and the GPTQ checkpoint format (gptq_format.h): each row of
// `codes` (uint8 [rows, n], values < 2^bits) becomes one stream, value j in bits [j*bits, (j+1)*bits), bit 0 of
// byte 0 first: uint8 [rows, ceil(n * bits / 8)]. Rows go in blocks (temporaries of about 16 MiB).
torch::Tensor pack_bit_rows(const torch::Tensor& codes, int bits);
// The inverse: the first `columns` values of each row, uint8 [rows, columns].
torch::Tensor unpack_bit_rows(const torch::Tensor& bytes, int bits, int64_t columns);

// `scales` rounded to fp16, for storage. Throws Error "`where`: ..." when one is not finite, overflows fp16, or is
// nonzero and underflows to 0.
torch::Tensor fp16_scales(const torch::Tensor& scales, const std::string& where);

// Packs a weight [out, in] (spec: tensor, channel or group granularity, 2..8 bits). Throws Error when a scale
// leaves fp16's range (overflows, or underflows to 0).
PackedTensor pack(const torch::Tensor& weight, const QuantSpec& spec);

// The fp32 weight [out, in] that `packed` stores (see above). Throws Error when the tensors' shapes disagree
// with `shape` and `bits`.
torch::Tensor unpack(const PackedTensor& packed);

// Beside the safetensors: the weight format, the quantized modules and the QAT settings.
inline constexpr const char* kQuantizationFileName = "quantization.json";

// Collective over the model's TP group, like model::save_pretrained: every tensor is gathered whole, and when
// `write` (true on one TP group only, e.g. DP rank 0) TP rank 0 writes `dir`/config.json, quantization.json and
// the safetensors (sharded above max_shard_bytes when > 0), atomically. The weight of every decoder linear that
// settings.weight_spec() quantizes and settings.exclude does not name is stored as <linear>.qweight,
// <linear>.scales and (asymmetric) <linear>.qzeros; every other tensor as save_pretrained stores it. Returns the
// bytes written (the sum of the files' sizes) on every rank of a writing TP group, 0 elsewhere.
int64_t export_packed(model::CausalLM& model, const QuantSettings& settings, const std::string& dir, bool write,
                      int64_t max_shard_bytes = 0);

// A model from export_packed's `dir`, sharded over `tp`, with every packed weight dequantized (fp32). Each rank
// reads and unpacks a packed weight whole before taking its shard.
std::shared_ptr<model::CausalLM> load_packed(const std::string& dir, dist::Communicator& tp);

}  // namespace qforge::quant
