// LLM-QAT end to end in one process group: a W4-A8-KV4 student with fake quantizers learns from a teacher by
// the vocabulary-parallel distillation loss under the trainer. After a few steps every TP x DP grid the world
// allows gives the weights of a single process, with the teacher run in the job and with its top-K read from
// the corpus file; distillation pulls a student towards its teacher either way; a corpus of another teacher is
// refused.
#include "distill/corpus_teacher.h"
#include "distill/distillation.h"
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/io/corpus.h"
#include "framework/model/parallel.h"
#include "framework/train/trainer.h"
#include "quant/qat.h"
#include "tests/model_fixtures.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>

namespace qforge::distill {
namespace {
namespace fs = std::filesystem;
using model::CausalLM;
using model::runtime;

// fp32 weights after 3 AdamW steps at lr 1e-3: the grids differ in summation order only. AdamW divides each
// gradient element by its own magnitude, so an element whose gradient is near zero (an embedding row seen once)
// carries that rounding into an update of up to lr, and fake quantization can round a value the other way: the
// largest error may reach 1% of lr x steps, while the mean error stays at the level of fp32 rounding.
constexpr double kWeightAbsTol = 3e-5;
constexpr double kWeightMeanAbsTol = 1e-7;
constexpr int64_t kTopK = 8;

model::ModelConfig student_config() { return model::llama(4, 4, false); }

// Rank 0 writes 32 random samples (lengths 6..16) with the teacher's top-K of every position, from a teacher-forced
// forward of the unsharded teacher.
std::string write_corpus(const fs::path& dir) {
  const std::string path = (dir / "corpus.h5").string();
  if (runtime().rank() == 0) {
    CausalLM teacher(student_config(), runtime().self());
    model::init_random(teacher, 11, 0.1);
    torch::NoGradGuard no_grad;
    io::CorpusIdentity identity;
    identity.num_samples = 32;
    identity.seq_len = 16;
    identity.vocab_size = student_config().vocab_size;
    identity.topk = kTopK;
    std::mt19937_64 rng(9);
    std::map<int64_t, std::vector<int32_t>> samples;
    std::map<int64_t, io::CorpusTopK> topk;
    for (int64_t i = 0; i < identity.num_samples; ++i) {
      std::vector<int32_t> tokens(6 + rng() % 11);
      for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % identity.vocab_size);
      torch::Tensor ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end())).unsqueeze(0);
      torch::Tensor logprobs = torch::log_softmax(teacher.forward(ids)[0].narrow(-1, 0, identity.vocab_size), -1);
      auto [values, indices] = logprobs.narrow(0, 0, ids.size(1) - 1).topk(kTopK, -1);
      torch::Tensor i32 = indices.to(torch::kInt).contiguous();
      torch::Tensor f32 = values.contiguous();
      topk[i] = {std::vector<int32_t>(i32.data_ptr<int32_t>(), i32.data_ptr<int32_t>() + i32.numel()),
                 std::vector<float>(f32.data_ptr<float>(), f32.data_ptr<float>() + f32.numel())};
      samples[i] = tokens;
    }
    io::write_corpus_file(path, identity, samples, topk);
  }
  runtime().world().barrier();
  return path;
}

struct RunResult {
  std::map<std::string, torch::Tensor> weights;
  std::vector<double> losses;
};

RunResult distill_on(dist::Communicator& tp, dist::Communicator& dp, const std::string& corpus_path,
                     const std::string& teacher_mode, int64_t steps, uint64_t student_seed = 11) {
  CausalLM student(student_config(), tp), teacher(student_config(), tp);
  model::init_random(student, student_seed, 0.1);
  model::init_random(teacher, 11, 0.1);
  for (auto& p : teacher.parameters()) p.requires_grad_(false);
  quant::QuantSettings q;
  q.bits = "4-8-4";
  quant::attach_quantizers(student, q);
  io::CorpusReader corpus(corpus_path);
  train::TrainSettings s;
  s.global_batch = 8;
  s.lr = 1e-3;
  s.max_steps = steps;
  s.epochs = 4;  // max_steps decides
  DistillSettings d;
  d.teacher = teacher_mode;
  train::Trainer trainer(s, student, dp, corpus, distilled_tokens, "", "");
  train::TrainResult result =
      trainer.run(distillation_step(student, teacher_mode == "model" ? &teacher : nullptr, corpus, d));
  return {model::gathered_weights(student), result.losses};
}

class QatTest : public ::testing::Test {
 protected:
  void SetUp() override { corpus_ = write_corpus(dir_.path()); }
  model::SharedDir dir_{"qat"};
  std::string corpus_;
};

