// qforge ptq: post-training weight quantization (GPTQ, or RTN) of a Hugging Face checkpoint, calibrated on a text
// file or on a qforge corpus (data-free). Writes (ptq.save) the model in the GPTQ checkpoint format under
// output.dir/gptq, and/or fake-quantized as an ordinary Hugging Face checkpoint under output.dir (both load with
// `qforge eval ppl --model DIR`), with the tokenizer, and ptq.json: per linear the reconstruction error
// ||WX - QX||^2 of the method and of RTN, the time, and the settings.
#include "launch/model_commands.h"

#include "framework/common/error.h"
#include "framework/eval/perplexity.h"
#include "framework/io/corpus.h"
#include "framework/log/log.h"
#include "framework/model/checkpoint_io.h"
#include "framework/tokenizer/tokenizer.h"
#include "quant/calibration.h"
#include "quant/gptq_checkpoint.h"
#include "quant/ptq.h"
#include "rptq/rptq_checkpoint.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

namespace qforge {
namespace fs = std::filesystem;
namespace {

// Every calibration sequence of the job [nsamples, seq_len] (the same on every rank), and where it came from.
std::pair<torch::Tensor, std::string> calibration_sequences(const QforgeConfig& c, const model::ModelConfig& model) {
  const quant::PtqSettings& p = c.ptq;
  const bool random = p.calib_windows == "random";
  const auto seed = static_cast<uint32_t>(p.seed);
  auto check_length = [&](int64_t seq_len) {
    if (seq_len < 1 || seq_len > model.max_positions)
      throw UsageError(fmt::format("ptq.seq_len = {} must be in [1, {}] (the model's context)", seq_len,
                                   model.max_positions));
    return seq_len;
  };
  if (!p.calib_corpus.empty()) {
    io::CorpusReader corpus(p.calib_corpus);
    corpus.check_vocabulary(model.vocab_size);
    const int64_t seq_len = check_length(p.seq_len > 0 ? p.seq_len : std::min(corpus.seq_len(), model.max_positions));
    return {quant::corpus_windows(corpus, p.nsamples, seq_len, random, seed),
            fmt::format("corpus {}", p.calib_corpus)};
  }
  const int64_t seq_len = check_length(p.seq_len > 0 ? p.seq_len : model.max_positions);
  auto tokenizer = load_model_tokenizer(c.model, model);
  torch::Tensor tokens = eval::tokenize_text_file(p.calib, *tokenizer);
  return {quant::text_windows(tokens, p.nsamples, seq_len, random, seed, p.calib), fmt::format("text {}", p.calib)};
}

void print_summary(const quant::PtqReport& report, const quant::PtqSettings& settings, const std::string& out) {
  double error = 0, rtn = 0;
  for (const auto& l : report.linears) {
    error += std::max(0.0, l.error);
    rtn += std::max(0.0, l.rtn_error);
  }
  std::printf("ptq: %s, %zu linear layers in %.1f s; model in %s\n", settings.describe().c_str(),
              report.linears.size(), report.seconds, out.c_str());
  if (report.sequences > 0 && settings.errors)
    std::printf("ptq: reconstruction error sum ||WX - QX||^2: %s %.6g, rtn %.6g (%.1f%% of rtn)\n",
                settings.method.c_str(), error, rtn, rtn > 0 ? 100.0 * error / rtn : 0.0);
}

// ptq.method rptq: the model reordered, its activations quantized per cluster, its weights by GPTQ; written as
// RPTQ's checkpoint (rptq/rptq_checkpoint.h). With eval.text, the perplexity of the same weights under each
// activation scheme: none (weights only), LLM-QAT's per-token dynamic ranges, static per-tensor, RPTQ.
int run_rptq_ptq(CommandContext& context, dist::Grid& grid, model::CausalLM& model) {
  const QforgeConfig& c = context.config;
  auto [p, r] = rptq::resolve_settings(c.ptq, c.rptq, model.config());
  if (p.save != "fake") {
    quant::check_gptq_bits(p.wbits, r.setting.empty() ? "ptq.wbits" : "rptq.setting",
                           "set ptq.save=fake to write only the fake-quantized model");
    if (r.weight_ranges == "clusters")
      throw UsageError("rptq.weight_ranges clusters (a range per row and input cluster) has no GPTQ checkpoint "
                       "layout: set ptq.save=fake");
  }
  auto [sequences, source] = calibration_sequences(c, model.config());
  torch::Tensor local = quant::dp_share(sequences, grid.dp_group());
  log::info("ptq: rptq {}, weights {} on {} sequences of {} tokens from {}; {}", r.describe(p.wbits), p.describe(),
            sequences.size(0), sequences.size(1), source, grid.describe());
  const rptq::RptqResult result = rptq::run_rptq(model, local, p, r, grid.dp_group());

  nlohmann::json perplexities = nlohmann::json::object();
  if (!c.eval.text.empty()) {
    auto tokenizer = load_model_tokenizer(c.model, model.config());
    torch::Tensor tokens = eval::tokenize_text_file(c.eval.text, *tokenizer);
    const int64_t seq_len = c.eval.seq_len > 0 ? c.eval.seq_len : model.config().max_positions;
    for (const std::string& mode : r.compare) {
      rptq::use_activations(model, result.layers, r, mode);
      const eval::PerplexityResult ppl =
          eval::perplexity(model, tokens, seq_len, c.eval.batch_size, grid.dp_group());
      perplexities[mode] = ppl.perplexity;
      log::info("ptq: {} activations: perplexity {:.4f} on {} ({} tokens)", mode, ppl.perplexity, c.eval.text,
                ppl.tokens);
    }
    rptq::use_activations(model, result.layers, r, r.activations);
  }
  StagedOutput output(context);  // output.dir appears once every file is written
  const fs::path out = output.dir();
  const bool writer = grid.dp_rank() == 0, fake = p.save != "gptq", packed = p.save != "fake";
  std::vector<std::string> saved;
  if (fake) {
    rptq::save_rptq(model, result.layers, p, r, out.string(), writer, c.output.max_shard_bytes());
    saved.push_back(out.string());
  }
  if (packed) {  // both: OUT/gptq beside the fake-quantized OUT, as plain ptq
    const std::string dir = fake ? (out / "gptq").string() : out.string();
    rptq::save_rptq(model, result.layers, p, r, dir, writer, c.output.max_shard_bytes(), &result.ptq.quantized);
    saved.push_back(dir);
  }
  if (context.runtime.rank() == 0) {
    for (const std::string& dir : saved) copy_tokenizer(c.model, dir);
    print_summary(result.ptq, p, c.output.dir);
    std::vector<std::string> figures;
    for (const std::string& mode : r.compare)
      if (perplexities.contains(mode))
        figures.push_back(fmt::format("{} {:.4f}", mode, perplexities[mode].get<double>()));
    if (!figures.empty())
      std::printf("ptq: %s perplexity on %s by activations: %s\n", r.describe(p.wbits).c_str(), c.eval.text.c_str(),
                  fmt::format("{}", fmt::join(figures, ", ")).c_str());
  }
  nlohmann::json json = result.ptq.to_json(p);
  json["model"] = c.model.path;
  json["calibration_source"] = source;
  json["layout"] = grid.describe();
  json["rptq"] = rptq::rptq_quantization_config(p, r, model);
  json["rptq"].erase("sites");
  json["rptq"]["cluster_seconds"] = result.cluster_seconds;
  if (!perplexities.empty()) json["perplexity"] = {{"text", c.eval.text}, {"by_activations", perplexities}};
  write_outputs(context, "ptq.json", json.dump(2) + "\n");
  output.commit();
  return 0;
}

}  // namespace

int run_ptq(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const quant::PtqSettings& p = c.ptq;
  required_setting(c.model.path, "model.path", "model");
  required_setting(c.output.dir, "output.dir", "output");
  if (!p.calib.empty() && !p.calib_corpus.empty())
    throw UsageError("ptq.calib and ptq.calib_corpus are both set: calibrate on a text (--calib) or on a corpus "
                     "(--calib-corpus), not both");
  const bool calibrated = !p.calib.empty() || !p.calib_corpus.empty();
  const bool gptq_format = p.save != "fake", fake = p.save != "gptq";
  if (gptq_format && p.method != "rptq")
    quant::check_gptq_bits(p.wbits, "ptq.wbits", "set ptq.save=fake to write only the fake-quantized model");
  if (p.uses_gptq() && !calibrated)
    throw UsageError(fmt::format("ptq.method {} needs calibration data: set --calib TEXT or --calib-corpus FILE.h5",
                                 p.method));
  dist::Grid grid(context.runtime, c.parallel.tp);
  auto model = load_model(context, grid);
  if (p.method == "rptq") return run_rptq_ptq(context, grid, *model);

  torch::Tensor local;
  if (calibrated) {
    auto [sequences, source] = calibration_sequences(c, model->config());
    local = quant::dp_share(sequences, grid.dp_group());
    log::info("ptq: {} on {} sequences of {} tokens ({} windows) from {}; {}", p.describe(), sequences.size(0),
              sequences.size(1), p.calib_windows, source, grid.describe());
  }
  const quant::PtqReport report = quant::run_ptq(*model, local, p, grid.dp_group());

  StagedOutput output(context);  // output.dir appears once every file is written
  const fs::path out = output.dir(), final_out = c.output.dir;
  const bool writer = grid.dp_rank() == 0;
  std::vector<std::string> saved;
  if (fake) {
    model::save_pretrained(*model, out.string(), writer, c.output.max_shard_bytes());
    saved.push_back(out.string());
  }
  quant::GptqExportReport exported;
  if (gptq_format) {
    exported = quant::export_gptq(*model, report.quantized, (out / "gptq").string(), writer,
                                   c.output.max_shard_bytes());
    saved.push_back((out / "gptq").string());
  }
  if (context.runtime.rank() == 0) {
    for (const std::string& dir : saved) copy_tokenizer(c.model, dir);
    print_summary(report, p, final_out.string());
    if (gptq_format)
      std::printf("ptq: GPTQ checkpoint (%s, %zu linears packed, %zu kept fp16) in %s: %lld bytes\n",
                  exported.checkpoint_format.c_str(), exported.packed.size(), exported.kept.size(),
                  (final_out / "gptq").c_str(), static_cast<long long>(exported.bytes));
  }
  nlohmann::json json = report.to_json(p);
  json["model"] = c.model.path;
  json["calibration_source"] = p.calib_corpus.empty() ? p.calib : p.calib_corpus;
  json["layout"] = grid.describe();
  if (gptq_format)
    json["gptq_checkpoint"] = {{"dir", (final_out / "gptq").string()},
                               {"checkpoint_format", exported.checkpoint_format},
                               {"packed", exported.packed}, {"kept_fp16", exported.kept}, {"bytes", exported.bytes}};
  write_outputs(context, "ptq.json", json.dump(2) + "\n");
  output.commit();
  return 0;
}

}  // namespace qforge
