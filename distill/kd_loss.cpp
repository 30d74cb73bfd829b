#include "distill/kd_loss.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <sstream>

namespace qforge::distill {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

torch::Tensor row(const torch::Tensor& per_row) { return per_row.unsqueeze(-1); }

// weight * value, 0 where the weight is 0 even when the value is -inf (0 * -inf would be NaN).
torch::Tensor weighted(const torch::Tensor& weight, const torch::Tensor& value) {
  torch::Tensor product = weight * value;
  return torch::where(weight > 0, product, torch::zeros_like(product));
}

torch::Tensor weighted_row_sum(const torch::Tensor& weights, const torch::Tensor& values) {
  return weighted(weights, values).sum(-1);
}

// exp(x - max) / sum: the softmax from the all-reduced row statistics.
torch::Tensor softmax_from(const torch::Tensor& x, const torch::Tensor& row_max, const torch::Tensor& row_sum) {
  return (x - row(row_max)).exp() / row(row_sum);
}

// A row maximum of -inf (no finite entry) replaced by 0, so that x - max stays -inf instead of NaN.
torch::Tensor finite_or_zero(const torch::Tensor& row_max) {
  return torch::where(row_max == kMinusInf, torch::zeros_like(row_max), row_max);
}

// ---- full soft cross-entropy ----------------------------------------------------------------------------------

// Saved: student, teacher, maxima [2, N] of student / T and teacher / T, sums [2, N] of their shifted exponentials.
struct SoftCrossEntropy : torch::autograd::Function<SoftCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& student, const torch::Tensor& teacher,
                               dist::Communicator* tp, double temperature) {
    torch::Tensor s = student.to(torch::kFloat) / temperature;
    torch::Tensor t = teacher.to(torch::kFloat) / temperature;
    torch::Tensor maxima = torch::stack({s.amax(-1), t.amax(-1)});
    tp->all_reduce(maxima, dist::ReduceOp::kMax);

    torch::Tensor s_shifted = s - row(maxima[0]);
    torch::Tensor t_exp = (t - row(maxima[1])).exp();
    torch::Tensor sums = torch::stack({s_shifted.exp().sum(-1), t_exp.sum(-1), weighted_row_sum(t_exp, s_shifted)});
    tp->all_reduce(sums, dist::ReduceOp::kSum);

    ctx->save_for_backward({student, teacher, maxima, sums.narrow(0, 0, 2)});
    ctx->saved_data["temperature"] = temperature;
    // -sum_c p^T_c log p^S_c = logsumexp(s) - sum_c p^T_c s_c, both taken relative to max(s) for precision.
    return sums[0].log() - sums[2] / sums[1];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &student = saved[0], &teacher = saved[1], &maxima = saved[2], &sums = saved[3];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    torch::Tensor q = softmax_from(student.to(torch::kFloat) / temperature, maxima[0], sums[0]);
    torch::Tensor p = softmax_from(teacher.to(torch::kFloat) / temperature, maxima[1], sums[1]);
    torch::Tensor grad = (q - p) * row(grads[0] / temperature);
    return {grad.to(student.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---- top-K cross-entropy --------------------------------------------------------------------------------------

// The top-K ids of each row as seen by one rank. Ids outside this rank's slice map to a spare column one past
// the end, so that scattering them never overwrites a real entry and they are cut off afterwards.
struct LocalTopK {
  LocalTopK(const torch::Tensor& ids, int64_t vocab_start, int64_t local_vocab) : local_vocab(local_vocab) {
    torch::Tensor local = ids.to(torch::kLong) - vocab_start;
    mine = (local >= 0) & (local < local_vocab);
    column = local.masked_fill(~mine, local_vocab);
  }

  // [N, V_local]: `values` [N, K] at their columns, 0 (false) elsewhere.
  torch::Tensor scatter(const torch::Tensor& values) const {
    auto sizes = values.sizes().vec();
    sizes.back() = local_vocab + 1;
    return torch::zeros(sizes, values.options()).scatter_(-1, column, values).narrow(-1, 0, local_vocab);
  }

  // [N, K]: x at the top-K columns, 0 where the id is not in this slice.
  torch::Tensor gather(const torch::Tensor& x) const {
    torch::Tensor values = x.gather(-1, column.clamp_max(local_vocab - 1));
    return torch::where(mine, values, torch::zeros_like(values));
  }

  int64_t local_vocab;
  torch::Tensor mine;    // [N, K] bool: the id lies in this rank's slice
  torch::Tensor column;  // [N, K] its column in the slice, local_vocab when not mine
};

// Per-row scalars of the top-K loss, after the all-reduces.
struct TopKStats {
  torch::Tensor max;          // max_c s_c
  torch::Tensor sum;          // sum_c exp(s_c - max)
  torch::Tensor outside_max;  // max_{c not in K} s_c (-inf when every finite entry is in the top-K)
  torch::Tensor outside_sum;  // sum_{c not in K} exp(s_c - finite_or_zero(outside_max))
};

// The teacher's per-row quantities, identical on every rank (the top-K is replicated).
struct TeacherTopK {
  explicit TeacherTopK(const torch::Tensor& logprobs) {
    torch::Tensor lp = logprobs.to(torch::kFloat);
    p = lp.exp();
    captured = p.sum(-1);
    outside = (1 - captured).clamp_min(0);
    valid = (lp != kMinusInf).any(-1);
  }
  torch::Tensor p;         // [N, K] teacher probabilities of the top-K
  torch::Tensor captured;  // [N] sum_k p_k
  torch::Tensor outside;   // [N] m = max(0, 1 - sum_k p_k)
  torch::Tensor valid;     // [N] false on padding rows (every log-prob -inf)
};

// The bucket term applies only where the student has mass outside the top-K: when the top-K covers the whole
// vocabulary, m is rounding noise and the bucket is empty.
torch::Tensor bucket_weight(const TeacherTopK& teacher, const TopKStats& stats) {
  return torch::where(stats.outside_max > kMinusInf, teacher.outside, torch::zeros_like(teacher.outside));
}

// Saved: student, ids, logprobs, maxima [2, N] (max, outside_max) and sums [2, N] (sum, outside_sum).
struct TopKCrossEntropy : torch::autograd::Function<TopKCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& student, const torch::Tensor& ids,
                               const torch::Tensor& logprobs, dist::Communicator* tp, int64_t vocab_start) {
    torch::Tensor s = student.to(torch::kFloat);
    LocalTopK topk(ids, vocab_start, s.size(-1));
    TeacherTopK teacher(logprobs);
    torch::Tensor member = topk.scatter(topk.mine);
    torch::Tensor maxima = torch::stack({s.amax(-1), s.masked_fill(member, kMinusInf).amax(-1)});
    tp->all_reduce(maxima, dist::ReduceOp::kMax);

    torch::Tensor shifted = s - row(maxima[0]);
    torch::Tensor outside_exp = (s - row(finite_or_zero(maxima[1]))).exp().masked_fill(member, 0);
    torch::Tensor sums = torch::stack({shifted.exp().sum(-1), outside_exp.sum(-1),
                                       weighted_row_sum(teacher.p * topk.mine, topk.gather(shifted))});
    tp->all_reduce(sums, dist::ReduceOp::kSum);

    ctx->save_for_backward({student, ids, logprobs, maxima, sums.narrow(0, 0, 2)});
    ctx->saved_data["vocab_start"] = vocab_start;
    const TopKStats stats{maxima[0], sums[0], maxima[1], sums[1]};
    // log q_k = (s_k - max) - log sum;  log R = log outside_sum + outside_max - max - log sum.
    torch::Tensor log_sum = stats.sum.log();
    torch::Tensor log_outside = stats.outside_sum.log() + finite_or_zero(stats.outside_max) - stats.max - log_sum;
    torch::Tensor topk_term = teacher.captured * log_sum - sums[2];
    torch::Tensor loss = topk_term - weighted(bucket_weight(teacher, stats), log_outside);
    return torch::where(teacher.valid, loss, torch::zeros_like(loss));
  }

  // dL/ds_c = (sum_k p_k + m) q_c - p_c [c in K] - m r_c [c not in K], with r = softmax of s over the entries
  // outside the top-K (= q_c / R, without dividing by a possibly vanishing R). With sum_k p_k + m = 1 this is
  // q_c - p_c inside the top-K and q_c (1 - m / R) outside it.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &student = saved[0], &maxima = saved[3], &sums = saved[4];
    torch::Tensor s = student.to(torch::kFloat);
    LocalTopK topk(saved[1], ctx->saved_data["vocab_start"].toInt(), s.size(-1));
    TeacherTopK teacher(saved[2]);
    const TopKStats stats{maxima[0], sums[0], maxima[1], sums[1]};
    torch::Tensor member = topk.scatter(topk.mine);
    torch::Tensor m = bucket_weight(teacher, stats);

    torch::Tensor q = softmax_from(s, stats.max, stats.sum);
    // outside_sum is 0 only when no entry lies outside the top-K; then r is 0 (and m too).
    torch::Tensor outside_sum = stats.outside_sum.clamp_min(std::numeric_limits<float>::min());
    torch::Tensor r = softmax_from(s, finite_or_zero(stats.outside_max), outside_sum).masked_fill(member, 0);
    torch::Tensor grad = row(teacher.captured + m) * q - row(m) * r - topk.scatter(teacher.p * topk.mine);
    grad = torch::where(row(teacher.valid), grad * row(grads[0]), torch::zeros_like(grad));
    return {grad.to(student.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void check_soft_inputs(const torch::Tensor& student, const torch::Tensor& teacher, double temperature) {
  if (student.sizes() != teacher.sizes() || student.dim() < 1)
    throw Error(fmt::format("vocab_parallel_soft_cross_entropy: teacher logits {} and student logits {} must have "
                            "the same shape [N, V_local]",
                            shape_of(teacher), shape_of(student)));
  if (!(temperature > 0) || !std::isfinite(temperature))
    throw Error(fmt::format("vocab_parallel_soft_cross_entropy: the temperature must be positive and finite, got {}",
                            temperature));
}

void check_topk_inputs(const torch::Tensor& student, const torch::Tensor& ids, const torch::Tensor& logprobs) {
  const auto where = "vocab_parallel_topk_cross_entropy";
  if (ids.sizes() != logprobs.sizes())
    throw Error(fmt::format("{}: top-K ids {} and log-probs {} must have the same shape [N, K]", where,
                            shape_of(ids), shape_of(logprobs)));
  if (student.dim() < 1 || ids.dim() != student.dim() ||
      ids.sizes().slice(0, ids.dim() - 1) != student.sizes().slice(0, student.dim() - 1))
    throw Error(fmt::format("{}: top-K ids {} must have the rows of the student logits {} ([N, K] for [N, V_local])",
                            where, shape_of(ids), shape_of(student)));
  if (!c10::isIntegralType(ids.scalar_type(), /*includeBool=*/false))
    throw Error(fmt::format("{}: top-K ids must be integers, got {}", where, toString(ids.scalar_type())));
  if (!c10::isFloatingType(logprobs.scalar_type()))
    throw Error(fmt::format("{}: top-K log-probs must be floating point, got {}", where,
                            toString(logprobs.scalar_type())));
}

}  // namespace

torch::Tensor vocab_parallel_soft_cross_entropy(const torch::Tensor& student_logits,
                                                const torch::Tensor& teacher_logits, dist::Communicator& tp,
                                                double temperature) {
  check_soft_inputs(student_logits, teacher_logits, temperature);
  return SoftCrossEntropy::apply(student_logits, teacher_logits.detach(), &tp, temperature);
}

torch::Tensor vocab_parallel_topk_cross_entropy(const torch::Tensor& student_logits, const torch::Tensor& topk_ids,
                                                const torch::Tensor& topk_logprobs, dist::Communicator& tp,
                                                int64_t vocab_start) {
  check_topk_inputs(student_logits, topk_ids, topk_logprobs);
  return TopKCrossEntropy::apply(student_logits, topk_ids, topk_logprobs.detach(), &tp, vocab_start);
}

torch::Tensor masked_mean(const torch::Tensor& per_row, const torch::Tensor& mask) {
  if (per_row.sizes() != mask.sizes() || mask.scalar_type() != torch::kBool)
    throw Error(fmt::format("masked_mean: the mask must be bool with the shape of the values {}, got {} {}",
                            shape_of(per_row), toString(mask.scalar_type()), shape_of(mask)));
  torch::Tensor kept = torch::where(mask, per_row, torch::zeros_like(per_row));
  return kept.sum() / mask.sum().clamp_min(1).to(kept.scalar_type());
}

}  // namespace qforge::distill