TEST_F(QatTest, EveryGridGivesTheWeightsOfOneProcess) {
  for (const char* teacher : {"model", "corpus"}) {
    const RunResult reference = distill_on(runtime().self(), runtime().self(), corpus_, teacher, 3, 12);
    for (int tp : model::tp_sizes()) {
      dist::Grid grid(runtime(), tp);
      const RunResult run = distill_on(grid.tp_group(), grid.dp_group(), corpus_, teacher, 3, 12);
      double largest = 0, mean = 0;
      for (const auto& [name, expected] : reference.weights) {
        const torch::Tensor error = (run.weights.at(name) - expected).abs();
        largest = std::max(largest, error.max().item<double>());
        mean = std::max(mean, error.mean().item<double>());
        EXPECT_LE(error.max().item<double>(), kWeightAbsTol) << grid.describe() << ", teacher " << teacher << ": " << name;
        EXPECT_LE(error.mean().item<double>(), kWeightMeanAbsTol) << grid.describe() << ", teacher " << teacher << ": " << name;
      }
      if (runtime().rank() == 0)
        std::printf("%s, teacher %s: weights after 3 steps vs one process: max |error| %.3g, largest mean |error| %.3g\n",
                    grid.describe().c_str(), teacher, largest, mean);
      for (size_t i = 0; i < reference.losses.size(); ++i)
        EXPECT_NEAR(run.losses[i], reference.losses[i], 1e-5) << grid.describe() << ", teacher " << teacher;
    }
  }
}

TEST_F(QatTest, DistillationPullsAStudentTowardsItsTeacher) {
  // A student drawn apart from the teacher: the soft cross-entropy (teacher entropy + KL) falls as KL shrinks.
  for (const char* teacher : {"model", "corpus"}) {
    const RunResult run = distill_on(runtime().self(), runtime().self(), corpus_, teacher, 12, /*student_seed=*/12);
    ASSERT_EQ(run.losses.size(), 12u);
    const double first = (run.losses[0] + run.losses[1]) / 2, last = (run.losses[10] + run.losses[11]) / 2;
    EXPECT_LT(last, first - 0.02) << "teacher " << teacher << ": losses " << first << " -> " << last;
  }
}

// qat refuses a corpus that records another teacher than --model, naming the corpus, the key and both values.
TEST_F(QatTest, CorpusOfAnotherTeacherIsRefused) {
  const TeacherIdentity teacher{"/models/teacher", student_config().to_json(), "0123456789abcdef",
                                "tokenizer.bin (llama2c)"};
  const std::string path = (dir_.path() / "teacher.h5").string();
  if (runtime().rank() == 0) {
    io::CorpusIdentity identity;
    identity.num_samples = 4;
    identity.seq_len = 4;
    identity.vocab_size = student_config().vocab_size;
    identity.attributes = teacher_attributes(teacher);
    identity.attributes["generation"] = {{"seed", 3}};
    io::write_corpus_file(path, identity, {{0, {1, 2}}, {1, {3}}, {2, {4, 5, 6}}, {3, {7}}});
  }
  runtime().world().barrier();
  const io::CorpusReader corpus(path);
  check_corpus_teacher(corpus, teacher);  // its own teacher
  check_corpus_teacher(io::CorpusReader(corpus_), teacher);  // a corpus that records no teacher: a warning only

  auto refusal = [&](const TeacherIdentity& other) {
    try {
      check_corpus_teacher(corpus, other);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  TeacherIdentity other = teacher;
  other.path = "/models/other";
  other.config["hidden_size"] = student_config().hidden_size + 16;
  other.checksum = "fedcba9876543210";
  const std::string config_message = refusal(other);
  other.config = teacher.config;
  const std::string checksum_message = refusal(other);
  other.tokenizer = "tokenizer.model (sentencepiece)";
  const std::string tokenizer_message = refusal(other);
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {config_message,
       {fmt::format("teacher_config.hidden_size is {}, the model's is {}", student_config().hidden_size,
                    student_config().hidden_size + 16)}},
      {checksum_message, {"teacher_checksum is \"0123456789abcdef\", the model's is \"fedcba9876543210\""}},
      {tokenizer_message,
       {"tokenizer is \"tokenizer.bin (llama2c)\", the model's is \"tokenizer.model (sentencepiece)\""}}};
  for (const auto& [message, expected] : cases) {
    EXPECT_NE(message.find(fmt::format("corpus file '{}'", path)), std::string::npos) << message;
    EXPECT_NE(message.find("--model '/models/other'"), std::string::npos) << message;
    for (const std::string& text : expected) EXPECT_NE(message.find(text), std::string::npos) << message;
  }
  if (runtime().rank() == 0) std::printf("refused: %s\n", config_message.c_str());
}

}  // namespace
}  // namespace qforge::distill
