// Continuation of prompts with the KV cache, greedy or sampled (temperature, top-k, top-p), for a batch of
// sequences. Logits stay vocabulary-sharded for greedy decoding; sampling gathers them over the TP group.
#pragma once

#include "framework/model/transformer.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace qforge::model {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (top-1)
  int64_t top_k = 0;         // 0: no top-k cut
  double top_p = 1.0;        // 1: no nucleus cut
  uint64_t seed = 0;
};

// Next token per row from full logits [B, vocab] (CPU): top-1 when options.temperature is 0, else inverse-CDF
// sampling after temperature, top-k and top-p, with one number in [0, 1) per row (`uniforms` [B], double). A
// row's choice depends only on its own logits and number, never on the rest of the batch.
torch::Tensor sample_from_logits(const torch::Tensor& logits, const SamplingOptions& options, const torch::Tensor& uniforms);

// A number in [0, 1) that is a pure function of (seed, counter): counter-based, so any sample's draw at any step
// can be reproduced alone.
double uniform_from(uint64_t seed, uint64_t counter);

// Continues every prompt by up to `max_new_tokens` tokens (fewer when a row reaches EOS, which is kept) or until
// the model's context is full. Collective over the model's TP group; every TP rank returns the same tokens.
// `on_token(row, token)` sees each new token as it is chosen; `stop(row, tokens so far)`, when given, ends a row
// early (its tokens are kept); it must answer alike on every TP rank.
std::vector<std::vector<int64_t>> generate(
    CausalLM& model, const std::vector<std::vector<int64_t>>& prompts, int64_t max_new_tokens,
    const SamplingOptions& options, const std::function<void(int64_t, int64_t)>& on_token = {},
    const std::function<bool(int64_t, const std::vector<int64_t>&)>& stop = {});

}  // namespace qforge::model
