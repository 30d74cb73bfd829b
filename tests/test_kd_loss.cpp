// The vocabulary-parallel distillation losses (distill/kd_loss.h) against unsharded libtorch autograd references
// computed in double in the same process: values and gradients for T = 1 and 2, fp32 and bf16 student logits, a
// vocabulary of 251 (padded under TP 2 and 4), as 1, 2 and 4 MPI ranks over every TP size the world allows; closed
// forms (teacher = student, uniform teacher), the top-K bucket formula and its derivative, padding rows, large
// logits and input errors.
#include "distill/kd_loss.h"
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/model/parallel.h"
#include "tests/model_fixtures.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace qforge::distill {
namespace {

using model::expect_close;
using model::runtime;
using model::tp_sizes;

constexpr int64_t kVocab = 251;  // odd: the last rank's slice ends in padding under TP 2 and 4
constexpr int64_t kRows = 6;
constexpr int64_t kTopK = 8;
constexpr double kInf = std::numeric_limits<double>::infinity();

// fp32 against a double reference: per-row losses of a few nats carry a few ulps per reduction over 250 entries.
constexpr double kLossAbsTol = 1e-5;
constexpr double kLossRelTol = 1e-6;
// Gradient entries are differences of probabilities (|g| <= 2 with the row weights below), exact to fp32 rounding.
constexpr double kGradAbsTol = 1e-7;
constexpr double kGradRelTol = 2e-6;  // measured: up to 3e-7 of the largest entry
// bf16 student: the loss is computed in fp32 from the same rounded logits as the reference (fp32 tolerances
// hold); the gradient is rounded to bf16 on return: 8 significant bits, within 2^-8 relative; ×2 margin.
constexpr double kBf16GradRelTol = 1.0 / 128;  // measured: up to 3.3e-3
// Logits of magnitude 1e4: losses up to ~1e4 nats, fp32 keeps ~7 significant digits of them.
constexpr double kLargeLossRelTol = 1e-6;  // measured: 1e-7
// The closed-form top-K gradient against autograd, both in double.
constexpr double kDoubleTol = 1e-12;

struct LossAndGrad {
  torch::Tensor loss;  // [N]
  torch::Tensor grad;  // [N, V] for a reference; this rank's [N, V_local] for a sharded run
};

torch::Tensor random_logits(double scale, uint64_t seed, int64_t vocab = kVocab) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({kRows, vocab}, generator) * scale;
}

// The incoming gradient of each row: distinct weights, so a gradient not scaled by its own row shows.
torch::Tensor row_weights() { return torch::linspace(0.5, 2.0, kRows); }

// This rank's slice of full logits [N, V], padded with -inf like model::VocabParallelHead's output.
torch::Tensor shard_of(const torch::Tensor& full, dist::Communicator& tp, torch::ScalarType dtype) {
  auto [start, length] = model::shard_range(full.size(-1), tp, /*pad=*/true);
  const int64_t padding = length * tp.size() - full.size(-1);
  torch::Tensor padded = torch::constant_pad_nd(full.to(torch::kFloat), {0, padding}, -kInf);
  return padded.narrow(-1, start, length).to(dtype).clone();
}

// A sharded gradient equals the reference's slice on the real vocabulary, is exactly 0 on padding, has `dtype`.
void expect_shard_of(const torch::Tensor& shard, const torch::Tensor& full, dist::Communicator& tp,
                     torch::ScalarType dtype, double abs_tol, double rel_tol, const std::string& what) {
  EXPECT_EQ(shard.scalar_type(), dtype) << what;
  auto [start, length] = model::shard_range(full.size(-1), tp, /*pad=*/true);
  const int64_t first = std::min(start, full.size(-1));  // a rank may hold only padding
  const int64_t real = std::min(length, full.size(-1) - first);
  torch::Tensor actual = shard.to(torch::kDouble);
  if (real > 0)
    expect_close(actual.narrow(-1, 0, real), full.narrow(-1, first, real).to(torch::kDouble), abs_tol, rel_tol, what);
  EXPECT_TRUE(torch::all(actual.narrow(-1, real, length - real) == 0).item<bool>()) << what << ": padding gradient";
}

