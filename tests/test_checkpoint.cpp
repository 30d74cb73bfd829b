// Hugging Face checkpoints through the tensor-parallel model: save under one TP size and load under another,
// errors for checkpoints that disagree with config.json, and the real stories260K model imported from llama2.c.
// (Peak memory of saving and loading a TP shard: test_checkpoint_memory.)
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/eval/perplexity.h"
#include "framework/io/safetensors.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/generation.h"
#include "framework/tokenizer/tokenizer.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace qforge::model {
namespace {
namespace fs = std::filesystem;

constexpr double kLogitAbsTol = 2e-5;
constexpr double kLogitRelTol = 1e-4;

ModelConfig small_llama() { return llama(8, 4, /*tied=*/false); }

torch::Tensor logits_of(CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return gather_vocab(model.forward(ids), model.tp(), model.config().vocab_size);
}

TEST(Checkpoint, SavedUnderOneTpSizeLoadsUnderAnother) {
  SharedDir dir("ckpt");
  const ModelConfig config = small_llama();
  torch::Tensor ids = random_ids(2, 10, config.vocab_size, 3);
  const int world = runtime().size();
  dist::Grid save_grid(runtime(), world);  // save from the widest TP
  CausalLM saved(config, save_grid.tp_group());
  init_random(saved, 99);
  torch::Tensor expected = logits_of(saved, ids);
  save_pretrained(saved, dir / "single", save_grid.dp_rank() == 0);
  save_pretrained(saved, dir / "sharded", save_grid.dp_rank() == 0, /*max_shard_bytes=*/20000);
  runtime().world().barrier();
  EXPECT_TRUE(fs::exists(dir / "sharded/model.safetensors.index.json"));
  for (const char* layout : {"single", "sharded"})
    for (int tp = 1; tp <= world; ++tp) {
      if (world % tp != 0) continue;
      dist::Grid grid(runtime(), tp);
      auto loaded = load_pretrained(dir / layout, grid.tp_group());
      EXPECT_EQ(loaded->config().to_json(), config.to_json());
      expect_close(logits_of(*loaded, ids), expected, kLogitAbsTol, kLogitRelTol,
                   fmt::format("{} saved under TP {}, loaded under TP {}", layout, world, tp));
    }
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<SharedDir>("bad");
    CausalLM model(small_llama(), runtime().self());
    init_random(model, 1);
    save_pretrained(model, *dir_ / "model", runtime().rank() == 0);
    runtime().world().barrier();
  }
  void TearDown() override { dir_.reset(); }

  // The error of loading the checkpoint with config.json edited by `edit`.
  std::string load_error(const std::function<void(nlohmann::json&)>& edit) {
    if (runtime().rank() == 0) {
      nlohmann::json config = small_llama().to_json();
      edit(config);
      std::ofstream(*dir_ / "model/config.json") << config.dump();
    }
    runtime().world().barrier();
    std::string message;
    try {
      load_pretrained(*dir_ / "model", runtime().self());
    } catch (const Error& e) {
      message = e.what();
    }
    runtime().world().barrier();  // every rank has read this config.json before the next edit
    return message;
  }
  std::unique_ptr<SharedDir> dir_;
};

