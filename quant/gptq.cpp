#include "quant/gptq.h"

#include "framework/common/error.h"
#include "quant/gptq_format.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace qforge::quant {
namespace {

// One row's range for one group: the reference Quantizer's scale and zero (fp32, zero integer-valued).
struct Grid {
  float scale;
  float zero;
};

// Quantizer.find_params(x, weight=True) on one row's values x[0, n). Every step is the reference's fp32
// operation in its order, so scales and zeros are bitwise the reference's. The symmetric quirk is kept: a row
// with no negative value keeps xmin = 0 (its codes then use only the upper half of the grid).
Grid find_grid(const float* x, int64_t n, float maxq, bool symmetric) {
  float xmin = 0, xmax = 0;  // torch.minimum(x.min(1), 0), torch.maximum(x.max(1), 0)
  for (int64_t i = 0; i < n; ++i) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (symmetric) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0 && xmax == 0) {
    xmin = -1;
    xmax = 1;
  }
  const float scale = (xmax - xmin) / maxq;
  // std::nearbyint rounds half to even in the default rounding mode, as torch.round does.
  return {scale, symmetric ? (maxq + 1) / 2 : std::nearbyint(-xmin / scale)};
}

struct Quantized {
  float code;
  float value;
};

// quantize(): q = clamp(round(x / scale) + zero, qmin, qmax), x̂ = scale * (q - zero), with the reference's
// division (not a multiplication by 1 / scale, which rounds differently). qmin is 0 on GPTQ's own grid, -2^(b-1)
// on RPTQ's signed one.
inline Quantized quantize_value(float x, Grid grid, float qmin, float qmax) {
  const float q = std::clamp(std::nearbyint(x / grid.scale) + grid.zero, qmin, qmax);
  return {q, grid.scale * (q - grid.zero)};
}

// The shape checks both GPTQ entry points share.
void check_gptq_shapes(const torch::Tensor& weight, const torch::Tensor& hessian) {
  QF_CHECK(weight.dim() == 2, fmt::format("GPTQ needs a 2-dimensional weight, got {} dimensions", weight.dim()));
  const int64_t rows = weight.size(0), cols = weight.size(1);
  QF_CHECK(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols,
           fmt::format("GPTQ needs a [{0}, {0}] Hessian for a [{1}, {0}] weight, got {2}", cols, rows,
                       fmt::join(hessian.sizes(), "x")));
}

// Inputs that never fire: their weights are dropped and their Hessian row made harmless (W, H fp32, in place).
void drop_dead_columns(torch::Tensor& W, torch::Tensor& H) {
  const torch::Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1);
  W.masked_fill_(dead.unsqueeze(0), 0);
}

// The reference's Hinv: the upper Cholesky factor of H^-1 (after dampening), via cholesky_inverse as it does. Kept
// in the layout LAPACK returns (column-major): the block update's matrix product then runs the BLAS kernel the
// reference's does, with its rounding.
torch::Tensor inverse_hessian_factor(torch::Tensor H, double percdamp) {
  // fp32, as `percdamp * torch.mean(torch.diag(H))`: the mean of a contiguous copy (a strided view sums in
  // another order).
  const torch::Tensor damp = percdamp * torch::diag(H).mean();
  H.diagonal().add_(damp);
  try {
    H = torch::linalg_cholesky(H);
    H = torch::cholesky_inverse(H);
    return torch::linalg_cholesky(H, /*upper=*/true);
  } catch (const c10::Error&) {
    throw Error(fmt::format("GPTQ: the dampened Hessian is not positive definite (percdamp {}); collect more "
                            "calibration samples or raise ptq.percdamp",
                            percdamp));
  }
}

// Per-row grids of the columns [begin, end) of the fp32 contiguous W, into scales/zeros column `group`.
void fill_grids(const torch::Tensor& W, int64_t begin, int64_t end, const GptqOptions& options, int64_t group,
                torch::Tensor& scales, torch::Tensor& zeros) {
  const float maxq = static_cast<float>((1 << options.bits) - 1);
  const int64_t rows = W.size(0), cols = W.size(1), groups = scales.size(1);
  const float* w = W.data_ptr<float>();
  float* s = scales.data_ptr<float>();
  float* z = zeros.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const Grid grid = find_grid(w + r * cols + begin, end - begin, maxq, options.symmetric);
    s[r * groups + group] = grid.scale;
    z[r * groups + group] = grid.zero;
  }
}

int64_t group_count(int64_t cols, int64_t group_size) {
  return group_size == -1 ? 1 : (cols + group_size - 1) / group_size;
}

// g_idx in natural order: column i belongs to group i / group_size.
torch::Tensor natural_g_idx(int64_t cols, int64_t group_size) {
  return natural_gptq_groups(0, cols, group_size).to(torch::kInt32);
}