// -(softmax(t / T) * log_softmax(s / T)).sum(-1) with torch autograd, in double, on the full vocabulary.
LossAndGrad soft_reference(const torch::Tensor& student, const torch::Tensor& teacher, double temperature) {
  torch::Tensor s = student.to(torch::kDouble).detach().requires_grad_(true);
  torch::Tensor p = torch::softmax(teacher.to(torch::kDouble) / temperature, -1);
  torch::Tensor loss = -(p * torch::log_softmax(s / temperature, -1)).sum(-1);
  (loss * row_weights()).sum().backward();
  return {loss.detach(), s.grad()};
}

LossAndGrad soft_sharded(const torch::Tensor& student, const torch::Tensor& teacher, dist::Communicator& tp,
                         double temperature, torch::ScalarType dtype) {
  torch::Tensor s = shard_of(student, tp, dtype).requires_grad_(true);
  torch::Tensor loss = vocab_parallel_soft_cross_entropy(s, shard_of(teacher, tp, torch::kFloat), tp, temperature);
  (loss * row_weights()).sum().backward();
  return {loss.detach(), s.grad()};
}

// The teacher's top-K of log_softmax(teacher) per row, as the corpus stores them; `padding_row` >= 0 becomes a
// padding position (ids 0, log-probs -inf).
struct TopK {
  torch::Tensor ids, logprobs;
};
TopK teacher_topk(const torch::Tensor& teacher, int64_t k, int64_t padding_row = -1) {
  auto [logprobs, ids] = torch::log_softmax(teacher.to(torch::kFloat), -1).topk(k, -1);
  if (padding_row >= 0) {
    ids[padding_row].fill_(0);
    logprobs[padding_row].fill_(-kInf);
  }
  return {ids, logprobs};
}

// The bucket formula -sum_K p_k log q_k - m log R with torch autograd, in double; padding rows give 0.
LossAndGrad topk_reference(const torch::Tensor& student, const TopK& topk) {
  torch::Tensor s = student.to(torch::kDouble).detach().requires_grad_(true);
  torch::Tensor p = topk.logprobs.to(torch::kDouble).exp();
  torch::Tensor m = (1 - p.sum(-1)).clamp_min(0);
  torch::Tensor in_topk = torch::zeros_like(s, torch::kBool).scatter_(-1, topk.ids, true);
  torch::Tensor log_r = torch::logsumexp(s.masked_fill(in_topk, -kInf), -1) - torch::logsumexp(s, -1);
  torch::Tensor loss = -(p * torch::log_softmax(s, -1).gather(-1, topk.ids)).sum(-1) - m * log_r;
  loss = torch::where(topk.logprobs.isfinite().any(-1), loss, torch::zeros_like(loss));
  (loss * row_weights()).sum().backward();
  return {loss.detach(), s.grad()};
}

LossAndGrad topk_sharded(const torch::Tensor& student, const TopK& topk, dist::Communicator& tp,
                         torch::ScalarType dtype) {
  torch::Tensor s = shard_of(student, tp, dtype).requires_grad_(true);
  const int64_t vocab_start = model::shard_range(student.size(-1), tp, /*pad=*/true).first;
  torch::Tensor loss = vocab_parallel_topk_cross_entropy(s, topk.ids, topk.logprobs, tp, vocab_start);
  (loss * row_weights()).sum().backward();
  return {loss.detach(), s.grad()};
}

const char* name_of(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? "bf16" : "fp32"; }
double grad_rel_tol(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? kBf16GradRelTol : kGradRelTol; }

bool all_finite(const torch::Tensor& t) { return torch::isfinite(t.to(torch::kFloat)).all().item<bool>(); }

// ---- full soft cross-entropy ----------------------------------------------------------------------------------

TEST(SoftCrossEntropy, MatchesTheUnshardedAutogradReference) {
  const torch::Tensor student = random_logits(2.0, 1), teacher = random_logits(3.0, 2);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (double temperature : {1.0, 2.0})
      for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
        const std::string where = fmt::format("TP {}, T = {}, {} student", tp, temperature, name_of(dtype));
        // The reference sees the student rounded to the same dtype.
        LossAndGrad expected = soft_reference(student.to(dtype), teacher, temperature);
        LossAndGrad actual = soft_sharded(student, teacher, grid.tp_group(), temperature, dtype);
        EXPECT_EQ(actual.loss.scalar_type(), torch::kFloat) << where;
        expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLossRelTol, where + ": loss");
        expect_shard_of(actual.grad, expected.grad, grid.tp_group(), dtype, kGradAbsTol, grad_rel_tol(dtype),
                        where + ": gradient");
        EXPECT_GT(expected.loss.min().item<double>(), std::log(kVocab) * 0.5) << "non-trivial distributions";
      }
  }
}

