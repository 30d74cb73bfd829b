// qforge pretrain: a small LLaMA trained from scratch with the ordinary next-token loss on a plain text (the
// teacher of the embedded default, docs/pretrain.md). The text's last pretrain.holdout is held out; the rest is
// tokenized byte by byte, cut into windows of pretrain.seq_len and written as a corpus that train::Trainer reads.
// output.dir becomes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.bin) with pretrain.json
// (held-out and training NLL and perplexity, the untrained model's, steps, time) and heldout.txt (the held-out
// text) once complete. Training state lives in the sibling <output.dir>.training/ (corpus, checkpoints), which a
// rerun continues and a success removes; a rerun on a finished output.dir made from the same text and settings
// trains nothing.
#include "launch/model_commands.h"

#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/eval/perplexity.h"
#include "framework/io/text_windows.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/train/next_token.h"
#include "framework/train/trainer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace qforge {
namespace fs = std::filesystem;
namespace {

using json = nlohmann::json;

constexpr const char* kReportName = "pretrain.json";
constexpr const char* kTokenizerName = "tokenizer.bin";
constexpr const char* kHeldoutName = "heldout.txt";  // the held-out text, for `qforge eval ppl --text`

model::ModelConfig pretrain_model_config(const PretrainSettings& p) {
  model::ModelConfig c;
  c.family = model::Family::kLlama;
  c.vocab_size = tok::kByteTokenizerVocab;
  c.hidden_size = p.hidden;
  c.num_layers = p.layers;
  c.num_heads = p.heads;
  c.num_kv_heads = p.kv_heads;
  c.intermediate_size = p.intermediate > 0 ? p.intermediate : llama_mlp_width(p.hidden);
  c.max_positions = p.seq_len;
  if (p.hidden % p.heads != 0 || p.heads % p.kv_heads != 0)
    throw UsageError(
        fmt::format("pretrain.heads ({}) must divide pretrain.hidden ({}) and pretrain.kv_heads ({}) "
                    "must divide pretrain.heads",
                    p.heads, p.hidden, p.kv_heads));
  try {  // config.json's checks (plausible sizes, their products) before anything is allocated
    return model::ModelConfig::from_json(c.to_json(), "the pretrain section");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

// What the result depends on: the text's bytes and every setting that changes the weights (not the text's path,
// the checkpoint period, the evaluation batch or the bucket size). Flat keys, as the trainer's fingerprint.
json pretrain_fingerprint(const PretrainSettings& p, const std::string& text) {
  json fingerprint = {{"text.bytes", static_cast<int64_t>(text.size())},
                      {"text.xxh64", hex64(xxh64(text.data(), text.size()))},
                      {"tokenizer", "byte"}};
  train::add_settings(fingerprint, "pretrain", p);
  for (const char* ignored :
       {"pretrain.text", "pretrain.eval_batch", "pretrain.train.save_every", "pretrain.train.keep_checkpoints",
        "pretrain.train.bucket_mb", "pretrain.train.recompute"})
    fingerprint.erase(ignored);
  return fingerprint;
}

// The first key (sorted) whose value differs, as "key: A in this run, B recorded"; "" when equal.
std::string first_difference(const json& mine, const json& theirs) {
  json keys = mine;
  keys.update(theirs);
  for (const auto& [key, unused] : keys.items()) {
    const json a = mine.value(key, json()), b = theirs.value(key, json());
    if (a != b) return fmt::format("{}: {} in this run, {} recorded", key, a.dump(), b.dump());
  }
  return "";
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
  }
}

// Where the training text ends: `holdout` of the bytes from the end, moved forward to the next line so that no
// line (nor UTF-8 character) is cut.
size_t holdout_start(const std::string& text, double holdout) {
  const size_t cut = static_cast<size_t>(std::floor(static_cast<double>(text.size()) * (1.0 - holdout)));
  const size_t line = text.find('\n', cut);
  return line == std::string::npos ? cut : line + 1;
}

torch::Tensor token_tensor(const std::vector<int64_t>& ids) { return torch::tensor(ids, torch::kLong); }

// The work directory's fingerprint.json: a directory left by other text or settings is removed (rank 0).
void prepare_work_dir(const fs::path& work, const json& fingerprint) {
  const fs::path recorded = work / "fingerprint.json";
  if (fs::exists(recorded)) {
    const std::string why = first_difference(fingerprint, read_json(recorded));
    if (why.empty()) return;
    log::warn("{} holds the training state of another pretrain ({}): starting over", work.string(), why);
  }
  fs::remove_all(work);
  fs::create_directories(work);
  write_file_atomically(recorded.string(), fingerprint.dump(2) + "\n");
}

// Parameters of the whole model (each weight's full shape, whatever the TP size).
int64_t parameter_count(const model::CausalLM& model) {
  int64_t count = 0;
  for (const model::WeightEntry& e : model.weights().entries()) {
    int64_t numel = 1;
    for (int64_t size : e.full_shape) numel *= size;
    count += numel;
  }
  return count;
}

json nll_entry(const eval::PerplexityResult& r) {
  return {{"nll", r.mean_nll}, {"perplexity", r.perplexity}, {"tokens", r.tokens}, {"windows", r.windows}};
}

}  // namespace

int64_t llama_mlp_width(int64_t hidden) { return (hidden * 8 / 3 + 15) / 16 * 16; }

int run_pretrain(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const PretrainSettings& p = c.pretrain;
  required_setting(p.text, "pretrain.text", "text");
  const fs::path out = required_setting(c.output.dir, "output.dir", "output");
  if (!fs::is_regular_file(p.text))
    throw UsageError(
        fmt::format("pretrain.text: {} {}; expected a text file, plain or gzip (e.g. "
                    "/usr/share/doc/jargon-text/jargon.txt.gz: launch/install-deps.sh installs it)",
                    p.text, fs::exists(p.text) ? "is not a regular file" : "does not exist"));
  const model::ModelConfig config = pretrain_model_config(p);
  const std::string text = io::read_text_file(p.text);
  const json fingerprint = pretrain_fingerprint(p, text);
  const bool root = context.runtime.rank() == 0;

  if (fs::exists(out / kReportName)) {  // cached: the same text and settings train nothing
    const json report = read_json(out / kReportName);
    const std::string why = first_difference(fingerprint, report.value("fingerprint", json::object()));
    if (!why.empty())
      throw UsageError(
          fmt::format("output.dir {} holds a pretrain of other text or settings ({}); choose another "
                      "--output or remove it",
                      out.string(), why));
    if (root)
      std::printf("pretrain: %s already holds this pretrain (held-out NLL %.4f, perplexity %.4f); nothing to do\n",
                  out.c_str(), report["heldout"]["nll"].get<double>(), report["heldout"]["perplexity"].get<double>());
    return 0;
  }
  if (fs::exists(out) && !fs::is_empty(out))
    throw UsageError(fmt::format("output.dir {} exists and holds no {}; choose another --output or remove it",
                                 out.string(), kReportName));

  const size_t cut = holdout_start(text, p.holdout);
  if (static_cast<int64_t>(text.size() - cut) + 1 < p.seq_len)  // a byte, at least, a token (and a BOS)
    throw UsageError(
        fmt::format("pretrain.holdout {} of {} leaves {} bytes for evaluation, fewer than one window of "
                    "pretrain.seq_len ({}); raise pretrain.holdout or lower pretrain.seq_len",
                    p.holdout, p.text, text.size() - cut, p.seq_len));
  const fs::path work = out.string() + ".training";
  if (root) {
    prepare_work_dir(work, fingerprint);
    if (!fs::exists(work / kTokenizerName)) tok::write_byte_tokenizer((work / kTokenizerName).string());
  }
  context.runtime.world().barrier();
  const auto tokenizer = tok::load_tokenizer((work / kTokenizerName).string());
  const std::vector<int64_t> train_ids = tokenizer->encode(text.substr(0, cut), /*bos=*/true, /*eos=*/false);
  const torch::Tensor heldout = token_tensor(tokenizer->encode(text.substr(cut), /*bos=*/true, /*eos=*/false));
  const fs::path corpus_path = work / "train.h5";
  if (root && !fs::exists(corpus_path))
    io::write_window_corpus(
        corpus_path.string(), train_ids, p.seq_len, config.vocab_size,
        {{"source", "qforge pretrain"}, {"text_xxh64", fingerprint["text.xxh64"]}, {"tokenizer", "byte"}});
  context.runtime.world().barrier();
  io::CorpusReader corpus(corpus_path.string());

  dist::Grid grid(context.runtime, c.parallel.tp);
  model::CausalLM model(config, grid.tp_group());
  model::init_random(model, static_cast<uint64_t>(p.seed), p.init_std);
  const int64_t parameters = parameter_count(model);
  log::info(
      "pretrain: LLaMA of {:.2f}M parameters (hidden {}, {} layers, {}/{} heads, MLP {}, context {}), byte "
      "vocabulary; {}: {} training tokens in {} windows, {} held out ({:.1f}%); {}",
      parameters / 1e6, config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads,
      config.intermediate_size, config.max_positions, p.text, train_ids.size(), corpus.num_samples(), heldout.numel(),
      100.0 * p.holdout, grid.describe());
  const eval::PerplexityResult untrained = eval::perplexity(model, heldout, p.seq_len, p.eval_batch, grid.dp_group());
  log::info("untrained: held-out NLL {:.4f}, perplexity {:.2f} (uniform over the vocabulary: {:.2f})",
            untrained.mean_nll, untrained.perplexity, static_cast<double>(config.vocab_size));

  train::Trainer trainer(p.train, model, grid.dp_group(), corpus, train::next_token_positions,
                         (work / "checkpoints").string(), config::to_yaml(c), fingerprint);
  trainer.resume();  // a rerun continues (step 0 when there is no checkpoint)
  const auto start = std::chrono::steady_clock::now();
  const train::TrainResult result = trainer.run(train::next_token_step(model, corpus));
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (result.stopped) {
    log::warn(
        "pretrain stopped by a signal after step {} of {}; the checkpoint is saved in {}: rerun the same "
        "command to continue",
        result.steps_done, result.total_steps, work.string());
    return 0;
  }

  const eval::PerplexityResult trained = eval::perplexity(model, heldout, p.seq_len, p.eval_batch, grid.dp_group());
  // The training text's last stretch of the held-out size: the gap between the two is the overfitting.
  const int64_t train_tail = std::min<int64_t>(heldout.numel(), static_cast<int64_t>(train_ids.size()));
  const torch::Tensor train_slice = token_tensor(train_ids).narrow(0, train_ids.size() - train_tail, train_tail);
  const eval::PerplexityResult on_train =
      eval::perplexity(model, train_slice, p.seq_len, p.eval_batch, grid.dp_group());
  json report = {{"text", p.text},
                 {"heldout_text", kHeldoutName},
                 {"parameters", parameters},
                 {"model", config.to_json()},
                 {"steps", result.steps_done},
                 {"tokens_per_step", p.train.global_batch * train::next_token_positions(p.seq_len)},
                 {"train_seconds", train_seconds},
                 {"resumed", result.steps_done != static_cast<int64_t>(result.losses.size())},
                 {"world_size", context.runtime.size()},
                 {"heldout", nll_entry(trained)},
                 {"train", nll_entry(on_train)},
                 {"untrained_heldout", nll_entry(untrained)},
                 {"final_step_loss", result.last_loss},
                 {"fingerprint", fingerprint}};

  StagedOutput output(context);
  model::save_pretrained(model, output.dir(), grid.dp_rank() == 0, c.output.max_shard_bytes());
  if (root) {
    fs::copy_file(work / kTokenizerName, fs::path(output.dir()) / kTokenizerName);
    write_file_atomically((fs::path(output.dir()) / kHeldoutName).string(), text.substr(cut));
  }
  write_outputs(context, kReportName, report.dump(2) + "\n");
  output.commit();
  if (root) {
    fs::remove_all(work);
    std::printf(
        "pretrain: %lld steps in %.0f s; held-out NLL %.4f nats/byte, perplexity %.3f (untrained %.2f, "
        "training text %.3f); checkpoint in %s\n",
        static_cast<long long>(result.steps_done), train_seconds, trained.mean_nll, trained.perplexity,
        untrained.perplexity, on_train.perplexity, out.c_str());
  }
  return 0;
}

}  // namespace qforge
