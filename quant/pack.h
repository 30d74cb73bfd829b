// LSB-first bit streams of small integers and fp16 scales: the building blocks of the GPTQ checkpoint format
// (gptq_format.h), which packs its words through them.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace qforge::quant {

// Each row of `codes` (uint8 [rows, n], values < 2^bits) becomes one stream, value j in bits [j*bits, (j+1)*bits),
// bit 0 of byte 0 first: uint8 [rows, ceil(n * bits / 8)]. Rows go in blocks (temporaries of about 16 MiB).
torch::Tensor pack_bit_rows(const torch::Tensor& codes, int bits);

// The inverse: the first `columns` values of each row, uint8 [rows, columns].
torch::Tensor unpack_bit_rows(const torch::Tensor& bytes, int bits, int64_t columns);

// `scales` rounded to fp16, for storage. Throws Error "`where`: ..." when one is not finite, overflows fp16, or is
// nonzero and underflows to 0.
torch::Tensor fp16_scales(const torch::Tensor& scales, const std::string& where);

}  // namespace qforge::quant
