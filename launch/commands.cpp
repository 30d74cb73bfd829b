#include "launch/commands.h"

#include "launch/memory_plan.h"
#include "launch/model_commands.h"
#include "launch/pipeline.h"

#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
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
#include <thread>

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

// runtime.threads: 0 (the node's cores shared among its ranks) up to 4 threads per hardware thread; more only
// oversubscribes the node (100000 would start that many threads in every rank).
void check_threads(const RuntimeSettings& settings) {
  const int hardware = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (settings.threads > 4 * hardware)
    throw UsageError(fmt::format("runtime.threads = {} is out of range: expected 0..{} (0: the node's {} hardware "
                                 "threads shared among its ranks; at most 4 x {})", settings.threads, 4 * hardware,
                                 hardware, hardware));
}

// The first key path where two resolved configs differ, with both values; "" when none.
std::string first_difference(const YAML::Node& mine, const YAML::Node& theirs, const std::string& prefix,
                             std::string& my_value, std::string& their_value) {
  if (mine.IsMap() && theirs.IsMap()) {
    for (auto it = theirs.begin(); it != theirs.end(); ++it) {
      const std::string key = it->first.Scalar();
      std::string path = first_difference(mine[key], it->second, prefix + key + ".", my_value, their_value);
      if (!path.empty()) return path;
    }
    for (auto it = mine.begin(); it != mine.end(); ++it)
      if (!theirs[it->first.Scalar()].IsDefined()) {
        my_value = YAML::Dump(it->second), their_value = "(none)";
        return prefix + it->first.Scalar();
      }
    return "";
  }
  const std::string a = mine.IsDefined() ? YAML::Dump(mine) : "(none)";
  const std::string b = theirs.IsDefined() ? YAML::Dump(theirs) : "(none)";
  if (a == b) return "";
  my_value = a, their_value = b;
  return prefix.empty() ? prefix : prefix.substr(0, prefix.size() - 1);
}

// The command as every rank must run it: the command, its positional arguments and its own options (options that
// set config keys, --set and --config are compared through the resolved config, which names the key).
std::string command_text(const config::CommandLine& line) {
  std::string text = "qforge " + (line.command.empty() ? std::string("--help") : line.command);
  for (const std::string& positional : line.positionals) text += " " + positional;
  for (const auto& [name, value] : line.options) text += " --" + name + (value == "true" ? "" : " " + value);
  return text + (line.help && !line.command.empty() ? " --help" : "");
}

// Ranks launched with different commands or configs would wait forever in mismatched collectives or mix shards:
// every rank hashes its command and resolved config, and the minimum and maximum of the hashes are compared
// (one all-reduce). On a mismatch rank 0's command and config are broadcast and each other rank names what differs.
// Collective; returns false (the lowest differing rank has printed one error) when the ranks differ.
bool same_job_on_every_rank(dist::Runtime& runtime, const config::CommandLine& line, const QforgeConfig& c) {
  if (runtime.size() == 1) return true;
  const std::string command = command_text(line);
  const std::string yaml = config::to_yaml(c);
  const auto hash = static_cast<int64_t>(fnv1a64(yaml, fnv1a64(command)));
  torch::Tensor extremes = torch::tensor({hash, ~hash}, torch::kLong);  // min(~x) = ~max(x)
  runtime.world().all_reduce(extremes, dist::ReduceOp::kMin);
  if (extremes[0].item<int64_t>() == ~extremes[1].item<int64_t>()) return true;
  const std::string mine = command + '\n' + yaml;
  const std::string theirs = runtime.world().broadcast_text(mine, 0);
  const std::string rank0_command = theirs.substr(0, theirs.find('\n'));
  std::string error;
  if (rank0_command != command) {
    error = fmt::format("rank {} runs '{}' but rank 0 runs '{}': every rank of a job must run the same command",
                        runtime.rank(), command, rank0_command);
  } else if (mine != theirs) {
    std::string my_value, their_value;
    const std::string key = first_difference(YAML::Load(yaml), YAML::Load(theirs.substr(theirs.find('\n') + 1)), "",
                                             my_value, their_value);
    error = fmt::format("config key '{}' is {} on rank {} but {} on rank 0: every rank of a job must resolve the same "
                        "config", key, my_value, runtime.rank(), their_value);
  }
  all_ranks_succeeded(runtime, error);
  return false;
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
        pipeline_command(),
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
      check_threads(config.runtime);
      log::configure(log_options(config.log));
    }
  } catch (const Error& e) {
    error = e.what();
  }
  if (!all_ranks_succeeded(runtime, error)) return 2;
  if (!same_job_on_every_rank(runtime, line, config)) return 2;
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
