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

// One row of a group: the sample it decodes and what has been chosen so far.
struct Row {
  SamplePlan plan;
  io::CorpusSample sample;  // index, tokens and (store_topk > 0) top-K so far
};

// Keeps the cache rows `rows` (int64 [R]) of every layer, in that order.
void keep_cache_rows(model::KvCache& cache, const torch::Tensor& rows) {
  for (auto* tensors : {&cache.keys, &cache.values})
    for (torch::Tensor& t : *tensors) t = t.index_select(0, rows.to(t.device()));
}

}  // namespace

nlohmann::json CorpusSettings::identity() const {
  return {{"seq_len", seq_len},
          {"start_tokens", start_tokens},
          {"samples_per_token", samples_per_token},
          {"greedy_prefix", greedy_prefix},
          {"exclude_tokens", exclude_tokens},
          {"top_k", top_k},
          {"top_p", top_p},
          {"temperature", temperature},
          {"stop_at_eos", stop_at_eos},
          {"seed", seed},
          {"store_topk", store_topk},
          {"batch_size", batch_size}};
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
      throw UsageError(
          fmt::format("generate.greedy_prefix {} is outside [1, generate.seq_len = {}]", g, settings.seq_len));
  const int64_t sweep = static_cast<int64_t>(starts_.size()) * settings.samples_per_token;
  num_samples_ = settings.num_samples > 0 ? settings.num_samples : sweep;
}

