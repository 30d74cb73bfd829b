#include "quant/quantizer.h"

#include "quant/fake_quant_cpu.h"

#include "framework/common/error.h"
#include "framework/common/shape_text.h"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <limits>

namespace qforge::quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

double symmetric_qmax(int bits) { return static_cast<double>((1 << (bits - 1)) - 1); }
double asymmetric_levels(int bits) { return static_cast<double>((1 << bits) - 1); }

void check_group_layout(const torch::Tensor& x, int64_t group_size) {
  if (x.dim() != 2)
    throw Error(
        fmt::format("per-group quantization needs a 2-D weight [out, in], got shape {}", shape_text(x.sizes())));
  if (x.size(1) % group_size != 0)
    throw Error(
        fmt::format("per-group quantization of a weight of shape {}: group_size {} does not divide its {} "
                    "input columns",
                    shape_text(x.sizes()), group_size, x.size(1)));
}

bool is_kv_layout(torch::IntArrayRef shape) { return shape.size() == 4; }

// x as [ranges, groups, n]: every range covers the last dimension of one (range, group) pair.
torch::Tensor to_range_layout(const torch::Tensor& x, const QuantSpec& spec) {
  switch (spec.granularity) {
    case Granularity::kTensor:
      return x.reshape({1, 1, -1});
    case Granularity::kChannel:
      QF_CHECK(x.dim() >= 1, "per-channel quantization needs a tensor with at least one dimension");
      return x.reshape({x.size(0), 1, -1});
    case Granularity::kGroup:
      check_group_layout(x, spec.group_size);
      return x.reshape({x.size(0), x.size(1) / spec.group_size, spec.group_size});
    case Granularity::kToken:
      QF_CHECK(x.dim() >= 1, "per-token quantization needs a tensor with at least one dimension");
      if (is_kv_layout(x.sizes())) return x.permute({0, 2, 1, 3}).reshape({x.size(0) * x.size(2), 1, -1});
      return x.reshape({-1, 1, x.size(-1)});
    case Granularity::kHead:
      if (!is_kv_layout(x.sizes()))
        throw Error(
            fmt::format("per-head quantization needs a KV tensor [B, H, T, d], got shape {}", shape_text(x.sizes())));
      return x.reshape({-1, 1, x.size(-1)});
  }
  throw Error("unknown quantization granularity");
}

torch::Tensor from_range_layout(const torch::Tensor& y, torch::IntArrayRef shape, const QuantSpec& spec) {
  if (spec.granularity == Granularity::kToken && is_kv_layout(shape))
    return y.reshape({shape[0], shape[2], shape[1], shape[3]}).permute({0, 2, 1, 3});
  return y.reshape(shape);
}

// Scale and zero point of every range, [ranges, groups, 1] fp32; zero undefined when symmetric.
struct RangeGrid {
  torch::Tensor scale, zero;
};

// range / levels, or 1 where the range is 0 (all values 0): any scale represents them exactly.
torch::Tensor scale_of(const torch::Tensor& range, double levels) {
  return torch::where(range > 0, range / levels, torch::ones_like(range));
}

// Scale and zero point from the range statistics: [..., 1] max |g| (symmetric) or [..., 2] max(max, 0) and
// max(-min, 0) (asymmetric), max-reduced over `tp` first. One all-reduce carries both asymmetric statistics: min
// travels as max of -min. The asymmetric range holds 0 so that the integer zero point lies in [0, 2^b - 1].
RangeGrid grid_of(torch::Tensor stats, const QuantSpec& spec, dist::Communicator* tp) {
  if (tp) tp->all_reduce(stats, dist::ReduceOp::kMax);
  if (spec.symmetric) return {scale_of(stats, symmetric_qmax(spec.bits)), {}};
  torch::Tensor max = stats.narrow(-1, 0, 1), neg_min = stats.narrow(-1, 1, 1);
  torch::Tensor scale = scale_of(max + neg_min, asymmetric_levels(spec.bits));
  return {scale, (neg_min / scale).round()};
}

