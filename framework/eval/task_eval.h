// Runs a task (eval/tasks.h) on a model: tokenizes its requests as lm-evaluation-harness does, scores them
// (eval/task_scoring.h) and computes the harness's metrics with their standard errors.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/eval/tasks.h"
#include "framework/model/transformer.h"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace qforge::tok {
class Tokenizer;
}

namespace qforge::eval {

struct TaskRunOptions {
  int64_t batch_size = 16;  // contexts (or prompts) per forward pass
  bool add_bos = true;      // BOS before every context, as the harness's add_bos_token=True
};

// A metric as the harness reports it: the mean over items and the standard error of that mean.
struct Metric {
  double value = 0;
  double stderr_ = 0;  // NaN with fewer than two items
};

// Per item: what was scored or generated, and the item's metric values (0 or 1).
struct ItemRecord {
  int64_t index = 0;
  std::string subject;
  std::vector<std::pair<std::string, std::string>> arguments;  // (context, continuation) per choice; generation:
                                                               // (prompt, "")
  std::vector<double> loglikelihoods;
  std::vector<bool> greedy;
  int prediction = -1;
  int prediction_norm = -1;
  int gold = -1;
  std::string generated;  // generate_until: the raw text and the text the metric compares
  std::string filtered;
  std::map<std::string, double> values;  // "acc", "acc_norm", "exact_match"
};

struct TaskResult {
  std::string name;
  std::map<std::string, Metric> metrics;  // "acc", "acc_norm", "exact_match"
  // MMLU: per subject; the task's own metrics are then the harness's group figure (weighted by subject size).
  std::map<std::string, std::map<std::string, Metric>> subjects;
  std::map<std::string, int64_t> subject_items;
  std::vector<ItemRecord> items;
  double seconds = 0;
};

// Collective over the model's TP group and `dp`; every rank returns the same result.
TaskResult run_task(model::CausalLM& model, const tok::Tokenizer& tokenizer, const Task& task,
                    const TaskRunOptions& options, dist::Communicator& dp);

// The harness's mean and standard error (sample standard deviation / sqrt(n)) of per-item values.
Metric mean_with_stderr(const std::vector<double>& values);

// One line of the harness's --log_samples file for an item.
nlohmann::json sample_json(const TaskSpec& spec, const TaskItem& task_item, const ItemRecord& item);

}  // namespace qforge::eval