// Checked before the model is allocated, against the checkpoint's tensors.
TEST_F(BadCheckpoint, ShapeThatDisagreesWithConfigJson) {
  std::string e = load_error([](nlohmann::json& c) { c["intermediate_size"] = 64; });
  EXPECT_NE(e.find("config.json: hidden_size and intermediate_size imply tensor 'model.layers.0.mlp.down_proj.weight' "
                   "of shape [32, 64], but"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors stores it as [32, 48]"), std::string::npos) << e;
}

TEST_F(BadCheckpoint, MoreLayersThanTheCheckpoint) {
  std::string e = load_error([](nlohmann::json& c) { c["num_hidden_layers"] = 3; });
  EXPECT_NE(e.find("config.json: num_hidden_layers is 3, but"), std::string::npos) << e;
  EXPECT_NE(e.find("holds tensors of layers 0..1 only"), std::string::npos) << e;
}

TEST_F(BadCheckpoint, FewerLayersThanTheCheckpointNamesTheUnusedTensors) {
  std::string e = load_error([](nlohmann::json& c) { c["num_hidden_layers"] = 1; });
  EXPECT_NE(e.find("config.json: num_hidden_layers is 1, but"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors holds layers up to 1"), std::string::npos) << e;
  EXPECT_NE(e.find("(model.layers.1."), std::string::npos) << e;
  EXPECT_NE(e.find("expected num_hidden_layers 2"), std::string::npos) << e;
}

TEST_F(BadCheckpoint, ImplausibleSizesAreRefusedBeforeAllocating) {
  std::string e = load_error([](nlohmann::json& c) { c["hidden_size"] = int64_t{1000000000000}; });
  EXPECT_NE(e.find("config.json: key 'hidden_size' is 1000000000000, implausibly large"), std::string::npos) << e;
  e = load_error([](nlohmann::json& c) {
    c["hidden_size"] = 1 << 20, c["intermediate_size"] = 1 << 22, c["num_hidden_layers"] = 1 << 16;
    c["num_attention_heads"] = 1 << 10, c["num_key_value_heads"] = 1 << 10;
  });
  EXPECT_NE(e.find("parameters, implausibly many"), std::string::npos) << e;
}

TEST_F(BadCheckpoint, ConfigJsonErrorsNameTheKey) {
  EXPECT_NE(load_error([](nlohmann::json& c) { c.erase("hidden_size"); }).find("config.json: missing key 'hidden_size'"),
            std::string::npos);
  EXPECT_NE(load_error([](nlohmann::json& c) { c["model_type"] = "gpt2"; }).find("model_type 'gpt2' is not supported"),
            std::string::npos);
  EXPECT_NE(load_error([](nlohmann::json& c) { c["num_attention_heads"] = 5; }).find("hidden_size 32 is not a multiple of num_attention_heads 5"),
            std::string::npos);
}

// ---- stories260K (../shared) ---------------------------------------------------------------------------------

constexpr const char* kExpectedContinuation =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
    "a big, red ball. She wanted to play with it, but it was too high";

class Stories260K : public ::testing::Test {
 protected:
  void SetUp() override {
    shared_ = test::shared_dir();
    if (shared_.empty()) GTEST_SKIP() << "../shared is absent: real-model test skipped";
    dir_ = std::make_unique<SharedDir>("stories");
    if (runtime().rank() == 0)
      convert_llama2c(shared_ + "/models/stories260K/stories260K.bin", shared_ + "/models/stories260K/tok512.bin",
                      *dir_ / "model");
    runtime().world().barrier();
  }
  void TearDown() override { dir_.reset(); }
  std::string shared_;
  std::unique_ptr<SharedDir> dir_;
};

TEST_F(Stories260K, GreedyContinuationIsLlama2csOwn) {
  dist::Grid grid(runtime(), runtime().size());
  auto model = load_pretrained(*dir_ / "model", grid.tp_group());
  auto tokenizer = tok::load_tokenizer(*dir_ / "model/tokenizer.bin");
  std::vector<int64_t> prompt = tokenizer->encode("Once upon a time", true, false);
  auto generated = generate(*model, {prompt}, 60, SamplingOptions{});
  prompt.insert(prompt.end(), generated[0].begin(), generated[0].end());
  const std::string text = tokenizer->decode(prompt);
  EXPECT_EQ(text.substr(0, std::strlen(kExpectedContinuation)), kExpectedContinuation) << text;
}

// The first 64 windows of 512 tokens (the whole file is `qforge eval ppl`'s, in the cli test).
TEST_F(Stories260K, TinyStoriesPerplexityMatchesTheReportedLoss) {
  dist::Grid grid(runtime(), runtime().size() >= 2 ? 2 : 1);
  auto model = load_pretrained(*dir_ / "model", grid.tp_group());
  auto tokenizer = tok::load_tokenizer(*dir_ / "model/tokenizer.bin");
  torch::Tensor tokens = eval::tokenize_text_file(shared_ + "/data/tinystories/tinystories_val.txt", *tokenizer);
  eval::PerplexityResult r = eval::perplexity(*model, tokens.narrow(0, 0, 64 * 512), 512, 8, grid.dp_group());
  if (runtime().rank() == 0)
    std::printf("stories260K on tinystories_val.txt (%s): %lld tokens in %lld windows of 512, mean NLL %.4f, ppl %.4f\n",
                grid.describe().c_str(), static_cast<long long>(r.tokens), static_cast<long long>(r.windows), r.mean_nll,
                r.perplexity);
  EXPECT_GT(r.mean_nll, 1.30);
  EXPECT_LT(r.mean_nll, 1.50);
}

}  // namespace
}  // namespace qforge::model
