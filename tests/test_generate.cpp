// Data-free corpus generation: the schedule is a pure function of the sample index, and a sample's tokens do not
// depend on the batch it shares, its place in it, or the TP size.
#include "distill/corpus_generator.h"
#include "framework/common/error.h"
#include "framework/model/transformer.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>

#include <map>

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
  EXPECT_EQ(CorpusSchedule(s, 250).plan(5).seed, schedule.plan(5).seed);  // a pure function of (settings, index)
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

std::map<int64_t, std::vector<int32_t>> run(model::CausalLM& m, const CorpusSettings& s, std::vector<int64_t> indices,
                                            int64_t batch) {
  CorpusSchedule schedule(s, m.config().vocab_size);
  std::map<int64_t, std::vector<int32_t>> out;
  generate_samples(m, schedule, s, indices, batch, [&](int64_t i, const std::vector<int32_t>& t) {
    EXPECT_TRUE(out.emplace(i, t).second) << "sample " << i << " delivered twice";
  });
  return out;
}

TEST(CorpusGeneration, SamplesDoNotDependOnBatchOrTp) {
  const model::ModelConfig config = model::llama(8, 4, true);
  CorpusSettings s = small_settings();
  s.stop_at_eos = false;
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < 13; ++i) indices.push_back(i * 17);
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
