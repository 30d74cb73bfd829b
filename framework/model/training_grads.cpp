#include "framework/model/training_grads.h"

#include "framework/model/swiglu_avx2.h"
#include "framework/model/training_grads_cpu.h"
#include "framework/system/cpu_features.h"

#include <ATen/Parallel.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace qforge::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Gradients are wanted, and the fused CPU kernels apply to every tensor.
bool fused_backward(std::initializer_list<torch::Tensor> tensors) {
  if (!torch::GradMode::is_enabled()) return false;
  bool wanted = false;
  for (const torch::Tensor& t : tensors) {
    if (!t.device().is_cpu() || t.scalar_type() != torch::kFloat) return false;
    wanted = wanted || t.requires_grad();
  }
  return wanted;
}

torch::Tensor rms_scale(const torch::Tensor& x, double eps) { return torch::rsqrt(x.pow(2).mean(-1, true) + eps); }

thread_local int training_kernels_depth = 0;

// The fused forward: y and the per-row scale r ([..., 1]) in one pass over contiguous fp32 CPU tensors.
std::pair<torch::Tensor, torch::Tensor> fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                       double eps) {
  const torch::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t n = x.size(-1);
  std::vector<int64_t> row_shape = x.sizes().vec();
  row_shape.back() = 1;
  torch::Tensor y = torch::empty(x.sizes(), x.options()), r = torch::empty(row_shape, x.options());
  cpu::rms_norm_forward(xc.data_ptr<float>(), wc.data_ptr<float>(), x.numel() / n, n, static_cast<float>(eps),
                        y.data_ptr<float>(), r.data_ptr<float>());
  return {y, r};
}

bool fused_forward(const torch::Tensor& x, const torch::Tensor& weight) {
  return TrainingKernels::active() && x.device().is_cpu() && x.scalar_type() == torch::kFloat &&
         weight.device().is_cpu() && weight.scalar_type() == torch::kFloat && x.numel() > 0;
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    torch::Tensor y, r;
    if (fused_forward(x, weight)) {
      std::tie(y, r) = fused_rms_norm(x, weight, eps);
    } else {
      r = rms_scale(x, eps);
      y = weight * (x * r);
    }
    ctx->save_for_backward({x, weight, r});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor x = saved[0].contiguous(), w = saved[1].contiguous(), r = saved[2].contiguous();
    const torch::Tensor dy = grads[0].contiguous();
    const int64_t n = x.size(-1);
    torch::Tensor dx = torch::empty_like(x), dw = torch::zeros_like(w);
    cpu::rms_norm_backward(dy.data_ptr<float>(), x.data_ptr<float>(), r.data_ptr<float>(), w.data_ptr<float>(),
                           x.numel() / n, n, dx.data_ptr<float>(), dw.data_ptr<float>());
    return {dx, dw, torch::Tensor()};
  }
};

// Training's SwiGLU forward in one AVX2 pass: h = silu(g) u, and s = silu(g) when `keep` (for the backward pass).
bool fused_swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  return TrainingKernels::active() && sys::avx2_kernels() && gate.device().is_cpu() &&
         gate.scalar_type() == torch::kFloat && up.scalar_type() == torch::kFloat && gate.sizes() == up.sizes() &&
         gate.is_contiguous() && up.is_contiguous();
}

std::pair<torch::Tensor, torch::Tensor> swiglu_values(const torch::Tensor& gate, const torch::Tensor& up, bool keep) {
  torch::Tensor h = torch::empty_like(gate), s = keep ? torch::empty_like(gate) : torch::Tensor();
  const float *g = gate.data_ptr<float>(), *u = up.data_ptr<float>();
  float *hp = h.data_ptr<float>(), *sp = keep ? s.data_ptr<float>() : nullptr;
  at::parallel_for(0, gate.numel(), int64_t{1} << 14,
                   [&](int64_t begin, int64_t end) { avx2::swiglu_forward(g, u, begin, end, sp, hp); });
  return {h, s};
}

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    torch::Tensor s, h;
    if (fused_swiglu(gate, up)) {
      std::tie(h, s) = swiglu_values(gate, up, true);
    } else {
      s = torch::silu(gate);
      h = s * up;
    }
    ctx->save_for_backward({gate, up, s});
    return h;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor g = saved[0].contiguous(), u = saved[1].contiguous(), s = saved[2].contiguous();
    const torch::Tensor dh = grads[0].contiguous();
    torch::Tensor dg = torch::empty_like(g), du = torch::empty_like(u);
    cpu::swiglu_backward(dh.data_ptr<float>(), g.data_ptr<float>(), u.data_ptr<float>(), s.data_ptr<float>(), g.numel(),
                         dg.data_ptr<float>(), du.data_ptr<float>());
    return {dg, du};
  }
};

