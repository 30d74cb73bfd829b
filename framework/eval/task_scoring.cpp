#include "framework/eval/task_scoring.h"

#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/model/generation.h"
#include "framework/model/parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace qforge::eval {
namespace {

// Request indexes, longest first (ties in request order), cut into batches of `batch_size`; batch b goes to DP
// group b % dp. Returns this group's batches.
std::vector<std::vector<int64_t>> my_batches(const std::vector<int64_t>& lengths, int64_t batch_size,
                                             const dist::Communicator& dp) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<int64_t>> batches;
  for (std::size_t first = 0, b = 0; first < order.size(); first += batch_size, ++b) {
    if (static_cast<int>(b % dp.size()) != dp.rank()) continue;
    const std::size_t last = std::min(order.size(), first + static_cast<std::size_t>(batch_size));
    batches.emplace_back(order.begin() + first, order.begin() + last);
  }
  return batches;
}

// Rows of token lists as one [rows, width] tensor; a short row repeats its last token at later positions, where
// what it writes into the KV cache is never read by its real tokens.
torch::Tensor padded(const std::vector<const std::vector<int64_t>*>& rows, int64_t width, int64_t skip_last) {
  torch::Tensor ids = torch::empty({static_cast<int64_t>(rows.size()), width}, torch::kLong);
  auto a = ids.accessor<int64_t, 2>();
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const auto& row = *rows[r];
    const int64_t length = static_cast<int64_t>(row.size()) - skip_last;
    for (int64_t t = 0; t < width; ++t) a[r][t] = row[std::min(t, length - 1)];
  }
  return ids;
}

// The model's decoder blocks over `ids` at `positions`, writing keys and values into `cache`: hidden [B, T, H].
torch::Tensor run_blocks(model::CausalLM& model, const torch::Tensor& ids, const torch::Tensor& positions,
                         model::KvCache& cache) {
  const torch::Tensor on_device = positions.to(model.embed_tokens->weight.device());
  torch::Tensor h = model.embed(ids, on_device);
  for (std::size_t i = 0; i < model.layers.size(); ++i)
    h = model.layers[i](h, on_device, &cache.keys[i], &cache.values[i]);
  return h;
}

struct Scored {
  torch::Tensor nll;     // [N] double
  torch::Tensor greedy;  // [N] bool
};

Scored score_rows(model::CausalLM& model, const torch::Tensor& logits, const torch::Tensor& targets) {
  const torch::Tensor t = targets.to(logits.device());
  torch::Tensor nll = model::vocab_parallel_cross_entropy(logits, t, model.tp(), model.vocab_start());
  torch::Tensor top = model::vocab_parallel_argmax(logits, model.tp(), model.vocab_start());
  return {nll.to(torch::kDouble).cpu(), top.eq(t).cpu()};
}

