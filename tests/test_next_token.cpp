// Pretraining's next-token micro-step (framework/train/next_token.h) and the text windows it reads
// (framework/io/text_windows.h): on every TP size the loss and every gradient equal an unsharded reference written
// directly with torch's cross_entropy on the full logits (a shorter last window exercises the masking); a
// trainer step over DP ranks gives the weights of one process; a text reads the same gzip-compressed or not.
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/io/corpus.h"
#include "framework/io/text_windows.h"
#include "framework/train/next_token.h"
#include "framework/train/trainer.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <numeric>

namespace qforge::train {
namespace {
namespace F = torch::nn::functional;
using model::CausalLM;
using model::runtime;
using model::SharedDir;

// fp32, the same operations in another order (vocabulary shards, masked rows): the loss sum of ~100 tokens to
// 1e-5 relative, gradients to 1e-5 absolute plus 1e-4 of their largest value.
constexpr double kLossRelTol = 1e-5;
constexpr double kGradAbsTol = 1e-5;
constexpr double kGradRelTol = 1e-4;
// A DP step against one process's: summation order only (test_train's tolerance, 2 steps at lr 1e-3).
constexpr double kWeightAbsTol = 2e-5;

constexpr int64_t kVocab = 250;  // model::llama's: not a multiple of 4 (padded vocabulary shards)
constexpr int64_t kSeqLen = 16;

// A random token stream of 5 windows and a 7-token tail: 6 samples, the last one shorter.
std::vector<int64_t> token_stream() {
  const torch::Tensor ids = model::random_ids(1, 5 * kSeqLen + 7, kVocab, 11).reshape(-1);
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
}

std::string write_stream_corpus(const SharedDir& dir) {
  const std::string path = dir / "windows.h5";
  if (runtime().rank() == 0) {
    EXPECT_EQ(io::write_window_corpus(path, token_stream(), kSeqLen, kVocab, {{"tokenizer", "test"}}), 6);
  }
  runtime().world().barrier();
  return path;
}

// sum over samples and positions t < length - 1 of -log softmax(logits[t])[token t + 1], with the full logits.
torch::Tensor reference_loss_sum(CausalLM& model, const io::CorpusReader& corpus, const std::vector<int64_t>& samples) {
  auto [tokens, lengths] = corpus.batch(samples);
  const torch::Tensor logits = model.forward(tokens);
  torch::Tensor sum = torch::zeros({});
  for (int64_t i = 0; i < tokens.size(0); ++i) {
    const int64_t n = lengths[i].item<int64_t>() - 1;
    sum = sum + F::cross_entropy(logits[i].narrow(0, 0, n), tokens[i].narrow(0, 1, n),
                                 F::CrossEntropyFuncOptions().reduction(torch::kSum));
  }
  return sum;
}

TEST(NextToken, WindowsOfATextStream) {
  SharedDir dir("next_token_windows");
  io::CorpusReader corpus(write_stream_corpus(dir));
  const std::vector<int64_t> stream = token_stream();
  ASSERT_EQ(corpus.num_samples(), 6);
  EXPECT_EQ(corpus.lengths().back(), 7);
  auto [tokens, lengths] = corpus.batch({1, 5});
  EXPECT_EQ(tokens[0][0].item<int64_t>(), stream[kSeqLen]);  // consecutive, non-overlapping
  EXPECT_EQ(tokens[1][6].item<int64_t>(), stream.back());
  EXPECT_EQ(next_token_positions(7), 6);
}

TEST(NextToken, LossAndGradientsMatchTheUnshardedCrossEntropy) {
  SharedDir dir("next_token_grad");
  io::CorpusReader corpus(write_stream_corpus(dir));
  const std::vector<int64_t> samples = {5, 0, 3};  // the short window first: padding past its length
  const double step_tokens = 2 * next_token_positions(kSeqLen) + next_token_positions(7) + 10.0;  // any divisor
  CausalLM reference(model::llama(4, 2, false), runtime().self());
  model::init_random(reference, 7, 0.2);
  const torch::Tensor expected = reference_loss_sum(reference, corpus, samples);
  (expected / step_tokens).backward();
  EXPECT_GT(expected.item<double>(), 0.0);
  for (int tp : model::tp_sizes()) {
    if (4 % tp != 0) continue;  // 4 heads
    dist::Grid grid(runtime(), tp);
    CausalLM model(model::llama(4, 2, false), grid.tp_group());
    model::init_random(model, 7, 0.2);
    const double sum = next_token_step(model, corpus)(samples, step_tokens);
    const std::string where = grid.describe();
    EXPECT_NEAR(sum, expected.item<double>(), kLossRelTol * expected.item<double>()) << where;
    model::expect_gradients_match(model, reference, kGradAbsTol, kGradRelTol, where);
  }
}

std::map<std::string, torch::Tensor> trained_weights(dist::Communicator& dp, const io::CorpusReader& corpus) {
  TrainSettings s;
  s.global_batch = 2;  // 3 steps an epoch of 6 samples
  s.micro_batch = 1;
  s.max_steps = 2;
  s.lr = 1e-3;
  s.bucket_mb = 0.004;  // several buckets
  CausalLM model(model::llama(4, 2, false), runtime().self());
  model::init_random(model, 7, 0.2);
  Trainer trainer(s, model, dp, corpus, next_token_positions, "", "");
  const TrainResult result = trainer.run(next_token_step(model, corpus));
  EXPECT_EQ(result.steps_done, 2);
  EXPECT_GT(result.last_loss, 0.0);
  return model::gathered_weights(model);
}

TEST(NextToken, DataParallelStepsGiveTheWeightsOfOneProcess) {
  if (runtime().size() != 2) GTEST_SKIP() << "needs 2 ranks";
  SharedDir dir("next_token_dp");
  io::CorpusReader corpus(write_stream_corpus(dir));
  const auto one = trained_weights(runtime().self(), corpus);
  const auto all = trained_weights(runtime().world(), corpus);
  double largest = 0, moved = 0;
  CausalLM initial(model::llama(4, 2, false), runtime().self());
  model::init_random(initial, 7, 0.2);
  const auto start = model::gathered_weights(initial);
  for (const auto& [name, tensor] : one) {
    largest = std::max(largest, (all.at(name) - tensor).abs().max().item<double>());
    moved = std::max(moved, (tensor - start.at(name)).abs().max().item<double>());
  }
  EXPECT_LE(largest, kWeightAbsTol) << "DP " << runtime().size() << " against one process";
  EXPECT_GT(moved, 1e-4) << "the steps must change the weights";
}

TEST(NextToken, TextFilesReadTheSameGzippedOrNot) {
  SharedDir dir("next_token_text");
  const std::string text = "Hacker slang, line one.\nline two\n";
  const std::string plain = dir / "text.txt", packed = dir / "text.txt.gz";
  if (runtime().rank() == 0) {
    std::ofstream(plain) << text;
    gzFile file = gzopen(packed.c_str(), "wb");
    gzwrite(file, text.data(), static_cast<unsigned>(text.size()));
    gzclose(file);
  }
  runtime().world().barrier();
  EXPECT_EQ(io::read_text_file(plain), text);
  EXPECT_EQ(io::read_text_file(packed), text);
  EXPECT_THROW(io::read_text_file(dir / "missing.txt"), Error);
}

}  // namespace
}  // namespace qforge::train
