// Data-free corpus generation: the schedule is a pure function of the sample
// index, and a sample's tokens do not depend on the batch it shares, its place
// in it, or the TP size.
#include "distill/corpus_generator.h"
#include "framework/common/error.h"
#include "framework/model/transformer.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <set>

namespace qforge::distill {
namespace {

using model::runtime;

CorpusSettings small_settings() {
  CorpusSettings s;
  s.seq_len = 24;
  s.samples_per_token = 3;
  s.greedy_prefix = {3, 4, 5};
  s.exclude_tokens = {0, 1, 2};
  s.top_k = 20;
  s.seed = 7;
  return s;
}

TEST(CorpusSchedule, SweepsTheVocabularyAsTheReferenceDoes) {
  CorpusSettings s = small_settings();
  CorpusSchedule schedule(s, 250);
  EXPECT_EQ(schedule.num_samples(), (250 - 3) * 3);
  for (int64_t i : {0, 1, 2, 3, 100, 740}) {
    SamplePlan p = schedule.plan(i);
    EXPECT_EQ(p.start_token, 3 + i / 3) << i;
    EXPECT_EQ(p.greedy_tokens, 3 + i % 3) << i;
  }
  EXPECT_NE(schedule.plan(0).seed, schedule.plan(1).seed);
  EXPECT_EQ(CorpusSchedule(s, 250).plan(5).seed,
            schedule.plan(5).seed);  // a pure function of (settings, index)
  s.seed = 8;
  EXPECT_NE(CorpusSchedule(s, 250).plan(5).seed, schedule.plan(5).seed);
}

TEST(CorpusSchedule, RandomStartsAvoidExcludedTokens) {
  CorpusSettings s = small_settings();
  s.start_tokens = "random";
  s.num_samples = 500;
  CorpusSchedule schedule(s, 250);
  std::set<int64_t> seen;
  for (int64_t i = 0; i < 500; ++i) {
    const int64_t t = schedule.plan(i).start_token;
    EXPECT_GE(t, 3);
    EXPECT_LT(t, 250);
    seen.insert(t);
  }
  EXPECT_GT(seen.size(), 100u);
  s.start_tokens = "everything";
  EXPECT_THROW(CorpusSchedule(s, 250), UsageError);
}

// Generates the groups holding `indices` (in the order the indices first name
// them) and delivers those only.
std::map<int64_t, io::CorpusSample> run_topk(model::CausalLM& m, CorpusSettings s, const std::vector<int64_t>& indices,
                                             int64_t batch) {
  s.batch_size = batch;
  CorpusSchedule schedule(s, m.config().vocab_size);
  std::vector<int64_t> groups;
  for (int64_t i : indices)
    if (std::find(groups.begin(), groups.end(), i / batch) == groups.end()) groups.push_back(i / batch);
  const std::set<int64_t> wanted(indices.begin(), indices.end());
  std::map<int64_t, io::CorpusSample> out;
  generate_groups(
      m, schedule, groups,
      [&](const io::CorpusSample& sample) {
        EXPECT_TRUE(out.emplace(sample.index, sample).second) << "sample " << sample.index << " delivered twice";
      },
      [&](int64_t index) { return wanted.count(index) > 0; });
  return out;
}

std::map<int64_t, std::vector<int32_t>> run(model::CausalLM& m, const CorpusSettings& s,
                                            const std::vector<int64_t>& indices, int64_t batch) {
  std::map<int64_t, std::vector<int32_t>> out;
  for (const auto& [i, sample] : run_topk(m, s, indices, batch)) {
    EXPECT_TRUE(sample.topk_ids.empty() && sample.topk_logprobs.empty()) << "store_topk is 0";
    out.emplace(i, sample.tokens);
  }
  return out;
}

// Stored log-probs are compared at this fp32 tolerance: the KV-cache decode and
// the teacher-forced full forward (or another TP size's partial sums) add in
// other orders, so they differ in the last bits only.
constexpr double kTopKTolerance = 1e-4;

// The stored top-K equals an independent recomputation: the unsharded reference
// model's teacher-forced forward over the finished sample, log_softmax over the
// full vocabulary, topk(K) at positions 0 .. length-2.
double expect_topk_of_reference(model::CausalLM& reference, const io::CorpusSample& sample, int64_t k) {
  torch::NoGradGuard no_grad;
  const auto length = static_cast<int64_t>(sample.tokens.size());
  EXPECT_EQ(sample.topk_ids.size(), static_cast<size_t>((length - 1) * k)) << "sample " << sample.index;
  EXPECT_EQ(sample.topk_logprobs.size(), sample.topk_ids.size()) << "sample " << sample.index;
  if (sample.topk_ids.size() != static_cast<size_t>((length - 1) * k) ||
      sample.topk_logprobs.size() != sample.topk_ids.size())
    return 1e30;
  const torch::Tensor ids = torch::tensor(sample.tokens, torch::kInt).to(torch::kLong).unsqueeze(0);
  const torch::Tensor logits = reference.forward(ids).squeeze(0).slice(1, 0, reference.config().vocab_size);
  auto [values, indices] = torch::log_softmax(logits.to(torch::kFloat), 1).slice(0, 0, length - 1).topk(k, 1);
  const torch::Tensor stored_ids =
      torch::tensor(sample.topk_ids, torch::kInt).to(torch::kLong).reshape({length - 1, k});
  const torch::Tensor stored = torch::tensor(sample.topk_logprobs, torch::kFloat).reshape({length - 1, k});
  EXPECT_TRUE(torch::equal(stored_ids, indices)) << "sample " << sample.index;
  const double worst = (stored - values).abs().max().item<double>();
  EXPECT_LE(worst, kTopKTolerance) << "sample " << sample.index;
  return worst;
}

TEST(CorpusGeneration, StoredTopKMatchesTeacherForcedForwardOnEveryTp) {
  const model::ModelConfig config = model::llama(8, 4, true);
  CorpusSettings s = small_settings();
  s.store_topk = 5;
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < 11; ++i) indices.push_back(i);  // whole groups: nothing decoded in vain
  model::CausalLM reference(config, runtime().self());
  model::init_random(reference, 4, 0.2);
  const auto stored = run_topk(reference, s, indices, 4);
  ASSERT_EQ(stored.size(), indices.size());
  double worst_reference = 0;
  for (const auto& [i, sample] : stored) {
    SCOPED_TRACE(fmt::format("sample {}", i));
    worst_reference = std::max(worst_reference, expect_topk_of_reference(reference, sample, 5));
    EXPECT_GE(sample.tokens.size(), 2u);
  }
  // The tokens do not change when top-K is stored.
  CorpusSettings plain = s;
  plain.store_topk = 0;
  const auto tokens_only = run(reference, plain, indices, 4);
  for (const auto& [i, sample] : stored) EXPECT_EQ(sample.tokens, tokens_only.at(i)) << "sample " << i;

