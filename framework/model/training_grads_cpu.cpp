// Built with -fno-trapping-math -fno-math-errno so that the loops vectorize (the results are the same), and with
// -ffp-contract=off: a product and a sum stay two roundings, as in libtorch's separate operations.
#include "framework/model/training_grads_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace qforge::model::cpu {

void rms_norm_forward(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* y, float* r) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 14) / n), [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const float* xr = x + row * n;
      float* yr = y + row * n;
      float squares = 0;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < n; ++i) squares += xr[i] * xr[i];
      const float rr = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
      r[row] = rr;
      for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * rr);
    }
  });
}

void rms_norm_backward(const float* dy, const float* x, const float* r, const float* w, int64_t rows, int64_t n,
                       float* dx, float* dw) {
  // Each task sums its rows' share of dw apart; the shares are added in task order, so the result does not depend
  // on which thread ran which task.
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<float> partial(static_cast<size_t>(tasks * n), 0.0f);
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      float* share = partial.data() + t * n;
      for (int64_t row = rows * t / tasks; row < rows * (t + 1) / tasks; ++row) {
        const float* dyr = dy + row * n;
        const float* xr = x + row * n;
        float* dxr = dx + row * n;
        const float rr = r[row];
        float dot = 0;
        for (int64_t i = 0; i < n; ++i) dot += dyr[i] * w[i] * xr[i];
        const float coefficient = rr * rr * rr * dot / static_cast<float>(n);
        for (int64_t i = 0; i < n; ++i) {
          dxr[i] = rr * (dyr[i] * w[i]) - coefficient * xr[i];
          share[i] += dyr[i] * xr[i] * rr;
        }
      }
    }
  });
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t i = 0; i < n; ++i) dw[i] += partial[static_cast<size_t>(t * n + i)];
}

void swiglu_backward(const float* dh, const float* g, const float* u, const float* s, int64_t count, float* dg,
                     float* du) {
  at::parallel_for(0, count, int64_t{1} << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float sigma = g[i] != 0.0f ? s[i] / g[i] : 0.5f;
      const float slope = sigma * (1.0f + g[i] * (1.0f - sigma));
      dg[i] = dh[i] * u[i] * slope;
      du[i] = dh[i] * s[i];
    }
  });
}

namespace {

// Where row `row` of rotary_forward's y lies: batch b, head k, position t.
struct RotaryRow {
  int64_t b, k, t;
};
RotaryRow rotary_row(const RotaryShape& shape, int64_t row) {
  const int64_t g = row % shape.group, t = row / shape.group % shape.length, rest = row / shape.group / shape.length;
  const int64_t kv_heads = shape.heads / shape.group;
  return {rest / kv_heads, rest % kv_heads * shape.group + g, t};
}

}  // namespace

void rotary_forward(const float* x, const float* c, const float* s, const RotaryShape& shape, float* y) {
  const int64_t d = shape.dim, h = d / 2, rows = shape.batch * shape.heads * shape.length;
  const float scale = shape.scale;
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 14) / d), [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const RotaryRow at = rotary_row(shape, row);
      const float* xr = x + at.b * shape.x_b + at.k * shape.x_h + at.t * shape.x_t;
      const float* cr = c + at.b * shape.c_b + at.t * shape.c_t;
      const float* sr = s + at.b * shape.c_b + at.t * shape.c_t;
      float* yr = y + row * d;
      for (int64_t i = 0; i < h; ++i) yr[i] = xr[i] * cr[i] + -xr[i + h] * sr[i];
      for (int64_t i = h; i < d; ++i) yr[i] = xr[i] * cr[i] + xr[i - h] * sr[i];
      if (scale != 1.0f)
        for (int64_t i = 0; i < d; ++i) yr[i] *= scale;
    }
  });
}

void rotary_backward(const float* dy, const float* c, const float* s, const RotaryShape& shape, float* dx) {
  const int64_t d = shape.dim, h = d / 2, rows = shape.batch * shape.heads * shape.length;
  const float scale = shape.scale;
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 14) / d), [&](int64_t first, int64_t last) {
    std::vector<float> scaled(scale != 1.0f ? static_cast<size_t>(d) : 0);
    for (int64_t row = first; row < last; ++row) {
      const RotaryRow at = rotary_row(shape, row);
      const float* g = dy + row * d;
      if (scale != 1.0f) {
        for (int64_t i = 0; i < d; ++i) scaled[static_cast<size_t>(i)] = g[i] * scale;
        g = scaled.data();
      }
      const float* cr = c + at.b * shape.c_b + at.t * shape.c_t;
      const float* sr = s + at.b * shape.c_b + at.t * shape.c_t;
      float* dxr = dx + ((at.b * shape.heads + at.k) * shape.length + at.t) * d;
      for (int64_t i = 0; i < h; ++i) dxr[i] = g[i] * cr[i] + g[i + h] * sr[i + h];
      for (int64_t i = h; i < d; ++i) dxr[i] = g[i] * cr[i] + -(g[i - h] * sr[i - h]);
    }
  });
}

}  // namespace qforge::model::cpu
