// The trainer (framework/train): AdamW against torch's own, the learning-rate schedules in closed form, and
// training runs that must not depend on the parallel layout: after a few steps every TP x DP grid the world
// allows gives the weights of a single-process run; a stop signal saves a checkpoint and the resumed run ends
// bit for bit where an uninterrupted one does; a resume is refused under other settings or inputs and falls back
// past a damaged checkpoint (XXH64, checked against known values); the loss history a checkpoint records carries on,
// none is made up for one without it; recomputing activations gives the same gradients.
#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/io/corpus.h"
#include "framework/model/parallel.h"
#include "framework/model/transformer.h"
#include "framework/train/optimizer.h"
#include "framework/train/trainer.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <functional>
#include <random>

namespace qforge::train {
namespace {
namespace fs = std::filesystem;
using model::CausalLM;
using model::runtime;
using model::SharedDir;

// fp32: the grids differ from the single process only in summation order. AdamW divides each gradient element
// by its own running magnitude, so an element whose gradient is tiny (a rarely seen embedding row) carries the
// order's rounding into an update of up to lr: the tolerance is 0.5% of lr x steps (4 steps at lr 1e-3).
constexpr double kWeightAbsTol = 2e-5;
constexpr double kAdamRelTol = 1e-6;  // our AdamW against torch::optim::AdamW, same fp32 operations

// 48 samples of random tokens with lengths 5..16.
std::string write_corpus(const fs::path& dir, int64_t vocab, const std::string& name = "corpus.h5", int seed = 5) {
  const std::string path = (dir / name).string();
  if (runtime().rank() == 0) {
    io::CorpusIdentity identity;
    identity.num_samples = 48;
    identity.seq_len = 16;
    identity.vocab_size = vocab;
    std::mt19937_64 rng(seed);
    std::map<int64_t, std::vector<int32_t>> samples;
    for (int64_t i = 0; i < identity.num_samples; ++i) {
      std::vector<int32_t> tokens(5 + rng() % 12);
      for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
      samples[i] = tokens;
    }
    io::write_corpus_file(path, identity, samples);
  }
  runtime().world().barrier();
  return path;
}

// Next-token cross-entropy over each sample's own tokens: the simplest loss that exercises every parameter.
MicroStep next_token_loss(CausalLM& model, const io::CorpusReader& corpus) {
  return [&model, &corpus](const std::vector<int64_t>& samples, double step_tokens) {
    auto [tokens, lengths] = corpus.batch(samples);
    torch::Tensor logits = model.forward(tokens);
    const int64_t length = tokens.size(1);
    torch::Tensor targets = tokens.narrow(1, 1, length - 1).reshape(-1);
    torch::Tensor rows = logits.narrow(1, 0, length - 1).reshape({-1, logits.size(-1)});
    torch::Tensor valid = (torch::arange(length - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)).reshape(-1);
    torch::Tensor loss = model::vocab_parallel_cross_entropy(rows, targets, model.tp(), model.vocab_start());
    torch::Tensor sum = (loss * valid.to(torch::kFloat)).sum();
    (sum / step_tokens).backward();
    return sum.item<double>();
  };
}

TrainSettings small_settings() {
  TrainSettings s;
  s.global_batch = 8;
  s.micro_batch = 2;
  s.lr = 1e-3;
  s.max_grad_norm = 0.5;  // small enough to clip: the global norm must be right
  s.bucket_mb = 0.004;    // ~1000 fp32 elements: many buckets
  s.max_steps = 4;
  return s;
}

// Resumes from `checkpoint_dir` (when there is one) and trains to the end; `result` (optional) gets the run's.
std::map<std::string, torch::Tensor> train_on(dist::Communicator& tp, dist::Communicator& dp, const TrainSettings& s,
                                              const std::string& corpus_path, const std::string& checkpoint_dir = "",
                                              const nlohmann::json& run = nlohmann::json::object(),
                                              TrainResult* result = nullptr) {
  CausalLM model(model::llama(4, 4, false), tp);
  model::init_random(model, 3, 0.1);
  io::CorpusReader corpus(corpus_path);
  Trainer trainer(s, model, dp, corpus, [](int64_t length) { return length - 1; }, checkpoint_dir, "", run);
  trainer.resume();
  TrainResult done = trainer.run(next_token_loss(model, corpus));
  EXPECT_EQ(done.steps_done, s.max_steps);
  if (result) *result = done;
  return model::gathered_weights(model);
}

// Runs `change` on world rank 0 only, then waits for it on every rank.
void on_rank0(const std::function<void()>& change) {
  if (runtime().rank() == 0) change();
  runtime().world().barrier();
}

void expect_same_weights(const std::map<std::string, torch::Tensor>& actual,
                         const std::map<std::string, torch::Tensor>& expected, double tol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double largest = 0;
  for (const auto& [name, tensor] : expected) {
    const double error = (actual.at(name) - tensor).abs().max().item<double>();
    EXPECT_LE(error, tol) << what << ": " << name;
    largest = std::max(largest, error);
  }
  if (runtime().rank() == 0) std::printf("%s: max |weight error| %.3g (tolerance %.3g)\n", what.c_str(), largest, tol);
}

TEST(AdamW, MatchesTorchOptimAdamW) {
  torch::manual_seed(1);
  torch::Tensor ours = torch::randn({37, 5}).requires_grad_(true);
  torch::Tensor theirs = ours.detach().clone().requires_grad_(true);
  const torch::Tensor initial = ours.detach().clone();
  DistributedAdamW optimizer({{"w", ours, false}}, runtime().self(), runtime().self(), {0.9, 0.95, 1e-8, 0.1}, 64, true);
  torch::optim::AdamW reference({theirs}, torch::optim::AdamWOptions(3e-3).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 5; ++step) {
    torch::Tensor grad = torch::randn({37, 5});
    ours.mutable_grad() = grad.clone();
    theirs.mutable_grad() = grad.clone();
    optimizer.reduce_gradients();
    optimizer.step(3e-3, 1.0);
    reference.step();
  }
  torch::NoGradGuard no_grad;
  const double error = (ours - theirs).abs().max().item<double>();
  EXPECT_LE(error, kAdamRelTol * theirs.abs().max().item<double>());
  EXPECT_GT((ours - initial).abs().max().item<double>(), 1e-3) << "five steps must move the weights";
}

// Backward accumulates straight into the optimizer's buckets: after zero_grad the gradients are views of
// persistent buffers (no allocation per step), and the steps still match torch.optim.AdamW with clipping.
TEST(AdamW, GradientsAccumulateInPlaceIntoTheBuckets) {
  torch::manual_seed(2);
  torch::Tensor w = torch::randn({33, 7}).requires_grad_(true), b = torch::randn({7}).requires_grad_(true);
  torch::Tensor w_ref = w.detach().clone().requires_grad_(true), b_ref = b.detach().clone().requires_grad_(true);
  DistributedAdamW optimizer({{"w", w, false}, {"b", b, false}}, runtime().self(), runtime().self(),
                             {0.9, 0.999, 1e-8, 0.0}, 100, true);
  torch::optim::AdamW reference({w_ref, b_ref}, torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
  const void* bucket = w.grad().data_ptr();
  for (int step = 0; step < 4; ++step) {
    const torch::Tensor x = torch::randn({5, 33});
    ((x.matmul(w) + b).pow(2).sum() * 3).backward();
    ((x.matmul(w_ref) + b_ref).pow(2).sum() * 3).backward();
    EXPECT_EQ(w.grad().data_ptr(), bucket) << "backward accumulated into the bucket view at step " << step;
    const double norm = optimizer.reduce_gradients();
    const double expected =
        std::sqrt(w_ref.grad().pow(2).sum().item<double>() + b_ref.grad().pow(2).sum().item<double>());
    EXPECT_NEAR(norm, expected, kAdamRelTol * expected);
    const double scale = norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0;  // clip_grad_norm_(1.0)
    torch::nn::utils::clip_grad_norm_(std::vector<torch::Tensor>{w_ref, b_ref}, 1.0);
    optimizer.step(1e-2, scale);
    reference.step();
    optimizer.zero_grad();
    reference.zero_grad();
    EXPECT_EQ(w.grad().data_ptr(), bucket);
    EXPECT_EQ(w.grad().abs().max().item<double>(), 0.0) << "zero_grad zeroes in place";
  }
  torch::NoGradGuard no_grad;
  EXPECT_LE((w - w_ref).abs().max().item<double>(), kAdamRelTol * w_ref.abs().max().item<double>());
  EXPECT_LE((b - b_ref).abs().max().item<double>(), kAdamRelTol * b_ref.abs().max().item<double>());
}

TEST(AdamW, GradientNormCountsReplicatedParametersOnce) {
  // Two "TP ranks" are impossible in one process; the DP sum and the norm over owned slices are checked here,
  // the TP rule by the grid runs below (clipping is active there).
  torch::Tensor a = torch::zeros({3}, torch::requires_grad()), b = torch::zeros({4}, torch::requires_grad());
  DistributedAdamW optimizer({{"a", a, false}, {"b", b, true}}, runtime().self(), runtime().world(), {}, 2, true);
  a.mutable_grad() = torch::full({3}, 1.0);
  b.mutable_grad() = torch::full({4}, 2.0);
  const double world = runtime().size();
  EXPECT_NEAR(optimizer.reduce_gradients(), std::sqrt(3 * world * world + 16 * world * world), 1e-9);
}

TEST(Checksum, Xxh64KnownValuesInAnyPiecesAndFiles) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ULL);
  std::string bytes(1000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7 + 3) % 256);
  // The low 32 bits are what `zstd --check` stores as a frame's content checksum (checked with zstd 1.5).
  EXPECT_EQ(xxh64(bytes.data(), 1000) & 0xFFFFFFFFULL, 0x33F1A3FBULL);
  EXPECT_EQ(xxh64(bytes.data(), 37) & 0xFFFFFFFFULL, 0x02F5A3FDULL);
  for (size_t piece : {1, 3, 8, 31, 32, 33, 100, 999}) {
    Xxh64 state;
    for (size_t at = 0; at < bytes.size(); at += piece)
      state.update(bytes.data() + at, std::min(piece, bytes.size() - at));
    EXPECT_EQ(state.digest(), xxh64(bytes.data(), bytes.size())) << "pieces of " << piece;
  }
  EXPECT_EQ(fnv1a64("a"), 0x44BD8AD473CD9906ULL);  // (offset ^ 'a') * FNV prime, with qforge's offset
  EXPECT_EQ(fnv1a64("a", 14695981039346656037ULL), 0xAF63DC4C8601EC8CULL);  // FNV's published test vector
  const fs::path file = fs::temp_directory_path() / fmt::format("qforge_checksum_{}_{}", ::getpid(), runtime().rank());
  test::write_bytes(file, bytes);
  const FileChecksum sum = checksum_file(file.string());
  EXPECT_EQ(sum.bytes, 1000);
  EXPECT_EQ(sum.xxh64, xxh64(bytes.data(), bytes.size()));
  fs::remove(file);
  EXPECT_NE(test::error_of([&] { checksum_file(file.string()); }).find(file.string()), std::string::npos);
}

