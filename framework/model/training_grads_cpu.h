// Fused backward passes of the decoder's RMSNorm and SwiGLU for fp32 CPU training: one or two passes over memory
// where autograd's chain of operations makes about ten. Their forward passes stay libtorch's own operations, so
// what a model computes (evaluation, calibration, PTQ) does not change; only gradients are fused. RoPE is fused
// both ways, rounded exactly as libtorch's operations round it.
#pragma once

#include <cstdint>

namespace qforge::model::cpu {

// Training's RMSNorm forward (training_grads.h, TrainingKernels): per row of x [rows, n], r = 1 / sqrt(mean(x^2) +
// eps) with the mean summed in vector lanes, and y = w * (x * r); writes y [rows, n] and r [rows]. It rounds the
// mean differently from libtorch's reduction (a few ulps).
void rms_norm_forward(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y, float* r);

// y = w * (x * r) with r = rsqrt(mean(x^2) + eps) per row of x [rows, n]: given dy, writes
// dx = r (dy w) - r^3 x <dy w, x> / n and adds sum over rows of dy x r into dw [n].
void rms_norm_backward(const float* dy, const float* x, const float* r, const float* w, int64_t rows, int64_t n,
                       float* dx, float* dw);

// h = s u with s = silu(g): given dh, writes dg = dh u s'(g) and du = dh s over `count` values, where
// s'(g) = sigma (1 + g (1 - sigma)) and sigma = s / g (1/2 at g = 0), so that no exponential is recomputed.
void swiglu_backward(const float* dh, const float* g, const float* u, const float* s, int64_t count, float* dg,
                     float* du);

// Rotate-half RoPE over rows of d values (d even, h = d / 2): y = (x c + rotate_half(x) s) scale, where
// rotate_half(x) is (-x[h:], x[:h]), with every product rounded and then added, as libtorch's operations round
// them (this file is built with -ffp-contract=off): the result equals theirs bit for bit. Head k = j G + g of
// position t in batch b (b < B, j < H / G key/value heads, g < G = group, t < T) reads x at b x_b + k x_h + t x_t
// and c, s at b c_b + t c_t (the tables broadcast over heads), and is row ((b H / G + j) T + t) G + g of `y`:
// y is contiguous [B, H / G, T G, d], the G query heads that share a key/value head interleaved by position
// (group 1: [B, H, T, d]).
struct RotaryShape {
  int64_t batch, heads, length, dim;
  int64_t x_b, x_h, x_t;  // element strides of x (its last stride is 1)
  int64_t c_b, c_t;       // element strides of c and s (their last stride is 1)
  float scale;            // 1: none (the product is skipped, as it is exact)
  int64_t group = 1;      // query heads per key/value head (divides heads)
};
void rotary_forward(const float* x, const float* c, const float* s, const RotaryShape& shape, float* y);

// The gradient of rotary_forward for contiguous dy laid out as its y: with g = dy scale, dx = g c +
// rotate_half^T(g s), where rotate_half^T(z) = (z[h:], -z[:h]); dx is contiguous [B, H, T, d] and equals
// autograd's bit for bit.
void rotary_backward(const float* dy, const float* c, const float* s, const RotaryShape& shape, float* dx);

}  // namespace qforge::model::cpu
