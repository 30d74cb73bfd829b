// qforge pipeline (launch/pipeline.h): the units of work of a campaign, their fingerprints, and what a rerun does
// with each: skip it (complete, same fingerprint), resume it (started with the same fingerprint: the corpus
// journals and QAT checkpoints carry on; PTQ and evaluation, whose outputs appear only when complete, start over),
// or redo it (the fingerprint changed: its outputs are removed first). Every decision is rank 0's, broadcast.
#include "launch/pipeline.h"

#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/system/memory.h"
#include "launch/memory_plan.h"
#include "launch/model_commands.h"
#include "launch/pipeline_report.h"
#include "quant/qat.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

namespace qforge {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::vector<std::string> PipelineSettings::stage_list() const { return config::split_list(stages); }
std::vector<std::string> PipelineSettings::bits_list() const { return config::split_list(bits); }

bool PipelineSettings::runs(const std::string& stage) const {
  const auto list = stage_list();
  return std::find(list.begin(), list.end(), stage) != list.end();
}

std::string PipelineSettings::stages_problem(const std::string& text) {
  const auto& names = pipeline_stage_names();
  const auto list = config::split_list(text);
  bool known = !list.empty();
  for (const std::string& stage : list) known = known && std::find(names.begin(), names.end(), stage) != names.end();
  if (known) return "";
  return fmt::format("one or more of {}, comma-separated (they run in that order)", fmt::join(names, ", "));
}

std::string PipelineSettings::bits_problem(const std::string& text) {
  const auto list = config::split_list(text);
  bool valid = !list.empty();
  for (size_t i = 0; i < list.size(); ++i)
    valid = valid && quant::QuantSettings::bits_format_problem(list[i]).empty() &&
            std::find(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(i), list[i]) == list.begin() + i;
  return valid ? "" : "distinct W-A-KV settings, comma-separated (e.g. 4-8-4,4-8-8; each part 2..8 or 16)";
}

namespace {

constexpr const char* kMarkerDir = "pipeline";

// One unit of work: a stage for one W-A-KV setting (qat, ptq), one row of the report (eval), or the corpus.
struct Unit {
  std::string stage;        // generate, qat, ptq, eval
  std::string name;         // "generate", "qat/4-8-4", "eval/rtn-4-8-4"
  std::string bits;         // qat, ptq: the setting; eval: the quantizers the row is evaluated under
  std::string row;          // eval: fp, rtn, qat or ptq
  std::string setting;      // eval: the W-A-KV setting of the row ("16-16-16" for fp)
  std::string model;        // the model it reads (eval: the row's model)
  fs::path output;          // corpus.h5 or a directory
  json parts;               // what the fingerprint covers: part -> digest
  std::string fingerprint;  // digest of `parts`
};

std::string digest(const std::string& text) { return hex64(fnv1a64(text)); }

// A section of the resolved config without the keys the pipeline sets itself (paths of its own outputs).
std::string section(const YAML::Node& root, const char* name, std::initializer_list<const char*> dropped = {}) {
  YAML::Node node = YAML::Clone(root[name]);
  for (const char* key : dropped) node.remove(key);
  return digest(YAML::Dump(node));
}

// Every file under `dir` (relative name, size, XXH64), in name order: a model's identity by content.
std::string directory_digest(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  uint64_t hash = kFnv1aOffset;
  for (const fs::path& file : files) {
    const FileChecksum sum = checksum_file(file.string());
    hash = fnv1a64(fmt::format("{} {} {}\n", fs::relative(file, dir).string(), sum.bytes, sum.xxh64), hash);
  }
  return hex64(hash);
}

std::string file_digest(const std::string& path) {
  if (path.empty()) return "none";
  const FileChecksum sum = checksum_file(path);
  return fmt::format("{}:{}", sum.bytes, hex64(sum.xxh64));
}

// "16-A-KV": the activations and KV cache of `bits` on a model whose weights are already quantized.
std::string weights_done(const std::string& bits) {
  const quant::BitWidths b = quant::parse_bits(bits);
  return fmt::format("16-{}-{}", b.act, b.kv);
}

bool evaluates_tasks(const EvalSettings& e) { return !e.data_dir.empty() || !e.paths.empty(); }

// The units of the enabled stages, in order, with their fingerprints. The inputs are hashed by content on rank 0
// and broadcast (every rank resolved the same config).
std::vector<Unit> plan_units(dist::Runtime& runtime, const QforgeConfig& c) {
  const PipelineSettings& p = c.pipeline;
  const fs::path out = c.output.dir;
  const YAML::Node root = YAML::Load(config::to_yaml(c));
  json inputs;
  std::string error;
  if (runtime.rank() == 0) {
    try {
      inputs["teacher"] = directory_digest(c.model.path);
      inputs["eval.text"] = file_digest(c.eval.text);
      inputs["distill.corpus"] = p.runs("generate") ? "" : file_digest(c.distill.corpus);
      inputs["ptq.calib"] = file_digest(c.ptq.calib);
      inputs["ptq.calib_corpus"] = file_digest(c.ptq.calib_corpus);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  const std::string text =
      runtime.world().broadcast_text(runtime.rank() == 0 ? (error.empty() ? inputs.dump() : "!" + error) : "", 0);
  if (!text.empty() && text[0] == '!') throw Error("pipeline: reading its inputs: " + text.substr(1));
  inputs = json::parse(text);

  const std::string model_settings = section(root, "model", {"path"});
  std::vector<Unit> units;
  auto add = [&](Unit unit) {
    unit.fingerprint = digest(unit.parts.dump());
    units.push_back(std::move(unit));
  };
  std::string corpus;  // the fingerprint of the corpus QAT and PTQ read
  if (p.runs("generate")) {
    add({"generate",
         "generate",
         "",
         "",
         "",
         c.model.path,
         out / "corpus.h5",
         {{"teacher", inputs["teacher"]},
          {"model", model_settings},
          {"generate", section(root, "generate", {"output"})},
          {"parallel.tp", c.parallel.tp}}});
    corpus = units.back().fingerprint;
  } else {
    corpus = inputs["distill.corpus"];
  }
  std::map<std::string, std::string> qat_of, ptq_of;
  for (const std::string& bits : p.bits_list()) {
    if (!p.runs("qat")) break;
    add({"qat",
         "qat/" + bits,
         bits,
         "",
         "",
         c.model.path,
         out / "qat" / bits,
         {{"teacher", inputs["teacher"]},
          {"model", model_settings},
          {"corpus", corpus},
          {"bits", bits},
          {"quant", section(root, "quant", {"bits"})},
          {"distill", section(root, "distill", {"corpus"})},
          {"train", section(root, "train", {"save_every", "keep_checkpoints"})}}});
    qat_of[bits] = units.back().fingerprint;
  }
  const bool rptq = c.ptq.method == "rptq";
  for (const std::string& bits : p.bits_list()) {
    if (!p.runs("ptq")) break;
    if (!rptq && quant::parse_bits(bits).weight == 16) continue;  // no weights to quantize
    const bool own_calibration = !c.ptq.calib.empty() || !c.ptq.calib_corpus.empty();
    add({"ptq",
         "ptq/" + bits,
         bits,
         "",
         "",
         c.model.path,
         out / "ptq" / bits,
         {{"teacher", inputs["teacher"]},
          {"model", model_settings},
          {"bits", bits},
          {"calibration", own_calibration
                              ? inputs["ptq.calib"].get<std::string>() + inputs["ptq.calib_corpus"].get<std::string>()
                              : corpus},
          {"ptq", section(root, "ptq", {"calib_corpus", "wbits"})},
          {"rptq", section(root, "rptq")}}});
    ptq_of[bits] = units.back().fingerprint;
  }
  if (p.runs("eval")) {
    const std::string eval_settings = section(root, "eval", {"log_samples"});
    auto row = [&](const std::string& kind, const std::string& bits, const std::string& quant_bits,
                   const std::string& model, const std::string& model_digest) {
      const std::string name = kind == "fp" ? "fp" : kind + "-" + bits;
      add({"eval",
           "eval/" + name,
           quant_bits,
           kind,
           kind == "fp" ? "16-16-16" : bits,
           model,
           out / "eval" / name,
           {{"model", model_digest},
            {"model_settings", model_settings},
            {"quant_bits", quant_bits},
            {"quant", section(root, "quant", {"bits"})},
            {"eval", eval_settings},
            {"text", inputs["eval.text"]}}});
    };
    row("fp", "", "16-16-16", c.model.path, inputs["teacher"]);
    for (const std::string& bits : p.bits_list()) {
      row("rtn", bits, bits, c.model.path, inputs["teacher"]);
      if (qat_of.count(bits)) row("qat", bits, bits, (out / "qat" / bits / "student").string(), qat_of[bits]);
      if (ptq_of.count(bits))
        row("ptq", bits, rptq ? std::string("16-16-16") : weights_done(bits), (out / "ptq" / bits).string(),
            ptq_of[bits]);
    }
  }
  return units;
}

// ---- markers: output.dir/pipeline/<unit>.json ---------------------------------------------------------------

fs::path marker_path(const fs::path& out, const Unit& unit) {
  std::string file = unit.name;
  std::replace(file.begin(), file.end(), '/', '.');
  return out / kMarkerDir / (file + ".json");
}

json read_marker(const fs::path& path) {
  if (!fs::exists(path)) return json();
  try {
    return json::parse(read_file(path.string()));
  } catch (const std::exception& e) {
    log::warn("pipeline: {} is unreadable ({}); its unit runs again", path.string(), e.what());
    return json();
  }
}

void write_marker(const fs::path& out, const Unit& unit, const std::string& state, double seconds) {
  json marker = {{"unit", unit.name}, {"state", state}, {"fingerprint", unit.fingerprint}, {"parts", unit.parts}};
  if (state == "complete") marker["seconds"] = seconds;
  fs::create_directories(out / kMarkerDir);
  write_file_atomically(marker_path(out, unit).string(), marker.dump(2) + "\n");
}

// Whether the unit's output is all there: each is written under its final name only when complete.
bool output_complete(const QforgeConfig& c, const Unit& unit) {
  if (unit.stage == "generate") return fs::exists(unit.output);
  if (unit.stage == "qat") return fs::exists(unit.output / "qat.json");
  if (unit.stage == "ptq") return fs::exists(unit.output / "ptq.json");
  return (c.eval.text.empty() || fs::exists(unit.output / "perplexity.json")) &&
         (!evaluates_tasks(c.eval) || fs::exists(unit.output / "results.json"));
}

void remove_outputs(const Unit& unit) {
  fs::remove_all(unit.output);
  if (unit.stage == "generate") fs::remove_all(unit.output.string() + ".parts");  // the corpus journals
}

enum class Action { kSkip, kFinish, kResume, kRun, kRedo };

const char* action_text(Action action) {
  switch (action) {
    case Action::kSkip:
      return "skip";
    case Action::kFinish:
      return "finish";
    case Action::kResume:
      return "resume";
    case Action::kRun:
      return "run";
    case Action::kRedo:
      return "redo";
  }
  return "";
}

// What to do with `unit`, and why (rank 0 reads the marker and the outputs).
std::pair<Action, std::string> decide(const QforgeConfig& c, const Unit& unit) {
  const json marker = read_marker(marker_path(c.output.dir, unit));
  const bool exists = fs::exists(unit.output);
  if (marker.is_null())
    return exists ? std::pair{Action::kRedo, std::string("an output without a pipeline record")}
                  : std::pair{Action::kRun, std::string("not started")};
  if (marker.value("fingerprint", "") != unit.fingerprint) {
    std::vector<std::string> changed;
    for (const auto& [part, value] : unit.parts.items())
      if (!marker["parts"].contains(part) || marker["parts"][part] != value) changed.push_back(part);
    return {Action::kRedo, fmt::format("changed since it ran: {}", fmt::join(changed, ", "))};
  }
  if (marker.value("state", "") == "complete" && output_complete(c, unit))
    return {Action::kSkip, "complete, same inputs and settings"};
  if (output_complete(c, unit)) return {Action::kFinish, "output complete, record not yet written"};
  return {Action::kResume, exists ? "started with the same inputs and settings" : "started, nothing written yet"};
}

// ---- running a unit -----------------------------------------------------------------------------------------

// The unit as the command it is: the config it runs with and the command line it would have.
std::pair<QforgeConfig, config::CommandLine> unit_command(const QforgeConfig& c, const Unit& unit) {
  QforgeConfig sc = c;
  config::CommandLine line;
  line.command = unit.stage;
  const std::string corpus =
      c.pipeline.runs("generate") ? (fs::path(c.output.dir) / "corpus.h5").string() : c.distill.corpus;
  if (unit.stage == "generate") {
    sc.generate.output = unit.output.string();
  } else if (unit.stage == "qat") {
    sc.quant.bits = unit.bits;
    sc.distill.corpus = corpus;
    sc.output.dir = unit.output.string();
    line.options["resume"] = "true";  // a checkpoint of this fingerprint, or step 0
  } else if (unit.stage == "ptq") {
    sc.output.dir = unit.output.string();
    if (c.ptq.calib.empty() && c.ptq.calib_corpus.empty()) sc.ptq.calib_corpus = corpus;
    if (c.ptq.method != "rptq") sc.ptq.wbits = quant::parse_bits(unit.bits).weight;
  } else {
    sc.model.path = unit.model;
    sc.quant.bits = unit.bits;
    sc.output.dir = unit.output.string();
  }
  return {sc, line};
}

void run_unit(CommandContext& context, const Unit& unit) {
  auto [sc, line] = unit_command(context.config, unit);
  auto run = [&](int (*command)(CommandContext&), const std::string& positional) {
    config::CommandLine l = line;
    if (!positional.empty()) l.command = "eval", l.positionals = {positional};
    CommandContext sub{context.runtime, l, sc};
    const int code = command(sub);
    if (code != 0) throw Error(fmt::format("pipeline: {} failed (exit code {})", unit.name, code));
  };
  if (unit.stage == "generate") run(run_generate, "");
  if (unit.stage == "qat") run(run_qat, "");
  if (unit.stage == "ptq") run(run_ptq, "");
  if (unit.stage == "eval") {
    if (!sc.eval.text.empty()) run(run_eval, "ppl");
    if (evaluates_tasks(sc.eval)) run(run_eval, "tasks");
  }
}

template <class T>
T from_rank0(dist::Runtime& runtime, T value) {
  torch::Tensor t = torch::tensor({static_cast<int64_t>(value)}, torch::kLong);
  runtime.world().broadcast(t, 0);
  return static_cast<T>(t.item<int64_t>());
}

// Bad settings found before any work: one UsageError naming the key.
void check_settings(const QforgeConfig& c) {
  required_setting(c.model.path, "model.path", "model");
  required_setting(c.output.dir, "output.dir", "output");
  const PipelineSettings& p = c.pipeline;
  if (!p.runs("generate") && (p.runs("qat") || (p.runs("ptq") && c.ptq.calib.empty() && c.ptq.calib_corpus.empty())))
    required_setting(c.distill.corpus, "distill.corpus", "corpus");
  if (p.runs("eval") && c.eval.text.empty() && !evaluates_tasks(c.eval))
    throw UsageError(
        "pipeline.stages includes eval but nothing to evaluate on: set eval.text (a text file for "
        "perplexity) and/or eval.data_dir or eval.paths (tasks)");
  if (c.ptq.method == "rptq" && p.runs("ptq") && c.ptq.calib.empty())
    throw UsageError("ptq.method rptq calibrates on a text: set ptq.calib");
  const int64_t rtn_group = c.quant.weight_granularity == "group" ? c.quant.group_size : -1;
  if (p.runs("ptq") && p.runs("eval") && c.ptq.method != "rptq" && rtn_group != c.ptq.group_size)
    log::warn("pipeline: the RTN rows quantize weights with {} (quant.*), PTQ with {} (ptq.group_size): set them "
              "alike for a like-for-like RTN -> PTQ comparison",
              rtn_group > 0 ? fmt::format("groups of {}", rtn_group) : "one scale per row",
              c.ptq.group_size > 0 ? fmt::format("groups of {}", c.ptq.group_size) : "one scale per row");
}

std::string memory_text(const QforgeConfig& c, const Unit& unit, int ranks) {
  try {
    auto [sc, line] = unit_command(c, unit);
    sc.model.path = c.model.path;  // a student has the teacher's architecture (and may not exist yet)
    const MemoryPlan plan = plan_memory(sc, planned_architecture(sc.model), parse_plan_stage(unit.stage), ranks);
    return fmt::format("{} per rank (largest: {}, {})", sys::bytes_text(plan.total()), plan.largest().name,
                       sys::bytes_text(plan.largest().bytes));
  } catch (const Error& e) {
    return fmt::format("no plan: {}", e.what());
  }
}

int run_pipeline(CommandContext& context) {
  const QforgeConfig& c = context.config;
  dist::Runtime& runtime = context.runtime;
  check_settings(c);
  const bool dry_run = context.line.options.count("dry-run") != 0;
  const fs::path out = c.output.dir;
  const std::vector<Unit> units = plan_units(runtime, c);
  const bool leader = runtime.rank() == 0;

  if (dry_run) {
    if (leader) {
      std::string text =
          fmt::format("pipeline under {} on {} rank(s), {} unit(s):\n", out.string(), runtime.size(), units.size());
      for (const Unit& unit : units) {
        const auto [action, why] = decide(c, unit);
        text += fmt::format("  {:<22} {:<7} {}; memory {}\n", unit.name, action_text(action), why,
                            memory_text(c, unit, runtime.size()));
      }
      std::fputs(text.c_str(), stdout);
    }
    return 0;
  }

  log::Progress progress("pipeline", static_cast<int64_t>(units.size()), "units", 0.0);
  for (const Unit& unit : units) {
    Action action = Action::kRun;
    if (leader) {
      const auto [decided, why] = decide(c, unit);
      action = decided;
      log::info("pipeline: {} -> {} ({})", unit.name, action_text(action), why);
      if (action == Action::kRedo) remove_outputs(unit);
      if (action == Action::kRedo || action == Action::kRun) write_marker(out, unit, "running", 0);
    }
    action = from_rank0(runtime, action);
    runtime.world().barrier();
    if (action != Action::kSkip) {
      const auto start = std::chrono::steady_clock::now();
      if (action != Action::kFinish) {
        log::info("pipeline: {}; memory plan {}", unit.name, memory_text(c, unit, runtime.size()));
        run_unit(context, unit);
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const bool complete = from_rank0(runtime, leader && output_complete(c, unit));
      if (!complete) {  // the trainer stopped on a signal and saved a checkpoint
        log::warn("pipeline: stopped in {}; its progress is saved: rerun the same command to resume", unit.name);
        return 0;
      }
      if (leader) write_marker(out, unit, "complete", seconds);
    }
    progress.advance();
  }
  runtime.world().barrier();
  if (leader) {
    std::vector<ReportUnit> done;
    for (const Unit& u : units)
      done.push_back({u.stage, u.bits, u.row, u.setting, u.model, u.output.string(),
                      read_marker(marker_path(out, u)).value("seconds", 0.0)});
    const json report = build_report(report_inputs(c, done));
    write_report(out.string(), report);
    std::fputs(report_markdown(report).c_str(), stdout);
    log::info("pipeline: report in {}", (out / "report.md").string());
  }
  runtime.world().barrier();
  return 0;
}

}  // namespace

Command pipeline_command() {
  return {{"pipeline",
           "the campaign as one job: generate -> qat -> ptq -> eval under output.dir, each unit skipped when done, "
           "resumed after a kill; a report at the end: pipeline --config FILE [--dry-run]",
           {{"output", true, "the pipeline's directory", "output.dir"},
            {"model", true, "the teacher (full-precision checkpoint directory)", "model.path"},
            {"stages", true, "comma-separated stages to run (generate,qat,ptq,eval)", "pipeline.stages"},
            {"bits", true, "comma-separated W-A-KV settings (4-8-4)", "pipeline.bits"},
            {"dry-run", false, "print what each unit would do (run, resume, skip, redo) and its memory plan"}}},
          run_pipeline};
}

}  // namespace qforge