// One batch of requests: the contexts in one pass, then every continuation longer than one token in a second pass
// from a copy of its context's cache rows. Adds each continuation's scores into `out` (ll, greedy) pairs at
// `slots[request][continuation]`.
void score_batch(model::CausalLM& model, const std::vector<LoglikelihoodRequest>& requests,
                 const std::vector<int64_t>& batch, const std::vector<std::vector<int64_t>>& slots, double* out) {
  std::vector<const std::vector<int64_t>*> contexts;
  int64_t longest_context = 0, longest_tail = 0;
  for (int64_t r : batch) {
    contexts.push_back(&requests[r].context);
    longest_context = std::max<int64_t>(longest_context, requests[r].context.size());
    for (const auto& c : requests[r].continuations) longest_tail = std::max<int64_t>(longest_tail, c.size() - 1);
  }
  const int64_t rows = static_cast<int64_t>(batch.size());
  model::KvCache cache = model.make_cache(rows, longest_context + longest_tail);
  torch::Tensor positions = torch::arange(longest_context, torch::kLong).unsqueeze(0).expand({rows, -1}).contiguous();
  torch::Tensor hidden = run_blocks(model, padded(contexts, longest_context, 0), positions, cache);
  std::vector<int64_t> last(rows);
  for (int64_t i = 0; i < rows; ++i) last[i] = static_cast<int64_t>(contexts[i]->size()) - 1;
  torch::Tensor last_index = torch::tensor(last, torch::kLong).to(hidden.device()).view({rows, 1, 1});
  torch::Tensor context_logits =
      model.finish(hidden.gather(1, last_index.expand({rows, 1, hidden.size(-1)}))).squeeze(1);  // [rows, V_local]

  // First tokens of every continuation, from their context's last logits.
  std::vector<int64_t> owner, first_tokens;
  std::vector<std::pair<int64_t, int64_t>> tails;  // (row in batch, continuation) with more than one token
  for (int64_t i = 0; i < rows; ++i) {
    const auto& continuations = requests[batch[i]].continuations;
    for (std::size_t c = 0; c < continuations.size(); ++c) {
      owner.push_back(i);
      first_tokens.push_back(continuations[c][0]);
      if (continuations[c].size() > 1) tails.emplace_back(i, static_cast<int64_t>(c));
    }
  }
  torch::Tensor owners = torch::tensor(owner, torch::kLong).to(context_logits.device());
  Scored first = score_rows(model, context_logits.index_select(0, owners), torch::tensor(first_tokens, torch::kLong));
  auto first_nll = first.nll.accessor<double, 1>();
  auto first_greedy = first.greedy.accessor<bool, 1>();
  for (std::size_t k = 0, i = 0; i < static_cast<std::size_t>(rows); ++i) {
    for (std::size_t c = 0; c < requests[batch[i]].continuations.size(); ++c, ++k) {
      double* slot = out + 2 * slots[batch[i]][c];
      slot[0] = -first_nll[k];
      slot[1] = first_greedy[k] ? 1 : 0;
    }
  }
  if (tails.empty()) return;

  // The rest of each longer continuation: its tokens but the last, at the positions after its context.
  const int64_t tail_rows = static_cast<int64_t>(tails.size());
  std::vector<int64_t> tail_owner;
  std::vector<const std::vector<int64_t>*> tail_tokens;
  for (const auto& [i, c] : tails) {
    tail_owner.push_back(i);
    tail_tokens.push_back(&requests[batch[i]].continuations[c]);
  }
  torch::Tensor owners_of_tails = torch::tensor(tail_owner, torch::kLong).to(cache.keys[0].device());
  for (std::size_t l = 0; l < cache.keys.size(); ++l) {
    cache.keys[l] = cache.keys[l].index_select(0, owners_of_tails);
    cache.values[l] = cache.values[l].index_select(0, owners_of_tails);
  }
  torch::Tensor tail_positions = torch::empty({tail_rows, longest_tail}, torch::kLong);
  torch::Tensor targets = torch::empty({tail_rows, longest_tail}, torch::kLong);
  torch::Tensor valid = torch::zeros({tail_rows, longest_tail}, torch::kBool);
  for (int64_t j = 0; j < tail_rows; ++j) {
    const auto& tokens = *tail_tokens[j];
    const int64_t start = last[tail_owner[j]] + 1, count = static_cast<int64_t>(tokens.size()) - 1;
    for (int64_t t = 0; t < longest_tail; ++t) {
      tail_positions[j][t] = start + t;
      targets[j][t] = tokens[std::min(t + 1, count)];
      valid[j][t] = t < count;
    }
  }
  torch::Tensor tail_hidden = run_blocks(model, padded(tail_tokens, longest_tail, 1), tail_positions, cache);
  torch::Tensor logits = model.finish(tail_hidden);
  Scored rest = score_rows(model, logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  torch::Tensor nll = rest.nll.view({tail_rows, longest_tail}).masked_fill(valid.logical_not(), 0.0).sum(1);
  torch::Tensor all_greedy = rest.greedy.view({tail_rows, longest_tail}).logical_or(valid.logical_not()).all(1);
  auto tail_nll = nll.accessor<double, 1>();
  auto tail_greedy = all_greedy.accessor<bool, 1>();
  for (int64_t j = 0; j < tail_rows; ++j) {
    double* slot = out + 2 * slots[batch[tails[j].first]][tails[j].second];
    slot[0] -= tail_nll[j];
    slot[1] = slot[1] > 0 && tail_greedy[j] ? 1 : 0;
  }
}

}  // namespace

