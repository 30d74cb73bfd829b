#include "quant/fake_quant_cpu.h"

#include "quant/fake_quant_avx2.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace qforge::quant::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task, at least

// Rows per task so that a task holds about kGrain elements.
int64_t row_grain(int64_t n) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(n, 1)); }

// Round half to even, as torch.round: for |v| <= 2^22 adding and subtracting 1.5 * 2^23 leaves the nearest integer
// (ties to even) in fp32's default rounding mode; larger values are integers already and are clamped by the caller
// first. The sign is copied back so that a value rounding to 0 keeps it (-0.3 -> -0), as nearbyint does.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return std::copysign((v + kMagic) - kMagic, v);
}

}  // namespace

bool fusable(const torch::Tensor& x) { return x.device().is_cpu() && x.scalar_type() == torch::kFloat; }

torch::Tensor range_stats(const torch::Tensor& g, bool symmetric) {
  const torch::Tensor in = g.contiguous();
  const int64_t rows = in.size(0), n = in.size(1);
  torch::Tensor out = torch::empty({rows, symmetric ? 1 : 2}, in.options());
  const float* x = in.data_ptr<float>();
  float* s = out.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    if (avx2::available()) return avx2::range_stats(x, n, begin, end, symmetric, s);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * n;
      if (symmetric) {
        float m = 0;
        for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(row[i]));
        s[r] = m;
      } else {
        float hi = 0, lo = 0;  // the range holds 0
        for (int64_t i = 0; i < n; ++i) {
          hi = std::max(hi, row[i]);
          lo = std::min(lo, row[i]);
        }
        s[2 * r] = hi > 0 ? hi : 0.0f;  // +0, never -0, when the row holds no positive value (as clamp_min(0))
        s[2 * r + 1] = lo < 0 ? -lo : 0.0f;
      }
    }
  });
  return out;
}

torch::Tensor quantize_dequantize(const torch::Tensor& g, const torch::Tensor& scale, const torch::Tensor& zero,
                                  float lo, float hi) {
  const torch::Tensor in = g.contiguous(), sc = scale.contiguous();
  const torch::Tensor zp = zero.defined() ? zero.contiguous() : torch::Tensor();
  const int64_t rows = in.size(0), n = in.size(1);
  TORCH_CHECK(sc.numel() == rows && (!zp.defined() || zp.numel() == rows), "quantize_dequantize: one scale per row");
  torch::Tensor out = torch::empty_like(in);
  const float* x = in.data_ptr<float>();
  const float* s = sc.data_ptr<float>();
  const float* z = zp.defined() ? zp.data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  constexpr float kLargest = 4194304.0f;  // 2^22: round_half_even's domain; far outside any clamp range
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    if (avx2::available()) return avx2::quantize_dequantize(x, n, begin, end, s, z, lo, hi, y);
    for (int64_t r = begin; r < end; ++r) {
      const float step = s[r];
      const float* row = x + r * n;
      float* dst = y + r * n;
      auto rounded = [&](int64_t i) { return round_half_even(std::min(std::max(row[i] / step, -kLargest), kLargest)); };
      if (!z) {  // symmetric: no zero point is added, so a -0 code stays -0 as in the libtorch path
        for (int64_t i = 0; i < n; ++i) dst[i] = std::min(std::max(rounded(i), lo), hi) * step;
        continue;
      }
      const float offset = z[r];
      for (int64_t i = 0; i < n; ++i) dst[i] = (std::min(std::max(rounded(i) + offset, lo), hi) - offset) * step;
    }
  });
  return out;
}

namespace {

// out[i] = keep(i) ? grad[i] : 0 over grad's elements, in grad's dtype (computed in fp32); `wide(g, begin, end, out)`
// does the same for a range with AVX2.
template <typename Keep, typename Wide>
torch::Tensor select_gradient(const torch::Tensor& grad, Keep keep, Wide wide) {
  const torch::Tensor g = grad.to(torch::kFloat).contiguous();
  torch::Tensor out = torch::empty_like(g);
  const float* gp = g.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const bool avx2 = avx2::available();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    if (avx2) return wide(gp, begin, end, op);
    for (int64_t i = begin; i < end; ++i) op[i] = keep(i) ? gp[i] : 0.0f;
  });
  return out.to(grad.scalar_type());
}

}  // namespace

torch::Tensor within_clip(const torch::Tensor& x, float clip) {
  const torch::Tensor in = x.contiguous();
  torch::Tensor mask = torch::empty(in.sizes(), in.options().dtype(torch::kBool));
  const float* xp = in.data_ptr<float>();
  bool* mp = mask.data_ptr<bool>();
  at::parallel_for(0, in.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) mp[i] = std::fabs(xp[i]) <= clip;
  });
  return mask;
}

torch::Tensor clipped_straight_through(const torch::Tensor& grad, const torch::Tensor& x, float clip) {
  const torch::Tensor in = x.contiguous();
  TORCH_CHECK(grad.numel() == in.numel(), "clipped_straight_through: gradient and input differ in size");
  const float* xp = in.data_ptr<float>();
  if (grad.dim() == 2 && grad.scalar_type() == torch::kFloat && !grad.is_contiguous() && grad.t().is_contiguous()) {
    // A weight's gradient arrives transposed (strides 1, rows): walk it in its own memory order, in square tiles
    // so that the reads down x's columns stay in cache, instead of copying it to x's layout first.
    constexpr int64_t kTile = 64;
    const int64_t rows = grad.size(0), cols = grad.size(1);
    torch::Tensor out = torch::empty_strided(grad.sizes(), grad.strides(), grad.options());
    const float* gp = grad.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, (cols + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c0 = begin * kTile; c0 < std::min(cols, end * kTile); c0 += kTile)
        for (int64_t r0 = 0; r0 < rows; r0 += kTile)
          for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c)
            for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r)
              op[c * rows + r] = std::fabs(xp[r * cols + c]) <= clip ? gp[c * rows + r] : 0.0f;
    });
    return out;
  }
  return select_gradient(
      grad, [xp, clip](int64_t i) { return std::fabs(xp[i]) <= clip; },
      [xp, clip](const float* g, int64_t begin, int64_t end, float* out) {
        avx2::clipped_select(g, xp, clip, begin, end, out);
      });
}

torch::Tensor masked_straight_through(const torch::Tensor& grad, const torch::Tensor& mask) {
  const torch::Tensor m = mask.contiguous();
  TORCH_CHECK(grad.numel() == m.numel(), "masked_straight_through: gradient and mask differ in size");
  const bool* mp = m.data_ptr<bool>();
  return select_gradient(
      grad, [mp](int64_t i) { return mp[i]; },
      [mp](const float* g, int64_t begin, int64_t end, float* out) { avx2::masked_select(g, mp, begin, end, out); });
}

}  // namespace qforge::quant::cpu
