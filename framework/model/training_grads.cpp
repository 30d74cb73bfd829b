#include "framework/model/training_grads.h"

#include "framework/model/training_grads_cpu.h"

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

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    torch::Tensor r = rms_scale(x, eps);
    ctx->save_for_backward({x, weight, r});
    return weight * (x * r);
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

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    torch::Tensor s = torch::silu(gate);
    ctx->save_for_backward({gate, up, s});
    return s * up;
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

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (fused_backward({x, weight})) return RmsNormFunction::apply(x, weight, eps);
  return weight * (x * rms_scale(x, eps));
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (fused_backward({gate, up}) && gate.sizes() == up.sizes()) return SwigluFunction::apply(gate, up);
  return torch::silu(gate) * up;
}

}  // namespace qforge::model