std::vector<std::vector<ContinuationScore>> score_continuations(model::CausalLM& model,
                                                                const std::vector<LoglikelihoodRequest>& requests,
                                                                int64_t batch_size, dist::Communicator& dp,
                                                                const std::string& what) {
  torch::NoGradGuard no_grad;
  const int64_t context_limit = model.config().max_positions;
  std::vector<int64_t> lengths;
  std::vector<std::vector<int64_t>> slots(requests.size());
  int64_t continuations = 0;
  for (std::size_t r = 0; r < requests.size(); ++r) {
    const auto& request = requests[r];
    QF_CHECK(!request.context.empty(), fmt::format("{}: request {} has an empty context", what, r));
    QF_CHECK(!request.continuations.empty(), fmt::format("{}: request {} has no continuation", what, r));
    int64_t longest = 0;
    for (const auto& c : request.continuations) {
      QF_CHECK(!c.empty(), fmt::format("{}: request {} has an empty continuation", what, r));
      longest = std::max<int64_t>(longest, c.size());
      slots[r].push_back(continuations++);
    }
    const int64_t length = static_cast<int64_t>(request.context.size()) + longest - 1;
    QF_CHECK(length <= context_limit, fmt::format("{}: request {} needs {} positions, more than the model's context "
                                                  "of {}", what, r, length, context_limit));
    lengths.push_back(length);
  }
  // (log-likelihood, greedy) per continuation; each is computed by one DP group and summed over DP.
  torch::Tensor scores = torch::zeros({continuations, 2}, torch::kDouble);
  const auto batches = my_batches(lengths, batch_size, dp);
  int64_t mine = 0;
  for (const auto& b : batches) mine += static_cast<int64_t>(b.size());
  log::Progress progress(what, mine, "requests (this DP group)");
  for (const auto& batch : batches) {
    score_batch(model, requests, batch, slots, scores.data_ptr<double>());
    progress.advance(static_cast<int64_t>(batch.size()));
  }
  dp.all_reduce(scores, dist::ReduceOp::kSum);
  std::vector<std::vector<ContinuationScore>> result(requests.size());
  auto a = scores.accessor<double, 2>();
  for (std::size_t r = 0; r < requests.size(); ++r)
    for (int64_t slot : slots[r]) result[r].push_back({a[slot][0], a[slot][1] > 0.5});
  return result;
}

std::vector<std::vector<int64_t>> generate_until(model::CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 int64_t max_new_tokens,
                                                 const std::function<bool(const std::vector<int64_t>&)>& finished,
                                                 int64_t batch_size, dist::Communicator& dp, const std::string& what) {
  std::vector<int64_t> lengths;
  for (const auto& p : prompts) lengths.push_back(static_cast<int64_t>(p.size()));
  // Tokens + 1 per (prompt, step), 0 where nothing was generated; each prompt is run by one DP group.
  torch::Tensor tokens = torch::zeros({static_cast<int64_t>(prompts.size()), max_new_tokens}, torch::kLong);
  const auto batches = my_batches(lengths, batch_size, dp);
  int64_t mine = 0;
  for (const auto& b : batches) mine += static_cast<int64_t>(b.size());
  log::Progress progress(what, mine, "prompts (this DP group)");
  for (const auto& batch : batches) {
    std::vector<std::vector<int64_t>> rows;
    for (int64_t p : batch) rows.push_back(prompts[p]);
    auto outputs = model::generate(model, rows, max_new_tokens, model::SamplingOptions{}, {},
                                   [&](int64_t row, const std::vector<int64_t>& so_far) { return finished(so_far); });
    for (std::size_t i = 0; i < batch.size(); ++i)
      for (std::size_t t = 0; t < outputs[i].size(); ++t) tokens[batch[i]][t] = outputs[i][t] + 1;
    progress.advance(static_cast<int64_t>(batch.size()));
  }
  dp.all_reduce(tokens, dist::ReduceOp::kSum);
  std::vector<std::vector<int64_t>> result(prompts.size());
  auto a = tokens.accessor<int64_t, 2>();
  for (std::size_t p = 0; p < prompts.size(); ++p)
    for (int64_t t = 0; t < max_new_tokens && a[p][t] > 0; ++t) result[p].push_back(a[p][t] - 1);
  return result;
}

}  // namespace qforge::eval