// The reference's column loop, shared by both entry points: blocks of `block_size` columns of the fp32
// contiguous W (its later columns updated in place after each block), with Hinv the upper factor of H^-1.
// `grid_of(r, col, w_row)` gives element (r, col)'s grid, w_row being row r of W before this block's updates; it
// is called once per element, row by row in column order, rows in parallel. Writes the dequantized weight and
// the codes (fp32 [rows, cols]) and returns the sum of Losses.
template <typename GridOf>
double column_loop(torch::Tensor& W, const torch::Tensor& Hinv, int64_t block_size, float qmin, float qmax,
                   const GridOf& grid_of, torch::Tensor& Q, torch::Tensor& codes) {
  const int64_t rows = W.size(0), cols = W.size(1);
  std::vector<double> row_loss(rows, 0.0);
  const torch::Tensor hinv_rows = Hinv.contiguous();  // row-major for the column loop's Hinv1[i, i:]
  const float* hinv = hinv_rows.data_ptr<float>();
  const float* w = W.data_ptr<float>();
  float* q_out = Q.data_ptr<float>();
  float* code_out = codes.data_ptr<float>();

  for (int64_t i1 = 0; i1 < cols; i1 += block_size) {
    const int64_t i2 = std::min(i1 + block_size, cols), count = i2 - i1;
    torch::Tensor err1 = torch::empty({rows, count});
    float* err = err1.data_ptr<float>();
    // Inside a block the rows are independent: each runs the reference's column loop on its own copy of its
    // block (W1's row, contiguous in cache), updating it with the fp32 products the reference's rank-1 matmul
    // makes. The outer W is not written during the block, so the group ranges read from it see this block's
    // columns without this block's updates, as the reference's `find_params(W[:, i1+i : i1+i+groupsize])` does.
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> w1(count);
      for (int64_t r = r0; r < r1; ++r) {
        const float* w_row = w + r * cols;
        std::copy(w_row + i1, w_row + i2, w1.begin());
        double loss = 0;
        for (int64_t i = 0; i < count; ++i) {
          const int64_t col = i1 + i;
          const Quantized q = quantize_value(w1[i], grid_of(r, col, w_row), qmin, qmax);
          q_out[r * cols + col] = q.value;
          code_out[r * cols + col] = q.code;
          const float d = hinv[col * cols + col];
          const float diff = w1[i] - q.value;
          loss += (diff * diff) / (d * d) / 2;
          const float e = diff / d;
          err[r * count + i] = e;
          const float* h = hinv + col * cols + i1;  // Hinv1[i, :]
          for (int64_t j = i + 1; j < count; ++j) w1[j] -= e * h[j];
        }
        row_loss[r] += loss;
      }
    });
    if (i2 < cols) W.slice(1, i2).sub_(err1.matmul(Hinv.slice(0, i1, i2).slice(1, i2)));
  }
  double total = 0;
  for (double loss : row_loss) total += loss;
  return total;
}

}  // namespace

void check_gptq_options(const GptqOptions& options, int64_t columns, const std::string& layer) {
  if (options.bits < 2 || options.bits > 8)
    throw UsageError(fmt::format("ptq.wbits must be 2..8 for {}, got {}", layer, options.bits));
  if (options.group_size == 0 || options.group_size < -1 || options.group_size > columns)
    throw UsageError(fmt::format("ptq.group_size must be -1 (one group per row) or 1..{}, the input columns of {}, "
                                 "got {}",
                                 columns, layer, options.group_size));
  if (options.block_size < 1)
    throw UsageError(fmt::format("ptq.block_size must be >= 1 for {}, got {}", layer, options.block_size));
  if (!(options.percdamp >= 0 && options.percdamp < 1))
    throw UsageError(fmt::format("ptq.percdamp must be in [0, 1) for {}, got {}", layer, options.percdamp));
}

