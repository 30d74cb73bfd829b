#include "framework/train/adamw_cpu.h"

#include <ATen/Parallel.h>

#include <cmath>

namespace qforge::train::cpu {

void adamw_update(float* master, float* exp_avg, float* exp_avg_sq, const float* grad, int64_t n,
                  const AdamWScalars& s) {
  const float one_minus_beta1 = 1 - s.beta1, one_minus_beta2 = 1 - s.beta2;
  at::parallel_for(0, n, int64_t{1} << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i] * s.grad_scale;
      const float m = exp_avg[i] * s.beta1 + g * one_minus_beta1;
      const float v = exp_avg_sq[i] * s.beta2 + one_minus_beta2 * g * g;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      const float denom = std::sqrt(v) / s.sqrt_correction2 + s.eps;
      master[i] = master[i] * s.decay - s.step_size * (m / denom);
    }
  });
}

}  // namespace qforge::train::cpu
