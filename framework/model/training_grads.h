// The decoder's RMSNorm, SwiGLU and RoPE, with fused backward passes when training in fp32 on the CPU
// (training_grads_cpu.h). Their values are always libtorch's operations' (RoPE's fused forward rounds as they
// do), the same as without gradients.
#pragma once

#include <torch/torch.h>

namespace qforge::model {

// While a TrainingKernels guard lives on the thread (the trainer's steps: student and teacher forward passes, the
// backward pass and the blocks it recomputes), RMSNorm's forward is one fused pass whose mean of squares rounds a
// few ulps away from libtorch's reduction, SwiGLU's is one AVX2 pass with an exponential of its own (a few ulps
// from libtorch's silu; swiglu_avx2.h), and attention takes smaller blocks of queries (transformer.cpp).
// Evaluation, calibration and PTQ never set it: what they compute is unchanged.
class TrainingKernels {
 public:
  TrainingKernels();
  ~TrainingKernels();
  TrainingKernels(const TrainingKernels&) = delete;
  TrainingKernels& operator=(const TrainingKernels&) = delete;
  static bool active();
};

// weight * (x * rsqrt(mean(x^2, -1) + eps)) for fp32 x and weight of x's last dimension.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// silu(gate) * up.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// (-x[..., h:], x[..., :h]) for h half of x's last dimension.
torch::Tensor rotate_half(const torch::Tensor& x);

// x [B, H, T, d] as [B, H / group, T group, d] (a copy unless group is 1): the `group` query heads that share a
// key/value head (GQA) interleaved by position, so that one matrix product per key/value head scores them all.
torch::Tensor group_heads(const torch::Tensor& x, int64_t group);

// group_heads((x * cos + rotate_half(x) * sin) * scale, group) for x [B, H, T, d] and tables [B or 1, 1, T, d]: one
// pass each way for fp32 CPU tensors (equal to the operations bit for bit), those operations otherwise. The result
// is contiguous.
torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, double scale = 1.0,
                     int64_t group = 1);

}  // namespace qforge::model