GptqResult gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian, const GptqOptions& options) {
  check_gptq_shapes(weight, hessian);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_gptq_options(options, cols, fmt::format("a [{}, {}] weight", rows, cols));
  torch::NoGradGuard no_grad;
  const float maxq = static_cast<float>((1 << options.bits) - 1);
  const bool grouped = options.group_size != -1;
  const bool static_groups = grouped && options.static_groups;  // the reference ignores it without groups
  const int64_t groups = group_count(cols, options.group_size);

  torch::Tensor W = weight.detach().to(torch::kFloat).contiguous().clone();
  torch::Tensor H = hessian.detach().to(torch::kFloat).contiguous().clone();
  GptqResult result;
  result.scales = torch::empty({rows, groups});
  result.zeros = torch::empty({rows, groups});
  if (!grouped) fill_grids(W, 0, cols, options, 0, result.scales, result.zeros);  // before dead columns, as ref

  drop_dead_columns(W, H);
  if (static_groups)
    for (int64_t g = 0; g < groups; ++g)
      fill_grids(W, g * options.group_size, std::min(cols, (g + 1) * options.group_size), options, g,
                 result.scales, result.zeros);
  if (options.act_order) {
    // torch.argsort is not stable: ties (e.g. dead columns, all 1) come out in libtorch's order, the reference's.
    result.perm = torch::argsort(torch::diag(H), /*dim=*/0, /*descending=*/true);
    W = W.index_select(1, result.perm).contiguous();
    H = H.index_select(0, result.perm).index_select(1, result.perm).contiguous();
  }
  const torch::Tensor Hinv = inverse_hessian_factor(H, options.percdamp);

  torch::Tensor Q = torch::empty({rows, cols});
  torch::Tensor codes = torch::empty({rows, cols});
  float* scale_of = result.scales.data_ptr<float>();
  float* zero_of = result.zeros.data_ptr<float>();
  const int64_t* perm = options.act_order ? result.perm.data_ptr<int64_t>() : nullptr;
  const int64_t group_size = grouped ? options.group_size : cols;
  // The grid of (r, col): a group's range is found when the loop reaches its first column (from the weight as
  // it stands before this block's updates), unless the ranges were fixed up front.
  const auto grid_of = [&](int64_t r, int64_t col, const float* w_row) {
    const int64_t g = static_groups && perm ? perm[col] / group_size : col / group_size;
    if (grouped && !static_groups && col % group_size == 0) {
      const Grid grid = find_grid(w_row + col, std::min(group_size, cols - col), maxq, options.symmetric);
      scale_of[r * groups + g] = grid.scale;
      zero_of[r * groups + g] = grid.zero;
    }
    return Grid{scale_of[r * groups + g], zero_of[r * groups + g]};
  };
  result.loss = column_loop(W, Hinv, options.block_size, 0.0f, maxq, grid_of, Q, codes);
  result.codes = codes.to(torch::kInt32);
  result.weight = Q;
  if (options.act_order) {
    const torch::Tensor invperm = torch::argsort(result.perm);
    result.weight = Q.index_select(1, invperm);
    result.codes = result.codes.index_select(1, invperm);
  }
  if (options.act_order && !static_groups) {
    // AutoGPTQ's bookkeeping: the column processed j-th belongs to the (j / group_size)-th group produced.
    result.g_idx = torch::empty({cols}, torch::kInt32);
    result.g_idx.index_put_({result.perm}, natural_g_idx(cols, options.group_size));
  } else {
    result.g_idx = natural_g_idx(cols, options.group_size);
  }
  return result;
}

GptqResult rtn_quantize(const torch::Tensor& weight, const GptqOptions& options) {
  QF_CHECK(weight.dim() == 2, fmt::format("RTN needs a 2-dimensional weight, got {} dimensions", weight.dim()));
  const int64_t rows = weight.size(0), cols = weight.size(1);
  check_gptq_options(options, cols, fmt::format("a [{}, {}] weight", rows, cols));
  torch::NoGradGuard no_grad;
  const float maxq = static_cast<float>((1 << options.bits) - 1);
  const int64_t groups = group_count(cols, options.group_size);
  const int64_t group_size = options.group_size == -1 ? cols : options.group_size;

  const torch::Tensor W = weight.detach().to(torch::kFloat).contiguous();
  GptqResult result;
  result.scales = torch::empty({rows, groups});
  result.zeros = torch::empty({rows, groups});
  for (int64_t g = 0; g < groups; ++g)
    fill_grids(W, g * group_size, std::min(cols, (g + 1) * group_size), options, g, result.scales, result.zeros);
  result.weight = torch::empty({rows, cols});
  torch::Tensor codes = torch::empty({rows, cols});
  const float* w = W.data_ptr<float>();
  const float* s = result.scales.data_ptr<float>();
  const float* z = result.zeros.data_ptr<float>();
  float* q_out = result.weight.data_ptr<float>();
  float* code_out = codes.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t g = r * groups + c / group_size;
      const Quantized q = quantize_value(w[r * cols + c], {s[g], z[g]}, 0.0f, maxq);
      q_out[r * cols + c] = q.value;
      code_out[r * cols + c] = q.code;
    }
  result.codes = codes.to(torch::kInt32);
  result.g_idx = natural_g_idx(cols, options.group_size);
  return result;
}

