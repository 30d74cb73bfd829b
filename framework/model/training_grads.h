// The decoder's RMSNorm and SwiGLU, with fused backward passes when training in fp32 on the CPU
// (training_grads_cpu.h). Their values are always libtorch's operations, the same as without gradients.
#pragma once

#include <torch/torch.h>

namespace qforge::model {

// weight * (x * rsqrt(mean(x^2, -1) + eps)) for fp32 x and weight of x's last dimension.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// silu(gate) * up.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace qforge::model
