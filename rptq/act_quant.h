// RPTQ's static activation quantization: one asymmetric range per cluster of reordered channels (the clusters
// contiguous), expanded to per-channel parameters so that a fake quantization needs no cluster bookkeeping.
//
// Grids (b bits, range [min, max] of a cluster):
//   kMinMax (default): 2^b - 1 steps over [min, max] (not widened to contain 0): scale = (max - min) / (2^b - 1),
//     a zero range taking scale 1; zero = round(-min / scale); q = clamp(round(x / scale) + zero, 0, 2^b - 1).
//   kReference: RPTQ's UniformAffineQuantizer (quantize/quantizer.py), signed and 2^b steps wide, so that the
//     maximum is clipped by one step: scale = clamp((max - min) * 2^-b, 1e-4, 1e4); zero = round(clamp(
//     (max + min) * (-0.5 / scale), -1e4, 1e4)); q = clamp(round(x / scale) + zero, -2^(b-1), 2^(b-1) - 1).
//   Both: x̂ = (q - zero) * scale. Everything in fp32, in the reference's order of operations; round() is
//   round-half-to-even, as torch.round.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

namespace qforge::rptq {

enum class ActGrid { kMinMax, kReference };

ActGrid parse_act_grid(const std::string& text);  // "minmax" | "reference"; UsageError naming rptq.grid otherwise
const char* to_string(ActGrid grid);

struct StaticQuantParams {   // per channel, fp32 [channels]
  torch::Tensor scale, zero; // zero: the rounded zero point (integer-valued float)
  int bits = 8;
  ActGrid grid = ActGrid::kMinMax;
};

// The codes' range of a grid: [0, 2^bits - 1] (kMinMax) or [-2^(bits-1), 2^(bits-1) - 1] (kReference).
std::pair<int64_t, int64_t> code_range(int bits, ActGrid grid);

// Per-cluster ranges -> per-channel params: cluster c covers channels [bounds[c], bounds[c+1]) of `min`/`max`
// (fp32/fp64 [channels], already in reordered order); its range is (min over its channels' min, max over their
// max). `bounds` int64 [clusters + 1], bounds[0] = 0, bounds.back() = channels. Throws UsageError when bits is not
// in 2..8, Error when the shapes or bounds do not fit.
StaticQuantParams cluster_params(const torch::Tensor& min, const torch::Tensor& max, const torch::Tensor& bounds,
                                 int bits, ActGrid grid);

// The same from per-cluster ranges directly (cluster_min/max [clusters]) expanded over `bounds`. Ranges
// [rows, clusters] give one set per row ([rows, channels] params; weights use that).
StaticQuantParams params_from_ranges(const torch::Tensor& cluster_min, const torch::Tensor& cluster_max,
                                     const torch::Tensor& bounds, int bits, ActGrid grid);

// x_hat for x whose LAST dimension is the channels, in x's dtype, computed in fp32. The params are [channels], or
// any shape that broadcasts against x with the channels last (e.g. [heads, 1, head_dim] for [B, heads, T, d]);
// gradient straight-through (x_hat = x + (q(x) - x).detach()).
torch::Tensor fake_quantize_static(const torch::Tensor& x, const StaticQuantParams& p);

// Bounds from cluster sizes: [0, cumsum(sizes)] (int64 [clusters + 1]).
torch::Tensor bounds_of(const torch::Tensor& sizes);

// The reference's exponential moving average of per-sample ranges: rows of sample_min/sample_max [samples,
// clusters] in sample order; first row as is, then v = momentum * v + (1 - momentum) * row (the reference's
// cached * 0.99 + new * 0.01, in the inputs' dtype). Returns {min, max}, [clusters] each.
std::pair<torch::Tensor, torch::Tensor> ema_ranges(const torch::Tensor& sample_min, const torch::Tensor& sample_max,
                                                   double momentum = 0.99);

}  // namespace qforge::rptq