namespace {

// The fixed grid's tensors as fp32 contiguous [rows, cols], checked against the weight.
std::pair<torch::Tensor, torch::Tensor> fixed_grid_tensors(const torch::Tensor& weight, const FixedGrid& grid) {
  QF_CHECK(weight.dim() == 2, fmt::format("a fixed-grid quantization needs a 2-dimensional weight, got {} "
                                          "dimensions", weight.dim()));
  QF_CHECK(grid.scale.defined() && grid.zero.defined() && grid.scale.sizes() == weight.sizes() &&
               grid.zero.sizes() == weight.sizes(),
           fmt::format("a fixed grid needs scale and zero of the weight's shape [{}]", fmt::join(weight.sizes(), "x")));
  QF_CHECK(grid.qmin < grid.qmax, fmt::format("a fixed grid needs qmin < qmax, got {}..{}", grid.qmin, grid.qmax));
  return {grid.scale.detach().to(torch::kFloat).contiguous(), grid.zero.detach().to(torch::kFloat).contiguous()};
}

// The bookkeeping both fixed-grid entry points return.
GptqResult fixed_result(const torch::Tensor& Q, const torch::Tensor& codes, const FixedGrid& grid, int64_t cols) {
  GptqResult result;
  result.weight = Q;
  result.codes = codes.to(torch::kInt32);
  result.scales = grid.scale;
  result.zeros = grid.zero;
  result.g_idx = torch::arange(cols, torch::kInt32);
  return result;
}

}  // namespace

GptqResult gptq_quantize_fixed(const torch::Tensor& weight, const torch::Tensor& hessian, const FixedGrid& grid,
                               const GptqOptions& options) {
  check_gptq_shapes(weight, hessian);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const auto [scale, zero] = fixed_grid_tensors(weight, grid);
  GptqOptions checked = options;  // bits and groups play no part: only block_size and percdamp are checked
  checked.bits = 4;
  checked.group_size = -1;
  check_gptq_options(checked, cols, fmt::format("a [{}, {}] weight", rows, cols));
  torch::NoGradGuard no_grad;

  torch::Tensor W = weight.detach().to(torch::kFloat).contiguous().clone();
  torch::Tensor H = hessian.detach().to(torch::kFloat).contiguous().clone();
  drop_dead_columns(W, H);  // the grid was fixed before, as RPTQ calibrates its weight quantizer first
  const torch::Tensor Hinv = inverse_hessian_factor(H, options.percdamp);
  const float* s = scale.data_ptr<float>();
  const float* z = zero.data_ptr<float>();
  const auto grid_of = [&](int64_t r, int64_t col, const float*) { return Grid{s[r * cols + col], z[r * cols + col]}; };
  torch::Tensor Q = torch::empty({rows, cols});
  torch::Tensor codes = torch::empty({rows, cols});
  const double loss = column_loop(W, Hinv, options.block_size, static_cast<float>(grid.qmin),
                                  static_cast<float>(grid.qmax), grid_of, Q, codes);
  GptqResult result = fixed_result(Q, codes, grid, cols);
  result.loss = loss;
  return result;
}

GptqResult rtn_quantize_fixed(const torch::Tensor& weight, const FixedGrid& grid) {
  const auto [scale, zero] = fixed_grid_tensors(weight, grid);
  torch::NoGradGuard no_grad;
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const torch::Tensor W = weight.detach().to(torch::kFloat).contiguous();
  torch::Tensor Q = torch::empty({rows, cols});
  torch::Tensor codes = torch::empty({rows, cols});
  const float* w = W.data_ptr<float>();
  const float* s = scale.data_ptr<float>();
  const float* z = zero.data_ptr<float>();
  float* q_out = Q.data_ptr<float>();
  float* code_out = codes.data_ptr<float>();
  const float qmin = static_cast<float>(grid.qmin), qmax = static_cast<float>(grid.qmax);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const Quantized q = quantize_value(w[i], {s[i], z[i]}, qmin, qmax);
    q_out[i] = q.value;
    code_out[i] = q.code;
  }
  return fixed_result(Q, codes, grid, cols);
}

double reconstruction_error(const torch::Tensor& weight, const torch::Tensor& quantized, const torch::Tensor& xtx) {
  QF_CHECK(weight.sizes() == quantized.sizes() && weight.dim() == 2,
           "reconstruction_error needs two 2-dimensional weights of one shape");
  QF_CHECK(xtx.dim() == 2 && xtx.size(0) == weight.size(1) && xtx.size(1) == weight.size(1),
           fmt::format("reconstruction_error needs a [{0}, {0}] X^T X", weight.size(1)));
  torch::NoGradGuard no_grad;
  const torch::Tensor D = (weight.to(torch::kDouble) - quantized.to(torch::kDouble));
  // In blocks of S's columns, so that no double copy of a large S exists.
  constexpr int64_t kColumns = 1024;
  double error = 0;
  for (int64_t j = 0; j < xtx.size(1); j += kColumns) {
    const int64_t n = std::min(kColumns, xtx.size(1) - j);
    error += (D.mm(xtx.narrow(1, j, n).to(torch::kDouble)) * D.narrow(1, j, n)).sum().item<double>();
  }
  return error;
}

}  // namespace qforge::quant
