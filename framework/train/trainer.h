// The training loop shared by every method: a fixed, seeded data order over a corpus, dealt to DP ranks;
// gradient accumulation over micro-batches; DP gradient reduction in buckets; global-norm clipping over TP and
// DP; AdamW with a warmup/decay schedule and ZeRO-1 state (optimizer.h); per-rank checkpoints that resume
// bit for bit, each file checked against its manifest (checkpoint_manifest.h) on resume; SIGTERM (a Slurm time
// limit) saves a checkpoint and returns.
//
// What a micro-batch computes is the method's business: it gets the sample indices and the number of tokens the
// whole optimizer step covers (over all DP ranks), runs forward and backward of sum(loss) / that number, and
// returns its local sum of losses. The step's loss is then a per-token mean that does not depend on the DP size
// or the micro-batch split.
#pragma once

#include "framework/config/config.h"
#include "framework/dist/communicator.h"
#include "framework/io/corpus.h"
#include "framework/model/transformer.h"
#include "framework/train/checkpoint_manifest.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace qforge::train {

struct TrainSettings {  // config section `train`
  int64_t global_batch = 32;  // samples per optimizer step, over all DP ranks
  int64_t micro_batch = 1;    // samples per forward pass on one rank
  int64_t epochs = 1;
  int64_t max_steps = 0;      // > 0: stop after this many steps (the schedule spans them)
  double lr = 2e-5;
  double min_lr = 0.0;
  std::string schedule = "cosine";  // cosine, linear, constant
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double max_grad_norm = 1.0;  // 0: no clipping
  bool zero = true;            // shard optimizer state across DP ranks (ZeRO-1)
  double bucket_mb = 64;       // fp32 gradient bucket size for the DP reduction
  bool recompute = false;      // recompute each decoder block's activations in the backward pass
  int64_t seed = 0;            // data order
  int64_t save_every = 0;      // steps between checkpoints; 0: only at the end and on SIGTERM
  int64_t keep_checkpoints = 2;

  template <class V>
  void visit(V& v) {
    // AdamW's ranges (torch.optim.AdamW refuses the same values); NaN fails every comparison.
    auto positive = [](double x) { return x > 0 && x < 1e30 ? std::string() : std::string("a finite number > 0"); };
    auto below_one = [](double x) { return x >= 0 && x < 1 ? std::string() : std::string("in [0, 1)"); };
    v("global_batch", global_batch, config::at_least(1));
    v("micro_batch", micro_batch, config::at_least(1));
    v("epochs", epochs, config::at_least(1));
    v("max_steps", max_steps, config::at_least(0));
    v("lr", lr, positive);
    v("min_lr", min_lr, config::at_least(0));
    v("schedule", schedule, config::one_of({"cosine", "linear", "constant"}));
    v("warmup_steps", warmup_steps, config::at_least(0));
    v("weight_decay", weight_decay, config::at_least(0));
    v("beta1", beta1, below_one);
    v("beta2", beta2, below_one);
    v("eps", eps, positive);
    v("max_grad_norm", max_grad_norm, config::at_least(0));
    v("zero", zero);
    v("bucket_mb", bucket_mb, [](double mb) { return mb > 0 ? std::string() : std::string("> 0"); });
    v("recompute", recompute);
    v("seed", seed, config::at_least(0));
    v("save_every", save_every, config::at_least(0));
    v("keep_checkpoints", keep_checkpoints, config::at_least(1));
  }
};

// Forward + backward of one micro-batch: `samples` are corpus indices, `step_tokens` the tokens the whole
// optimizer step covers. Returns the local sum of per-token losses.
using MicroStep = std::function<double(const std::vector<int64_t>& samples, double step_tokens)>;

