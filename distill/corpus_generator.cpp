#include "distill/corpus_generator.h"

#include "framework/common/error.h"
#include "framework/model/generation.h"
#include "framework/model/parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <set>

namespace qforge::distill {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// One row of the batch: the sample it holds and what has been chosen so far.
struct Slot {
  int64_t index = -1;  // -1: empty
  SamplePlan plan;
  io::CorpusSample sample;  // index, tokens and (store_topk > 0) top-K so far
};

}  // namespace

nlohmann::json CorpusSettings::identity() const {
  return {{"seq_len", seq_len},       {"start_tokens", start_tokens}, {"samples_per_token", samples_per_token},
          {"greedy_prefix", greedy_prefix}, {"exclude_tokens", exclude_tokens}, {"top_k", top_k},
          {"top_p", top_p},           {"temperature", temperature},   {"stop_at_eos", stop_at_eos},
          {"seed", seed},             {"store_topk", store_topk}};
}

CorpusSchedule::CorpusSchedule(const CorpusSettings& settings, int64_t vocab_size) : settings_(settings) {
  const std::set<int64_t> excluded(settings.exclude_tokens.begin(), settings.exclude_tokens.end());
  for (int64_t id = 0; id < vocab_size; ++id)
    if (!excluded.count(id)) starts_.push_back(id);
  if (starts_.empty()) throw UsageError("generate.exclude_tokens leaves no token to start a sample with");
  if (settings.start_tokens != "sweep" && settings.start_tokens != "random")
    throw UsageError(fmt::format("generate.start_tokens '{}' is not sweep or random", settings.start_tokens));
  if (settings.greedy_prefix.empty()) throw UsageError("generate.greedy_prefix needs at least one length");
  for (int64_t g : settings.greedy_prefix)
    if (g < 1 || g > settings.seq_len)
      throw UsageError(fmt::format("generate.greedy_prefix {} is outside [1, generate.seq_len = {}]", g, settings.seq_len));
  const int64_t sweep = static_cast<int64_t>(starts_.size()) * settings.samples_per_token;
  num_samples_ = settings.num_samples > 0 ? settings.num_samples : sweep;
}

SamplePlan CorpusSchedule::plan(int64_t index) const {
  SamplePlan p;
  const uint64_t seed = splitmix64(static_cast<uint64_t>(settings_.seed) * 0x100000001B3ULL ^ static_cast<uint64_t>(index));
  const int64_t count = static_cast<int64_t>(starts_.size());
  if (settings_.start_tokens == "sweep") {
    p.start_token = starts_[(index / settings_.samples_per_token) % count];
    const int64_t within = index % settings_.samples_per_token;
    p.greedy_tokens = settings_.greedy_prefix[within % settings_.greedy_prefix.size()];
  } else {
    p.start_token = starts_[splitmix64(seed) % static_cast<uint64_t>(count)];
    p.greedy_tokens = settings_.greedy_prefix[index % settings_.greedy_prefix.size()];
  }
  p.seed = seed;
  return p;
}

void generate_samples(model::CausalLM& model, const CorpusSchedule& schedule, const CorpusSettings& settings,
                      const std::vector<int64_t>& indices, int64_t batch_size,
                      const std::function<void(const io::CorpusSample&)>& on_sample) {
  torch::NoGradGuard no_grad;
  QF_CHECK(settings.seq_len <= model.config().max_positions,
           fmt::format("generate.seq_len {} exceeds the teacher's context {}", settings.seq_len, model.config().max_positions));
  const int64_t vocab = model.config().vocab_size, eos = model.config().eos_token_id, topk = settings.store_topk;
  if (topk < 0 || topk > vocab)
    throw UsageError(fmt::format("generate.store_topk {} is outside 0..vocab_size ({})", topk, vocab));
  const model::SamplingOptions sampling{settings.temperature, settings.top_k, settings.top_p, 0};
  model::KvCache cache = model.make_cache(batch_size, settings.seq_len);
  std::deque<int64_t> queue(indices.begin(), indices.end());
  std::vector<Slot> slots(batch_size);

  auto refill = [&](Slot& slot) {
    slot.index = -1;
    if (queue.empty()) return;
    slot.index = queue.front();
    queue.pop_front();
    slot.plan = schedule.plan(slot.index);
    slot.sample.index = slot.index;
    slot.sample.tokens.assign(1, static_cast<int32_t>(slot.plan.start_token));
    slot.sample.topk_ids.clear();
    slot.sample.topk_logprobs.clear();
  };
  for (Slot& slot : slots) refill(slot);

  torch::Tensor ids = torch::zeros({batch_size, 1}, torch::kLong);
  torch::Tensor positions = torch::zeros({batch_size, 1}, torch::kLong);
  while (std::any_of(slots.begin(), slots.end(), [](const Slot& s) { return s.index >= 0; })) {
    for (int64_t b = 0; b < batch_size; ++b) {
      const Slot& s = slots[b];
      ids[b][0] = s.index >= 0 ? s.sample.tokens.back() : 0;
      positions[b][0] = s.index >= 0 ? static_cast<int64_t>(s.sample.tokens.size()) - 1 : 0;
    }
    torch::Tensor logits = model.forward(ids, positions, &cache).squeeze(1);  // [B, V_local]
    torch::Tensor greedy = model::vocab_parallel_argmax(logits, model.tp(), model.vocab_start()).cpu();
    torch::Tensor uniforms = torch::empty({batch_size}, torch::kDouble);
    for (int64_t b = 0; b < batch_size; ++b)
      uniforms[b] = model::uniform_from(slots[b].plan.seed, static_cast<uint64_t>(slots[b].sample.tokens.size()));
    const torch::Tensor full = model::gather_vocab(logits, model.tp(), vocab).cpu();  // [B, vocab]
    torch::Tensor sampled = model::sample_from_logits(full, sampling, uniforms);
    torch::Tensor top_ids, top_logprobs;  // [B, K]: each row's own top-K, independent of the other rows
    if (topk > 0) {
      auto top = torch::log_softmax(full.to(torch::kFloat), 1).topk(topk, 1, /*largest=*/true, /*sorted=*/true);
      top_logprobs = std::get<0>(top).contiguous();
      top_ids = std::get<1>(top).to(torch::kInt).contiguous();
    }
    auto greedy_of = greedy.accessor<int64_t, 1>();
    auto sampled_of = sampled.accessor<int64_t, 1>();
    for (int64_t b = 0; b < batch_size; ++b) {
      Slot& s = slots[b];
      if (s.index < 0) continue;
      const bool top1 = static_cast<int64_t>(s.sample.tokens.size()) < s.plan.greedy_tokens;
      const int64_t token = top1 ? greedy_of[b] : sampled_of[b];
      if (topk > 0) {
        const int32_t* ids_of = top_ids.data_ptr<int32_t>() + b * topk;
        const float* logprobs_of = top_logprobs.data_ptr<float>() + b * topk;
        s.sample.topk_ids.insert(s.sample.topk_ids.end(), ids_of, ids_of + topk);
        s.sample.topk_logprobs.insert(s.sample.topk_logprobs.end(), logprobs_of, logprobs_of + topk);
      }
      s.sample.tokens.push_back(static_cast<int32_t>(token));
      const bool finished = static_cast<int64_t>(s.sample.tokens.size()) >= settings.seq_len || (settings.stop_at_eos && token == eos);
      if (!finished) continue;
      on_sample(s.sample);
      refill(s);
    }
  }
}

}  // namespace qforge::distill
