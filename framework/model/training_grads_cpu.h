// Fused backward passes of the decoder's RMSNorm and SwiGLU for fp32 CPU training: one or two passes over memory
// where autograd's chain of operations makes about ten. The forward passes stay libtorch's own operations, so what
// a model computes (evaluation, calibration, PTQ) does not change; only gradients are fused.
#pragma once

#include <cstdint>

namespace qforge::model::cpu {

// y = w * (x * r) with r = rsqrt(mean(x^2) + eps) per row of x [rows, n]: given dy, writes
// dx = r (dy w) - r^3 x <dy w, x> / n and adds sum over rows of dy x r into dw [n].
void rms_norm_backward(const float* dy, const float* x, const float* r, const float* w, int64_t rows, int64_t n,
                       float* dx, float* dw);

// h = s u with s = silu(g): given dh, writes dg = dh u s'(g) and du = dh s over `count` values, where
// s'(g) = sigma (1 + g (1 - sigma)) and sigma = s / g (1/2 at g = 0), so that no exponential is recomputed.
void swiglu_backward(const float* dh, const float* g, const float* u, const float* s, int64_t count, float* dg,
                     float* du);

}  // namespace qforge::model::cpu
