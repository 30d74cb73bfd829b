// qforge eval tasks: zero- and few-shot accuracy as lm-evaluation-harness defines it, WikiText-2 and C4
// perplexity as GPTQ computes them, and the checkpoint's size; results in the harness's JSON layout.
#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/eval/perplexity.h"
#include "framework/eval/task_eval.h"
#include "framework/log/log.h"
#include "framework/system/version.h"
#include "framework/tokenizer/tokenizer.h"
#include "launch/model_commands.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <sstream>

namespace qforge {
namespace fs = std::filesystem;
namespace {

const std::vector<std::string> kPerplexityTasks = {"wikitext2", "c4"};

bool is_perplexity_task(const std::string& name) {
  return std::find(kPerplexityTasks.begin(), kPerplexityTasks.end(), name) != kPerplexityTasks.end();
}

// eval.tasks checked before any work: every name known.
std::vector<std::string> requested_tasks(const EvalSettings& e) {
  const auto tasks = config::split_list(e.tasks);
  if (tasks.empty()) throw UsageError("eval.tasks is empty: name at least one task (--tasks piqa,arc_easy)");
  const auto& known = eval::task_names();
  for (const std::string& t : tasks) {
    if (is_perplexity_task(t) || std::find(known.begin(), known.end(), t) != known.end()) continue;
    throw UsageError(fmt::format("eval.tasks: unknown task '{}' (known: {}, {})", t, fmt::join(known, ", "),
                                 fmt::join(kPerplexityTasks, ", ")));
  }
  return tasks;
}

// eval.paths "task=path,..." as a map; a malformed entry or unknown task is a UsageError.
std::map<std::string, std::string> task_paths(const EvalSettings& e) {
  std::map<std::string, std::string> paths;
  for (const std::string& entry : config::split_list(e.paths)) {
    const auto equals = entry.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == entry.size())
      throw UsageError(fmt::format("eval.paths: '{}' is not TASK=PATH", entry));
    paths[entry.substr(0, equals)] = entry.substr(equals + 1);
  }
  return paths;
}

std::string perplexity_path(const std::string& task, const std::map<std::string, std::string>& paths,
                            const EvalSettings& e) {
  if (auto it = paths.find(task); it != paths.end()) return it->second;
  if (e.data_dir.empty())
    throw UsageError(fmt::format("{} needs its file: set eval.paths ({}=FILE) or eval.data_dir", task, task));
  return (fs::path(e.data_dir) / (task == "c4" ? "c4/c4_validation_2k.jsonl" : "wikitext-2/wiki.test.raw")).string();
}

// Bytes of the checkpoint's weight files as stored, and bits per parameter of the model they hold.
nlohmann::json model_size(const std::string& dir, const model::CausalLM& model) {
  std::vector<std::string> files;
  const int64_t bytes = weight_file_bytes(dir, &files);
  int64_t parameters = 0;
  for (const auto& w : model.weights().entries()) {
    int64_t n = 1;
    for (int64_t d : w.full_shape) n *= d;
    parameters += n;
  }
  return {{"bytes", bytes},
          {"gb", static_cast<double>(bytes) / 1e9},
          {"parameters", parameters},
          {"bits_per_parameter", parameters > 0 ? 8.0 * static_cast<double>(bytes) / parameters : 0.0},
          {"files", files}};
}

nlohmann::json number(double value) { return std::isnan(value) ? nlohmann::json("N/A") : nlohmann::json(value); }

void add_metrics(nlohmann::json& row, const std::map<std::string, eval::Metric>& metrics) {
  for (const auto& [name, m] : metrics) {
    row[name + ",none"] = number(m.value);
    row[name + "_stderr,none"] = number(m.stderr_);
  }
}

std::string table_row(const std::string& task, int64_t shots, const std::string& metric, const eval::Metric& m,
                      bool higher_is_better) {
  return fmt::format("|{}|{}|{}|{}|{:.4f}|±|{}|\n", task, shots, metric, higher_is_better ? "↑" : "↓", m.value,
                     std::isnan(m.stderr_) ? std::string("N/A") : fmt::format("{:.4f}", m.stderr_));
}

}  // namespace

