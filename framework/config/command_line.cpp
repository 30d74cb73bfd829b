#include "framework/config/command_line.h"

#include "framework/common/error.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <optional>

namespace qforge::config {
namespace {

const std::vector<OptionSpec>& common_options() {
  static const std::vector<OptionSpec> options = {
      {"config", true, "YAML config file (defaults for every key it leaves out)"},
      {"set", true, "override one config key, e.g. --set parallel.tp=2 (repeatable)"},
      {"log-all-ranks", false, "print log lines from every rank, not only rank 0 (= --set log.all_ranks=true)"},
      {"log-file", true, "also write each rank's log to PATH ({rank} is replaced) (= --set log.file=PATH)"},
      {"help", false, "print this help"},
  };
  return options;
}

const OptionSpec* find_option(const std::vector<OptionSpec>& options, const std::string& name) {
  for (const auto& option : options)
    if (option.name == name) return &option;
  return nullptr;
}

const CommandSpec* find_command(const std::vector<CommandSpec>& commands, const std::string& name) {
  for (const auto& command : commands)
    if (command.name == name) return &command;
  return nullptr;
}

std::string command_names(const std::vector<CommandSpec>& commands) {
  std::vector<std::string> names;
  for (const auto& command : commands) names.push_back(command.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

// A command-line value as a YAML string, so that text such as "a: b" stays text.
std::string yaml_quoted(const std::string& value) {
  YAML::Emitter out;
  out << YAML::DoubleQuoted << value;
  return out.c_str();
}

void apply_common(CommandLine& line, const std::string& name, const std::string& value) {
  if (name == "config") line.config_file = value;
  else if (name == "set") line.overrides.push_back(value);
  else if (name == "log-all-ranks") line.overrides.push_back("log.all_ranks=true");
  else if (name == "log-file") line.overrides.push_back("log.file=" + value);
  else if (name == "help") line.help = true;
}

}  // namespace

CommandLine parse_command_line(const std::vector<std::string>& args, const std::vector<CommandSpec>& commands) {
  CommandLine line;
  if (args.empty()) throw UsageError(fmt::format("no command given; commands: {}", command_names(commands)));
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    line.help = true;
    return line;
  }
  const CommandSpec* command = find_command(commands, args[0]);
  if (!command)
    throw UsageError(fmt::format("unknown command '{}'; commands: {}", args[0], command_names(commands)));
  line.command = command->name;

  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h") {
      line.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      if (line.positionals.size() >= command->positionals.size())
        throw UsageError(fmt::format("qforge {}: unexpected argument '{}'", line.command, arg));
      line.positionals.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (std::size_t equals = name.find('='); equals != std::string::npos) {
      inline_value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    const OptionSpec* common = find_option(common_options(), name);
    const OptionSpec* spec = common ? common : find_option(command->options, name);
    if (!spec)
      throw UsageError(fmt::format("qforge {}: unknown option '--{}' (see qforge {} --help)", line.command, name,
                                   line.command));
    std::string value = "true";
    if (spec->takes_value) {
      if (inline_value) value = *inline_value;
      else if (i + 1 < args.size()) value = args[++i];
      else throw UsageError(fmt::format("qforge {}: option '--{}' needs a value", line.command, name));
    } else if (inline_value) {
      throw UsageError(fmt::format("qforge {}: option '--{}' takes no value", line.command, name));
    }
    if (common) apply_common(line, name, value);
    else if (!spec->config_key.empty()) line.overrides.push_back(spec->config_key + "=" + yaml_quoted(value));
    else line.options[name] = value;
  }
  if (!line.help && line.positionals.size() < command->positionals.size())
    throw UsageError(fmt::format("qforge {}: missing the {} argument (see qforge {} --help)", line.command,
                                 command->positionals[line.positionals.size()], line.command));
  return line;
}

std::string usage(const std::vector<CommandSpec>& commands, const std::string& command) {
  std::string text = "usage: qforge <command> [--config FILE] [--set KEY.PATH=VALUE]... [options]\n\ncommands:\n";
  for (const auto& c : commands) {
    std::string synopsis = c.name;
    for (const auto& p : c.positionals) synopsis += " <" + p + ">";
    text += fmt::format("  {:<16} {}\n", synopsis, c.summary);
  }
  auto list = [&text](const std::vector<OptionSpec>& options) {
    for (const auto& o : options)
      text += fmt::format("  --{:<22} {}\n", o.name + (o.takes_value ? " VALUE" : ""), o.help);
  };
  text += "\noptions of every command:\n";
  list(common_options());
  if (const CommandSpec* c = find_command(commands, command); c && !c->options.empty()) {
    text += fmt::format("\noptions of qforge {}:\n", c->name);
    list(c->options);
  }
  return text;
}

}  // namespace qforge::config
