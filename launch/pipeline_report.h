// The pipeline's report: the quality table (full precision, RTN, QAT and PTQ per W-A-KV setting: perplexity, task
// accuracies, size), the time of each stage, and two plots (the distillation loss per step, perplexity and accuracy
// per row) as SVG files the Markdown shows. report.json holds the same figures for tools.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qforge {

struct QforgeConfig;

struct ReportRow {
  std::string kind;         // fp, rtn, qat, ptq
  std::string label;        // "FP (teacher)", "RTN", "QAT", "GPTQ"
  std::string bits;         // the W-A-KV setting it belongs to ("16-16-16" for fp)
  std::string model;        // checkpoint directory evaluated
  std::string eval_dir;     // perplexity.json and/or results.json
  int64_t size_bytes = -1;  // of the checkpoint users load (-1: none is written, as for RTN)
};

// A QAT run's distillation loss per step, from its qat.json: the losses of its last losses.size() steps, every
// step's from step 1 unless it resumed from a checkpoint written before the trainer kept the history.
struct QatLosses {
  std::string bits;
  int64_t steps = 0;  // steps trained
  std::vector<double> losses;
};

struct ReportInputs {
  std::string teacher;
  std::vector<std::string> bits;
  std::vector<ReportRow> rows;
  std::vector<QatLosses> losses;                              // per QAT setting
  std::vector<std::pair<std::string, double>> stage_seconds;  // stage -> seconds of the runs that completed it
};

// A unit of the pipeline as the report sees it (pipeline_command.cpp plans them).
struct ReportUnit {
  std::string stage;    // generate, qat, ptq, eval
  std::string bits;     // qat: its W-A-KV setting
  std::string row;      // eval: fp, rtn, qat or ptq
  std::string setting;  // eval: the W-A-KV setting of the row ("16-16-16" for fp)
  std::string model;    // eval: the checkpoint it evaluated
  std::string output;   // its directory (qat: qat.json's; eval: perplexity.json's and results.json's)
  double seconds = 0;   // of the run that completed it (its pipeline record)
};

// What the report reads, from the outputs of `units` (in the order they ran): each eval row with the size of the
// checkpoint it evaluated, each QAT setting's losses (qat.json, read once), the seconds of each stage.
ReportInputs report_inputs(const QforgeConfig& c, const std::vector<ReportUnit>& units);
// The figures, read from the rows' outputs. Throws qforge::Error naming a file that is missing or malformed.
nlohmann::json build_report(const ReportInputs& inputs);
std::string report_markdown(const nlohmann::json& report);
// report.json, report.md and plots/*.svg under `dir`, each written atomically.
void write_report(const std::string& dir, const nlohmann::json& report);

}  // namespace qforge
