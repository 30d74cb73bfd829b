#include "framework/train/trainer.h"

#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/config/settings.h"
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"
#include "framework/log/log.h"
#include "framework/model/training_grads.h"
#include "framework/train/optimizer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace qforge::train {
namespace fs = std::filesystem;
using nlohmann::json;

// ---- stop signals --------------------------------------------------------------------------------------------

namespace {
std::atomic<bool> stop_signal_raised{false};
extern "C" void on_stop_signal(int) { stop_signal_raised.store(true); }
struct sigaction previous_term, previous_usr1;
}  // namespace

StopSignalGuard::StopSignalGuard() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, &previous_term);
  sigaction(SIGUSR1, &action, &previous_usr1);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGTERM, &previous_term, nullptr);
  sigaction(SIGUSR1, &previous_usr1, nullptr);
}

bool StopSignalGuard::raised() { return stop_signal_raised.load(); }
void StopSignalGuard::reset() { stop_signal_raised.store(false); }

// ---- checkpoint files ----------------------------------------------------------------------------------------

namespace {

constexpr const char* kLatestFile = "latest";
constexpr const char* kStateFile = "trainer_state.json";

std::string step_dir_name(int64_t step) { return fmt::format("step-{:08d}", step); }
std::string model_file_name(int tp_rank, int tp) {
  return fmt::format("model-tp{:02d}-of-{:02d}.safetensors", tp_rank, tp);
}
std::string optimizer_file_name(int tp_rank, int dp_rank) {
  return fmt::format("optimizer-tp{:02d}-dp{:03d}.safetensors", tp_rank, dp_rank);
}

// Every tensor of a checkpoint file; NaN or Inf (which would surface only as a gradient norm of nan) is refused,
// naming the file and the tensor.
std::vector<std::pair<std::string, torch::Tensor>> read_all(const io::SafetensorsFile& file) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, info] : file.tensors()) {
    tensors.emplace_back(name, file.read(name, info.dtype));
    const torch::Tensor& t = tensors.back().second;
    if (io::count_nonfinite(t) > 0)
      throw Error(fmt::format("{}: tensor '{}' holds NaN or infinite values; expected a finite training state "
                              "(resume from an earlier checkpoint)", file.path(), name));
  }
  return tensors;
}

std::vector<OptimizedParameter> trainable_parameters(const model::CausalLM& model) {
  std::vector<OptimizedParameter> params;
  std::set<const void*> seen;  // a tied head shares the embedding's tensor
  for (const model::WeightEntry& e : model.weights().entries())
    if (seen.insert(e.param.unsafeGetTensorImpl()).second)
      params.push_back({e.name, e.param, e.spec.replicated()});
  return params;
}

}  // namespace

struct Trainer::State {
  std::vector<OptimizedParameter> params;  // the model's, each tensor once
  std::unique_ptr<DistributedAdamW> optimizer;
  int64_t steps_done = 0;
  double last_loss = 0;
  std::vector<double> history;  // the loss of each of the last history.size() steps, restored on resume
};

Trainer::Trainer(TrainSettings settings, model::CausalLM& model, dist::Communicator& dp, const io::CorpusReader& corpus,
                 std::function<int64_t(int64_t)> tokens_of, std::string checkpoint_dir, std::string resolved_config,
                 json run_fingerprint)
    : settings_(std::move(settings)),
      tp_(model.tp()),
      dp_(dp),
      corpus_(corpus),
      tokens_of_(std::move(tokens_of)),
      checkpoint_dir_(std::move(checkpoint_dir)),
      resolved_config_(std::move(resolved_config)),
      run_fingerprint_(std::move(run_fingerprint)),
      state_(std::make_unique<State>()) {
  const int64_t per_pass = dp.size() * settings_.micro_batch;
  if (settings_.global_batch % per_pass != 0)
    throw UsageError(fmt::format("train.global_batch = {} is not a multiple of DP size {} x train.micro_batch {}",
                                 settings_.global_batch, dp.size(), settings_.micro_batch));
  steps_per_epoch_ = corpus.num_samples() / settings_.global_batch;
  if (steps_per_epoch_ == 0)
    throw UsageError(fmt::format("corpus '{}' has {} samples, fewer than train.global_batch = {}", corpus.path(),
                                 corpus.num_samples(), settings_.global_batch));
  total_steps_ = steps_per_epoch_ * settings_.epochs;
  if (settings_.max_steps > 0) total_steps_ = std::min(total_steps_, settings_.max_steps);
  model.recompute_blocks = settings_.recompute;
  const auto bucket_elements = static_cast<int64_t>(settings_.bucket_mb * 1024 * 1024 / sizeof(float));
  AdamWOptions options{settings_.beta1, settings_.beta2, settings_.eps, settings_.weight_decay};
  state_->params = trainable_parameters(model);
  state_->optimizer = std::make_unique<DistributedAdamW>(state_->params, tp_, dp, options, bucket_elements,
                                                         settings_.zero);
}

