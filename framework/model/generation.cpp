#include "framework/model/generation.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <limits>

namespace qforge::model {

torch::Tensor sample_from_logits(const torch::Tensor& logits, const SamplingOptions& options, const torch::Tensor& uniforms) {
  if (options.temperature <= 0) return logits.argmax(-1);
  torch::Tensor scaled = logits.to(torch::kFloat) / options.temperature;
  const float minus_inf = -std::numeric_limits<float>::infinity();
  if (options.top_k > 0 && options.top_k < scaled.size(-1)) {
    torch::Tensor kth = std::get<0>(scaled.topk(options.top_k, -1)).narrow(-1, options.top_k - 1, 1);
    scaled = scaled.masked_fill(scaled < kth, minus_inf);
  }
  if (options.top_p < 1.0) {
    auto [sorted, order] = scaled.sort(-1, /*descending=*/true);
    torch::Tensor probs = torch::softmax(sorted, -1);
    // Drop a token when the tokens before it already hold top_p of the mass; the first token always stays.
    torch::Tensor drop_sorted = (probs.cumsum(-1) - probs) >= options.top_p;
    scaled = scaled.masked_fill(torch::zeros_like(drop_sorted).scatter(-1, order, drop_sorted), minus_inf);
  }
  torch::Tensor cdf = torch::softmax(scaled.to(torch::kDouble), -1).cumsum(-1);
  torch::Tensor target = uniforms.to(torch::kDouble).unsqueeze(-1) * cdf.narrow(-1, cdf.size(-1) - 1, 1);
  // The first token whose cumulative mass exceeds the target, skipping tokens of zero probability.
  torch::Tensor below = (cdf <= target).sum(-1);
  return below.clamp_max(cdf.size(-1) - 1);
}

double uniform_from(uint64_t seed, uint64_t counter) {
  uint64_t x = seed ^ (counter * 0x9E3779B97F4A7C15ULL);
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

std::vector<std::vector<int64_t>> generate(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                           int64_t max_new_tokens, const SamplingOptions& options,
                                           const std::function<void(int64_t, int64_t)>& on_token,
                                           const std::function<bool(int64_t, const std::vector<int64_t>&)>& stop) {
  torch::NoGradGuard no_grad;
  const int64_t batch = static_cast<int64_t>(prompts.size());
  const int64_t context = model.config().max_positions;
  int64_t longest = 0;
  for (const auto& p : prompts) {
    QF_CHECK(!p.empty(), "generate: every prompt needs at least one token");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  QF_CHECK(longest <= context, fmt::format("generate: a prompt of {} tokens exceeds the context of {}", longest, context));
  const int64_t capacity = std::min(context, longest + max_new_tokens);
  KvCache cache = model.make_cache(batch, capacity);

  // Prefill: rows shorter than the longest are padded with their last token at later positions; what that
  // writes into the cache lies beyond the row's position and is overwritten before it is ever read.
  torch::Tensor ids = torch::empty({batch, longest}, torch::kLong);
  torch::Tensor positions = torch::empty({batch, longest}, torch::kLong);
  std::vector<int64_t> next_position(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const auto& p = prompts[b];
    for (int64_t t = 0; t < longest; ++t) {
      ids[b][t] = p[std::min<int64_t>(t, p.size() - 1)];
      positions[b][t] = t;
    }
    next_position[b] = static_cast<int64_t>(p.size());
  }
  torch::Tensor logits = model.forward(ids, positions, &cache);
  torch::Tensor last_index = torch::tensor(next_position, torch::kLong).sub(1).view({batch, 1, 1});
  logits = logits.gather(1, last_index.expand({batch, 1, logits.size(-1)})).squeeze(1);  // [B, V_local]

  std::vector<std::vector<int64_t>> outputs(batch);
  std::vector<bool> done(batch, false);
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    torch::Tensor chosen;
    if (options.temperature <= 0) {
      chosen = vocab_parallel_argmax(logits, model.tp(), model.vocab_start()).cpu();
    } else {  // on the CPU, from counter-based numbers: the same tokens whatever the device
      torch::Tensor uniforms = torch::empty({batch}, torch::kDouble);
      for (int64_t b = 0; b < batch; ++b) uniforms[b] = uniform_from(options.seed + static_cast<uint64_t>(b), static_cast<uint64_t>(step));
      chosen = sample_from_logits(gather_vocab(logits, model.tp(), model.config().vocab_size).cpu(), options, uniforms);
    }
    bool any_active = false;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const int64_t token = chosen[b].item<int64_t>();
      outputs[b].push_back(token);
      if (on_token) on_token(b, token);
      done[b] = token == model.config().eos_token_id || next_position[b] >= capacity;
      if (stop && !done[b]) done[b] = stop(b, outputs[b]);
      any_active = any_active || !done[b];
    }
    if (!any_active || step + 1 == max_new_tokens) break;
    for (int64_t b = 0; b < batch; ++b) {
      ids[b][0] = outputs[b].empty() ? 0 : outputs[b].back();
      positions[b][0] = std::min(next_position[b], capacity - 1);
      if (!done[b]) ++next_position[b];
    }
    logits = model.forward(ids.narrow(1, 0, 1), positions.narrow(1, 0, 1), &cache).squeeze(1);
  }
  return outputs;
}

}  // namespace qforge::model