RangeGrid range_grid(const torch::Tensor& g, const QuantSpec& spec, dist::Communicator* tp) {
  if (spec.symmetric) return grid_of(g.abs().amax(-1, /*keepdim=*/true), spec, tp);
  return grid_of(torch::cat({g.amax(-1, true).clamp_min(0), (-g.amin(-1, true)).clamp_min(0)}, -1), spec, tp);
}

// The codes' bounds: [-qmax, qmax] (symmetric) or [0, 2^b - 1].
std::pair<double, double> code_range(const QuantSpec& spec) {
  if (spec.symmetric) return {-symmetric_qmax(spec.bits), symmetric_qmax(spec.bits)};
  return {0.0, asymmetric_levels(spec.bits)};
}

torch::Tensor codes_of(const torch::Tensor& g, const RangeGrid& grid, const QuantSpec& spec) {
  const auto [lo, hi] = code_range(spec);
  torch::Tensor steps = (g / grid.scale).round();
  return (spec.symmetric ? steps : steps + grid.zero).clamp(lo, hi);
}

torch::Tensor values_of(const torch::Tensor& codes, const RangeGrid& grid) {
  return (grid.zero.defined() ? codes - grid.zero : codes) * grid.scale;
}

// x̂ of an fp32 CPU tensor in g's range layout [ranges, groups, n], by the fused kernels (fake_quant_cpu.h);
// `local_absmax` receives max |g| on this rank (before any TP reduction).
torch::Tensor fused_values(const torch::Tensor& g, const QuantSpec& spec, dist::Communicator* tp,
                           double* local_absmax) {
  const torch::Tensor rows = g.reshape({g.size(0) * g.size(1), g.size(2)});
  const torch::Tensor stats = cpu::range_stats(rows, spec.symmetric);
  if (local_absmax) *local_absmax = stats.numel() ? stats.max().item<double>() : 0.0;
  const RangeGrid grid = grid_of(stats.view({g.size(0), g.size(1), stats.size(1)}), spec, tp);
  const auto [lo, hi] = code_range(spec);
  return cpu::quantize_dequantize(rows, grid.scale, grid.zero, static_cast<float>(lo), static_cast<float>(hi))
      .view(g.sizes());
}

// x̂; on the fused path `local_absmax` (when given) receives max |x| on this rank, else it is left alone.
torch::Tensor fake_quantized_values(const torch::Tensor& x, const QuantSpec& spec, dist::Communicator* tp,
                                    double* local_absmax = nullptr) {
  torch::NoGradGuard no_grad;
  torch::Tensor g = to_range_layout(x.detach().to(torch::kFloat), spec);
  if (cpu::fusable(g))
    return from_range_layout(fused_values(g, spec, tp, local_absmax), x.sizes(), spec).to(x.scalar_type());
  const RangeGrid grid = range_grid(g, spec, tp);
  return from_range_layout(values_of(codes_of(g, grid, spec), grid), x.sizes(), spec).to(x.scalar_type());
}

