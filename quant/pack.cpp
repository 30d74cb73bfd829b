#include "quant/pack.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <algorithm>

namespace qforge::quant {
namespace {

int64_t packed_row_bytes(int64_t columns, int bits) { return (columns * bits + 7) / 8; }

// Rows packed together: bounds the [rows, columns, bits] temporary to about 16 MiB.
int64_t rows_per_block(int64_t columns, int bits) { return std::max<int64_t>(1, (int64_t{1} << 24) / (columns * bits)); }

// uint8 [rows, n] of values < 2^bits -> uint8 [rows, ceil(n * bits / 8)], LSB first.
torch::Tensor pack_rows(const torch::Tensor& codes, int bits) {
  const int64_t rows = codes.size(0), stream_bits = codes.size(1) * bits;
  torch::Tensor stream = codes.unsqueeze(-1).bitwise_right_shift(torch::arange(bits, torch::kByte)).bitwise_and(1);
  stream = stream.reshape({rows, stream_bits});
  const int64_t padding = packed_row_bytes(codes.size(1), bits) * 8 - stream_bits;
  stream = torch::constant_pad_nd(stream, {0, padding}).view({rows, -1, 8});
  torch::Tensor place_values = torch::bitwise_left_shift(torch::ones({8}, torch::kByte), torch::arange(8, torch::kByte));
  return (stream * place_values).sum(-1, /*keepdim=*/false, torch::kByte);
}

// The inverse: uint8 [rows, ceil(n * bits / 8)] -> uint8 [rows, n].
torch::Tensor unpack_rows(const torch::Tensor& bytes, int bits, int64_t columns) {
  const int64_t rows = bytes.size(0);
  torch::Tensor stream = bytes.unsqueeze(-1).bitwise_right_shift(torch::arange(8, torch::kByte)).bitwise_and(1);
  stream = stream.reshape({rows, -1}).narrow(1, 0, columns * bits).reshape({rows, columns, bits});
  torch::Tensor place_values = torch::bitwise_left_shift(torch::ones({bits}, torch::kByte), torch::arange(bits, torch::kByte));
  return (stream * place_values).sum(-1, /*keepdim=*/false, torch::kByte);
}

template <class RowFunction>
torch::Tensor by_row_blocks(const torch::Tensor& rows, int64_t block, RowFunction function) {
  std::vector<torch::Tensor> parts;
  for (int64_t start = 0; start < rows.size(0); start += block)
    parts.push_back(function(rows.narrow(0, start, std::min(block, rows.size(0) - start))));
  return torch::cat(parts, 0);
}

}  // namespace

// ---- bit streams and fp16 scales ---------------------------------------------------------------------------

torch::Tensor pack_bit_rows(const torch::Tensor& codes, int bits) {
  return by_row_blocks(codes, rows_per_block(codes.size(1), bits),
                       [&](const torch::Tensor& rows) { return pack_rows(rows, bits); });
}

torch::Tensor unpack_bit_rows(const torch::Tensor& bytes, int bits, int64_t columns) {
  return by_row_blocks(bytes, rows_per_block(columns, bits),
                       [&](const torch::Tensor& rows) { return unpack_rows(rows, bits, columns); });
}

torch::Tensor fp16_scales(const torch::Tensor& scales, const std::string& where) {
  const torch::Tensor s32 = scales.to(torch::kFloat);
  if (!torch::isfinite(s32).all().item<bool>()) throw Error(where + ": a scale is not finite");
  const torch::Tensor half = s32.to(torch::kHalf);
  if (!torch::isfinite(half).all().item<bool>())
    throw Error(fmt::format("{}: a scale of magnitude {} overflows fp16 (scales are stored as fp16)", where,
                            s32.abs().max().item<double>()));
  if (((half == 0) & (s32 != 0)).any().item<bool>())
    throw Error(fmt::format("{}: a nonzero scale of {} underflows to 0 in fp16 (scales are stored as fp16)", where,
                            s32.abs().min().item<double>()));
  return half;
}

}  // namespace qforge::quant
