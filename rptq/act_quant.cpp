#include "rptq/act_quant.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

namespace qforge::rptq {
namespace {

void check_bits(int bits) {
  if (bits < 2 || bits > 8) throw UsageError(fmt::format("rptq: activation/weight bits must be 2..8, got {}", bits));
}

// bounds as a checked vector: [0, ..., channels], strictly increasing (no empty cluster).
std::vector<int64_t> checked_bounds(const torch::Tensor& bounds, int64_t channels) {
  QF_CHECK(bounds.defined() && bounds.dim() == 1 && bounds.size(0) >= 2,
           "rptq: cluster bounds must be int64 [clusters + 1]");
  const torch::Tensor b = bounds.to(torch::kCPU, torch::kInt64).contiguous();
  std::vector<int64_t> result(b.data_ptr<int64_t>(), b.data_ptr<int64_t>() + b.numel());
  bool increasing = true;
  for (size_t c = 1; c < result.size(); ++c) increasing = increasing && result[c] > result[c - 1];
  QF_CHECK(result.front() == 0 && result.back() == channels && increasing,
           fmt::format("rptq: cluster bounds must rise strictly from 0 to the {} channels, got [{}]", channels,
                       fmt::join(result, ", ")));
  return result;
}

// The grid's scale and rounded zero from ranges (fp32, any shape), in the reference's order of operations.
std::pair<torch::Tensor, torch::Tensor> grid_of(const torch::Tensor& min, const torch::Tensor& max, int bits,
                                                ActGrid grid) {
  if (grid == ActGrid::kReference) {
    // scale = (xmax - xmin) * (2**-n_bits), clamped; zero_point = (xmax + xmin) * (-0.5 / scale), where
    // -0.5 / scale is torch's __rtruediv__: scale.reciprocal() * -0.5.
    const torch::Tensor scale = ((max - min) * std::ldexp(1.0, -bits)).clamp(1e-4, 1e4);
    const torch::Tensor zero = ((max + min) * (scale.reciprocal() * -0.5)).clamp(-1e4, 1e4).round();
    return {scale, zero};
  }
  const torch::Tensor range = max - min;
  const torch::Tensor scale = torch::where(range == 0, torch::ones_like(range), range / ((1 << bits) - 1));
  return {scale, torch::round(-min / scale)};
}

}  // namespace

ActGrid parse_act_grid(const std::string& text) {
  if (text == "minmax") return ActGrid::kMinMax;
  if (text == "reference") return ActGrid::kReference;
  throw UsageError(fmt::format("rptq.grid must be minmax or reference, got '{}'", text));
}

const char* to_string(ActGrid grid) { return grid == ActGrid::kReference ? "reference" : "minmax"; }

std::pair<int64_t, int64_t> code_range(int bits, ActGrid grid) {
  if (grid == ActGrid::kReference) return {-(int64_t{1} << (bits - 1)), (int64_t{1} << (bits - 1)) - 1};
  return {0, (int64_t{1} << bits) - 1};
}

StaticQuantParams params_from_ranges(const torch::Tensor& cluster_min, const torch::Tensor& cluster_max,
                                     const torch::Tensor& bounds, int bits, ActGrid grid) {
  check_bits(bits);
  QF_CHECK(cluster_min.defined() && cluster_max.defined() && cluster_min.sizes() == cluster_max.sizes() &&
               (cluster_min.dim() == 1 || cluster_min.dim() == 2) && cluster_min.size(-1) == bounds.size(0) - 1,
           fmt::format("rptq: cluster ranges must be [clusters] or [rows, clusters] with {} clusters",
                       bounds.size(0) - 1));
  checked_bounds(bounds, bounds[-1].item<int64_t>());
  torch::NoGradGuard no_grad;
  const auto [scale, zero] = grid_of(cluster_min.detach().to(torch::kCPU, torch::kFloat),
                                     cluster_max.detach().to(torch::kCPU, torch::kFloat), bits, grid);
  const torch::Tensor sizes = bounds.to(torch::kCPU, torch::kInt64).diff();
  StaticQuantParams p;
  p.scale = scale.repeat_interleave(sizes, -1).contiguous();
  p.zero = zero.repeat_interleave(sizes, -1).contiguous();
  p.bits = bits;
  p.grid = grid;
  return p;
}

StaticQuantParams cluster_params(const torch::Tensor& min, const torch::Tensor& max, const torch::Tensor& bounds,
                                 int bits, ActGrid grid) {
  QF_CHECK(min.defined() && max.defined() && min.dim() == 1 && min.sizes() == max.sizes(),
           "rptq: per-channel min and max must be [channels] each");
  const std::vector<int64_t> b = checked_bounds(bounds, min.size(0));
  torch::NoGradGuard no_grad;
  const int64_t clusters = static_cast<int64_t>(b.size()) - 1;
  torch::Tensor cluster_min = torch::empty({clusters}, min.options().device(torch::kCPU));
  torch::Tensor cluster_max = torch::empty({clusters}, max.options().device(torch::kCPU));
  for (int64_t c = 0; c < clusters; ++c) {
    cluster_min[c] = min.slice(0, b[c], b[c + 1]).min();
    cluster_max[c] = max.slice(0, b[c], b[c + 1]).max();
  }
  return params_from_ranges(cluster_min, cluster_max, bounds, bits, grid);
}

torch::Tensor fake_quantize_static(const torch::Tensor& x, const StaticQuantParams& p) {
  QF_CHECK(x.dim() >= 1 && p.scale.defined() && p.zero.defined() && p.scale.dim() >= 1 &&
               p.scale.dim() <= x.dim() && p.scale.size(-1) == x.size(-1) && p.zero.sizes() == p.scale.sizes(),
           fmt::format("rptq: static quantization params of {} channels for a tensor of last dimension {}",
                       p.scale.defined() ? p.scale.size(-1) : 0, x.dim() ? x.size(-1) : 0));
  const auto [qmin, qmax] = code_range(p.bits, p.grid);
  torch::Tensor x_hat;
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor scale = p.scale.to(x.device(), torch::kFloat);
    const torch::Tensor zero = p.zero.to(x.device(), torch::kFloat);
    const torch::Tensor q = (torch::round(x.detach().to(torch::kFloat) / scale) + zero).clamp(qmin, qmax);
    x_hat = ((q - zero) * scale).to(x.scalar_type());
  }
  // Straight-through: the value is exactly x_hat (x - x.detach() is 0), the gradient passes to x unchanged.
  if (!x.requires_grad()) return x_hat;
  return x_hat + (x - x.detach());
}

