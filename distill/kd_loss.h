// LLM-QAT's knowledge-distillation loss, computed on logits sharded by vocabulary over the TP group:
//   L_i = -sum_c p^T_c(X_i) log p^S_c(X_i),   p = softmax(logits / T),
// the soft-label cross-entropy of the student S against the teacher T. The vocabulary is never gathered: only
// per-row scalars (maxima, sums of exponentials, partial dot products) are all-reduced, and the gradient is the
// closed form computed locally, so backward needs no communication.
//
// Logits are [N, V_local] holding the global ids [vocab_start, vocab_start + V_local) of this TP rank (any
// leading dimensions work; the vocabulary is the last one). The vocabulary is padded to a multiple of the TP
// size and padding entries must be -inf in both teacher and student (as model::VocabParallelHead returns them).
// Both functions return the per-row loss, in fp32, differentiable w.r.t. the student logits only; callers mask
// padding tokens and normalise (masked_mean). Every TP rank must call them together (they are collective).
#pragma once

#include "framework/dist/communicator.h"

#include <torch/torch.h>

#include <cstdint>

namespace qforge::distill {

// Per-row -sum_c softmax(teacher / T)_c * log_softmax(student / T)_c over the whole (sharded) vocabulary.
// No T^2 factor: LLM-QAT uses T = 1, and a caller who wants Hinton's gradient scale multiplies by T^2.
// Gradient w.r.t. the student: (softmax(student / T) - softmax(teacher / T)) / T, in the student's dtype; the
// teacher gets none. Throws qforge::Error when the shapes differ or the temperature is not positive.
torch::Tensor vocab_parallel_soft_cross_entropy(const torch::Tensor& student_logits,
                                                const torch::Tensor& teacher_logits, dist::Communicator& tp,
                                                double temperature = 1.0);

// The same loss against a teacher cached as its top-K (the corpus's topk_ids / topk_logprobs): ids [N, K]
// global (any integer type), logprobs [N, K] the teacher's full-vocabulary log-probabilities at temperature 1
// (which is why there is no temperature here). The teacher's mass outside the top-K, m = max(0, 1 - sum_k p_k),
// is one bucket matched against the student's mass outside the top-K, R = sum_{c not in K} q_c (q =
// softmax(student)):
//   L_i = -sum_{k in K} p_k log q_k - m log R.
// Gradient: q_c - p_c for c in K and q_c (1 - m / R) for c outside it. Rows whose logprobs are all -inf (padding
// positions as the corpus reader returns them) give loss 0 and gradient 0. Each rank uses the ids inside its
// own slice; a row must not repeat an id (the corpus never does). Throws qforge::Error on mismatched shapes.
torch::Tensor vocab_parallel_topk_cross_entropy(const torch::Tensor& student_logits, const torch::Tensor& topk_ids,
                                                const torch::Tensor& topk_logprobs, dist::Communicator& tp,
                                                int64_t vocab_start);

// Mean of `per_row` over the rows where `mask` (bool, same shape) is true; 0 when none is. Masked-out rows are
// ignored even when they hold NaN or inf.
torch::Tensor masked_mean(const torch::Tensor& per_row, const torch::Tensor& mask);

}  // namespace qforge::distill