Trainer::~Trainer() = default;

int64_t Trainer::steps_done() const { return state_->steps_done; }
std::vector<int64_t> Trainer::bucket_sizes() const { return state_->optimizer->bucket_sizes(); }

// Step s of an epoch covers positions [s * B, (s + 1) * B) of the epoch's permutation, whatever the DP size
// (CorpusReader::epoch_order deals one permutation round-robin: rank r holds positions r, r + dp, ...).
std::vector<int64_t> Trainer::step_samples(int64_t step) {
  const int64_t epoch = step / steps_per_epoch_;
  if (epoch != ordered_epoch_) {
    epoch_order_ = corpus_.epoch_order(static_cast<uint64_t>(settings_.seed + epoch), 0, 1);
    ordered_epoch_ = epoch;
  }
  const auto first = epoch_order_.begin() + (step % steps_per_epoch_) * settings_.global_batch;
  return std::vector<int64_t>(first, first + settings_.global_batch);
}

double Trainer::train_step(int64_t step, const MicroStep& micro_step, double& tokens) {
  const std::vector<int64_t> samples = step_samples(step);
  tokens = 0;
  for (int64_t sample : samples) tokens += static_cast<double>(tokens_of_(corpus_.lengths()[sample]));
  if (tokens == 0) throw Error(fmt::format("training step {} has no tokens to learn from", step));
  std::vector<int64_t> mine;
  for (size_t i = dp_.rank(); i < samples.size(); i += dp_.size()) mine.push_back(samples[i]);
  double loss_sum = 0;
  const model::TrainingKernels training_kernels;  // the forward and backward passes below are training's
  for (size_t first = 0; first < mine.size(); first += settings_.micro_batch) {
    const auto begin = mine.begin() + static_cast<std::ptrdiff_t>(first);
    loss_sum += micro_step(std::vector<int64_t>(begin, begin + settings_.micro_batch), tokens);
  }
  DistributedAdamW& optimizer = *state_->optimizer;
  const double norm = optimizer.reduce_gradients();
  if (!std::isfinite(norm)) throw Error(fmt::format("the gradient norm is {} at training step {}", norm, step));
  const double scale = settings_.max_grad_norm > 0 && norm > settings_.max_grad_norm
                           ? settings_.max_grad_norm / (norm + 1e-6)  // torch's clip_grad_norm_
                           : 1.0;
  const double lr = scheduled_lr(settings_.schedule, step, total_steps_, settings_.warmup_steps, settings_.lr,
                                 settings_.min_lr);
  optimizer.step(lr, scale);
  optimizer.zero_grad();
  torch::Tensor total = torch::tensor({loss_sum}, torch::kDouble);
  dp_.all_reduce(total, dist::ReduceOp::kSum);
  log::debug(fmt::format("step {}: loss {:.5f}, grad norm {:.4g}, lr {:.3g}", step + 1,
                         total.item<double>() / tokens, norm, lr));
  return total.item<double>() / tokens;
}

bool Trainer::stop_requested() {
  torch::Tensor flag = torch::tensor({StopSignalGuard::raised() ? 1 : 0}, torch::kInt);
  tp_.all_reduce(flag, dist::ReduceOp::kMax);
  dp_.all_reduce(flag, dist::ReduceOp::kMax);
  return flag.item<int>() != 0;
}