struct TrainResult {
  int64_t steps_done = 0;   // optimizer steps completed, resumed ones included
  int64_t total_steps = 0;
  bool stopped = false;      // a stop signal arrived; a checkpoint of steps_done was saved
  double last_loss = 0.0;    // mean per-token loss of the last step
  std::vector<double> losses;  // per step run in this call
  // The losses of the last history.size() steps up to steps_done, the resumed ones included (each checkpoint
  // records the history so far): every step's from step 1, unless the run resumed from a checkpoint saved before
  // the trainer kept the history, which records none (then those of the steps run since; no step is made up).
  std::vector<double> history;
};

class Trainer {
 public:
  // `tokens_of(length)`: tokens a sample of that length contributes to the loss. `checkpoint_dir` empty: no
  // checkpoints. `resolved_config` is saved beside each checkpoint. `run_fingerprint`: the caller's settings and
  // inputs that a resume must match (flat keys: "quant.bits" -> "4-8-4", "model.checksum" -> ...), recorded in
  // each checkpoint's manifest beside the trainer's own (train.*, parallel.*, corpus.*).
  Trainer(TrainSettings settings, model::CausalLM& model, dist::Communicator& dp, const io::CorpusReader& corpus,
          std::function<int64_t(int64_t length)> tokens_of, std::string checkpoint_dir, std::string resolved_config,
          nlohmann::json run_fingerprint = nlohmann::json::object());
  ~Trainer();

  int64_t total_steps() const { return total_steps_; }
  // Loads the newest intact checkpoint under checkpoint_dir (false when there is none: step 0). Every file is
  // checked against the manifest's size and checksum: a damaged checkpoint is skipped with a warning naming the
  // file, and the previous one is tried; an Error when every checkpoint is damaged. A checkpoint whose
  // fingerprint differs from this run's is a UsageError naming the first differing key and both values.
  // Collective.
  bool resume();
  TrainResult run(const MicroStep& micro_step);
  // Writes a checkpoint of the current state (steps_done()). Collective.
  void save_checkpoint();
  int64_t steps_done() const;
  std::vector<int64_t> bucket_sizes() const;  // the optimizer's fp32 gradient buckets (elements, padded)

 private:
  // The step's samples over all DP ranks, in epoch order: DP rank r takes positions r, r + dp, ...
  std::vector<int64_t> step_samples(int64_t step);
  // Trains one step; returns its mean per-token loss and sets `tokens` to the tokens it covered.
  double train_step(int64_t step, const MicroStep& micro_step, double& tokens);
  bool stop_requested();
  // The settings and inputs a resume must match (the corpus checksum is computed once, by one rank). Collective.
  nlohmann::json fingerprint();
  // The first non-empty `mine` over the ranks in (DP, TP) order, on every rank; "" when all are empty. Collective.
  std::string first_problem(const std::string& mine);
  // Why the checkpoint in `dir` cannot be used ("" when it is intact), the same on every rank; fills `manifest`.
  // A UsageError when its fingerprint differs from `current`. Collective.
  std::string check_checkpoint(const std::string& dir, const nlohmann::json& current, CheckpointManifest& manifest);
  void load_checkpoint(const std::string& dir, const CheckpointManifest& manifest);

  TrainSettings settings_;
  dist::Communicator& tp_;
  dist::Communicator& dp_;
  const io::CorpusReader& corpus_;
  std::function<int64_t(int64_t)> tokens_of_;
  std::string checkpoint_dir_;
  std::string resolved_config_;
  nlohmann::json run_fingerprint_;
  std::string corpus_checksum_;  // XXH64 of the corpus file, once computed
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  std::vector<int64_t> epoch_order_;  // the permutation of the epoch `ordered_epoch_`
  int64_t ordered_epoch_ = -1;
  struct State;
  std::unique_ptr<State> state_;
};

// Sets a flag on SIGTERM (and SIGUSR1, which `sbatch --signal` can send early) while alive; the previous
// handlers come back on destruction.
class StopSignalGuard {
 public:
  StopSignalGuard();
  ~StopSignalGuard();
  static bool raised();
  static void reset();  // tests
};

}  // namespace qforge::train