  double worst_tp = 0;
  for (int tp : model::tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    model::CausalLM sharded(config, grid.tp_group());
    model::init_random(sharded, 4, 0.2);
    const auto again = run_topk(sharded, s, {indices.rbegin(), indices.rend()}, 3);
    ASSERT_EQ(again.size(), stored.size()) << grid.describe();
    for (const auto& [i, sample] : stored) {
      const io::CorpusSample& other = again.at(i);
      EXPECT_EQ(other.tokens, sample.tokens) << grid.describe() << ", sample " << i;
      EXPECT_EQ(other.topk_ids, sample.topk_ids) << grid.describe() << ", sample " << i;
      ASSERT_EQ(other.topk_logprobs.size(), sample.topk_logprobs.size());
      double worst = 0;
      for (size_t j = 0; j < sample.topk_logprobs.size(); ++j)
        worst = std::max(worst, static_cast<double>(std::abs(other.topk_logprobs[j] - sample.topk_logprobs[j])));
      EXPECT_LE(worst, kTopKTolerance) << grid.describe() << ", sample " << i;
      worst_tp = std::max(worst_tp, worst);
    }
  }
  std::printf(
      "[topk] K=5, %zu samples: worst |logprob - teacher-forced| %.3g, "
      "worst across TP sizes %.3g (tolerance %.0e)\n",
      stored.size(), worst_reference, worst_tp, kTopKTolerance);
  s.store_topk = config.vocab_size + 1;
  EXPECT_THROW(run_topk(reference, s, {0}, 1), UsageError);
}

TEST(CorpusGeneration, SamplesDoNotDependOnBatchOrTp) {
  const model::ModelConfig config = model::llama(8, 4, true);
  CorpusSettings s = small_settings();
  s.stop_at_eos = false;
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < 13; ++i) indices.push_back(i);
  model::CausalLM reference(config, runtime().self());
  model::init_random(reference, 4, 0.2);
  auto one_at_a_time = run(reference, s, indices, 1);
  ASSERT_EQ(one_at_a_time.size(), indices.size());
  for (const auto& [i, tokens] : one_at_a_time) {
    EXPECT_EQ(static_cast<int64_t>(tokens.size()), s.seq_len);
    EXPECT_EQ(tokens[0], CorpusSchedule(s, config.vocab_size).plan(i).start_token);
  }
  std::vector<int64_t> reversed(indices.rbegin(), indices.rend());
  EXPECT_EQ(run(reference, s, reversed, 5), one_at_a_time);
  for (int tp : model::tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    model::CausalLM sharded(config, grid.tp_group());
    model::init_random(sharded, 4, 0.2);
    EXPECT_EQ(run(sharded, s, indices, 4), one_at_a_time) << grid.describe();
  }
}

// Every sample the run delivered, in delivery order, with the groups decoded in
// `groups` order.
std::vector<io::CorpusSample> delivered(model::CausalLM& m, const CorpusSchedule& schedule,
                                        const std::vector<int64_t>& groups, const std::vector<uint8_t>& done) {
  std::vector<io::CorpusSample> out;
  generate_groups(
      m, schedule, groups, [&](const io::CorpusSample& sample) { out.push_back(sample); },
      [&](int64_t index) { return !done[index]; });
  return out;
}

