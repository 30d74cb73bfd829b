#include "framework/model/swiglu_avx2.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cmath>

namespace qforge::model::avx2 {
namespace {

// exp(x) for 8 lanes, Cephes' expf: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact), a
// degree-6 polynomial for exp(r), and 2^n put into the exponent. x is clamped to [-87.3, 88.7]: below, the result
// stays exp(-87.3) (silu's quotient is then g itself either way); at the top, n = 128 makes 2^n infinite, so exp
// overflows to inf as the exact one does (silu of a gate below -88.7 is -0, as libtorch's).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

}  // namespace

void swiglu_forward(const float* g, const float* u, int64_t begin, int64_t end, float* s, float* h) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 sv = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign))));
    if (s) _mm256_storeu_ps(s + i, sv);
    _mm256_storeu_ps(h + i, _mm256_mul_ps(sv, _mm256_loadu_ps(u + i)));
  }
  for (; i < end; ++i) {
    const float si = g[i] / (1.0f + std::exp(-g[i]));
    if (s) s[i] = si;
    h[i] = si * u[i];
  }
}

}  // namespace qforge::model::avx2

#else  // not x86: sys::avx2_kernels() is false and callers never reach the kernel

#include <cstdlib>

namespace qforge::model::avx2 {
void swiglu_forward(const float*, const float*, int64_t, int64_t, float*, float*) { std::abort(); }
}  // namespace qforge::model::avx2

#endif
