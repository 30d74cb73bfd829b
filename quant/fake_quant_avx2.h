// AVX2 versions of fake_quant_cpu.cpp's loops over raw fp32 rows (this file's .cpp alone is built with -mavx2;
// callers check avx2::available() first). Same results bit for bit as the portable loops: division by the scale,
// round-half-to-even by vroundps, the same clamps in the same order.
#pragma once

#include "framework/system/cpu_features.h"

#include <cstdint>

namespace qforge::quant::avx2 {

// The CPU runs AVX2 and QFORGE_DISABLE_AVX2 is not set (sys::avx2_kernels()).
inline bool available() { return sys::avx2_kernels(); }

// Rows [begin, end) of x [rows, n]: out[r] = max |x[r, :]| (symmetric), or out[2r] = max(max x[r, :], 0) and
// out[2r + 1] = -min(min x[r, :], 0).
void range_stats(const float* x, int64_t n, int64_t begin, int64_t end, bool symmetric, float* out);

// Rows [begin, end): y = (clamp(round(x / scale[r]) (+ zero[r]), lo, hi) (- zero[r])) * scale[r]; zero may be null.
void quantize_dequantize(const float* x, int64_t n, int64_t begin, int64_t end, const float* scale, const float* zero,
                         float lo, float hi, float* y);

// Elements [begin, end): out = |x| <= clip ? grad : 0.
void clipped_select(const float* grad, const float* x, float clip, int64_t begin, int64_t end, float* out);

// Elements [begin, end): out = mask ? grad : 0 (mask one byte per element, 0 or 1).
void masked_select(const float* grad, const bool* mask, int64_t begin, int64_t end, float* out);

}  // namespace qforge::quant::avx2
