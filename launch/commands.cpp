#include "launch/commands.h"

#include "launch/memory_plan.h"
#include "launch/model_commands.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/system/memory.h"
#include "framework/system/system_info.h"
#include "quant/gptq_checkpoint.h"
#include "rptq/rptq_checkpoint.h"

#include <fmt/format.h>

#include <climits>
#include <cstdio>
#include <filesystem>

#ifdef QFORGE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace qforge {
namespace {

// How long a failing rank waits for the others to fail too before it aborts the job.
constexpr double kFailureAgreementSeconds = 5.0;

int run_env(CommandContext& context) {
  dist::Grid grid(context.runtime, context.config.parallel.tp);
  const std::string report = sys::describe_environment(context.runtime, grid);
  if (context.runtime.rank() != 0) return 0;
  std::fputs(report.c_str(), stdout);
  std::fflush(stdout);
  if (!context.config.output.dir.empty()) {
    write_file_atomically((std::filesystem::path(context.config.output.dir) / "env.txt").string(), report);
    config::save_resolved(config::to_yaml(context.config), context.config.output.dir);
    log::info("wrote env.txt and {} to {}", config::kResolvedConfigName, context.config.output.dir);
  }
  return 0;
}

// Whether every rank succeeded; when not, the lowest failing rank prints its message. Collective.
bool all_ranks_succeeded(dist::Runtime& runtime, const std::string& error) {
  torch::Tensor failed_rank = torch::tensor({error.empty() ? INT_MAX : runtime.rank()}, torch::kInt32);
  runtime.world().all_reduce(failed_rank, dist::ReduceOp::kMin);
  const int first = failed_rank.item<int>();
  if (first == INT_MAX) return true;
  if (first == runtime.rank()) std::fprintf(stderr, "qforge: error: %s\n", error.c_str());
  return false;
}

// An error every rank hit (a bad file, a TP size the model cannot use) is printed once and the job ends
// normally; an error on some ranks only names its rank and aborts the job, so no rank waits forever.
int report_failure(dist::Runtime& runtime, const std::exception& error) {
  const int code = dynamic_cast<const UsageError*>(&error) ? 2 : 1;
  const int first = runtime.size() == 1 ? runtime.rank() : runtime.agree_on_failure(kFailureAgreementSeconds);
  if (first >= 0) {
    if (first == runtime.rank()) std::fprintf(stderr, "qforge: error: %s\n", error.what());
    return code;
  }
  std::fprintf(stderr, "qforge: error on rank %d of %d: %s\n", runtime.rank(), runtime.size(), error.what());
  std::fflush(stderr);
  runtime.abort(code);
}

// The per-rank total `qforge plan` predicts for the command's stage, before it runs. Nothing for commands
// without a stage, or when the model's architecture cannot be read: the command itself reports that.
void log_memory_plan(const CommandContext& context) {
  const auto stage = stage_of_command(context.line.command);
  if (!stage) return;
  try {
    const MemoryPlan plan =
        plan_memory(context.config, planned_architecture(context.config.model), *stage, context.runtime.size());
    log::info("memory plan: {} per rank predicted on {} (largest term: {}, {}); `qforge plan` lists the terms",
              sys::bytes_text(plan.total()), plan.layout, plan.largest().name, sys::bytes_text(plan.largest().bytes));
  } catch (const Error& e) {
    log::debug("no memory plan: {}", e.what());
  }
}

// "max X (rank r), min Y (rank s)" of one value per rank, gathered on every rank. Collective.
std::string spread_over_ranks(dist::Runtime& runtime, int64_t value) {
  const torch::Tensor all = runtime.world().all_gather(torch::tensor({value}, torch::kLong), 0);
  const int64_t max_rank = all.argmax().item<int64_t>(), min_rank = all.argmin().item<int64_t>();
  return fmt::format("max {} (rank {}), min {} (rank {})", sys::bytes_text(all[max_rank].item<int64_t>()), max_rank,
                     sys::bytes_text(all[min_rank].item<int64_t>()), min_rank);
}

// What the command measured, beside the plan logged at its start. Collective.
void log_peak_memory(const CommandContext& context) {
  log::info("peak RSS per rank: {}", spread_over_ranks(context.runtime, sys::peak_rss_bytes()));
#ifdef QFORGE_WITH_CUDA
  if (context.config.model.device == "cuda" && torch::cuda::is_available()) {
    const int device = context.runtime.local_rank() % static_cast<int>(torch::cuda::device_count());
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    const auto aggregate = static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE);
    log::info("peak CUDA memory allocated per rank: {}",
              spread_over_ranks(context.runtime, stats.allocated_bytes[aggregate].peak));
  }
#endif
}

log::Options log_options(const LogSettings& settings) {
  return log::Options{log::parse_level(settings.level), settings.all_ranks, settings.file};
}

}  // namespace

const std::vector<Command>& all_commands() {
  static const std::vector<Command> commands = [] {
    std::vector<Command> list = {
        {{"env", "print the job's layout (ranks, nodes, TP x DP), libtorch, BLAS, threads, CUDA and NCCL", {}}, run_env},
        plan_command(),
    };
    for (Command& command : model_commands()) list.push_back(std::move(command));
    return list;
  }();
  return commands;
}

std::vector<config::CommandSpec> command_specs() {
  std::vector<config::CommandSpec> specs;
  for (const auto& command : all_commands()) specs.push_back(command.spec);
  return specs;
}

int run_qforge(dist::Runtime& runtime, const std::vector<std::string>& args) {
  config::CommandLine line;
  QforgeConfig config;
  std::string error;
  try {
    line = config::parse_command_line(args, command_specs());
    if (!line.help) {
      config = config::load<QforgeConfig>(line.config_file, line.overrides);
      log::configure(log_options(config.log));
    }
  } catch (const Error& e) {
    error = e.what();
  }
  if (!all_ranks_succeeded(runtime, error)) return 2;
  if (line.help) {
    if (runtime.rank() == 0) std::fputs(config::usage(command_specs(), line.command).c_str(), stdout);
    return 0;
  }

  sys::configure_threads(config.runtime.threads, runtime.local_size());
  quant::register_gptq_reader();  // load_pretrained then reads GPTQ checkpoints
  rptq::register_rptq_reader();   // and RPTQ's
  sys::warn_if_reference_blas();
  for (const auto& command : all_commands()) {
    if (command.spec.name != line.command) continue;
    CommandContext context{runtime, line, config};
    try {
      log_memory_plan(context);
      const int code = command.run(context);
      log_peak_memory(context);
      return code;
    } catch (const std::exception& e) {
      return report_failure(runtime, e);
    }
  }
  throw Error(fmt::format("command '{}' is declared but has no implementation", line.command));
}

}  // namespace qforge
