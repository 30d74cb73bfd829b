// qforge eval tasks' scoring: a tiny task whose log-likelihoods are computed here by hand from the unsharded
// model's full logits (one forward of context + continuation, no cache, no shared contexts), on every grid the
// world allows; results of TP 1 identical bit for bit whatever the DP size; greedy generation until a stop; metrics.
#include "framework/eval/task_eval.h"
#include "framework/eval/task_scoring.h"
#include "framework/model/generation.h"
#include "framework/tokenizer/tokenizer.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>

#include <cmath>

namespace qforge::eval {
namespace {

using model::runtime;

// fp32 forward passes that differ only in how the work is batched and split: relative to |log-likelihood|.
constexpr double kLoglikelihoodTolerance = 2e-5;

model::ModelConfig tiny_config() {
  model::ModelConfig c = model::llama(4, 2, /*tied=*/false);
  c.vocab_size = tok::kByteTokenizerVocab;  // 259: odd, so TP pads the vocabulary
  c.max_positions = 48;
  return c;
}

std::unique_ptr<tok::Tokenizer> byte_tokenizer(const model::SharedDir& dir) {
  if (runtime().rank() == 0) tok::write_byte_tokenizer(dir / "bytes.bin");
  runtime().world().barrier();
  return tok::load_tokenizer(dir / "bytes.bin");
}

// Shared contexts, one- and many-token continuations, WinoGrande's per-choice contexts, a context longer than the
// window (cut from the left), and enough items for several batches per DP group.
Task tiny_task() {
  Task task;
  task.spec.name = "tiny";
  task.spec.reports_acc_norm = true;
  auto add = [&](std::vector<std::string> contexts, std::vector<std::string> continuations,
                 std::vector<std::string> choices, int gold) {
    TaskItem item;
    item.index = static_cast<int64_t>(task.items.size());
    item.contexts = std::move(contexts);
    item.continuations = std::move(continuations);
    item.choices = std::move(choices);
    item.gold = gold;
    task.items.push_back(item);
  };
  add({"Question: ab\nAnswer:"}, {" x", " yz", " w"}, {"x", "yz", "w"}, 1);
  add({"The cat", "The dog"}, {" ran away."}, {"The cat", "The dog"}, 0);
  add({std::string(60, 'q') + " end:"}, {" long tail", " t"}, {"long tail", "t"}, 0);
  for (int i = 0; i < 9; ++i) {
    const std::string stem = "item " + std::to_string(i) + std::string(i, '*') + "?";
    add({stem}, {" yes", " no", " maybe so"}, {"yes", "no", "maybe so"}, i % 3);
  }
  return task;
}

struct Expected {
  double loglikelihood;
  bool greedy;
};

// The harness's recipe written out: continuation tokens = tokens of context + continuation after the context's;
// input (context + continuation)[-(window + 1):][:-1]; log-softmax of the full logits.
Expected by_hand(model::CausalLM& reference, const tok::Tokenizer& tokenizer, const std::string& context,
                 const std::string& continuation) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> context_ids = tokenizer.encode(context, true, false);
  const std::vector<int64_t> whole = tokenizer.encode(context + continuation, true, false);
  std::vector<int64_t> all = context_ids;
  all.insert(all.end(), whole.begin() + static_cast<std::ptrdiff_t>(context_ids.size()), whole.end());
  const int64_t continuation_length = static_cast<int64_t>(whole.size() - context_ids.size());
  const int64_t window = reference.config().max_positions;
  if (static_cast<int64_t>(all.size()) > window + 1) all.erase(all.begin(), all.end() - (window + 1));
  torch::Tensor ids = torch::tensor(all, torch::kLong);
  const int64_t length = ids.numel() - 1;
  torch::Tensor logits = reference.forward(ids.narrow(0, 0, length).unsqueeze(0)).squeeze(0);  // [length, vocab]
  logits = logits.narrow(-1, 0, reference.config().vocab_size);
  torch::Tensor log_probs = torch::log_softmax(logits.to(torch::kDouble), -1);
  Expected e{0, true};
  for (int64_t t = length - continuation_length; t < length; ++t) {
    const int64_t target = ids[t + 1].item<int64_t>();
    e.loglikelihood += log_probs[t][target].item<double>();
    e.greedy = e.greedy && log_probs[t].argmax().item<int64_t>() == target;
  }
  return e;
}

TEST(EvalTasks, LoglikelihoodsMatchTheHandComputedOnesOnEveryGrid) {
  model::SharedDir dir("eval_tasks");
  auto tokenizer = byte_tokenizer(dir);
  const Task task = tiny_task();
  model::CausalLM reference(tiny_config(), runtime().self());
  model::init_random(reference, 11, 0.1);
  TaskRunOptions options;
  options.batch_size = 2;
  const TaskResult alone = run_task(reference, *tokenizer, task, options, runtime().self());

  int near_ties = 0;
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    const TaskItem& item = task.items[i];
    std::vector<double> expected;
    for (std::size_t c = 0; c < item.choice_count(); ++c) {
      const Expected e = by_hand(reference, *tokenizer, item.context(c), item.continuation(c));
      expected.push_back(e.loglikelihood);
      const double got = alone.items[i].loglikelihoods[c];
      EXPECT_NEAR(got, e.loglikelihood, kLoglikelihoodTolerance * std::max(1.0, std::abs(e.loglikelihood)))
          << "item " << i << " choice " << c;
      EXPECT_EQ(alone.items[i].greedy[c], e.greedy) << "item " << i << " choice " << c;
    }
    const int best = static_cast<int>(std::max_element(expected.begin(), expected.end()) - expected.begin());
    std::vector<double> sorted = expected;
    std::sort(sorted.rbegin(), sorted.rend());
    if (sorted[0] - sorted[1] < 2 * kLoglikelihoodTolerance * std::abs(sorted[0])) ++near_ties;
    else EXPECT_EQ(alone.items[i].prediction, best) << "item " << i;
    EXPECT_EQ(alone.items[i].values.at("acc"), best == item.gold ? 1.0 : 0.0) << "item " << i;
  }
  EXPECT_EQ(near_ties, 0) << "the random model should not tie; a tie makes this test weaker";