TEST(SoftCrossEntropy, TheTeacherGetsNoGradient) {
  dist::Communicator& self = runtime().self();
  torch::Tensor student = random_logits(1.0, 3).requires_grad_(true);
  torch::Tensor teacher = random_logits(1.0, 4).requires_grad_(true);
  vocab_parallel_soft_cross_entropy(student, teacher, self).sum().backward();
  EXPECT_TRUE(student.grad().defined());
  EXPECT_FALSE(teacher.grad().defined());
}

TEST(SoftCrossEntropy, TeacherEqualToStudentGivesTheEntropyAndZeroGradient) {
  const torch::Tensor logits = random_logits(2.0, 5);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (double temperature : {1.0, 2.0}) {
      const std::string where = fmt::format("TP {}, T = {}", tp, temperature);
      torch::Tensor p = torch::softmax(logits.to(torch::kDouble) / temperature, -1);
      torch::Tensor entropy = -(p * p.log()).sum(-1);
      LossAndGrad actual = soft_sharded(logits, logits, grid.tp_group(), temperature, torch::kFloat);
      expect_close(actual.loss.to(torch::kDouble), entropy, kLossAbsTol, kLossRelTol, where + ": entropy");
      EXPECT_LE(actual.grad.abs().max().item<double>(), kGradAbsTol) << where;
    }
  }
}

TEST(SoftCrossEntropy, UniformTeacherAndZeroStudentGiveLogV) {
  const torch::Tensor zeros = torch::zeros({kRows, kVocab});
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (double temperature : {1.0, 2.0}) {
      LossAndGrad actual = soft_sharded(zeros, zeros, grid.tp_group(), temperature, torch::kFloat);
      expect_close(actual.loss.to(torch::kDouble), torch::full({kRows}, std::log(kVocab), torch::kDouble),
                   kLossAbsTol, 0, fmt::format("log V under TP {}, T = {}", tp, temperature));
    }
  }
}

TEST(SoftCrossEntropy, LargeLogitsStayFiniteAndExact) {
  // ±1e4 with unit spread: exp of the raw logits overflows fp32; a loss taken as logsumexp(s) - sum p s without
  // the row maximum would cancel ~1e4 against ~1e4.
  const torch::Tensor student = random_logits(1.0, 6).sign() * 1e4 + random_logits(1.0, 7);
  const torch::Tensor teacher = random_logits(1.0, 8).sign() * 1e4 + random_logits(1.0, 9);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (double temperature : {1.0, 2.0}) {
      const std::string where = fmt::format("TP {}, T = {}", tp, temperature);
      LossAndGrad expected = soft_reference(student, teacher, temperature);
      LossAndGrad actual = soft_sharded(student, teacher, grid.tp_group(), temperature, torch::kFloat);
      EXPECT_TRUE(all_finite(actual.loss) && all_finite(actual.grad)) << where;
      expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLargeLossRelTol, where + ": loss");
      expect_shard_of(actual.grad, expected.grad, grid.tp_group(), torch::kFloat, kGradAbsTol, kGradRelTol,
                      where + ": gradient");
    }
  }
}

TEST(SoftCrossEntropy, MismatchedShapesAndBadTemperaturesAreErrors) {
  dist::Communicator& self = runtime().self();
  try {
    vocab_parallel_soft_cross_entropy(torch::zeros({6, 10}), torch::zeros({6, 11}), self);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("teacher logits [6, 11] and student logits [6, 10] must have the same shape"),
              std::string::npos)
        << e.what();
  }
  for (double temperature : {0.0, -1.0, kInf}) {
    try {
      vocab_parallel_soft_cross_entropy(torch::zeros({6, 10}), torch::zeros({6, 10}), self, temperature);
      FAIL() << "expected an Error for T = " << temperature;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("the temperature must be positive and finite"), std::string::npos)
          << e.what();
    }
  }
}

