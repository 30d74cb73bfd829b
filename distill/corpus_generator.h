// LLM-QAT's data-free corpus generation: the teacher continues single start
// tokens, the first few tokens top-1 and the rest sampled. Every choice about
// sample i is a pure function of i and the settings: its start token, prefix
// and random numbers, and the batch it is decoded in (its group, below). So the
// corpus does not depend on how many DP ranks produce it, nor on where a killed
// run was resumed.
#pragma once

#include "framework/config/config.h"
#include "framework/io/corpus.h"
#include "framework/model/transformer.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qforge::distill {

struct CorpusSettings {
  int64_t num_samples = 0;             // 0: the vocabulary sweep's count
  int64_t seq_len = 256;               // tokens per sample, start token included
  std::string start_tokens = "sweep";  // sweep: every allowed id starts
                                       // samples_per_token samples; random
  int64_t samples_per_token = 3;
  std::vector<int64_t> greedy_prefix = {3, 4, 5};  // tokens chosen top-1 (start token included), by sample
  std::vector<int64_t> exclude_tokens;             // never start with these (special tokens)
  int64_t top_k = 50;
  double top_p = 1.0;
  double temperature = 1.0;
  bool stop_at_eos = true;  // false: keep sampling past EOS to seq_len
  int64_t seed = 0;
  int64_t store_topk = 0;   // > 0: store the teacher's top-K log-probs of every position
  int64_t batch_size = 64;  // samples decoded together: one group (see generate_groups)
  // How the job runs, not what the corpus is:
  std::string output;         // the corpus file (.h5); journals go to <output>.parts/ meanwhile
  int64_t flush_every = 256;  // samples between journal flushes (what a crash can lose)

  template <class V>
  void visit(V& v) {
    v("output", output);
    v("num_samples", num_samples, config::at_least(0));
    v("seq_len", seq_len, config::at_least(2));
    v("start_tokens", start_tokens, config::one_of({"sweep", "random"}));
    v("samples_per_token", samples_per_token, config::at_least(1));
    v("greedy_prefix", greedy_prefix);
    v("exclude_tokens", exclude_tokens);
    v("top_k", top_k, config::at_least(0));
    v("top_p", top_p, [](double p) { return p > 0 && p <= 1 ? std::string() : std::string("in (0, 1]"); });
    v("temperature", temperature, config::at_least(0));
    v("stop_at_eos", stop_at_eos);
    v("seed", seed, config::at_least(0));
    v("store_topk", store_topk, config::at_least(0));
    v("batch_size", batch_size, config::at_least(1));
    v("flush_every", flush_every, config::at_least(1));
  }

  // The settings that decide the corpus's content (stored in the file; a
  // resumed run must match them).
  nlohmann::json identity() const;
};

// What sample `index` is: its start token, how many of its first tokens are
// top-1, and its sampling seed.
struct SamplePlan {
  int64_t start_token = 0;
  int64_t greedy_tokens = 1;
  uint64_t seed = 0;
};

// Sample i's plan, and the decode groups: group g holds samples g * batch_size
// .. (g + 1) * batch_size - 1 (fewer in the last group).
class CorpusSchedule {
 public:
  // Throws a UsageError naming the generate.* key for settings that leave no
  // start token or a bad prefix.
  CorpusSchedule(const CorpusSettings& settings, int64_t vocab_size);
  int64_t num_samples() const { return num_samples_; }
  SamplePlan plan(int64_t index) const;
  const CorpusSettings& settings() const { return settings_; }
  int64_t num_groups() const;
  std::vector<int64_t> group(int64_t g) const;  // its sample indices, ascending
  // The groups holding a sample that `done` (one flag per sample) lacks,
  // ascending.
  std::vector<int64_t> unfinished_groups(const std::vector<uint8_t>& done) const;

 private:
  CorpusSettings settings_;
  std::vector<int64_t> starts_;  // allowed start tokens
  int64_t num_samples_;
};

// Throws a UsageError naming the generate.* key unless the settings fit the
// teacher: seq_len within its context, store_topk within its vocabulary. Called
// before anything is written.
void check_settings(const CorpusSettings& settings, const model::ModelConfig& teacher);

// Decodes each of `groups` as one batch over the model's TP group: all of its
// samples from their start token on, a row retired when its sample ends (EOS),
// never refilled. A sample's tokens thus depend only on its group, which is
// fixed by the settings: whichever groups are decoded, in whatever order, on
// whichever DP rank, and however often (a resumed run decodes again the groups
// a crash interrupted), each sample comes out bit for bit the same. Every TP
// rank makes the same choices. `on_sample` receives each finished sample for
// which `wanted(index)` is true (all when `wanted` is empty): its index and
// tokens, and with settings.store_topk = K > 0 the teacher's top-K ids and
// log-probs (full-vocabulary log_softmax of the fp32 logits, temperature 1,
// before any sampling filter) of the distribution predicting token t+1, for t =
// 0 .. length-2, position-major.
void generate_groups(model::CausalLM& model, const CorpusSchedule& schedule, const std::vector<int64_t>& groups,
                     const std::function<void(const io::CorpusSample&)>& on_sample,
                     const std::function<bool(int64_t)>& wanted = {});

}  // namespace qforge::distill
