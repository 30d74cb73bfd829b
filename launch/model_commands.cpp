// qforge convert, eval, generate-text: the model commands.
#include "launch/model_commands.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/eval/perplexity.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/generation.h"
#include "framework/tokenizer/tokenizer.h"
#include "quant/qat.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

namespace qforge {
namespace fs = std::filesystem;
namespace {

std::string required_option(const CommandContext& context, const std::string& name) {
  auto it = context.line.options.find(name);
  if (it == context.line.options.end() || it->second.empty())
    throw UsageError(fmt::format("qforge {}: --{} is required", context.line.command, name));
  return it->second;
}


int run_convert(CommandContext& context) {
  const std::string& format = context.line.positionals.at(0);
  if (format != "llama2c") throw UsageError(fmt::format("qforge convert: unknown format '{}' (expected llama2c)", format));
  const std::string in = required_option(context, "in"), out = required_option(context, "out");
  const auto tokenizer = context.line.options.count("tokenizer") ? context.line.options.at("tokenizer") : std::string();
  if (context.runtime.rank() == 0) {
    model::convert_llama2c(in, tokenizer, out);
    log::info("converted {} to a Hugging Face LLaMA checkpoint in {}", in, out);
  }
  context.runtime.world().barrier();
  return 0;
}

int64_t integer_option(const CommandContext& context, const std::string& name, int64_t fallback) {
  auto it = context.line.options.find(name);
  if (it == context.line.options.end()) return fallback;
  try {
    std::size_t used = 0;
    const int64_t value = std::stoll(it->second, &used);
    if (used == it->second.size() && value >= 0) return value;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("qforge {}: --{} must be a non-negative integer, got '{}'", context.line.command, name, it->second));
}

// A random LLaMA with a byte-level tokenizer: the pipeline end to end with nothing downloaded.
// Real OPT and LLaMA models have a few hidden channels whose norm outputs are 10-50x the others (the outliers
// RPTQ and LLM.int8() are about): `count` channels of every decoder norm, drawn per layer, get their weight (and
// OPT's bias) multiplied by a factor drawn in [10, 50].
void plant_outliers(model::CausalLM& model, int64_t count, uint64_t seed) {
  if (count == 0) return;
  torch::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed + 7919);
  const int64_t hidden = model.config().hidden_size;
  for (auto& layer : model.layers)
    for (auto* norm : {&layer->attention_norm, &layer->mlp_norm}) {
      torch::Tensor channels = torch::randperm(hidden, generator, torch::kLong).narrow(0, 0, count);
      torch::Tensor factors = torch::rand({count}, generator) * 40 + 10;
      (*norm)->weight.index_copy_(0, channels, (*norm)->weight.index_select(0, channels) * factors);
      if ((*norm)->bias.defined())
        (*norm)->bias.index_copy_(0, channels, (*norm)->bias.index_select(0, channels) * factors);
    }
}

int run_init_model(CommandContext& context) {
  const std::string out = required_option(context, "out");
  model::ModelConfig c;
  const std::string family = context.line.options.count("family") ? context.line.options.at("family") : "llama";
  if (family != "llama" && family != "opt")
    throw UsageError(fmt::format("qforge init-model: --family must be llama or opt (got '{}')", family));
  c.family = family == "opt" ? model::Family::kOpt : model::Family::kLlama;
  c.vocab_size = integer_option(context, "vocab", tok::kByteTokenizerVocab);
  c.hidden_size = integer_option(context, "hidden", 64);
  c.num_layers = integer_option(context, "layers", 2);
  c.num_heads = integer_option(context, "heads", 4);
  c.num_kv_heads = integer_option(context, "kv-heads", family == "opt" ? c.num_heads : 2);
  if (family == "opt") {  // pre-norm OPT (OPT-125m and up), tied embeddings, no GQA
    if (c.num_kv_heads != c.num_heads)
      throw UsageError("qforge init-model: OPT has no grouped-query attention: --kv-heads must equal --heads");
    c.tie_word_embeddings = true;
    c.norm_before = true;
    c.word_embed_proj_dim = c.hidden_size;  // no project_in/out (OPT-350m's)
  }
  double weight_std = 0.3;
  if (context.line.options.count("std")) {
    const std::string& text = context.line.options.at("std");
    std::size_t used = 0;
    try {
      weight_std = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || !(weight_std > 0 && weight_std <= 10))
      throw UsageError(fmt::format("qforge init-model: --std must be a number in (0, 10], got '{}'", text));
  }
  const int64_t outliers = integer_option(context, "outliers", 0);
  if (outliers < 0 || outliers > c.hidden_size)
    throw UsageError(fmt::format("qforge init-model: --outliers must be in 0..{} (the hidden size)", c.hidden_size));
  c.intermediate_size = integer_option(context, "intermediate", llama_mlp_width(c.hidden_size));
  const torch::ScalarType dtype = model::parse_dtype(context.line.options.count("dtype")
                                                         ? context.line.options.at("dtype") : "float32");
  c.max_positions = 512;
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.intermediate_size <= 0 ||
      c.hidden_size % c.num_heads != 0 || c.num_heads % c.num_kv_heads != 0 || c.vocab_size < tok::kByteTokenizerVocab)
    throw UsageError(fmt::format("qforge init-model: expected positive --hidden, --layers, --heads, --kv-heads, "
                                 "--intermediate with heads dividing hidden and kv-heads dividing heads, and --vocab "
                                 ">= {} (the byte tokenizer's)", tok::kByteTokenizerVocab));
  try {  // config.json's checks (plausible sizes, their products) before anything is allocated
    model::ModelConfig::from_json(c.to_json(), "qforge init-model");
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  if (context.runtime.rank() == 0) {
    AtomicDirectory dir(out, /*owner=*/true);
    model::CausalLM model(c, context.runtime.self());
    // std 0.3 by default: logits spread enough that the teacher prefers some continuations, so quantization has a
    // cost.
    model::init_random(model, static_cast<uint64_t>(integer_option(context, "seed", 0)), weight_std);
    plant_outliers(model, outliers, static_cast<uint64_t>(integer_option(context, "seed", 0)));
    if (dtype != torch::kFloat) model.to(dtype);
    model::save_pretrained(model, dir.temp_path(), /*write=*/true, context.config.output.max_shard_bytes());
    tok::write_byte_tokenizer((fs::path(dir.temp_path()) / "tokenizer.bin").string());
    dir.commit();
    log::info("wrote a random {} (hidden {}, {} layers, {}/{} heads, byte-level vocabulary of {}{}) to {}",
              family == "opt" ? "OPT" : "LLaMA", c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads,
              c.vocab_size, outliers ? fmt::format(", {} outlier channels per norm", outliers) : "", out);
  }
  context.runtime.world().barrier();
  return 0;
}

}  // namespace