// ---- top-K cross-entropy --------------------------------------------------------------------------------------

// Independent of the implementation: the closed form of the brief against autograd of the bucket formula.
TEST(TopKCrossEntropy, ClosedFormGradientIsTheDerivativeOfTheBucketFormula) {
  const torch::Tensor student = random_logits(2.0, 11).to(torch::kDouble);
  const TopK topk = teacher_topk(random_logits(3.0, 12), kTopK);
  torch::Tensor s = student.detach().requires_grad_(true);
  torch::Tensor p = topk.logprobs.to(torch::kDouble).exp();
  torch::Tensor in_topk = torch::zeros_like(s, torch::kBool).scatter_(-1, topk.ids, true);
  torch::Tensor q = torch::softmax(student, -1);
  torch::Tensor m = (1 - p.sum(-1)).unsqueeze(-1), r = q.masked_fill(in_topk, 0).sum(-1, true);
  torch::Tensor closed_form =
      torch::where(in_topk, q - torch::zeros_like(q).scatter_(-1, topk.ids, p), q * (1 - m / r));
  torch::Tensor log_r = torch::logsumexp(s.masked_fill(in_topk, -kInf), -1) - torch::logsumexp(s, -1);
  torch::Tensor loss = -(p * torch::log_softmax(s, -1).gather(-1, topk.ids)).sum(-1) - m.squeeze(-1) * log_r;
  loss.sum().backward();
  EXPECT_GT(m.min().item<double>(), 0.05) << "the bucket must carry mass";
  expect_close(closed_form, s.grad(), kDoubleTol, 0, "closed-form gradient");
}

TEST(TopKCrossEntropy, MatchesTheUnshardedBucketFormula) {
  const torch::Tensor student = random_logits(2.0, 13);
  const TopK topk = teacher_topk(random_logits(3.0, 14), kTopK, /*padding_row=*/4);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
      const std::string where = fmt::format("TP {}, {} student", tp, name_of(dtype));
      LossAndGrad expected = topk_reference(student.to(dtype), topk);
      LossAndGrad actual = topk_sharded(student, topk, grid.tp_group(), dtype);
      expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLossRelTol, where + ": loss");
      expect_shard_of(actual.grad, expected.grad, grid.tp_group(), dtype, kGradAbsTol, grad_rel_tol(dtype),
                      where + ": gradient");
      EXPECT_EQ(actual.loss[4].item<double>(), 0.0) << where << ": padding row";
      EXPECT_TRUE(torch::all(actual.grad[4] == 0).item<bool>()) << where << ": padding row gradient";
    }
  }
}

TEST(TopKCrossEntropy, AllIdsGiveTheFullSoftCrossEntropy) {
  const torch::Tensor student = random_logits(2.0, 15), teacher = random_logits(3.0, 16);
  const TopK all = teacher_topk(teacher, kVocab);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    const std::string where = fmt::format("K = V under TP {}", tp);
    LossAndGrad expected = soft_reference(student, teacher, 1.0);
    LossAndGrad actual = topk_sharded(student, all, grid.tp_group(), torch::kFloat);
    LossAndGrad soft = soft_sharded(student, teacher, grid.tp_group(), 1.0, torch::kFloat);
    expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLossRelTol, where + ": loss");
    expect_close(actual.loss, soft.loss, kLossAbsTol, kLossRelTol, where + ": loss vs the soft cross-entropy");
    expect_shard_of(actual.grad, expected.grad, grid.tp_group(), torch::kFloat, kGradAbsTol, kGradRelTol,
                    where + ": gradient");
  }
}

TEST(TopKCrossEntropy, PaddingRowsGiveExactlyZeroAndNoNan) {
  // As the corpus reader returns positions past a sample's length: id 0 (int32, the tokens' type), log-prob -inf.
  const TopK padding{torch::zeros({kRows, kTopK}, torch::kInt), torch::full({kRows, kTopK}, -kInf)};
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    LossAndGrad actual = topk_sharded(random_logits(2.0, 17), padding, grid.tp_group(), torch::kFloat);
    EXPECT_TRUE(torch::all(actual.loss == 0).item<bool>()) << "TP " << tp << ": " << actual.loss;
    EXPECT_TRUE(torch::all(actual.grad == 0).item<bool>()) << "TP " << tp;
  }
}

