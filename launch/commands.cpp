#include "launch/commands.h"

#include "launch/model_commands.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/log/log.h"
#include "framework/system/system_info.h"
#include "quant/gptq_checkpoint.h"

#include <fmt/format.h>

#include <climits>
#include <cstdio>
#include <filesystem>

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

log::Options log_options(const LogSettings& settings) {
  return log::Options{log::parse_level(settings.level), settings.all_ranks, settings.file};
}

}  // namespace

const std::vector<Command>& all_commands() {
  static const std::vector<Command> commands = [] {
    std::vector<Command> list = {
        {{"env", "print the job's layout (ranks, nodes, TP x DP), libtorch, BLAS, threads, CUDA and NCCL", {}}, run_env},
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
  sys::warn_if_reference_blas();
  for (const auto& command : all_commands()) {
    if (command.spec.name != line.command) continue;
    CommandContext context{runtime, line, config};
    try {
      return command.run(context);
    } catch (const std::exception& e) {
      return report_failure(runtime, e);
    }
  }
  throw Error(fmt::format("command '{}' is declared but has no implementation", line.command));
}

}  // namespace qforge