int run_eval(CommandContext& context) {
  const std::string& task = context.line.positionals.at(0);
  if (task == "tasks") return run_eval_tasks(context);
  if (task != "ppl") throw UsageError(fmt::format("qforge eval: unknown kind '{}' (expected ppl or tasks)", task));
  const QforgeConfig& c = context.config;
  required_setting(c.model.path, "model.path", "model");
  required_setting(c.eval.text, "eval.text", "text");
  dist::Grid grid(context.runtime, c.parallel.tp);
  auto model = load_model(context, grid);
  attach_eval_quantizers(c, *model);
  auto tokenizer = load_model_tokenizer(c.model, model->config());
  torch::Tensor tokens = eval::tokenize_text_file(c.eval.text, *tokenizer);
  const int64_t seq_len = c.eval.seq_len > 0 ? c.eval.seq_len : model->config().max_positions;
  log::info("{}: {} tokens ({} tokenizer, one BOS), windows of {} on {}", c.eval.text, tokens.numel(),
            tokenizer->kind(), seq_len, grid.describe());
  eval::PerplexityResult r = eval::perplexity(*model, tokens, seq_len, c.eval.batch_size, grid.dp_group());
  const std::string report = fmt::format("perplexity of {}: {} tokens scored in {} windows of {}, mean NLL {:.4f} nats/token, perplexity {:.4f}\n",
                                         c.eval.text, r.tokens, r.windows, seq_len, r.mean_nll, r.perplexity);
  if (context.runtime.rank() == 0) std::fputs(report.c_str(), stdout);
  nlohmann::json json = {{"text", c.eval.text}, {"model", c.model.path}, {"quant", c.quant.bits}, {"seq_len", seq_len}, {"windows", r.windows},
                         {"tokens", r.tokens}, {"mean_nll", r.mean_nll}, {"perplexity", r.perplexity}};
  StagedOutput output(context);
  write_outputs(context, "perplexity.json", json.dump(2) + "\n");
  output.commit();
  return 0;
}

