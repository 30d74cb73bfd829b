// The qforge commands. Each gets the running MPI runtime, its parsed command line and the resolved config.
#pragma once

#include "framework/config/command_line.h"
#include "framework/dist/runtime.h"
#include "launch/qforge_config.h"

#include <functional>
#include <vector>

namespace qforge {

struct CommandContext {
  dist::Runtime& runtime;
  const config::CommandLine& line;
  const QforgeConfig& config;
  // Where output.dir's files go while a StagedOutput (model_commands.h) holds them back; empty: output.dir itself.
  std::string output_stage = {};
};

struct Command {
  config::CommandSpec spec;
  std::function<int(CommandContext&)> run;  // returns the process exit code
};

const std::vector<Command>& all_commands();
Command plan_command();  // plan_command.cpp
std::vector<config::CommandSpec> command_specs();

// Runs `qforge` with its arguments (argv[0] excluded) inside an initialised runtime; returns the exit code.
// Bad input shared by all ranks (command line, config) is reported once, by one rank, and gives exit code 2.
int run_qforge(dist::Runtime& runtime, const std::vector<std::string>& args);

}  // namespace qforge
