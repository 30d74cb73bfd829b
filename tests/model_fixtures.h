// Small model configurations and comparisons shared by the model test suites.
#pragma once

#include "framework/dist/runtime.h"
#include "framework/model/model_config.h"
#include "framework/model/transformer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace qforge::model {

inline dist::Runtime& runtime() { return *dist::Runtime::current(); }

inline std::vector<int> tp_sizes() {
  std::vector<int> sizes;
  for (int tp = 1; tp <= runtime().size(); ++tp)
    if (runtime().size() % tp == 0) sizes.push_back(tp);
  return sizes;
}

inline ModelConfig llama(int64_t heads, int64_t kv_heads, bool tied) {
  ModelConfig c;
  c.family = Family::kLlama;
  c.vocab_size = 250;  // not a multiple of 4: exercises vocabulary padding
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.max_positions = 64;
  c.tie_word_embeddings = tied;
  return c;
}

inline ModelConfig opt(bool post_norm_with_projections) {
  ModelConfig c;
  c.family = Family::kOpt;
  c.vocab_size = 203;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.max_positions = 64;
  c.tie_word_embeddings = true;
  c.norm_before = !post_norm_with_projections;
  c.word_embed_proj_dim = post_norm_with_projections ? 24 : 32;
  return c;
}

inline torch::Tensor random_ids(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(vocab, {batch, length}, generator, torch::kLong);
}

// A seeded N(0, 1) fp32 tensor.
inline torch::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, generator, torch::kFloat);
}

inline void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double abs_tol, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double max_error = (actual - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  EXPECT_LE(max_error, abs_tol + rel_tol * scale) << what << ": max |error| " << max_error << " at scale " << scale;
}

// Every parameter's gradient in `sharded` equals the matching slice of `reference`'s (the same model unsharded),
// and reaches every parameter with a non-zero value.
inline void expect_gradients_match(const CausalLM& sharded, const CausalLM& reference, double abs_tol,
                                   double rel_tol, const std::string& where) {
  const auto& mine = sharded.weights().entries();
  const auto& theirs = reference.weights().entries();
  ASSERT_EQ(mine.size(), theirs.size()) << where;
  for (std::size_t i = 0; i < mine.size(); ++i) {
    ASSERT_EQ(mine[i].name, theirs[i].name) << where;
    ASSERT_TRUE(mine[i].param.grad().defined()) << where << ": no gradient reaches " << mine[i].name;
    EXPECT_GT(theirs[i].param.grad().abs().max().item<double>(), 0.0) << where << ": zero gradient of " << mine[i].name;
    torch::Tensor expected = theirs[i].param.grad();
    torch::Tensor actual = mine[i].param.grad();
    if (!mine[i].spec.replicated()) {
      const int64_t stored = mine[i].spec.stored_length();
      expected = expected.narrow(mine[i].spec.dim, mine[i].spec.start, stored);
      actual = actual.narrow(mine[i].spec.dim, 0, stored);
    }
    expect_close(actual, expected, abs_tol, rel_tol, where + ", grad of " + mine[i].name);
  }
}

// A directory every rank agrees on (named by `tag` and rank 0's pid), created empty, removed at the end.
class SharedDir {
 public:
  explicit SharedDir(const std::string& tag) {
    torch::Tensor pid = torch::tensor({static_cast<int64_t>(::getpid())});
    runtime().world().broadcast(pid, 0);
    path_ = std::filesystem::temp_directory_path() / fmt::format("qforge_{}_{}", tag, pid.item<int64_t>());
    if (runtime().rank() == 0) {
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
    }
    runtime().world().barrier();
  }
  ~SharedDir() {
    runtime().world().barrier();
    if (runtime().rank() == 0) std::filesystem::remove_all(path_);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Every parameter's full tensor by Hugging Face name, gathered over the model's TP group (padding dropped).
inline std::map<std::string, torch::Tensor> gathered_weights(CausalLM& model) {
  std::map<std::string, torch::Tensor> weights;
  for (const WeightEntry& e : model.weights().entries()) {
    torch::Tensor t = e.param.detach();
    if (!e.spec.replicated()) t = model.tp().all_gather(t, e.spec.dim).narrow(e.spec.dim, 0, e.spec.full_extent);
    weights[e.name] = t.clone();
  }
  return weights;
}

}  // namespace qforge::model
