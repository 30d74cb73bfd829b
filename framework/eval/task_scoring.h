// The two kinds of request evaluation tasks make of a model, over TP and DP:
//  - log-likelihoods of continuations after a context, the context run once for all its continuations (its keys
//    and values are copied to each continuation's row of the KV cache), with the vocabulary never gathered;
//  - greedy generation until a stop condition.
// Requests are sorted by length and cut into fixed batches that go round-robin to the DP groups, so what a request
// gets does not depend on the DP size: the same batch composition, the same rounding.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/model/transformer.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qforge::eval {

struct LoglikelihoodRequest {
  std::vector<int64_t> context;                     // non-empty; fits the model's context with every continuation
  std::vector<std::vector<int64_t>> continuations;  // each non-empty
};

struct ContinuationScore {
  double loglikelihood = 0;  // sum of log p(token | everything before it) over the continuation
  bool greedy = false;       // every continuation token is the argmax where it is predicted
};

// Collective over the model's TP group and `dp`; every rank returns every request's scores. `batch_size` counts
// contexts per forward pass. `what` names the work in progress lines.
std::vector<std::vector<ContinuationScore>> score_continuations(model::CausalLM& model,
                                                                const std::vector<LoglikelihoodRequest>& requests,
                                                                int64_t batch_size, dist::Communicator& dp,
                                                                const std::string& what);

// Greedy continuation of each prompt until `finished(tokens so far)` says so, EOS, `max_new_tokens` or the model's
// context. Collective like score_continuations; every rank returns every prompt's new tokens.
std::vector<std::vector<int64_t>> generate_until(model::CausalLM& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 int64_t max_new_tokens,
                                                 const std::function<bool(const std::vector<int64_t>&)>& finished,
                                                 int64_t batch_size, dist::Communicator& dp, const std::string& what);

}  // namespace qforge::eval
