// qforge plan: the per-rank memory of a job before it runs (launch/memory_plan.h), for a checkpoint on disk
// (model.path) or a published architecture (model.architecture). One process plans any rank count (--ranks).
#include "launch/commands.h"
#include "launch/memory_plan.h"

#include "framework/common/error.h"
#include "framework/system/memory.h"

#include <fmt/format.h>

#include <cstdio>

namespace qforge {
namespace {

std::string option(const CommandContext& context, const std::string& name) {
  auto it = context.line.options.find(name);
  return it == context.line.options.end() ? std::string() : it->second;
}

double positive_number(const CommandContext& context, const std::string& name, double fallback) {
  const std::string text = option(context, name);
  if (text.empty()) return fallback;
  try {
    std::size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size() && value > 0) return value;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("qforge plan: --{} must be a positive number, got '{}'", name, text));
}

int run_plan(CommandContext& context) {
  const QforgeConfig& c = context.config;
  const model::ModelConfig model = planned_architecture(c.model);
  const std::string name = option(context, "stage");
  std::vector<PlanStage> stages;
  if (name.empty() || name == "all") {
    for (const std::string& stage : plan_stage_names()) stages.push_back(parse_plan_stage(stage));
  } else {
    stages.push_back(parse_plan_stage(name));
  }
  const double ranks_value = positive_number(context, "ranks", c.parallel.tp);
  const int ranks = static_cast<int>(ranks_value);
  if (ranks != ranks_value)
    throw UsageError(fmt::format("qforge plan: --ranks must be an integer, got {}", ranks_value));
  const double limit_gb = positive_number(context, "mem-per-rank", 0);
  const auto limit = static_cast<int64_t>(limit_gb * 1e9);
  const std::string what = c.model.architecture.empty() ? c.model.path : c.model.architecture;

  std::string report, error;
  for (PlanStage stage : stages) {
    const MemoryPlan plan = plan_memory(c, model, stage, ranks);
    report += fmt::format("{} of {} ({} parameters) on {} ranks: {}\n{}\n", stage_name(stage), what,
                          plan.parameters, ranks, plan.layout, plan.table());
    if (limit == 0 || plan.total() <= limit || !error.empty()) continue;
    const MemoryTerm& largest = plan.largest();
    const std::string fix = suggest_layout(c, model, stage, ranks, limit);
    error = fmt::format("the {} plan ({}) needs {} per rank, more than --mem-per-rank {} GB; its largest term is "
                        "{} ({}): {}", stage_name(stage), plan.layout, sys::bytes_text(plan.total()), limit_gb,
                        largest.name, sys::bytes_text(largest.bytes),
                        fix.empty() ? "no layout up to 4096 ranks fits" : "try " + fix);
  }
  if (context.runtime.rank() == 0) {
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);
  }
  if (!error.empty()) throw Error(error);
  return 0;
}

}  // namespace

Command plan_command() {
  return {{"plan",
           "per-rank memory of a job before it runs: plan --config FILE [--stage generate|qat|ptq|eval] [--ranks N] "
           "[--mem-per-rank GB]",
           {{"stage", true, "generate, qat, ptq or eval (default: all four)"},
            {"ranks", true, "ranks of the job (default: parallel.tp, one replica)"},
            {"mem-per-rank", true, "fail, naming the largest term and a layout that fits, above this many GB"},
            {"model", true, "Hugging Face checkpoint directory (its config.json)", "model.path"},
            {"architecture", true, "a published architecture, e.g. llama-65b", "model.architecture"}}},
          run_plan};
}

}  // namespace qforge
