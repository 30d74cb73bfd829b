// RPTQ's weight ranges: one per (output row, input cluster), the clusters being those of the reordered input
// channels, on the reference's signed grid (act_quant.h's kReference). They are fixed once, before GPTQ runs,
// as RPTQ calibrates its weight quantizer on the whole reordered weight first (quantize/gptq.py).
#pragma once

#include "quant/gptq.h"

#include <torch/torch.h>

namespace qforge::rptq {

// Per output row and input cluster (columns [bounds[c], bounds[c+1]) of `weight` [rows, cols], any floating
// dtype, taken in fp32), the min and max of the row's values there (not widened to contain 0), on the reference
// grid with `bits` -> FixedGrid ([rows, cols] scale and zero) with qmin -2^(bits-1), qmax 2^(bits-1) - 1. Throws
// UsageError when bits is not in 2..8, Error when the bounds do not fit the columns.
quant::FixedGrid cluster_weight_grid(const torch::Tensor& weight, const torch::Tensor& bounds, int bits);

}  // namespace qforge::rptq