namespace {

int run_generate_text(CommandContext& context) {
  const QforgeConfig& c = context.config;
  required_setting(c.model.path, "model.path", "model");
  dist::Grid grid(context.runtime, c.parallel.tp);
  auto model = load_model(context, grid);
  auto tokenizer = load_model_tokenizer(c.model, model->config());
  const GenerateTextSettings& g = c.generate_text;
  std::vector<int64_t> prompt = tokenizer->encode(g.prompt, /*bos=*/true, /*eos=*/false);
  model::SamplingOptions options{g.temperature, g.top_k, g.top_p, static_cast<uint64_t>(g.seed)};
  auto tokens = model::generate(*model, {prompt}, g.max_new_tokens, options);
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), tokens[0].begin(), tokens[0].end());
  const std::string text = tokenizer->decode(all);
  if (context.runtime.rank() == 0) std::printf("%s\n", text.c_str());
  StagedOutput output(context);
  write_outputs(context, "generated.txt", text + "\n");
  output.commit();
  return 0;
}

}  // namespace

void attach_eval_quantizers(const QforgeConfig& c, model::CausalLM& model) {
  const quant::BitWidths bits = quant::parse_bits(c.quant.bits);
  if (bits.weight >= 16 && bits.act >= 16 && bits.kv >= 16) return;  // a quantized checkpoint's own quantizers stay
  const quant::AttachReport quantized = quant::attach_quantizers(model, c.quant);
  log::info("fake-quantized W-A-KV {}: {} linear layers, {} attention layers", c.quant.bits,
            quantized.quantized_linears, quantized.attention_layers);
}

int64_t weight_file_bytes(const std::string& dir, std::vector<std::string>* files) {
  int64_t bytes = 0;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool weights = entry.path().extension() == ".safetensors" ||
                         (name.rfind("pytorch_model", 0) == 0 && entry.path().extension() == ".bin");
    if (!entry.is_regular_file() || !weights) continue;
    bytes += static_cast<int64_t>(entry.file_size());
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  if (files) *files = std::move(names);
  return bytes;
}

const std::string& required_setting(const std::string& value, const char* key, const char* option) {
  if (value.empty()) throw UsageError(fmt::format("{} is required (config key {}, or --{})", key, key, option));
  return value;
}

void write_outputs(const CommandContext& context, const std::string& name, const std::string& contents) {
  const std::string& final_dir = context.config.output.dir;
  if (final_dir.empty() || context.runtime.rank() != 0) return;
  const std::string& dir = context.output_stage.empty() ? final_dir : context.output_stage;
  write_file_atomically((fs::path(dir) / name).string(), contents);
  config::save_resolved(config::to_yaml(context.config), dir);
  log::info("wrote {} and {} to {}", name, config::kResolvedConfigName, final_dir);
}

StagedOutput::StagedOutput(CommandContext& context) : context_(context) {
  if (context.config.output.dir.empty()) return;
  stage_ = std::make_unique<AtomicDirectory>(context.config.output.dir, context.runtime.rank() == 0);
  context_.output_stage = stage_->temp_path();
}

StagedOutput::~StagedOutput() { context_.output_stage.clear(); }

const std::string& StagedOutput::dir() const { return stage_ ? stage_->temp_path() : context_.config.output.dir; }

void StagedOutput::commit() {
  context_.runtime.world().barrier();  // every rank's part written
  if (stage_) stage_->commit();
  context_.output_stage.clear();
}

std::unique_ptr<tok::Tokenizer> load_model_tokenizer(const ModelSettings& settings, const model::ModelConfig& config) {
  const std::string path = tokenizer_path(settings);
  std::unique_ptr<tok::Tokenizer> tokenizer = tok::load_tokenizer(path);
  if (tokenizer->vocab_size() > config.vocab_size)
    throw Error(fmt::format("{}: the tokenizer has {} pieces, more than the vocabulary of {} in {}/config.json "
                            "(vocab_size); expected the model's own tokenizer", path, tokenizer->vocab_size(),
                            config.vocab_size, settings.path));
  return tokenizer;
}

void copy_tokenizer(const ModelSettings& model, const std::string& dir) {
  const fs::path tokenizer = tokenizer_path(model);
  std::vector<fs::path> files = {tokenizer};
  if (fs::is_directory(tokenizer)) {
    const std::string file = tok::tokenizer_in_directory(tokenizer.string());
    if (file.empty()) throw UsageError(fmt::format("{} holds no tokenizer file to copy", tokenizer.string()));
    files = {file};
  }
  if (files[0].filename() == "vocab.json") files.push_back(files[0].parent_path() / "merges.txt");  // its merges
  for (const fs::path& file : files)
    fs::copy_file(file, fs::path(dir) / file.filename(), fs::copy_options::overwrite_existing);
}