TEST(Schedule, ClosedForms) {
  EXPECT_DOUBLE_EQ(scheduled_lr("cosine", 0, 100, 0, 2e-5, 0), 2e-5);
  EXPECT_NEAR(scheduled_lr("cosine", 50, 100, 0, 2e-5, 0), 1e-5, 1e-18);
  EXPECT_NEAR(scheduled_lr("cosine", 25, 100, 0, 1.0, 0), 0.5 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_NEAR(scheduled_lr("linear", 75, 100, 0, 1.0, 0.2), 0.4, 1e-15);
  EXPECT_DOUBLE_EQ(scheduled_lr("constant", 99, 100, 0, 3.0, 0), 3.0);
  EXPECT_DOUBLE_EQ(scheduled_lr("cosine", 4, 100, 10, 1.0, 0), 0.5);   // warmup: (step + 1) / warmup
  EXPECT_DOUBLE_EQ(scheduled_lr("cosine", 10, 100, 10, 1.0, 0), 1.0);  // decay starts after warmup
}

TEST(Trainer, EveryGridGivesTheWeightsOfOneProcess) {
  SharedDir dir("grids");
  const std::string corpus = write_corpus(dir.path(), 250);
  for (bool zero : {true, false}) {
    TrainSettings s = small_settings();
    s.zero = zero;
    const auto reference = train_on(runtime().self(), runtime().self(), s, corpus);
    CausalLM untrained(model::llama(4, 4, false), runtime().self());
    model::init_random(untrained, 3, 0.1);
    const auto initial = model::gathered_weights(untrained);
    for (int tp : model::tp_sizes()) {
      dist::Grid grid(runtime(), tp);
      if (s.global_batch % (grid.dp() * s.micro_batch) != 0) s.micro_batch = 1;
      const auto weights = train_on(grid.tp_group(), grid.dp_group(), s, corpus);
      expect_same_weights(weights, reference, kWeightAbsTol, fmt::format("{}, zero {}", grid.describe(), zero));
      for (const auto& [name, tensor] : initial)
        EXPECT_GT((weights.at(name) - tensor).abs().max().item<double>(), 1e-4) << "training must change " << name;
    }
  }
}

TEST(Trainer, StopSignalSavesAndResumeIsBitForBit) {
  SharedDir dir("resume");
  const std::string corpus = write_corpus(dir.path(), 250);
  TrainSettings s = small_settings();
  s.max_steps = 6;
  s.save_every = 1;
  const int tp = model::tp_sizes().back() >= 2 ? 2 : 1;
  dist::Grid grid(runtime(), tp);
  const auto uninterrupted = train_on(grid.tp_group(), grid.dp_group(), s, corpus);

  const std::string checkpoints = (dir.path() / "checkpoints").string();
  {
    CausalLM model(model::llama(4, 4, false), grid.tp_group());
    model::init_random(model, 3, 0.1);
    io::CorpusReader reader(corpus);
    Trainer trainer(s, model, grid.dp_group(), reader, [](int64_t length) { return length - 1; }, checkpoints, "x: 1\n");
    MicroStep inner = next_token_loss(model, reader);
    int calls = 0;
    const int64_t calls_per_step = s.global_batch / (grid.dp() * s.micro_batch);
    MicroStep signalled = [&](const std::vector<int64_t>& samples, double tokens) {
      // Only world rank 0 is signalled, during step 3: every rank must stop after that step.
      if (++calls == 2 * calls_per_step + 1 && runtime().rank() == 0) std::raise(SIGTERM);
      return inner(samples, tokens);
    };
    TrainResult result = trainer.run(signalled);
    EXPECT_TRUE(result.stopped);
    EXPECT_EQ(result.steps_done, 3);
    StopSignalGuard::reset();
  }
  runtime().world().barrier();
  EXPECT_EQ(test::slurp(fs::path(checkpoints) / "latest"), "step-00000003\n");
  EXPECT_TRUE(fs::exists(fs::path(checkpoints) / "step-00000003" / "qforge_config.yaml"));
  EXPECT_FALSE(fs::exists(fs::path(checkpoints) / "step-00000001")) << "keep_checkpoints = 2";
  const auto resumed = train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints);
  expect_same_weights(resumed, uninterrupted, 0.0, "resumed run");
}

