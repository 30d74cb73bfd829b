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

struct ReportRow {
  std::string kind;         // fp, rtn, qat, ptq
  std::string label;        // "FP (teacher)", "RTN", "QAT", "GPTQ"
  std::string bits;         // the W-A-KV setting it belongs to ("16-16-16" for fp)
  std::string model;        // checkpoint directory evaluated
  std::string eval_dir;     // perplexity.json and/or results.json
  int64_t size_bytes = -1;  // of the checkpoint users load (-1: none is written, as for RTN)
};

struct ReportInputs {
  std::string teacher;
  std::vector<std::string> bits;
  std::vector<ReportRow> rows;
  std::vector<std::pair<std::string, std::string>> losses;    // setting -> its qat.json (every step's loss)
  std::vector<std::pair<std::string, double>> stage_seconds;  // stage -> seconds of the runs that completed it
};

// The figures, read from the units' outputs. Throws qforge::Error naming a file that is missing or malformed.
nlohmann::json build_report(const ReportInputs& inputs);
std::string report_markdown(const nlohmann::json& report);
// report.json, report.md and plots/*.svg under `dir`, each written atomically.
void write_report(const std::string& dir, const nlohmann::json& report);

}  // namespace qforge
