#include "framework/train/adamw_cpu.h"

#include <ATen/Parallel.h>

#include <cmath>

namespace qforge::train::cpu {

namespace {

// Every buffer is its own memory (__restrict__): the loop vectorizes without run-time overlap checks.
template <bool kParam, bool kZero>
void update(float* __restrict__ master, float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
            float* __restrict__ grad, int64_t begin, int64_t end, const AdamWScalars& s, float* __restrict__ param) {
  const float one_minus_beta1 = 1 - s.beta1, one_minus_beta2 = 1 - s.beta2;
  for (int64_t i = begin; i < end; ++i) {
    const float g = grad[i] * s.grad_scale;
    if constexpr (kZero) grad[i] = 0;
    const float m = exp_avg[i] * s.beta1 + g * one_minus_beta1;
    const float v = exp_avg_sq[i] * s.beta2 + one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const float denom = std::sqrt(v) / s.sqrt_correction2 + s.eps;
    const float updated = master[i] * s.decay - s.step_size * (m / denom);
    master[i] = updated;
    if constexpr (kParam) param[i] = updated;
  }
}

}  // namespace

void adamw_update(float* master, float* exp_avg, float* exp_avg_sq, float* grad, int64_t n, const AdamWScalars& s,
                  float* param, bool zero_grad) {
  at::parallel_for(0, n, int64_t{1} << 15, [&](int64_t begin, int64_t end) {
    if (param && zero_grad)
      update<true, true>(master, exp_avg, exp_avg_sq, grad, begin, end, s, param);
    else if (param)
      update<true, false>(master, exp_avg, exp_avg_sq, grad, begin, end, s, param);
    else if (zero_grad)
      update<false, true>(master, exp_avg, exp_avg_sq, grad, begin, end, s, param);
    else
      update<false, false>(master, exp_avg, exp_avg_sq, grad, begin, end, s, param);
  });
}

double square_sum(const float* x, int64_t n) {
  return at::parallel_reduce(
      0, n, int64_t{1} << 16, 0.0,
      [&](int64_t begin, int64_t end, double total) {
#pragma omp simd reduction(+ : total)
        for (int64_t i = begin; i < end; ++i) total += static_cast<double>(x[i]) * static_cast<double>(x[i]);
        return total;
      },
      [](double a, double b) { return a + b; });
}

}  // namespace qforge::train::cpu