// Forward: x̂. Backward: the incoming gradient where |x| <= ste_clip (everywhere when ste_clip is 0), else 0.
// What backward needs is kept only where the clip zeroes something: the fused path knows max |x| from its range
// statistics, and a tensor inside the clip range passes its gradient through untouched (typical of weights).
// Otherwise, on the CPU in fp32, a parameter is kept as it is (it stays alive anyway) and an activation as a byte
// mask; elsewhere, the mask.
struct StraightThroughQuantize : torch::autograd::Function<StraightThroughQuantize> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const QuantSpec& spec,
                               dist::Communicator* tp) {
    double absmax = std::numeric_limits<double>::infinity();
    torch::Tensor values = fake_quantized_values(x, spec, tp, &absmax);
    const bool fused = cpu::fusable(x), keep_input = fused && x.is_leaf();
    ctx->saved_data["clip"] = spec.ste_clip;
    if (spec.ste_clip <= 0 || absmax <= spec.ste_clip)
      ;  // nothing is clipped: plain straight-through
    else if (keep_input)
      ctx->save_for_backward({x});
    else
      ctx->save_for_backward(
          {fused ? cpu::within_clip(x, static_cast<float>(spec.ste_clip)) : x.abs() <= spec.ste_clip});
    return values;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const float clip = static_cast<float>(ctx->saved_data["clip"].toDouble());
    torch::Tensor grad = grads[0];
    if (saved.empty())
      ;  // plain straight-through
    else if (saved[0].scalar_type() != torch::kBool)  // the parameter itself, not a mask
      grad = cpu::clipped_straight_through(grad, saved[0], clip);
    else if (cpu::fusable(grad))
      grad = cpu::masked_straight_through(grad, saved[0]);
    else
      grad = grad.masked_fill(saved[0].logical_not(), 0);
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

const char* to_string(Granularity granularity) {
  switch (granularity) {
    case Granularity::kTensor:
      return "tensor";
    case Granularity::kChannel:
      return "channel";
    case Granularity::kGroup:
      return "group";
    case Granularity::kToken:
      return "token";
    case Granularity::kHead:
      return "head";
  }
  return "?";
}

void check_spec(const QuantSpec& spec) {
  if (spec.bits != 16 && (spec.bits < 2 || spec.bits > 8))
    throw UsageError(fmt::format("quantization bits must be 2..8, or 16 for full precision, got {}", spec.bits));
  if (spec.enabled() && spec.granularity == Granularity::kGroup && spec.group_size < 1)
    throw UsageError(fmt::format("quantization group_size must be >= 1, got {}", spec.group_size));
}

std::string describe(const QuantSpec& spec) {
  check_spec(spec);
  if (!spec.enabled()) return "full precision";
  std::string text =
      fmt::format("int{} {} per-{}", spec.bits, spec.symmetric ? "sym" : "asym", to_string(spec.granularity));
  if (spec.granularity == Granularity::kGroup) text += fmt::format("({})", spec.group_size);
  return text;
}

torch::Tensor fake_quantize(const torch::Tensor& x, const QuantSpec& spec, dist::Communicator* tp_reduce) {
  check_spec(spec);
  if (!spec.enabled() || x.numel() == 0) return x;
  RECORD_FUNCTION("qforge::fake_quantize", std::vector<c10::IValue>());  // for profiles (bench_compare --profile)
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) return fake_quantized_values(x, spec, tp_reduce);
  return StraightThroughQuantize::apply(x, spec, tp_reduce);
}

QuantizedTensor quantize(const torch::Tensor& x, const QuantSpec& spec, dist::Communicator* tp_reduce) {
  check_spec(spec);
  if (!spec.enabled()) throw UsageError("quantize() needs a bit width of 2..8; 16 means full precision");
  torch::NoGradGuard no_grad;
  torch::Tensor g = to_range_layout(x.detach().to(torch::kFloat), spec);
  const RangeGrid grid = range_grid(g, spec, tp_reduce);
  QuantizedTensor q;
  q.codes = from_range_layout(codes_of(g, grid, spec), x.sizes(), spec).to(torch::kInt).contiguous();
  q.scales = grid.scale.squeeze(-1);
  if (grid.zero.defined()) q.zeros = grid.zero.squeeze(-1).to(torch::kInt);
  return q;
}

torch::Tensor dequantize(const QuantizedTensor& q, const QuantSpec& spec) {
  torch::NoGradGuard no_grad;
  torch::Tensor g = to_range_layout(q.codes.to(torch::kFloat), spec);
  const RangeGrid grid{q.scales.to(torch::kFloat).unsqueeze(-1),
                       q.zeros.defined() ? q.zeros.to(torch::kFloat).unsqueeze(-1) : torch::Tensor()};
  return from_range_layout(values_of(g, grid), q.codes.sizes(), spec).contiguous();
}

}  // namespace qforge::quant
