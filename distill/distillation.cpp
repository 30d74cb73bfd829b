#include "distill/distillation.h"

#include "distill/kd_loss.h"
#include "framework/common/error.h"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <optional>

namespace qforge::distill {
namespace {

// Flat row indices [rows] of the positions that predict a token of their own sample, for a batch trimmed to
// `width` positions.
torch::Tensor loss_rows(const torch::Tensor& lengths, int64_t width) {
  torch::Tensor positions = torch::arange(width).unsqueeze(0);
  return ((positions < (lengths - 1).unsqueeze(1)).reshape(-1)).nonzero().squeeze(1);
}

torch::Tensor rows_of(const torch::Tensor& per_position, const torch::Tensor& rows) {
  return per_position.reshape({-1, per_position.size(-1)}).index_select(0, rows);
}

}  // namespace

train::MicroStep distillation_step(model::CausalLM& student, model::CausalLM* teacher, const io::CorpusReader& corpus,
                                   const DistillSettings& settings) {
  if (!teacher && corpus.topk() == 0)
    throw UsageError(fmt::format("distill.teacher = corpus, but {} stores no teacher top-K (generate it with "
                                 "generate.store_topk > 0)", corpus.path()));
  if (!teacher && corpus.vocab_size() > student.config().vocab_size)
    throw UsageError(fmt::format("corpus file '{}' stores top-K ids of a vocabulary of {} tokens, more than the "
                                 "student's {}", corpus.path(), corpus.vocab_size(), student.config().vocab_size));
  if (!teacher && settings.temperature != 1.0)
    throw UsageError("distill.temperature must be 1 with distill.teacher = corpus: the stored log-probs are at temperature 1");
  return [&student, teacher, &corpus, settings](const std::vector<int64_t>& samples, double step_tokens) {
    auto [tokens, lengths] = corpus.batch(samples);
    const int64_t width = std::max<int64_t>(1, lengths.max().item<int64_t>());
    tokens = tokens.narrow(1, 0, width);
    // The phases are named for profiles (bench_compare qat-step --profile); free when nothing observes them.
    std::optional<at::RecordFunction> phase;
    auto enter = [&](const char* name) {
      phase.reset();
      phase.emplace(at::RecordScope::USER_SCOPE);
      if (phase->isActive()) phase->before(name);
    };
    enter("qforge::student_forward");
    const torch::Tensor student_logits = student.forward(tokens);
    const torch::Tensor rows = loss_rows(lengths, width).to(student_logits.device());
    const torch::Tensor student_rows = rows_of(student_logits, rows);
    torch::Tensor loss;
    if (teacher) {
      torch::Tensor teacher_rows;
      {
        torch::NoGradGuard no_grad;
        enter("qforge::teacher_forward");
        teacher_rows = rows_of(teacher->forward(tokens), rows);
      }
      enter("qforge::kd_loss");
      loss = vocab_parallel_soft_cross_entropy(student_rows, teacher_rows, student.tp(), settings.temperature);
    } else {
      auto [ids, logprobs] = corpus.topk_batch(samples);
      const torch::Device device = student_logits.device();
      loss = vocab_parallel_topk_cross_entropy(student_rows, rows_of(ids.narrow(1, 0, width).to(device), rows),
                                               rows_of(logprobs.narrow(1, 0, width).to(device), rows), student.tp(),
                                               student.vocab_start());
    }
    torch::Tensor sum = loss.sum();
    enter("qforge::backward");
    (sum / step_tokens).backward();
    phase.reset();
    return sum.item<double>();
  };
}

}  // namespace qforge::distill