void expect_identical(const io::CorpusSample& a, const io::CorpusSample& b, const std::string& where) {
  EXPECT_EQ(a.tokens, b.tokens) << where << ", sample " << a.index;
  EXPECT_EQ(a.topk_ids, b.topk_ids) << where << ", sample " << a.index;
  EXPECT_TRUE(a.topk_logprobs == b.topk_logprobs) << where << ", sample " << a.index << ": log-probs not bit-equal";
}

// A killed run keeps the samples journaled before the kill (a prefix of the
// delivery order); its rerun decodes again every group that misses one, on this
// rank's share of the DP group. Each sample must come out bit for bit as in the
// uninterrupted run, whatever the cut, with rows retired at EOS on the way (a
// group shrinks).
TEST(CorpusGeneration, ResumingFromAnyCutGivesTheUninterruptedSamplesBitForBit) {
  model::ModelConfig config = model::llama(8, 4, true);
  CorpusSettings s = small_settings();
  s.num_samples = 40;
  s.batch_size = 6;  // groups of 6, the last of 4
  s.store_topk = 3;
  for (int tp : model::tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    const std::string layout = grid.describe();
    {  // EOS: the token the free-running samples produce most often, so that
      // many samples end early.
      model::CausalLM free_model(config, grid.tp_group());
      model::init_random(free_model, 4, 0.2);
      CorpusSettings free = s;
      free.stop_at_eos = false;
      const CorpusSchedule schedule(free, config.vocab_size);
      std::map<int32_t, int> counts;
      for (const auto& sample : delivered(free_model, schedule, {0, 1, 2}, std::vector<uint8_t>(40, 0)))
        for (size_t t = 4; t < sample.tokens.size(); ++t) ++counts[sample.tokens[t]];
      config.eos_token_id = std::max_element(counts.begin(), counts.end(), [](const auto& a, const auto& b) {
                              return a.second < b.second;
                            })->first;
    }
    model::CausalLM m(config, grid.tp_group());
    model::init_random(m, 4, 0.2);
    const CorpusSchedule schedule(s, config.vocab_size);
    std::vector<int64_t> all_groups(schedule.num_groups());
    std::iota(all_groups.begin(), all_groups.end(), 0);
    const std::vector<io::CorpusSample> whole = delivered(m, schedule, all_groups, std::vector<uint8_t>(40, 0));
    ASSERT_EQ(whole.size(), 40u) << layout;
    std::map<int64_t, const io::CorpusSample*> by_index;
    int64_t ended_early = 0;
    for (const auto& sample : whole) {
      by_index[sample.index] = &sample;
      ended_early += static_cast<int64_t>(sample.tokens.size()) < s.seq_len;
    }
    EXPECT_GE(ended_early, 5) << layout << ": too few samples end at EOS (" << config.eos_token_id << ")";
    EXPECT_LT(ended_early, 40) << layout;

    for (int64_t cut : {0, 1, 5, 6, 13, 22, 33, 39}) {
      std::vector<uint8_t> done(40, 0);
      for (int64_t k = 0; k < cut; ++k) done[whole[k].index] = 1;
      const std::vector<int64_t> unfinished = schedule.unfinished_groups(done);
      std::vector<int64_t> mine;  // this DP rank's share, decoded last group first
      for (size_t k = grid.dp_rank(); k < unfinished.size(); k += grid.dp()) mine.insert(mine.begin(), unfinished[k]);
      const std::string where = fmt::format("{}, cut after {} samples", layout, cut);
      std::set<int64_t> seen;
      for (const auto& sample : delivered(m, schedule, mine, done)) {
        EXPECT_FALSE(done[sample.index]) << where << ": sample " << sample.index << " was already journaled";
        EXPECT_TRUE(seen.insert(sample.index).second) << where << ": sample " << sample.index << " twice";
        expect_identical(sample, *by_index.at(sample.index), where);
      }
      int64_t expected = 0;  // this rank's groups' missing samples
      for (int64_t g : mine)
        for (int64_t i : schedule.group(g)) expected += done[i] ? 0 : 1;
      EXPECT_EQ(static_cast<int64_t>(seen.size()), expected) << where;
    }
  }
}

TEST(CorpusGeneration, StopsAtEosWhenAsked) {
  model::ModelConfig config = model::llama(8, 4, true);
  CorpusSettings s = small_settings();
  s.greedy_prefix = {24};  // all top-1: deterministic; make the first greedy continuation EOS
  model::CausalLM m(config, runtime().self());
  model::init_random(m, 4, 0.2);
  auto free_run = run(m, s, {0}, 1);
  const int32_t second = free_run.at(0).at(1);
  config.eos_token_id = second;
  model::CausalLM stopping(config, runtime().self());
  model::init_random(stopping, 4, 0.2);
  auto stopped = run(stopping, s, {0}, 1);
  EXPECT_EQ(stopped.at(0), (std::vector<int32_t>{free_run.at(0)[0], second}));
}

}  // namespace
}  // namespace qforge::distill
