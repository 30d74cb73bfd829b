#include "quant/fake_quant_avx2.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace qforge::quant::avx2 {
namespace {

inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// Largest and smallest of the 8 lanes.
inline float lane_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
inline float lane_min(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// The portable loops' std::max(a, b) = a < b ? b : a and std::min(a, b) = b < a ? b : a, lane by lane (vmaxps and
// vminps return their second operand on ties, which differs for +0 and -0).
inline __m256 max8(__m256 a, __m256 b) { return _mm256_blendv_ps(a, b, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
inline __m256 min8(__m256 a, __m256 b) { return _mm256_blendv_ps(a, b, _mm256_cmp_ps(b, a, _CMP_LT_OQ)); }

constexpr float kLargest = 4194304.0f;  // 2^22, as the portable loop

inline float round_half_even(float v) { return std::nearbyint(v); }

}  // namespace

void range_stats(const float* x, int64_t n, int64_t begin, int64_t end, bool symmetric, float* out) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * n;
    int64_t i = 0;
    if (symmetric) {
      __m256 m = _mm256_setzero_ps();
      for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(row + i)));
      float best = lane_max(m);
      for (; i < n; ++i) best = std::max(best, std::fabs(row[i]));
      out[r] = best;
      continue;
    }
    __m256 hi = _mm256_setzero_ps(), lo = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(row + i);
      hi = _mm256_max_ps(hi, v);
      lo = _mm256_min_ps(lo, v);
    }
    float top = lane_max(hi), bottom = lane_min(lo);
    for (; i < n; ++i) {
      top = std::max(top, row[i]);
      bottom = std::min(bottom, row[i]);
    }
    out[2 * r] = top > 0 ? top : 0.0f;  // +0, never -0, when the row holds no positive value
    out[2 * r + 1] = bottom < 0 ? -bottom : 0.0f;
  }
}

void quantize_dequantize(const float* x, int64_t n, int64_t begin, int64_t end, const float* scale, const float* zero,
                         float lo, float hi, float* y) {
  const __m256 largest = _mm256_set1_ps(kLargest), smallest = _mm256_set1_ps(-kLargest);
  const __m256 low = _mm256_set1_ps(lo), high = _mm256_set1_ps(hi);
  for (int64_t r = begin; r < end; ++r) {
    const float step = scale[r], offset = zero ? zero[r] : 0.0f;
    const __m256 s = _mm256_set1_ps(step), z = _mm256_set1_ps(offset);
    const float* row = x + r * n;
    float* dst = y + r * n;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256 v = min8(max8(_mm256_div_ps(_mm256_loadu_ps(row + i), s), smallest), largest);
      v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (zero) v = _mm256_add_ps(v, z);
      v = min8(max8(v, low), high);
      if (zero) v = _mm256_sub_ps(v, z);
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, s));
    }
    for (; i < n; ++i) {
      float v = round_half_even(std::min(std::max(row[i] / step, -kLargest), kLargest));
      if (zero) v += offset;
      v = std::min(std::max(v, lo), hi);
      if (zero) v -= offset;
      dst[i] = v * step;
    }
  }
}

void clipped_select(const float* grad, const float* x, float clip, int64_t begin, int64_t end, float* out) {
  const __m256 c = _mm256_set1_ps(clip);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 keep = _mm256_cmp_ps(abs8(_mm256_loadu_ps(x + i)), c, _CMP_LE_OQ);
    _mm256_storeu_ps(out + i, _mm256_and_ps(keep, _mm256_loadu_ps(grad + i)));
  }
  for (; i < end; ++i) out[i] = std::fabs(x[i]) <= clip ? grad[i] : 0.0f;
}

void masked_select(const float* grad, const bool* mask, int64_t begin, int64_t end, float* out) {
  const __m256i zero = _mm256_setzero_si256();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mask + i)));
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(bytes, zero));
    _mm256_storeu_ps(out + i, _mm256_and_ps(keep, _mm256_loadu_ps(grad + i)));
  }
  for (; i < end; ++i) out[i] = mask[i] ? grad[i] : 0.0f;
}

}  // namespace qforge::quant::avx2

#else  // not x86: no AVX2, available() is false and callers never reach the kernels

#include <cstdlib>

namespace qforge::quant::avx2 {

void range_stats(const float*, int64_t, int64_t, int64_t, bool, float*) { std::abort(); }
void quantize_dequantize(const float*, int64_t, int64_t, int64_t, const float*, const float*, float, float, float*) {
  std::abort();
}
void clipped_select(const float*, const float*, float, int64_t, int64_t, float*) { std::abort(); }
void masked_select(const float*, const bool*, int64_t, int64_t, float*) { std::abort(); }

}  // namespace qforge::quant::avx2

#endif
