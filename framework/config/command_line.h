// `qforge <command> [--config FILE] [--set KEY.PATH=VALUE]... [options]`: the command line shared by all
// commands. Options every command takes are handled here; each command declares its own in a CommandSpec.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace qforge::config {

struct OptionSpec {
  std::string name;  // without the leading "--"
  bool takes_value;
  std::string help;
  std::string config_key = "";  // when set, the option is a shorthand for --set config_key=VALUE
};

struct CommandSpec {
  std::string name;
  std::string summary;
  std::vector<OptionSpec> options;
  std::vector<std::string> positionals = {};  // required positional arguments, in order (e.g. "task")
};

struct CommandLine {
  std::string command;
  std::string config_file;             // empty: defaults only
  std::vector<std::string> overrides;  // "a.b=value", in order; --log-all-ranks and --log-file land here too
  std::map<std::string, std::string> options;  // the command's own options ("true" for flags)
  std::vector<std::string> positionals;
  bool help = false;
};

// Throws UsageError for an unknown command or option, or an option missing its value.
CommandLine parse_command_line(const std::vector<std::string>& args, const std::vector<CommandSpec>& commands);

// The help text: commands, the options they share, and `command`'s own options when it is given.
std::string usage(const std::vector<CommandSpec>& commands, const std::string& command = "");

}  // namespace qforge::config