TrainResult Trainer::run(const MicroStep& micro_step) {
  StopSignalGuard signals;
  TrainResult result;
  result.total_steps = total_steps_;
  log::Progress progress("train", total_steps_, "steps");
  progress.update(state_->steps_done);
  const auto start = std::chrono::steady_clock::now();
  double tokens_run = 0;
  while (state_->steps_done < total_steps_) {
    if (stop_requested()) {
      log::warn("stop signal received: saving a checkpoint of step {} of {}", state_->steps_done, total_steps_);
      save_checkpoint();
      result.stopped = true;
      break;
    }
    double tokens = 0;
    state_->last_loss = train_step(state_->steps_done, micro_step, tokens);
    result.losses.push_back(state_->last_loss);
    state_->history.push_back(state_->last_loss);
    ++state_->steps_done;
    tokens_run += tokens;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.set_detail(
        fmt::format("loss {:.4f}, {:.0f} tokens/s", state_->last_loss, tokens_run / std::max(seconds, 1e-9)));
    progress.update(state_->steps_done);
    const bool periodic = settings_.save_every > 0 && state_->steps_done % settings_.save_every == 0;
    if (periodic || state_->steps_done == total_steps_) save_checkpoint();
  }
  result.steps_done = state_->steps_done;
  result.last_loss = state_->last_loss;
  result.history = state_->history;
  return result;
}

// ---- checkpoints ---------------------------------------------------------------------------------------------
//
// <checkpoint_dir>/step-NNNNNNNN/ holds one model file per TP rank (written by DP rank 0, for people and tools;
// resuming needs only the rest), one optimizer file per rank, trainer_state.json, the resolved config and
// manifest.json, written last: every file's size and XXH64 and the run's fingerprint. A step directory without a
// manifest is a save that did not finish. <checkpoint_dir>/latest names the newest complete checkpoint, for people.

nlohmann::json Trainer::fingerprint() {
  if (corpus_checksum_.empty()) {  // one rank reads the corpus file; DP then TP broadcasts reach every rank
    torch::Tensor value = torch::zeros({1}, torch::kLong);
    if (tp_.rank() == 0 && dp_.rank() == 0) {
      const uint64_t hash = checksum_file(corpus_.path()).xxh64;
      std::memcpy(value.data_ptr<int64_t>(), &hash, sizeof hash);
    }
    dp_.broadcast(value, 0);
    tp_.broadcast(value, 0);
    uint64_t hash = 0;
    std::memcpy(&hash, value.data_ptr<int64_t>(), sizeof hash);
    corpus_checksum_ = hex64(hash);
  }
  json f = run_fingerprint_;
  f["parallel.tp"] = tp_.size();
  f["parallel.dp"] = dp_.size();
  f["train.zero"] = settings_.zero;
  f["train.bucket_sizes"] = state_->optimizer->bucket_sizes();
  f["train.global_batch"] = settings_.global_batch;
  f["train.micro_batch"] = settings_.micro_batch;
  f["train.epochs"] = settings_.epochs;
  f["train.max_steps"] = settings_.max_steps;
  f["train.lr"] = settings_.lr;
  f["train.min_lr"] = settings_.min_lr;
  f["train.schedule"] = settings_.schedule;
  f["train.warmup_steps"] = settings_.warmup_steps;
  f["train.weight_decay"] = settings_.weight_decay;
  f["train.beta1"] = settings_.beta1;
  f["train.beta2"] = settings_.beta2;
  f["train.eps"] = settings_.eps;
  f["train.max_grad_norm"] = settings_.max_grad_norm;
  f["train.seed"] = settings_.seed;
  f["corpus.num_samples"] = corpus_.num_samples();
  f["corpus.checksum"] = corpus_checksum_;
  return f;
}

std::string Trainer::first_problem(const std::string& mine) {
  constexpr int64_t kWidth = 1024;  // bytes per rank; a longer text is cut
  torch::Tensor bytes = torch::zeros({kWidth}, torch::kUInt8);
  std::memcpy(bytes.data_ptr<uint8_t>(), mine.data(), std::min<size_t>(mine.size(), kWidth - 1));
  const torch::Tensor all = dp_.all_gather(tp_.all_gather(bytes, 0), 0).contiguous();
  for (int64_t rank = 0; rank < all.numel() / kWidth; ++rank) {
    const auto* text = reinterpret_cast<const char*>(all.data_ptr<uint8_t>() + rank * kWidth);
    if (text[0] != '\0') return std::string(text);
  }
  return "";
}