TEST(Trainer, ResumeRefusesAnotherLayout) {
  if (runtime().size() < 2) GTEST_SKIP() << "needs two ranks";
  SharedDir dir("layout");
  const std::string corpus = write_corpus(dir.path(), 250);
  TrainSettings s = small_settings();
  s.max_steps = 1;
  const std::string checkpoints = (dir.path() / "checkpoints").string();
  {
    dist::Grid grid(runtime(), 1);
    train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints);
  }
  dist::Grid grid(runtime(), 2);
  CausalLM model(model::llama(4, 4, false), grid.tp_group());
  io::CorpusReader reader(corpus);
  Trainer trainer(s, model, grid.dp_group(), reader, [](int64_t length) { return length - 1; }, checkpoints, "");
  try {
    trainer.resume();
    ADD_FAILURE() << "resumed under another layout";
  } catch (const UsageError& e) {
    const std::string expected = fmt::format("parallel.dp: the checkpoint was trained with {}, this run has {}",
                                             runtime().size(), runtime().size() / 2);
    EXPECT_NE(std::string(e.what()).find("step-00000001"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

// Resuming under other settings or inputs is refused, naming the first differing key and both values.
TEST(Trainer, ResumeRefusesOtherSettingsAndInputs) {
  SharedDir dir("fingerprint");
  const std::string corpus = write_corpus(dir.path(), 250);
  const std::string other_corpus = write_corpus(dir.path(), 250, "other.h5", 6);  // the same size, other tokens
  TrainSettings s = small_settings();
  s.max_steps = 2;
  const std::string checkpoints = (dir.path() / "checkpoints").string();
  const nlohmann::json w4 = {{"quant.bits", "4-8-4"}};
  dist::Grid grid(runtime(), 1);
  train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints, w4);
  auto resume_with = [&](const TrainSettings& settings, const std::string& corpus_path, const nlohmann::json& run) {
    CausalLM model(model::llama(4, 4, false), grid.tp_group());
    io::CorpusReader reader(corpus_path);
    Trainer trainer(settings, model, grid.dp_group(), reader, [](int64_t length) { return length - 1; }, checkpoints,
                    "", run);
    try {
      EXPECT_TRUE(trainer.resume());
      EXPECT_EQ(trainer.steps_done(), 2);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(resume_with(s, corpus, w4), "") << "the same settings and inputs resume";
  std::vector<std::pair<std::string, std::string>> cases;  // message, what it must say
  cases.emplace_back(resume_with(s, corpus, {{"quant.bits", "8-8-8"}}),
                     "quant.bits: the checkpoint was trained with 4-8-4, this run has 8-8-8");
  TrainSettings other = s;
  other.lr = 2e-3;
  cases.emplace_back(resume_with(other, corpus, w4),
                     "train.lr: the checkpoint was trained with 0.001, this run has 0.002");
  other = s;
  other.max_steps = 3;
  cases.emplace_back(resume_with(other, corpus, w4),
                     "train.max_steps: the checkpoint was trained with 2, this run has 3");
  other = s;
  other.seed = 1;
  cases.emplace_back(resume_with(other, corpus, w4), "train.seed: the checkpoint was trained with 0, this run has 1");
  const std::string corpus_message = resume_with(s, other_corpus, w4);
  cases.emplace_back(corpus_message, "corpus.checksum: the checkpoint was trained with ");
  cases.emplace_back(corpus_message, fmt::format("corpus was '{}', this run's is '{}'", corpus, other_corpus));
  cases.emplace_back(resume_with(s, corpus, nlohmann::json::object()), "quant.bits: the checkpoint was trained with "
                                                                        "4-8-4, this run has (absent)");
  for (const auto& [message, expected] : cases) {
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_NE(message.find("step-00000002"), std::string::npos) << message;
  }
  if (runtime().rank() == 0) std::printf("refused: %s\n", cases.front().first.c_str());
}

// Flips the sign bit of the last `count` fp32 values of a safetensors file (its data ends the file).
void flip_sign_bits(const fs::path& path, int count) {
  std::string bytes = test::slurp(path);
  for (int i = 0; i < count; ++i) bytes[bytes.size() - 1 - 4 * i] ^= static_cast<char>(0x80);
  test::write_bytes(path, bytes);
}

// A damaged checkpoint (sign bits flipped in an optimizer shard, an edited trainer_state.json) is skipped with a
// warning and the previous one resumed, bit for bit; an unfinished save is skipped; with none intact, one Error.
TEST(Trainer, DamagedCheckpointFallsBackToThePreviousOne) {
  SharedDir dir("damaged");
  const std::string corpus = write_corpus(dir.path(), 250);
  TrainSettings s = small_settings();
  s.save_every = 1;  // keep_checkpoints 2: steps 3 and 4 stay
  const int tp = model::tp_sizes().back() >= 2 ? 2 : 1;
  dist::Grid grid(runtime(), tp);
  const auto uninterrupted = train_on(grid.tp_group(), grid.dp_group(), s, corpus);
  const fs::path checkpoints = dir.path() / "checkpoints";
  train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints.string());
  const fs::path step3 = checkpoints / "step-00000003", step4 = checkpoints / "step-00000004";
  const std::string shard = "optimizer-tp00-dp000.safetensors";
  auto resumed_step = [&](bool finish) {
    CausalLM model(model::llama(4, 4, false), grid.tp_group());
    model::init_random(model, 3, 0.1);
    io::CorpusReader reader(corpus);
    Trainer trainer(s, model, grid.dp_group(), reader, [](int64_t length) { return length - 1; },
                    checkpoints.string(), "");
    trainer.resume();
    const int64_t step = trainer.steps_done();
    if (finish) {
      trainer.run(next_token_loss(model, reader));
      expect_same_weights(model::gathered_weights(model), uninterrupted, 0.0, "resumed after a damaged checkpoint");
    }
    return step;
  };

  on_rank0([&] { flip_sign_bits(step4 / shard, 3); });
  EXPECT_EQ(resumed_step(true), 3) << "sign bits flipped in step 4's optimizer shard: step 3 resumes";
  on_rank0([&] {  // step 4 was saved again by the run above
    std::string state = test::slurp(step4 / "trainer_state.json");
    const size_t at = state.find("\"step\": 4");
    ASSERT_NE(at, std::string::npos) << state;
    state.replace(at, 9, "\"step\": 1");
    test::write_bytes(step4 / "trainer_state.json", state);
  });
  EXPECT_EQ(resumed_step(false), 3) << "an edited trainer_state.json: step 3 resumes";
  on_rank0([&] { fs::remove(step4 / "manifest.json"); });
  EXPECT_EQ(resumed_step(false), 3) << "a save that did not finish: step 3 resumes";
  on_rank0([&] { flip_sign_bits(step3 / shard, 1); });
  const std::string message = test::error_of([&] { resumed_step(false); });
  for (const std::string& expected : {std::string("no intact checkpoint under ") + checkpoints.string(),
                                      (step3 / shard).string(), std::string("does not match its checksum")})
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  if (runtime().rank() == 0) std::printf("no checkpoint left: %s\n", message.c_str());
}

// A resumed run's history is the checkpoint's and its own steps', as an uninterrupted run's; a checkpoint saved
// before the trainer kept the history (no "losses" in its state) resumes with the losses of the steps run since
// only, none made up; one with more losses than steps is an error.
TEST(Trainer, ResumeKeepsTheRecordedLossHistoryOnly) {
  SharedDir dir("history");
  const std::string corpus = write_corpus(dir.path(), 250);
  TrainSettings s = small_settings();
  s.save_every = 1;  // keep_checkpoints 2: steps 3 and 4 stay
  dist::Grid grid(runtime(), 1);
  const fs::path checkpoints = dir.path() / "checkpoints", step3 = checkpoints / "step-00000003";
  TrainResult whole, resumed, old;
  train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints.string(), {}, &whole);
  ASSERT_EQ(whole.history.size(), 4u);
  // Step 3 as the newest checkpoint, its trainer_state.json changed by `edit` (when given), its manifest to match.
  auto step3_newest = [&](const std::function<void(nlohmann::json&)>& edit) {
    on_rank0([&] {
      fs::remove_all(checkpoints / "step-00000004");
      if (!edit) return;
      nlohmann::json state = nlohmann::json::parse(test::slurp(step3 / "trainer_state.json"));
      edit(state);
      test::write_bytes(step3 / "trainer_state.json", state.dump(2) + "\n");
      CheckpointManifest manifest = read_manifest(step3.string());
      for (ManifestEntry& entry : manifest.files)
        if (entry.name == "trainer_state.json") {
          const FileChecksum sum = checksum_file((step3 / entry.name).string());
          entry.bytes = sum.bytes, entry.xxh64 = sum.xxh64;
        }
      write_manifest(step3.string(), manifest);
    });
  };
  auto resume = [&](TrainResult* result) {
    train_on(grid.tp_group(), grid.dp_group(), s, corpus, checkpoints.string(), {}, result);
  };
  step3_newest(nullptr);
  resume(&resumed);
  EXPECT_EQ(resumed.losses.size(), 1u);
  EXPECT_EQ(resumed.history, whole.history) << "resumed from step 3 with its 3 losses";
  step3_newest([](nlohmann::json& state) { state.erase("losses"); });
  resume(&old);
  EXPECT_EQ(old.steps_done, 4);
  EXPECT_EQ(old.history, std::vector<double>{whole.history.back()}) << "no losses recorded: only step 4's";
  step3_newest([](nlohmann::json& state) { state["losses"] = std::vector<double>(5, 1.0); });
  const std::string error = test::error_of([&] { resume(nullptr); });
  EXPECT_NE(error.find("records 5 losses for 3 steps"), std::string::npos) << error;
}

TEST(Trainer, RecomputationGivesTheSameGradients) {
  for (int tp : model::tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    CausalLM model(model::llama(4, 4, false), grid.tp_group());
    model::init_random(model, 3, 0.1);
    torch::Tensor ids = model::random_ids(2, 12, 250, 4);
    std::vector<torch::Tensor> plain, recomputed;
    for (bool recompute : {false, true}) {
      model.recompute_blocks = recompute;
      for (auto& p : model.parameters()) p.mutable_grad() = torch::Tensor();
      model.forward(ids).pow(2).mean().backward();
      for (auto& p : model.parameters()) (recompute ? recomputed : plain).push_back(p.grad().clone());
    }
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_TRUE(torch::equal(plain[i], recomputed[i])) << "parameter " << i << " under TP " << tp;
      EXPECT_GT(plain[i].abs().max().item<double>(), 0) << "parameter " << i;
    }
  }
}

TEST(Trainer, GlobalBatchMustSplitOverDataParallelRanks) {
  SharedDir dir("batch");
  const std::string corpus = write_corpus(dir.path(), 250);
  TrainSettings s = small_settings();
  s.global_batch = 7;
  CausalLM model(model::llama(4, 4, false), runtime().self());
  io::CorpusReader reader(corpus);
  s.micro_batch = 2;
  EXPECT_THROW(Trainer(s, model, runtime().self(), reader, [](int64_t l) { return l - 1; }, "", ""), UsageError);
  s.global_batch = 64;  // more than the 48 samples
  s.micro_batch = 1;
  EXPECT_THROW(Trainer(s, model, runtime().self(), reader, [](int64_t l) { return l - 1; }, "", ""), UsageError);
}

}  // namespace
}  // namespace qforge::train