// The strides rotary_forward reads, when the fused kernels apply to x and the tables.
std::optional<cpu::RotaryShape> rotary_shape(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                             double scale, int64_t group) {
  for (const torch::Tensor* t : {&x, &cos, &sin})
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat || t->dim() != 4 || t->stride(3) != 1)
      return std::nullopt;
  const int64_t batch = x.size(0), length = x.size(2), dim = x.size(3);
  if (dim % 2 != 0 || group < 1 || x.size(1) % group != 0 || cos.sizes() != sin.sizes() ||
      cos.strides() != sin.strides() || cos.size(1) != 1 || cos.size(2) != length || cos.size(3) != dim ||
      (cos.size(0) != batch && cos.size(0) != 1))
    return std::nullopt;
  const int64_t table_b = cos.size(0) == 1 ? 0 : cos.stride(0);
  const auto scale_f = static_cast<float>(scale);
  return cpu::RotaryShape{batch,       x.size(1), length,        dim,     x.stride(0), x.stride(1),
                          x.stride(2), table_b,   cos.stride(2), scale_f, group};
}

torch::Tensor rotary_values(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                            const cpu::RotaryShape& shape) {
  const int64_t kv_heads = shape.heads / shape.group;
  torch::Tensor y = torch::empty({shape.batch, kv_heads, shape.length * shape.group, shape.dim}, x.options());
  cpu::rotary_forward(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), shape, y.data_ptr<float>());
  return y;
}

struct RotaryFunction : torch::autograd::Function<RotaryFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, double scale, int64_t group) {
    const cpu::RotaryShape shape = *rotary_shape(x, cos, sin, scale, group);
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["shape"] = std::vector<int64_t>(x.sizes().begin(), x.sizes().end());
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["group"] = group;
    return rotary_values(x, cos, sin, shape);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor dy = grads[0].contiguous();
    // dx is contiguous [B, H, T, d] and dy laid out as the forward's y: the shape's x strides are not read.
    const torch::Tensor dx = torch::empty(ctx->saved_data["shape"].toIntVector(), dy.options());
    const cpu::RotaryShape shape =
        *rotary_shape(dx, saved[0], saved[1], ctx->saved_data["scale"].toDouble(), ctx->saved_data["group"].toInt());
    cpu::rotary_backward(dy.data_ptr<float>(), saved[0].data_ptr<float>(), saved[1].data_ptr<float>(), shape,
                         dx.data_ptr<float>());
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor group_heads(const torch::Tensor& x, int64_t group) {
  const int64_t batch = x.size(0), heads = x.size(1), length = x.size(2), dim = x.size(3);
  return x.view({batch, heads / group, group, length, dim})
      .transpose(2, 3)
      .reshape({batch, heads / group, length * group, dim});
}

torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, double scale,
                     int64_t group) {
  const std::optional<cpu::RotaryShape> shape = rotary_shape(x, cos, sin, scale, group);
  const bool tables_learn = torch::GradMode::is_enabled() && (cos.requires_grad() || sin.requires_grad());
  if (!shape || tables_learn) {
    torch::Tensor y = x * cos + rotate_half(x) * sin;
    return group_heads(scale == 1.0 ? y : y * scale, group).contiguous();
  }
  if (torch::GradMode::is_enabled() && x.requires_grad()) return RotaryFunction::apply(x, cos, sin, scale, group);
  return rotary_values(x, cos, sin, *shape);
}

TrainingKernels::TrainingKernels() { ++training_kernels_depth; }
TrainingKernels::~TrainingKernels() { --training_kernels_depth; }
bool TrainingKernels::active() { return training_kernels_depth > 0; }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (fused_backward({x, weight})) return RmsNormFunction::apply(x, weight, eps);
  if (fused_forward(x, weight)) return fused_rms_norm(x, weight, eps).first;
  return weight * (x * rms_scale(x, eps));
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (fused_backward({gate, up}) && gate.sizes() == up.sizes()) return SwigluFunction::apply(gate, up);
  if (fused_swiglu(gate, up) && !(torch::GradMode::is_enabled() && (gate.requires_grad() || up.requires_grad())))
    return swiglu_values(gate, up, false).first;
  return torch::silu(gate) * up;
}

}  // namespace qforge::model