void Trainer::save_checkpoint() {
  if (checkpoint_dir_.empty()) return;
  CheckpointManifest manifest;
  manifest.fingerprint = fingerprint();
  manifest.step = state_->steps_done;
  const fs::path dir = fs::path(checkpoint_dir_) / step_dir_name(state_->steps_done);
  const bool leader = tp_.rank() == 0 && dp_.rank() == 0;
  std::error_code ignored;
  if (leader) fs::remove(dir / kManifestFile, ignored);  // an earlier save of this step never vouches for new files
  const std::map<std::string, std::string> metadata{{"step", std::to_string(state_->steps_done)}};
  std::vector<std::string> written;
  if (dp_.rank() == 0) {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const OptimizedParameter& p : state_->params) params.emplace_back(p.name, p.param.detach().to(torch::kCPU));
    written.push_back(model_file_name(tp_.rank(), tp_.size()));
    io::save_safetensors_file((dir / written.back()).string(), params, metadata);
  }
  auto optimizer_state = state_->optimizer->state();
  for (auto& [name, tensor] : optimizer_state) tensor = tensor.to(torch::kCPU);
  written.push_back(optimizer_file_name(tp_.rank(), dp_.rank()));
  io::save_safetensors_file((dir / written.back()).string(), optimizer_state, metadata);

  // Each rank checksums what it wrote; the leader collects every rank's "name bytes xxh64" lines.
  std::string lines;
  for (const std::string& name : written) {
    const FileChecksum sum = checksum_file((dir / name).string());
    lines += fmt::format("{} {} {}\n", name, sum.bytes, sum.xxh64);
  }
  constexpr int64_t kWidth = 512;
  torch::Tensor bytes = torch::zeros({kWidth}, torch::kUInt8);
  QF_CHECK(static_cast<int64_t>(lines.size()) < kWidth, "checkpoint file list too long");
  std::memcpy(bytes.data_ptr<uint8_t>(), lines.data(), lines.size());
  const torch::Tensor all = dp_.all_gather(tp_.all_gather(bytes, 0), 0).contiguous();  // every file is written now
  if (!leader) return;
  for (int64_t rank = 0; rank < all.numel() / kWidth; ++rank) {
    std::istringstream in(std::string(reinterpret_cast<const char*>(all.data_ptr<uint8_t>() + rank * kWidth)));
    ManifestEntry entry;
    while (in >> entry.name >> entry.bytes >> entry.xxh64) manifest.files.push_back(entry);
  }
  json state = {{"step", state_->steps_done},      {"total_steps", total_steps_},
                {"tp", tp_.size()},                {"dp", dp_.size()},
                {"zero", settings_.zero},          {"bucket_sizes", state_->optimizer->bucket_sizes()},
                {"global_batch", settings_.global_batch}, {"corpus", corpus_.path()},
                {"corpus_samples", corpus_.num_samples()}, {"loss", state_->last_loss},
                {"losses", state_->history},
                {"complete", state_->steps_done == total_steps_}};
  std::vector<std::string> leader_files{kStateFile};
  write_file_atomically((dir / kStateFile).string(), state.dump(2) + "\n");
  if (!resolved_config_.empty()) {
    write_file_atomically((dir / config::kResolvedConfigName).string(), resolved_config_);
    leader_files.push_back(config::kResolvedConfigName);
  }
  for (const std::string& name : leader_files) {
    const FileChecksum sum = checksum_file((dir / name).string());
    manifest.files.push_back({name, sum.bytes, sum.xxh64});
  }
  manifest.inputs = {{"corpus.path", corpus_.path()}};
  write_manifest(dir.string(), manifest);
  write_file_atomically((fs::path(checkpoint_dir_) / kLatestFile).string(), step_dir_name(state_->steps_done) + "\n");
  log::info(fmt::format("checkpoint of step {} saved to {}", state_->steps_done, dir.string()));

  std::vector<fs::path> steps;
  for (const auto& entry : fs::directory_iterator(checkpoint_dir_))
    if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0) steps.push_back(entry.path());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + settings_.keep_checkpoints < steps.size(); ++i) fs::remove_all(steps[i]);
}