  for (int tp : model::tp_sizes()) {
    if (tp > 2) continue;  // the tiny model has 2 kv heads
    dist::Grid grid(runtime(), tp);
    model::CausalLM sharded(tiny_config(), grid.tp_group());
    model::init_random(sharded, 11, 0.1);
    const TaskResult result = run_task(sharded, *tokenizer, task, options, grid.dp_group());
    for (std::size_t i = 0; i < task.items.size(); ++i) {
      for (std::size_t c = 0; c < task.items[i].choice_count(); ++c) {
        const double want = alone.items[i].loglikelihoods[c], got = result.items[i].loglikelihoods[c];
        if (tp == 1)  // the same fixed batches whatever the DP size: the same rounding
          EXPECT_EQ(got, want) << grid.describe() << " item " << i << " choice " << c;
        else
          EXPECT_NEAR(got, want, kLoglikelihoodTolerance * std::max(1.0, std::abs(want)))
              << grid.describe() << " item " << i << " choice " << c;
      }
      EXPECT_EQ(result.items[i].prediction, alone.items[i].prediction) << grid.describe() << " item " << i;
      EXPECT_EQ(result.items[i].prediction_norm, alone.items[i].prediction_norm) << grid.describe() << " item " << i;
    }
    EXPECT_EQ(result.metrics.at("acc").value, alone.metrics.at("acc").value) << grid.describe();
    EXPECT_EQ(result.metrics.at("acc_norm").value, alone.metrics.at("acc_norm").value) << grid.describe();
  }
}

TEST(EvalTasks, GreedyGenerationStopsWhereTheHarnessCutsIt) {
  model::SharedDir dir("eval_generate");
  auto tokenizer = byte_tokenizer(dir);
  model::CausalLM reference(tiny_config(), runtime().self());
  model::init_random(reference, 5, 0.1);
  Task task;
  task.spec.name = "tiny_generate";
  task.spec.kind = TaskKind::kGenerateUntil;
  task.spec.max_gen_tokens = 12;
  for (int i = 0; i < 5; ++i) {
    TaskItem item;
    item.index = i;
    item.contexts = {"Question: number " + std::to_string(i) + "?\nAnswer:"};
    task.items.push_back(item);
  }
  // Stops chosen from each prompt's own free continuation, so that every row stops early at a known place.
  std::vector<std::string> free_text;
  for (const TaskItem& item : task.items) {
    auto tokens = model::generate(reference, {tokenizer->encode(item.contexts[0], true, false)}, 12, {});
    free_text.push_back(tokenizer->decode(tokens[0]));
  }
  auto one_byte = [](const std::string& text, std::size_t at) {
    return text.empty() ? std::string("\x01") : text.substr(std::min(at, text.size() - 1), 1);
  };
  task.spec.until = {one_byte(free_text[0], 3), one_byte(free_text[1], 4)};
  for (std::size_t i = 0; i < task.items.size(); ++i) task.items[i].answers = {cut_at_stops(free_text[i], {})};

  TaskRunOptions options;
  options.batch_size = 2;
  dist::Grid grid(runtime(), 1);  // DP over the whole world
  model::CausalLM replica(tiny_config(), grid.tp_group());
  model::init_random(replica, 5, 0.1);
  const TaskResult result = run_task(replica, *tokenizer, task, options, grid.dp_group());
  int stopped_early = 0;
  for (std::size_t i = 0; i < task.items.size(); ++i) {
    // One byte per token: generation ends with the token that completes the first stop string.
    std::size_t end = free_text[i].size();
    for (const std::string& stop : task.spec.until) {
      const auto at = free_text[i].find(stop);
      if (at != std::string::npos) end = std::min(end, at + stop.size());
    }
    stopped_early += end < free_text[i].size();
    EXPECT_EQ(result.items[i].generated, free_text[i].substr(0, end)) << "item " << i;
    const std::string filtered = cut_at_stops(free_text[i], task.spec.until);
    EXPECT_EQ(result.items[i].filtered, filtered) << "item " << i;
    const bool match = normalize_answer(filtered) == normalize_answer(task.items[i].answers[0]);
    EXPECT_EQ(result.items[i].values.at("exact_match"), match ? 1.0 : 0.0) << "item " << i;
  }
  EXPECT_GE(stopped_early, 2) << "the stops were taken from items 0 and 1's own text";
}

TEST(EvalTasks, StandardErrorsAreTheHarnesss) {
  // mean 0.6, sample standard deviation sqrt(0.3) over 5 items: stderr sqrt(0.3 / 5)
  const Metric m = mean_with_stderr({1, 0, 1, 1, 0});
  EXPECT_DOUBLE_EQ(m.value, 0.6);
  EXPECT_NEAR(m.stderr_, std::sqrt(0.3 / 5), 1e-15);
  EXPECT_TRUE(std::isnan(mean_with_stderr({1}).stderr_));
}

}  // namespace
}  // namespace qforge::eval
