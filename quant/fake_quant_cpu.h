// Fused CPU kernels behind fake_quantize() for contiguous fp32 tensors: one pass for the range statistics, one
// for quantize-and-dequantize, one for the straight-through gradient, instead of a dozen libtorch operations and
// their temporaries. They reproduce quantizer.cpp's arithmetic bit for bit (fp32 division by the scale,
// round-half-to-even, the same clamps), so either path gives the same x̂.
#pragma once

#include <torch/torch.h>

namespace qforge::quant::cpu {

// True when x can take the fused path: a CPU fp32 tensor.
bool fusable(const torch::Tensor& x);

// Per row of g [rows, n] (contiguous fp32): symmetric, [rows, 1] holding max |g|; asymmetric, [rows, 2] holding
// max(max g, 0) and max(-min g, 0).
torch::Tensor range_stats(const torch::Tensor& g, bool symmetric);

// Per row r of g [rows, n]: (clamp(round(g / scale[r]) + zero[r], lo, hi) - zero[r]) * scale[r], with zero
// undefined meaning 0; scale and zero hold `rows` fp32 values.
torch::Tensor quantize_dequantize(const torch::Tensor& g, const torch::Tensor& scale, const torch::Tensor& zero,
                                  float lo, float hi);

// |x| <= clip, as a bool tensor of x's shape (x fp32 on the CPU).
torch::Tensor within_clip(const torch::Tensor& x, float clip);

// The straight-through gradient with clipping: grad where |x| <= clip, else 0, in one pass; from x itself (for a
// parameter, which stays alive anyway) or from within_clip's mask (for an activation: a byte per value kept).
torch::Tensor clipped_straight_through(const torch::Tensor& grad, const torch::Tensor& x, float clip);
torch::Tensor masked_straight_through(const torch::Tensor& grad, const torch::Tensor& mask);

}  // namespace qforge::quant::cpu