SamplePlan CorpusSchedule::plan(int64_t index) const {
  SamplePlan p;
  const uint64_t seed =
      splitmix64(static_cast<uint64_t>(settings_.seed) * 0x100000001B3ULL ^ static_cast<uint64_t>(index));
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

int64_t CorpusSchedule::num_groups() const { return (num_samples_ + settings_.batch_size - 1) / settings_.batch_size; }

std::vector<int64_t> CorpusSchedule::group(int64_t g) const {
  QF_CHECK(g >= 0 && g < num_groups(), fmt::format("group {} is outside 0..{}", g, num_groups() - 1));
  std::vector<int64_t> indices;
  for (int64_t i = g * settings_.batch_size; i < std::min(num_samples_, (g + 1) * settings_.batch_size); ++i)
    indices.push_back(i);
  return indices;
}

std::vector<int64_t> CorpusSchedule::unfinished_groups(const std::vector<uint8_t>& done) const {
  QF_CHECK(static_cast<int64_t>(done.size()) == num_samples_,
           fmt::format("{} done flags for {} samples", done.size(), num_samples_));
  std::vector<int64_t> groups;
  for (int64_t g = 0; g < num_groups(); ++g) {
    const std::vector<int64_t> indices = group(g);
    if (std::any_of(indices.begin(), indices.end(), [&](int64_t i) { return !done[i]; })) groups.push_back(g);
  }
  return groups;
}

void check_settings(const CorpusSettings& settings, const model::ModelConfig& teacher) {
  if (settings.seq_len > teacher.max_positions)
    throw UsageError(fmt::format("generate.seq_len {} exceeds the teacher's context (max_positions {})",
                                 settings.seq_len, teacher.max_positions));
  if (settings.store_topk > teacher.vocab_size)
    throw UsageError(
        fmt::format("generate.store_topk {} is outside 0..vocab_size ({})", settings.store_topk, teacher.vocab_size));
}

namespace {

// Decodes one group from its start tokens to the end of its last sample (see
// generate_groups).
void decode_group(model::CausalLM& model, const CorpusSchedule& schedule, const CorpusSettings& settings,
                  const std::vector<int64_t>& indices, const std::function<void(const io::CorpusSample&)>& on_sample,
                  const std::function<bool(int64_t)>& wanted) {
  const int64_t vocab = model.config().vocab_size, eos = model.config().eos_token_id, topk = settings.store_topk;
  const model::SamplingOptions sampling{settings.temperature, settings.top_k, settings.top_p, 0};
  std::vector<Row> rows(indices.size());
  for (size_t r = 0; r < indices.size(); ++r) {
    rows[r].plan = schedule.plan(indices[r]);
    rows[r].sample.index = indices[r];
    rows[r].sample.tokens.assign(1, static_cast<int32_t>(rows[r].plan.start_token));
  }
  model::KvCache cache = model.make_cache(static_cast<int64_t>(rows.size()), settings.seq_len);
  // Every row of a group is at the same position: they started together and
  // advance one token per step.
  for (int64_t position = 0; !rows.empty(); ++position) {
    const auto batch = static_cast<int64_t>(rows.size());
    std::vector<int64_t> last(batch);
    std::vector<double> draws(batch);
    for (int64_t b = 0; b < batch; ++b) {
      last[b] = rows[b].sample.tokens.back();
      draws[b] = model::uniform_from(rows[b].plan.seed, static_cast<uint64_t>(position + 1));
    }
    const torch::Tensor ids = torch::tensor(last, torch::kLong).view({batch, 1});
    const torch::Tensor uniforms = torch::tensor(draws, torch::kDouble);
    const torch::Tensor positions = torch::full({batch, 1}, position, torch::kLong);
    torch::Tensor logits = model.forward(ids, positions, &cache).squeeze(1);  // [B, V_local]
    torch::Tensor greedy = model::vocab_parallel_argmax(logits, model.tp(), model.vocab_start()).cpu();
    const torch::Tensor full = model::gather_vocab(logits, model.tp(), vocab).cpu();  // [B, vocab]
    torch::Tensor sampled = model::sample_from_logits(full, sampling, uniforms);
    torch::Tensor top_ids, top_logprobs;  // [B, K]: each row's own top-K
    if (topk > 0) {
      auto top = torch::log_softmax(full.to(torch::kFloat), 1).topk(topk, 1, /*largest=*/true, /*sorted=*/true);
      top_logprobs = std::get<0>(top).contiguous();
      top_ids = std::get<1>(top).to(torch::kInt).contiguous();
    }
    auto greedy_of = greedy.accessor<int64_t, 1>();
    auto sampled_of = sampled.accessor<int64_t, 1>();
    std::vector<int64_t> live;
    for (int64_t b = 0; b < batch; ++b) {
      io::CorpusSample& s = rows[b].sample;
      const bool top1 = static_cast<int64_t>(s.tokens.size()) < rows[b].plan.greedy_tokens;
      const int64_t token = top1 ? greedy_of[b] : sampled_of[b];
      if (topk > 0) {
        const int32_t* ids_of = top_ids.data_ptr<int32_t>() + b * topk;
        const float* logprobs_of = top_logprobs.data_ptr<float>() + b * topk;
        s.topk_ids.insert(s.topk_ids.end(), ids_of, ids_of + topk);
        s.topk_logprobs.insert(s.topk_logprobs.end(), logprobs_of, logprobs_of + topk);
      }
      s.tokens.push_back(static_cast<int32_t>(token));
      const bool finished =
          static_cast<int64_t>(s.tokens.size()) >= settings.seq_len || (settings.stop_at_eos && token == eos);
      if (!finished) {
        live.push_back(b);
      } else if (!wanted || wanted(s.index)) {
        on_sample(s);
      }
    }
    if (static_cast<int64_t>(live.size()) == batch) continue;
    std::vector<Row> kept;
    for (int64_t b : live) kept.push_back(std::move(rows[b]));
    rows = std::move(kept);
    if (!rows.empty()) keep_cache_rows(cache, torch::tensor(live, torch::kLong));
  }
}

}  // namespace

void generate_groups(model::CausalLM& model, const CorpusSchedule& schedule, const std::vector<int64_t>& groups,
                     const std::function<void(const io::CorpusSample&)>& on_sample,
                     const std::function<bool(int64_t)>& wanted) {
  torch::NoGradGuard no_grad;
  const CorpusSettings& settings = schedule.settings();
  check_settings(settings, model.config());
  for (int64_t g : groups) decode_group(model, schedule, settings, schedule.group(g), on_sample, wanted);
}

}  // namespace qforge::distill