TEST(TopKCrossEntropy, LargeLogitsStayFiniteAndExact) {
  const torch::Tensor student = random_logits(1.0, 18).sign() * 1e4 + random_logits(1.0, 19);
  const TopK topk = teacher_topk(random_logits(1.0, 20).sign() * 1e4 + random_logits(1.0, 21), kTopK);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    const std::string where = fmt::format("TP {}", tp);
    LossAndGrad expected = topk_reference(student, topk);
    LossAndGrad actual = topk_sharded(student, topk, grid.tp_group(), torch::kFloat);
    EXPECT_TRUE(all_finite(actual.loss) && all_finite(actual.grad)) << where;
    expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLargeLossRelTol, where + ": loss");
    expect_shard_of(actual.grad, expected.grad, grid.tp_group(), torch::kFloat, kGradAbsTol, kGradRelTol,
                    where + ": gradient");
  }
}

TEST(TopKCrossEntropy, MismatchedShapesAreErrors) {
  dist::Communicator& self = runtime().self();
  const torch::Tensor student = torch::zeros({6, 10});
  auto message = [&](const torch::Tensor& ids, const torch::Tensor& logprobs) -> std::string {
    try {
      vocab_parallel_topk_cross_entropy(student, ids, logprobs, self, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(torch::zeros({6, 4}, torch::kLong), torch::zeros({6, 3})).find(
                "top-K ids [6, 4] and log-probs [6, 3] must have the same shape"),
            std::string::npos);
  EXPECT_NE(message(torch::zeros({5, 4}, torch::kLong), torch::zeros({5, 4})).find(
                "top-K ids [5, 4] must have the rows of the student logits [6, 10]"),
            std::string::npos);
  EXPECT_NE(message(torch::zeros({6, 4}), torch::zeros({6, 4})).find("top-K ids must be integers"),
            std::string::npos);
}

// V = 5 under TP 4: slices of 2, so the last rank holds only padding and its local row maxima are -inf.
TEST(VocabularyPadding, ARankHoldingOnlyPaddingChangesNothing) {
  constexpr int64_t kTinyVocab = 5;
  const torch::Tensor student = random_logits(2.0, 22, kTinyVocab), teacher = random_logits(3.0, 23, kTinyVocab);
  const TopK topk = teacher_topk(teacher, 2);
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    for (double temperature : {1.0, 2.0}) {
      const std::string where = fmt::format("V = 5 under TP {}, T = {}", tp, temperature);
      LossAndGrad expected = soft_reference(student, teacher, temperature);
      LossAndGrad actual = soft_sharded(student, teacher, grid.tp_group(), temperature, torch::kFloat);
      expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLossRelTol, where + ": loss");
      expect_shard_of(actual.grad, expected.grad, grid.tp_group(), torch::kFloat, kGradAbsTol, kGradRelTol,
                      where + ": gradient");
    }
    const std::string where = fmt::format("V = 5, K = 2 under TP {}", tp);
    LossAndGrad expected = topk_reference(student, topk);
    LossAndGrad actual = topk_sharded(student, topk, grid.tp_group(), torch::kFloat);
    expect_close(actual.loss.to(torch::kDouble), expected.loss, kLossAbsTol, kLossRelTol, where + ": loss");
    expect_shard_of(actual.grad, expected.grad, grid.tp_group(), torch::kFloat, kGradAbsTol, kGradRelTol,
                    where + ": gradient");
  }
}

TEST(MaskedMean, AveragesTheKeptRowsAndIgnoresTheOthers) {
  const torch::Tensor values = torch::tensor({1.0f, 2.0f, NAN, 6.0f});
  EXPECT_FLOAT_EQ(masked_mean(values, torch::tensor({true, true, false, true})).item<float>(), 3.0f);
  EXPECT_EQ(masked_mean(values, torch::zeros({4}, torch::kBool)).item<float>(), 0.0f);
  EXPECT_THROW(masked_mean(values, torch::ones({4})), Error);
}

}  // namespace
}  // namespace qforge::distill