std::string tokenizer_path(const ModelSettings& model) {
  if (!model.tokenizer.empty()) return model.tokenizer;
  const std::string found = tok::tokenizer_in_directory(model.path);
  if (!found.empty()) return found;
  throw UsageError(fmt::format("{} has no tokenizer.model, tokenizer.bin, tokenizer.json or vocab.json + merges.txt; "
                               "set model.tokenizer (or --tokenizer)", model.path));
}

distill::TeacherIdentity teacher_identity(const ModelSettings& settings, const model::CausalLM& model) {
  const std::string tokenizer = tokenizer_path(settings);
  return {settings.path, model.config().to_json(), model::checkpoint_fingerprint(settings.path),
          fmt::format("{} ({})", fs::path(tokenizer).filename().string(),
                      load_model_tokenizer(settings, model.config())->kind())};
}

static torch::Device model_device(const CommandContext& context) {
  if (context.config.model.device == "cpu") return torch::kCPU;
  if (!torch::cuda::is_available())
    throw UsageError("model.device is cuda, but no CUDA device is visible (or libtorch has no CUDA)");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(context.runtime.local_rank() % torch::cuda::device_count()));
}

std::shared_ptr<model::CausalLM> load_model(const CommandContext& context, dist::Grid& grid) {
  return model::load_pretrained(context.config.model.path, grid.tp_group(), model::parse_dtype(context.config.model.dtype),
                                model_device(context));
}

