// AdamW's update in one pass over fp32 CPU buffers, instead of the eight libtorch operations (and eight passes
// over memory) of optimizer.cpp's device path. The same arithmetic in the same order as torch.optim.AdamW's
// single-tensor update: decoupled decay, moments, bias corrections applied as torch applies them.
#pragma once

#include <cstdint>

namespace qforge::train::cpu {

struct AdamWScalars {
  float grad_scale;  // clipping's factor (1: none)
  float beta1, beta2;
  float decay;             // 1 - lr * weight_decay
  float sqrt_correction2;  // sqrt(1 - beta2^t)
  float step_size;         // lr / (1 - beta1^t)
  float eps;
};

// For i < n: g = grad[i] * grad_scale; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
// master = master * decay - step_size * m / (sqrt(v) / sqrt_correction2 + eps). In the same pass, when given:
// the new value is also written to `param` (the parameter's own storage, instead of a copy from the masters
// afterwards), and grad[i] is set to zero once read (zero_grad's work, instead of a pass of its own).
void adamw_update(float* master, float* exp_avg, float* exp_avg_sq, float* grad, int64_t n, const AdamWScalars& s,
                  float* param, bool zero_grad);

// The sum of x[i]^2 in fp64, read once (no fp64 copy).
double square_sum(const float* x, int64_t n);

}  // namespace qforge::train::cpu