int run_eval_tasks(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const EvalSettings& e = c.eval;
  required_setting(c.model.path, "model.path", "model");
  const auto names = requested_tasks(e);
  const auto paths = task_paths(e);
  if (e.log_samples && c.output.dir.empty())
    throw UsageError("eval.log_samples needs output.dir (--output DIR) to write samples_TASK.jsonl into");

  // Every task's data is read (and checked) before the model is loaded.
  std::map<std::string, eval::Task> tasks;
  for (const std::string& name : names) {
    if (is_perplexity_task(name)) continue;
    eval::TaskOptions options;
    options.data_dir = e.data_dir;
    if (auto it = paths.find(name); it != paths.end()) options.path = it->second;
    if (options.data_dir.empty() && options.path.empty())
      throw UsageError(fmt::format("task {} needs its data: set eval.data_dir (--data-dir) or eval.paths", name));
    options.shots = e.shots;
    options.limit = e.limit;
    options.seed = static_cast<uint64_t>(e.seed) + 1234;
    tasks[name] = eval::load_task(name, options);
  }

  dist::Grid grid(context.runtime, c.parallel.tp);
  auto model = load_model(context, grid);
  attach_eval_quantizers(c, *model);
  auto tokenizer = load_model_tokenizer(c.model, model->config());
  const bool root = context.runtime.rank() == 0;
  StagedOutput output(context);  // samples, results.json and the config appear together
  eval::TaskRunOptions run_options{e.batch_size, e.add_bos};

  nlohmann::json results = nlohmann::json::object(), groups = nlohmann::json::object();
  nlohmann::json configs = nlohmann::json::object(), shots = nlohmann::json::object();
  nlohmann::json samples_count = nlohmann::json::object(), speed = nlohmann::json::object();
  nlohmann::json group_subtasks = nlohmann::json::object();
  std::string table = "|Tasks|n-shot|Metric| |Value| |Stderr|\n|-----|-----:|------|---|-----:|---|-----:|\n";
  std::vector<std::string> notes;
  const int64_t seq_len = e.seq_len > 0 ? e.seq_len : model->config().max_positions;
  for (const std::string& name : names) {
    const auto start = std::chrono::steady_clock::now();
    if (is_perplexity_task(name)) {
      const std::string path = perplexity_path(name, paths, e);
      torch::Tensor tokens = name == "c4" ? eval::c4_windows(path, *tokenizer, seq_len, e.c4_windows,
                                                             static_cast<uint64_t>(e.seed))
                                          : eval::wikitext2_tokens(path, *tokenizer);
      eval::PerplexityResult r = eval::perplexity(*model, tokens, seq_len, e.batch_size, grid.dp_group());
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      results[name] = {{"alias", name}, {"perplexity,none", r.perplexity}, {"mean_nll,none", r.mean_nll},
                       {"tokens", r.tokens}, {"windows", r.windows}, {"seq_len", seq_len}};
      configs[name] = {{"task", name}, {"output_type", "perplexity"}, {"file", path},
                       {"convention", name == "c4" ? "GPTQ get_c4: random windows of documents, seeded"
                                                   : "GPTQ/RPTQ: test rows joined with \"\\n\\n\", one BOS"}};
      speed[name] = {{"seconds", seconds}, {"windows_per_second", r.windows / std::max(seconds, 1e-9)}};
      table += table_row(name, 0, "perplexity", {r.perplexity, std::nan("")}, false);
      log::info("{}: perplexity {:.4f} over {} windows of {} ({:.1f} s)", name, r.perplexity, r.windows, seq_len,
                seconds);
      continue;
    }
    const eval::Task& task = tasks.at(name);
    log::info("{}: {} items, {}-shot", name, task.items.size(), task.shots);
    eval::TaskResult r = eval::run_task(*model, *tokenizer, task, run_options, grid.dp_group());
    nlohmann::json row = {{"alias", name}};
    add_metrics(row, r.metrics);
    results[name] = row;
    for (const auto& [metric, m] : r.metrics) table += table_row(name, task.shots, metric, m, true);
    if (!r.subjects.empty()) {
      groups[name] = row;
      group_subtasks[name] = nlohmann::json::array();
      for (const auto& [subject, metrics] : r.subjects) {
        const std::string sub = name + "_" + subject;
        nlohmann::json subject_row = {{"alias", " - " + subject}};
        add_metrics(subject_row, metrics);
        results[sub] = subject_row;
        group_subtasks[name].push_back(sub);
        for (const auto& [metric, m] : metrics) table += table_row(" - " + subject, task.shots, metric, m, true);
      }
    }
    configs[name] = {{"task", name},
                     {"output_type", task.spec.kind == eval::TaskKind::kMultipleChoice ? "multiple_choice"
                                                                                       : "generate_until"},
                     {"num_fewshot", task.shots}, {"files", task.files}, {"target_delimiter", " "},
                     {"fewshot_delimiter", "\n\n"}};
    if (task.spec.kind == eval::TaskKind::kGenerateUntil)
      configs[name]["generation_kwargs"] = {{"until", task.spec.until}, {"do_sample", false},
                                            {"max_gen_toks", task.spec.max_gen_tokens}};
    if (!task.spec.note.empty()) {
      configs[name]["note"] = task.spec.note;
      notes.push_back(fmt::format("{}: {}", name, task.spec.note));
    }
    shots[name] = task.shots;
    samples_count[name] = {{"original", task.total_items}, {"effective", static_cast<int64_t>(task.items.size())}};
    speed[name] = {{"seconds", r.seconds}, {"items_per_second", task.items.size() / std::max(r.seconds, 1e-9)}};
    if (e.log_samples && root) {
      std::string lines;
      for (std::size_t i = 0; i < r.items.size(); ++i)
        lines += eval::sample_json(task.spec, task.items[i], r.items[i]).dump() + "\n";
      write_file_atomically((fs::path(output.dir()) / fmt::format("samples_{}.jsonl", name)).string(), lines);
    }
  }

  nlohmann::json size = model_size(c.model.path, *model);
  nlohmann::json report = {
      {"results", results},
      {"groups", groups},
      {"group_subtasks", group_subtasks},
      {"configs", configs},
      {"n-shot", shots},
      {"n-samples", samples_count},
      {"config",
       {{"model", "qforge"},
        {"model_args", fmt::format("pretrained={},quant={},tp={},dp={}", c.model.path, c.quant.bits,
                                   grid.tp_group().size(), grid.dp_group().size())},
        {"batch_size", e.batch_size},
        {"limit", e.limit > 0 ? nlohmann::json(e.limit) : nlohmann::json(nullptr)},
        {"add_bos_token", e.add_bos},
        {"tokenizer", tokenizer->kind()}}},
      {"model_size", size},
      {"speed", speed},
      {"qforge_version", version()},
      {"date", static_cast<double>(std::time(nullptr))}};
  if (root) {
    std::string text = table;
    text += fmt::format("\nmodel size: {:.6f} GB on disk ({} bytes), {} parameters, {:.3f} bits per parameter\n",
                        size["gb"].get<double>(), size["bytes"].get<int64_t>(), size["parameters"].get<int64_t>(),
                        size["bits_per_parameter"].get<double>());
    for (const std::string& note : notes) text += "note: " + note + "\n";
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  write_outputs(context, "results.json", report.dump(2) + "\n");
  output.commit();
  return 0;
}

}  // namespace qforge