std::vector<Command> model_commands() {
  using config::OptionSpec;
  const OptionSpec model_option{"model", true, "Hugging Face checkpoint directory", "model.path"};
  const OptionSpec tokenizer_option{
      "tokenizer", true, "tokenizer.model, tokenizer.bin, tokenizer.json or vocab.json (default: the model's)",
      "model.tokenizer"};
  const OptionSpec quant_option{"quant", true, "fake-quantize weights, activations, KV cache: W-A-KV bits, e.g. 4-8-4",
                                 "quant.bits"};
  return {
      {{"convert", "import a checkpoint: convert llama2c --in X.bin --tokenizer T.bin --out DIR",
        {{"in", true, "the checkpoint to import"}, {"out", true, "output directory (Hugging Face layout)"},
         {"tokenizer", true, "tokenizer to copy beside it"}},
        {"format"}},
       run_convert},
      {{"init-model", "a random LLaMA (or OPT) with a byte-level tokenizer (nothing to download): init-model --out DIR",
        {{"out", true, "output directory"}, {"hidden", true, "hidden size (64)"}, {"layers", true, "decoder layers (2)"},
         {"heads", true, "attention heads (4)"}, {"kv-heads", true, "key/value heads (2)"}, {"seed", true, "seed (0)"},
         {"intermediate", true, "MLP width (hidden * 8 / 3, rounded up to 16)"},
         {"vocab", true, "vocabulary (the byte tokenizer's 259; more: rows no token reaches)"},
         {"dtype", true, "float32 (default), bfloat16 or float16: the stored dtype"},
         {"family", true, "llama (default) or opt (pre-norm, tied embeddings)"},
         {"outliers", true, "channels per norm scaled 10-50x, as real models' outlier channels (0)"},
         {"std", true, "standard deviation of the random weights (0.3)"}}},
       run_init_model},
      {{"pretrain", "train a small LLaMA from scratch on a text (next-token loss): pretrain --text FILE --output DIR",
        {{"text", true, "text file, plain or gzip (its end held out: pretrain.holdout)", "pretrain.text"},
         {"output", true, "the checkpoint directory to write (with pretrain.json)", "output.dir"},
         {"max-steps", true, "optimizer steps", "pretrain.train.max_steps"}}},
       run_pretrain},
      {{"eval", "evaluate: eval ppl --model DIR --text FILE [--seq-len N] [--quant W-A-KV], or "
                "eval tasks --model DIR --tasks piqa,arc_easy,... --data-dir DIR [--shots K] [--limit N]",
        {model_option, tokenizer_option, {"text", true, "text file (ppl)", "eval.text"},
         {"seq-len", true, "window length (perplexity)", "eval.seq_len"},
         {"batch-size", true, "windows (tasks: contexts) per forward pass", "eval.batch_size"}, quant_option,
         {"tasks", true, "comma-separated tasks (tasks)", "eval.tasks"},
         {"data-dir", true, "task data laid out as ../shared/tasks", "eval.data_dir"},
         {"paths", true, "per-task files: TASK=PATH,...", "eval.paths"},
         {"shots", true, "few-shot examples (-1: each task's default)", "eval.shots"},
         {"limit", true, "first N items of each task (0: all)", "eval.limit"},
         {"log-samples", false, "write output.dir/samples_TASK.jsonl", "eval.log_samples"},
         {"output", true, "directory for results.json", "output.dir"}},
        {"kind"}},
       run_eval},
      {{"generate-text", "continue a prompt: generate-text --model DIR --prompt TEXT",
        {model_option, tokenizer_option, {"prompt", true, "text to continue", "generate_text.prompt"},
         {"max-new-tokens", true, "tokens to generate", "generate_text.max_new_tokens"},
         {"temperature", true, "0: greedy", "generate_text.temperature"}, {"top-k", true, "0: off", "generate_text.top_k"},
         {"top-p", true, "1: off", "generate_text.top_p"}, {"seed", true, "sampling seed", "generate_text.seed"}}},
       run_generate_text},
      {{"generate", "write a synthetic corpus with the teacher (LLM-QAT): generate --model DIR --output FILE.h5",
        {model_option, tokenizer_option, {"output", true, "corpus file (HDF5)", "generate.output"},
         {"num-samples", true, "samples (0: the vocabulary sweep)", "generate.num_samples"},
         {"seq-len", true, "tokens per sample", "generate.seq_len"}, {"seed", true, "seed", "generate.seed"},
         {"batch-size", true, "sequences per forward pass", "generate.batch_size"},
         {"store-topk", true, "store the teacher's top-K log-probs per position (0: off)", "generate.store_topk"}}},
       run_generate},
      {{"show-corpus", "print decoded samples of a corpus: show-corpus --corpus FILE.h5 --model DIR [--count N]",
        {model_option, tokenizer_option, {"corpus", true, "corpus file (HDF5)"}, {"count", true, "samples to print (3)"}}},
       run_show_corpus},
      {{"qat", "quantization-aware training by distillation (LLM-QAT): qat --model DIR --corpus FILE.h5 --output DIR --quant 4-8-4",
        {model_option, tokenizer_option, quant_option, {"corpus", true, "corpus file (HDF5) from qforge generate", "distill.corpus"},
         {"teacher", true, "model (run the teacher) or corpus (its stored top-K)", "distill.teacher"},
         {"output", true, "output directory", "output.dir"}, {"lr", true, "peak learning rate", "train.lr"},
         {"max-steps", true, "stop after N steps (0: the epochs)", "train.max_steps"},
         {"resume", false, "continue from the newest checkpoint in output.dir/checkpoints"}}},
       run_qat},
      {{"ptq", "post-training quantization (GPTQ, RTN, or RPTQ + GPTQ): ptq --model DIR --output DIR --calib TEXT "
               "(or --calib-corpus FILE.h5) --wbits 4",
        {model_option, tokenizer_option, {"output", true, "output directory (the quantized checkpoint)", "output.dir"},
         {"calib", true, "calibration text file", "ptq.calib"},
         {"calib-corpus", true, "calibration corpus (HDF5 from qforge generate): data-free", "ptq.calib_corpus"},
         {"method", true, "gptq, rtn or rptq", "ptq.method"}, {"wbits", true, "weight bits, 2..8", "ptq.wbits"},
         {"setting", true, "rptq: W4A16, W4A8, W4A4, W4A4KV, W4A3KV or W3A3KV", "rptq.setting"},
         {"group-size", true, "input columns per scale (-1: per row)", "ptq.group_size"},
         {"sym", true, "true (symmetric grid) or false", "ptq.sym"},
         {"act-order", false, "quantize columns by decreasing Hessian diagonal", "ptq.act_order"},
         {"static-groups", false, "group ranges fixed up front", "ptq.static_groups"},
         {"nsamples", true, "calibration sequences (128)", "ptq.nsamples"},
         {"seq-len", true, "tokens per calibration sequence (0: the model's context)", "ptq.seq_len"}}},
       run_ptq},
  };
}

}  // namespace qforge