torch::Tensor bounds_of(const torch::Tensor& sizes) {
  QF_CHECK(sizes.defined() && sizes.dim() == 1, "rptq: cluster sizes must be 1-dimensional");
  const torch::Tensor s = sizes.to(torch::kCPU, torch::kInt64);
  return torch::cat({torch::zeros({1}, torch::kInt64), s.cumsum(0)});
}

std::pair<torch::Tensor, torch::Tensor> ema_ranges(const torch::Tensor& sample_min, const torch::Tensor& sample_max,
                                                   double momentum) {
  QF_CHECK(sample_min.defined() && sample_max.defined() && sample_min.dim() == 2 &&
               sample_min.sizes() == sample_max.sizes() && sample_min.size(0) >= 1,
           "rptq: per-sample ranges must be [samples, clusters] each, with at least one sample");
  QF_CHECK(momentum >= 0 && momentum <= 1, fmt::format("rptq: EMA momentum must be in [0, 1], got {}", momentum));
  torch::NoGradGuard no_grad;
  torch::Tensor min = sample_min[0].clone(), max = sample_max[0].clone();
  for (int64_t s = 1; s < sample_min.size(0); ++s) {
    min = min * momentum + sample_min[s] * (1 - momentum);
    max = max * momentum + sample_max[s] * (1 - momentum);
  }
  return {min, max};
}

}  // namespace qforge::rptq
