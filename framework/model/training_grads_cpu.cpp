// Built with -fno-trapping-math -fno-math-errno so that the loops vectorize (the results are the same).
#include "framework/model/training_grads_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace qforge::model::cpu {

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

}  // namespace qforge::model::cpu