std::string Trainer::check_checkpoint(const std::string& dir, const json& current, CheckpointManifest& manifest) {
  std::string problem;
  try {
    manifest = read_manifest(dir);
    if (step_dir_name(manifest.step) != fs::path(dir).filename().string())
      problem = fmt::format("its manifest records step {}", manifest.step);
  } catch (const Error& e) {
    problem = e.what();
  }
  if (!(problem = first_problem(problem)).empty()) return problem;

  if (const std::string key = first_fingerprint_difference(manifest.fingerprint, current); !key.empty()) {
    std::string paths;
    if (key.rfind("corpus.", 0) == 0)
      paths = fmt::format(" (the checkpoint's corpus was '{}', this run's is '{}')",
                          fingerprint_value(manifest.inputs, "corpus.path"), corpus_.path());
    throw UsageError(fmt::format("cannot resume from '{}': {}: the checkpoint was trained with {}, this run has {}{}. "
                                 "Resume with the checkpoint's settings and inputs, or train in another output.dir",
                                 dir, key, fingerprint_value(manifest.fingerprint, key),
                                 fingerprint_value(current, key), paths));
  }

  // Each rank checks the files it would have written: its optimizer shard, the model shard on DP rank 0, the
  // rest on the leader.
  std::set<std::string> mine{optimizer_file_name(tp_.rank(), dp_.rank())};
  if (dp_.rank() == 0) mine.insert(model_file_name(tp_.rank(), tp_.size()));
  std::set<std::string> listed;
  for (const ManifestEntry& entry : manifest.files) {
    listed.insert(entry.name);
    const bool shard = entry.name.rfind("optimizer-", 0) == 0 || entry.name.rfind("model-", 0) == 0;
    if (!problem.empty() || !(mine.count(entry.name) || (!shard && tp_.rank() == 0 && dp_.rank() == 0))) continue;
    problem = verify_entry(dir, entry);
  }
  for (const std::string& name : mine)
    if (problem.empty() && !listed.count(name)) problem = fmt::format("its manifest does not list '{}'", name);
  return first_problem(problem);
}

void Trainer::load_checkpoint(const std::string& dir, const CheckpointManifest& manifest) {
  const fs::path state_file = fs::path(dir) / kStateFile;
  json saved;
  try {
    saved = json::parse(read_file(state_file.string()));
  } catch (const json::exception& e) {
    throw Error(fmt::format("checkpoint state '{}' is not valid JSON: {}", state_file.string(), e.what()));
  }
  if (saved.value("step", int64_t{-1}) != manifest.step)
    throw Error(fmt::format("checkpoint state '{}' records step {}, its manifest step {}", state_file.string(),
                            saved.value("step", int64_t{-1}), manifest.step));
  // The losses the checkpoint recorded, those of its last steps: none in one saved before the trainer kept them.
  std::vector<double> history = saved.value("losses", std::vector<double>{});
  if (static_cast<int64_t>(history.size()) > manifest.step)
    throw Error(fmt::format("checkpoint state '{}' records {} losses for {} steps", state_file.string(), history.size(),
                            manifest.step));
  // The fp32 masters restore the parameters (exactly, whatever their dtype); the model files are the
  // layout-independent copy for people and tools, not read back.
  io::SafetensorsFile optimizer_file((fs::path(dir) / optimizer_file_name(tp_.rank(), dp_.rank())).string());
  state_->optimizer->load_state(read_all(optimizer_file), manifest.step);
  state_->steps_done = manifest.step;
  state_->last_loss = saved.value("loss", 0.0);
  state_->history = std::move(history);
  log::info(fmt::format("resumed from {} (step {} of {})", dir, manifest.step, total_steps_));
}

bool Trainer::resume() {
  if (checkpoint_dir_.empty()) return false;
  tp_.barrier();  // a save of this job (its manifest, its pruning) is over before any rank looks
  dp_.barrier();
  std::vector<fs::path> steps;
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator(checkpoint_dir_, ignored))
    if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0) steps.push_back(entry.path());
  std::sort(steps.rbegin(), steps.rend());  // newest first
  if (first_problem(steps.empty() ? "" : "found").empty()) {  // on no rank
    log::info(fmt::format("no checkpoint under {}: starting from step 0", checkpoint_dir_));
    return false;
  }
  const json current = fingerprint();
  std::vector<std::string> damaged;
  for (const fs::path& dir : steps) {
    if (!first_problem(fs::exists(dir / kManifestFile) ? "" : "incomplete").empty()) {
      log::warn("skipping checkpoint {}: it has no {} (its save did not finish)", dir.string(), kManifestFile);
      continue;
    }
    CheckpointManifest manifest;
    const std::string problem = check_checkpoint(dir.string(), current, manifest);
    if (problem.empty()) {
      load_checkpoint(dir.string(), manifest);
      return true;
    }
    damaged.push_back(fmt::format("{}: {}", dir.filename().string(), problem));
    log::warn("checkpoint {} is damaged: {}; falling back to the previous checkpoint", dir.string(), problem);
  }
  if (!damaged.empty())
    throw Error(fmt::format("no intact checkpoint under {} to resume from ({}). Restore the files, or move the "
                            "directory away to start from step 0", checkpoint_dir_, fmt::join(damaged, "; ")));
  log::warn("no complete checkpoint under {}: starting from step 0", checkpoint_dir_);
  return false;
}

}  // namespace qforge::train
