// Per-rank memory of a qforge job, predicted from its config before anything is allocated: `qforge plan` prints
// the terms, and every command logs the total at its start beside the peak it measured at its end. The terms
// follow what the code keeps alive (docs/memory.md): weights as the WeightTable shards them, the trainer's
// gradients, fp32 masters and AdamW moments (ZeRO-1 shards the last over DP), activations with and without
// recomputation, the KV cache, ptq's Hessians and GPTQ working set, and the load/save transients.
#pragma once

#include "framework/model/model_config.h"
#include "launch/qforge_config.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qforge {

enum class PlanStage { kGenerate, kQat, kPtq, kEval };

const std::vector<std::string>& plan_stage_names();  // generate, qat, ptq, eval
PlanStage parse_plan_stage(const std::string& name);  // UsageError for another name
const char* stage_name(PlanStage stage);
// The stage a command runs (generate, qat, ptq, eval); none for the commands that load no model for long.
std::optional<PlanStage> stage_of_command(const std::string& command);

// What a rank holds before any model: libtorch, MPI and the qforge binary. Measured (libtorch 1.13 CPU, Open MPI)
// as the peak RSS `qforge env` logs: 0.18 GB on 1 rank, 0.17-0.18 GB on each of 2; 0.3 GB leaves room for the
// host side of a CUDA context, which was not measured.
inline constexpr int64_t kProcessBaselineBytes = 300'000'000;

struct MemoryTerm {
  std::string name;
  int64_t bytes = 0;  // per rank
  std::string note;
};

struct MemoryPlan {
  PlanStage stage = PlanStage::kEval;
  int tp = 1, dp = 1;
  std::string layout;  // "TP 8 x DP 8, bfloat16, ZeRO-1, recompute"
  int64_t parameters = 0;  // of the whole model, a tied head counted once
  std::vector<MemoryTerm> terms;

  int64_t total() const;
  const MemoryTerm& largest() const;
  // The terms (name, bytes per rank, note) and the total, one line each.
  std::string table() const;
};

// One parameter as CausalLM registers it in its WeightTable (framework/model/parallel.h), without allocating:
// the same names, full shapes and TP split rules (column-parallel: output rows, row-parallel: input columns,
// vocabulary-parallel embedding and head: padded vocabulary rows, the rest replicated).
struct PlannedWeight {
  std::string name;
  std::vector<int64_t> full_shape, local_shape;
  bool replicated = false;
  int64_t local_numel() const;
};
// Every parameter of `model` on one of `tp` ranks, in WeightTable order (a tied head adds none). UsageError
// when tp does not divide the model.
std::vector<PlannedWeight> planned_weights(const model::ModelConfig& model, int tp);

// model.path's config.json when there is one, else the model.architecture preset; UsageError when neither.
model::ModelConfig planned_architecture(const ModelSettings& settings);

// The plan of `stage` for `config` (parallel.tp, train.zero, train.recompute, batch sizes, lengths, dtypes) on
// `ranks` ranks (DP = ranks / tp). UsageError when tp does not divide ranks or the model.
MemoryPlan plan_memory(const QforgeConfig& config, const model::ModelConfig& model, PlanStage stage, int ranks);

// The first layout that fits `limit_bytes` per rank, as the settings to change ("parallel.tp=8
// train.recompute=true on 16 ranks"): the same rank count first (ZeRO-1 and recomputation on, then more TP),
// then more ranks. "" when none up to 4096 ranks does.
std::string suggest_layout(const QforgeConfig& config, const model::ModelConfig& model, PlanStage stage, int ranks,
                           int64_t limit_bytes);

}  // namespace qforge
