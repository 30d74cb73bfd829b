// MinMax fake quantization as in LLM-QAT: the range of each group of values is recomputed on every call (no
// learned or clipped range), values are rounded to the integer grid and scaled back, and gradients pass straight
// through (optionally zeroed where the input lies outside [-ste_clip, ste_clip]). No gradient reaches the scale.
//
// Symmetric:  qmax = 2^(b-1) - 1, scale = absmax / qmax, q = clamp(round(x / scale), -qmax, qmax).
// Asymmetric: the range [min, max] is widened to contain 0, scale = (max - min) / (2^b - 1),
//             z = round(-min / scale) (an integer in [0, 2^b - 1]), q = clamp(round(x / scale) + z, 0, 2^b - 1).
// x̂ = (q - z) * scale (z = 0 when symmetric). A range of 0 (all values 0) takes scale 1.
// Ranges are computed in fp32; round() is round-half-to-even.
#pragma once

#include "framework/dist/communicator.h"

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace qforge::quant {

// Which values share one range, by tensor layout:
//   weights [out, in]:       kTensor one range; kChannel one per row (output channel); kGroup one per row per
//                            group_size consecutive input columns;
//   activations [..., F]:    kToken one per row over the last dim; kTensor one over everything;
//   KV tensors [B, H, T, d]: kToken one per (b, t) over all heads and d; kHead one per (b, h, t) over d.
// A 4-dimensional tensor is taken to be a KV tensor; kGroup needs a 2-dimensional one.
enum class Granularity { kTensor, kChannel, kGroup, kToken, kHead };

const char* to_string(Granularity granularity);  // "tensor", "channel", ...

struct QuantSpec {
  int bits = 16;  // 2..8, or 16: off
  bool symmetric = true;
  Granularity granularity = Granularity::kChannel;
  int64_t group_size = 128;  // kGroup only
  double ste_clip = 2.0;     // the gradient is zeroed where |x| > ste_clip; 0: plain straight-through
  bool enabled() const { return bits < 16; }
};

// Throws UsageError when bits is not in 2..8 or 16, or group_size < 1 for kGroup.
void check_spec(const QuantSpec& spec);

// "int4 sym per-channel", "int8 asym per-token", "int4 sym per-group(128)", "full precision".
std::string describe(const QuantSpec& spec);

// x̂ in x's dtype, differentiable with the straight-through estimator. When `tp_reduce` is given (a collective
// over it: every rank must call), the range statistics are max-reduced over that group before the scale is
// computed: for ranges spanning a dimension that tensor parallelism splits, so that x̂ does not depend on the
// TP size. Identity when !spec.enabled().
torch::Tensor fake_quantize(const torch::Tensor& x, const QuantSpec& spec, dist::Communicator* tp_reduce = nullptr);

// The integers behind fake_quantize, from the same code: x̂ == dequantize(quantize(x, spec), spec) exactly.
struct QuantizedTensor {
  torch::Tensor codes;   // int32, x's shape: in [-qmax, qmax] (symmetric) or [0, 2^b - 1] (asymmetric)
  torch::Tensor scales;  // fp32 [ranges, groups]: weights [1, 1] (tensor), [out, 1] (channel), [out, in/group]
                         // (group); activations [tokens, 1] or [1, 1]; KV [B*T, 1] (token), [B*H*T, 1] (head)
  torch::Tensor zeros;   // int32, the scales' shape; asymmetric only (undefined when symmetric)
};
QuantizedTensor quantize(const torch::Tensor& x, const QuantSpec& spec, dist::Communicator* tp_reduce = nullptr);

// fp32 (codes - zeros) * scales in the codes' shape; `q.scales` may hold other values than quantize() gave
// (e.g. rounded to fp16 for storage).
torch::Tensor dequantize(const QuantizedTensor& q, const QuantSpec& spec);

}  // namespace qforge::quant
