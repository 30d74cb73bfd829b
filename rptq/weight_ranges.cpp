#include "rptq/weight_ranges.h"

#include "framework/common/error.h"
#include "rptq/act_quant.h"

#include <fmt/format.h>

#include <vector>

namespace qforge::rptq {

quant::FixedGrid cluster_weight_grid(const torch::Tensor& weight, const torch::Tensor& bounds, int bits) {
  QF_CHECK(weight.defined() && weight.dim() == 2 && weight.is_floating_point(),
           "rptq: cluster_weight_grid needs a floating weight [rows, cols]");
  QF_CHECK(bounds.defined() && bounds.dim() == 1 && bounds.size(0) >= 2 &&
               bounds[-1].item<int64_t>() == weight.size(1),
           fmt::format("rptq: weight cluster bounds must end at the {} columns", weight.size(1)));
  torch::NoGradGuard no_grad;
  const torch::Tensor W = weight.detach().to(torch::kCPU, torch::kFloat);
  const torch::Tensor b = bounds.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t clusters = b.size(0) - 1;
  std::vector<torch::Tensor> mins, maxs;
  for (int64_t c = 0; c < clusters; ++c) {
    const torch::Tensor part = W.slice(1, b[c].item<int64_t>(), b[c + 1].item<int64_t>());
    mins.push_back(std::get<0>(part.min(1)));
    maxs.push_back(std::get<0>(part.max(1)));
  }
  const StaticQuantParams p =
      params_from_ranges(torch::stack(mins, 1), torch::stack(maxs, 1), bounds, bits, ActGrid::kReference);
  const auto [qmin, qmax] = code_range(bits, ActGrid::kReference);
  quant::FixedGrid grid;
  grid.scale = p.scale;
  grid.zero = p.zero;
  grid.qmin = qmin;
  grid.qmax = qmax;
  return grid;
}

}  // namespace qforge::rptq
