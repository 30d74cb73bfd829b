// GPTQ on one weight matrix, as IST-DASLab/gptq's `fasterquant` (gptq.py) with its `Quantizer` (quant.py), and
// round-to-nearest on the same grid as the baseline. The defaults reproduce the reference's codes (see README.md
// for the quirks kept on purpose); the result carries AutoGPTQ's bookkeeping (g_idx, act-order permutation).
//
// Grid (a different one from quantizer.h's LLM-QAT grid): per row of a group, xmin = min(min x, 0),
// xmax = max(max x, 0); symmetric: xmax = max(|xmin|, xmax) and xmin = -xmax where xmin < 0; a range of 0 takes
// [-1, 1]; scale = (xmax - xmin) / maxq with maxq = 2^bits - 1; zero = (maxq + 1) / 2 (symmetric) or
// round(-xmin / scale); q = clamp(round(x / scale) + zero, 0, maxq), x̂ = scale * (q - zero).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace qforge::quant {

struct GptqOptions {
  int bits = 4;                  // 2..8
  int64_t group_size = -1;       // input columns per group; -1: one group per row
  bool symmetric = true;
  bool act_order = false;        // columns processed by decreasing Hessian diagonal
  bool static_groups = false;    // group ranges fixed up front on the unpermuted weight (with group_size only)
  int64_t block_size = 128;      // columns per lazy-batch block
  double percdamp = 0.01;        // dampening, as a fraction of the mean Hessian diagonal
};

// Throws UsageError naming the key (ptq.wbits, ptq.group_size, ptq.block_size, ptq.percdamp), `layer` and what
// was expected, for a weight of `columns` input columns: bits outside 2..8; group_size 0, < -1 or larger than
// columns; block_size < 1; percdamp outside [0, 1). A group size that does not divide the columns is allowed (the
// last group is shorter, as in the reference).
void check_gptq_options(const GptqOptions& options, int64_t columns, const std::string& layer);

struct GptqResult {
  torch::Tensor weight;  // fp32 [rows, cols]: the dequantized weight, original column order
  torch::Tensor codes;   // int32 [rows, cols] in [0, 2^bits - 1], original column order
  torch::Tensor scales;  // fp32 [rows, groups]: group g is the g-th group in processing order, as the reference
  torch::Tensor zeros;   // fp32 [rows, groups], integer-valued
  torch::Tensor g_idx;   // int32 [cols]: the group (column of scales) of each input column, original order
  torch::Tensor perm;    // int64 [cols]: the act-order processing order; undefined without act-order
  double loss = 0;       // the reference's sum of Losses (GPTQ only; 0 for RTN)
};

// `weight` [rows, cols] (any floating dtype; quantized in fp32). `hessian` fp32 or fp64 [cols, cols] =
// 2 / nsamples * sum X^T X, not modified; used in fp32 as the reference does. Throws Error when the shapes do not
// fit or the dampened Hessian is not positive definite, UsageError on bad options (check_gptq_options).
GptqResult gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const GptqOptions& options);

// Round-to-nearest with the same grid and the same groups, in natural column order, on the weight as given
// (act_order, static_groups, block_size and percdamp play no part): the baseline GPTQ is measured against.
GptqResult rtn_quantize(const torch::Tensor& weight, const GptqOptions& options);

// A grid fixed per weight element before GPTQ runs (RPTQ's ranges per output row and input cluster):
// x_hat = (clamp(round(x / scale) + zero, qmin, qmax) - zero) * scale, in fp32 with the reference's division.
struct FixedGrid {
  torch::Tensor scale, zero;  // fp32 [rows, cols] (zero integer-valued)
  int64_t qmin = 0, qmax = 15;
};

// GPTQ (same column loop, blocks, damping, dead-column handling, no act-order) with every element's grid given:
// only block_size and percdamp of `options` play a part. result.codes hold q (in [qmin, qmax]); result.scales
// and result.zeros are the given [rows, cols] tensors; g_idx is arange(cols); perm is undefined. Throws Error
// when the shapes do not fit (grid tensors not [rows, cols], qmin >= qmax) or the dampened Hessian is not
// positive definite, UsageError on bad block_size or percdamp.
GptqResult gptq_quantize_fixed(const torch::Tensor& weight, const torch::Tensor& hessian, const FixedGrid& grid,
                               const GptqOptions& options);

// Round-to-nearest on the same fixed grid (the baseline); loss 0.
GptqResult rtn_quantize_fixed(const torch::Tensor& weight, const FixedGrid& grid);

// ||W X^T - Q X^T||^2 from S = sum X^T X (the un-normalised Hessian sum, fp32 or fp64), in double:
// sum over rows of (w - q) S (w - q)^T.
double reconstruction_error(const torch::Tensor& weight, const torch::Tensor& quantized, const torch::Tensor& xtx);

}  // namespace qforge::quant
