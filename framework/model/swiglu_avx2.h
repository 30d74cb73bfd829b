// SwiGLU's forward pass in one AVX2 pass, for training's steps (training_grads.h, TrainingKernels): libtorch's
// silu and product make two passes, and silu's exponential (Sleef's, to 1 ulp) is most of a step's elementwise
// time. This file's .cpp alone is built with -mavx2 -mfma; callers check sys::avx2_kernels() first.
#pragma once

#include <cstdint>

namespace qforge::model::avx2 {

// Elements [begin, end): s = g / (1 + exp(-g)) and h = s u, with exp as a degree-6 polynomial on the reduced
// argument (Cephes' expf; silu(g) u within 1.2 ulp of the exact value, as libtorch's). `s` may be null
// (nothing to keep for a backward pass).
void swiglu_forward(const float* g, const float* u, int64_t begin, int64_t end, float* s, float* h);

}  // namespace qforge::model::avx2
