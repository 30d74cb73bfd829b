// Small model configurations and comparisons shared by the model test suites.
#pragma once

#include "framework/dist/runtime.h"
#include "framework/model/model_config.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

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

inline void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double abs_tol, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double max_error = (actual - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  EXPECT_LE(max_error, abs_tol + rel_tol * scale) << what << ": max |error| " << max_error << " at scale " << scale;
}

}  // namespace qforge::model
