// Config files, --set overrides and the command line: every kind of bad input is one error naming the file
// (or option), the key path and the line.
#include "framework/common/atomic_file.h"
#include "framework/config/command_line.h"
#include "framework/config/config.h"
#include "framework/config/settings.h"
#include "launch/commands.h"
#include "launch/qforge_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace qforge {
namespace {

namespace fs = std::filesystem;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("qforge_config_test_{}", ::getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  // The ConfigError message of loading `text` (with `overrides`), or "" when it loads.
  std::string error_of(const std::string& text, std::vector<std::string> overrides = {}) {
    try {
      config::load<QforgeConfig>(write("c.yaml", text), overrides);
      return "";
    } catch (const config::ConfigError& e) {
      return e.what();
    }
  }

  fs::path dir_;
};

TEST_F(ConfigTest, ValuesOverrideDefaults) {
  auto c = config::load<QforgeConfig>(write("c.yaml", "parallel:\n  tp: 4\nlog:\n  all_ranks: yes\n  level: debug\n"), {});
  EXPECT_EQ(c.parallel.tp, 4);
  EXPECT_TRUE(c.log.all_ranks);
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.runtime.threads, 0);  // default kept
}

TEST_F(ConfigTest, NoFileMeansDefaults) {
  auto c = config::load<QforgeConfig>("", {});
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.log.level, "info");
}

TEST_F(ConfigTest, UnknownKeyNamesFileKeyPathAndLine) {
  std::string e = error_of("log:\n  level: info\nparallel:\n  tp: 2\n  tpp: 3\n");
  EXPECT_EQ(e, (dir_ / "c.yaml").string() + ":5: unknown key 'parallel.tpp' (expected one of: tp)");
}

TEST_F(ConfigTest, UnknownTopLevelSection) {
  std::string e = error_of("parallel:\n  tp: 2\nparalel:\n  tp: 2\n");
  EXPECT_NE(e.find("c.yaml:3: unknown key 'paralel'"), std::string::npos) << e;
}

TEST_F(ConfigTest, WrongTypeNamesWhatWasExpected) {
  EXPECT_NE(error_of("parallel:\n  tp: two\n").find("c.yaml:2: key 'parallel.tp' must be an integer, got 'two'"),
            std::string::npos);
  EXPECT_NE(error_of("parallel:\n  tp: 2.5\n").find("key 'parallel.tp' must be an integer, got '2.5'"), std::string::npos);
  EXPECT_NE(error_of("log:\n  all_ranks: maybe\n").find("c.yaml:2: key 'log.all_ranks' must be true or false"),
            std::string::npos);
  EXPECT_NE(error_of("log:\n  level: [info]\n").find("key 'log.level' must be a string, got 'a list'"), std::string::npos);
  EXPECT_NE(error_of("parallel: 4\n").find("c.yaml:1: key 'parallel' must be a mapping of keys, got '4'"),
            std::string::npos);
}

TEST_F(ConfigTest, ChecksRejectOutOfRangeValues) {
  EXPECT_NE(error_of("parallel:\n  tp: 0\n").find("c.yaml:2: key 'parallel.tp' must be a value >= 1, got '0'"),
            std::string::npos);
  EXPECT_NE(error_of("log:\n  level: loud\n").find("key 'log.level' must be one of: debug, info, warn, error, got 'loud'"),
            std::string::npos);
}

struct NeedsPath {
  std::string path;
  int depth = 1;
  template <class V>
  void visit(V& v) {
    v.required("path", path);
    v("depth", depth);
  }
};
struct RootWithRequired {
  NeedsPath model;
  template <class V>
  void visit(V& v) {
    v("model", model);
  }
};

TEST_F(ConfigTest, MissingRequiredKeyIsNamed) {
  try {
    config::load<RootWithRequired>(write("r.yaml", "model:\n  depth: 2\n"), {});
    FAIL() << "expected a ConfigError";
  } catch (const config::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "r.yaml").string() + ":2: missing required key 'model.path'");
  }
  auto ok = config::load<RootWithRequired>(write("r.yaml", "model:\n  path: /m\n"), {});
  EXPECT_EQ(ok.model.path, "/m");
}

TEST_F(ConfigTest, SyntaxErrorNamesTheLine) {
  std::string e = error_of("parallel:\n  tp: 2\n log: [\n");
  EXPECT_NE(e.find("c.yaml:"), std::string::npos) << e;
  EXPECT_NE(e.find("YAML syntax error"), std::string::npos) << e;
}

TEST_F(ConfigTest, MissingFileIsNamed) {
  try {
    config::load<QforgeConfig>((dir_ / "absent.yaml").string(), {});
    FAIL();
  } catch (const config::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("absent.yaml: cannot open the config file"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigTest, SetOverridesFileValuesAndErrorsNameTheOption) {
  auto c = config::load<QforgeConfig>(write("c.yaml", "parallel:\n  tp: 2\n"), {"parallel.tp=4", "log.file=x.log"});
  EXPECT_EQ(c.parallel.tp, 4);
  EXPECT_EQ(c.log.file, "x.log");
  EXPECT_EQ(error_of("parallel:\n  tp: 2\n", {"parallel.tp=abc"}),
            "--set parallel.tp=abc: key 'parallel.tp' must be an integer, got 'abc'");
  EXPECT_EQ(error_of("", {"parallel.tpx=1"}), "--set parallel.tpx=1: unknown key 'parallel.tpx' (expected one of: tp)");
  EXPECT_NE(error_of("", {"nosuch.section.key=1"}).find("--set nosuch.section.key=1: unknown key 'nosuch'"),
            std::string::npos);
  EXPECT_EQ(error_of("", {"parallel.tp"}), "--set parallel.tp: expected KEY.PATH=VALUE");
  EXPECT_EQ(error_of("", {"parallel..tp=1"}), "--set parallel..tp=1: the key path 'parallel..tp' has an empty part");
}

TEST_F(ConfigTest, ResolvedConfigRoundTrips) {
  auto c = config::load<QforgeConfig>("", {"parallel.tp=8", "log.all_ranks=true", "output.dir=out dir"});
  const std::string out = (dir_ / "run").string();
  config::save_resolved(config::to_yaml(c), out);
  auto again = config::load<QforgeConfig>((dir_ / "run" / config::kResolvedConfigName).string(), {});
  EXPECT_EQ(config::to_yaml(again), config::to_yaml(c));
  EXPECT_EQ(again.parallel.tp, 8);
  EXPECT_EQ(again.output.dir, "out dir");
  for (const auto& entry : fs::directory_iterator(out))  // no temporary left behind
    EXPECT_EQ(entry.path().filename().string(), config::kResolvedConfigName);
}

TEST_F(ConfigTest, AtomicFileLeavesNothingWhenNotCommitted) {
  const std::string path = (dir_ / "out.bin").string();
  {
    AtomicFile file(path);
    std::ofstream(file.temp_path()) << "half";
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
  write_file_atomically(path, "whole");
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "whole");
}

TEST_F(ConfigTest, AtomicDirectoryAppearsOnlyWhenCommitted) {
  const std::string path = (dir_ / "out").string();
  {
    AtomicDirectory out(path, /*owner=*/true);
    EXPECT_EQ(out.temp_path(), (dir_ / ".out.partial").string());
    std::ofstream(out.temp_path() + "/half.bin") << "half";
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);  // nothing left
  {
    AtomicDirectory out(path, true);
    std::ofstream(out.temp_path() + "/a.txt") << "new";
    EXPECT_FALSE(fs::exists(path));
    out.commit();
  }
  EXPECT_TRUE(fs::exists(path + "/a.txt"));
  std::ofstream(path + "/keep.txt") << "other";
  {
    AtomicDirectory out(path + "/", true);  // into an existing directory: each entry replaces its namesake
    std::ofstream(out.temp_path() + "/a.txt") << "newer";
    out.commit();
  }
  std::ifstream in(path + "/a.txt");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), "newer");
  EXPECT_TRUE(fs::exists(path + "/keep.txt"));
  EXPECT_FALSE(fs::exists(dir_ / ".out.partial"));
}

TEST_F(ConfigTest, DuplicateKeysNameFileKeyAndBothLines) {
  EXPECT_EQ(error_of("log:\n  level: info\n  level: debug\n"),
            (dir_ / "c.yaml").string() + ":3: duplicate key 'log.level' (first at line 2); write each key once");
  EXPECT_NE(error_of("train:\n  lr: 1\nlog: {}\ntrain:\n  lr: 2\n").find(":4: duplicate key 'train' (first at line 1)"),
            std::string::npos);
  fs::create_directories(dir_ / "d.yaml");
  try {
    config::load<QforgeConfig>((dir_ / "d.yaml").string(), {});
    FAIL();
  } catch (const config::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), (dir_ / "d.yaml").string() + ": is a directory; expected a YAML config file");
  }
}

TEST_F(ConfigTest, AliasesReadTheAnchoredValueAndOverridesDoNotWriteThroughThem) {
  const std::string text = "parallel:\n  tp: &n 4\nruntime:\n  threads: *n\n";
  auto c = config::load<QforgeConfig>(write("c.yaml", text), {});
  EXPECT_EQ(c.parallel.tp, 4);
  EXPECT_EQ(c.runtime.threads, 4);
  c = config::load<QforgeConfig>(write("c.yaml", text), {"parallel.tp=2"});
  EXPECT_EQ(c.parallel.tp, 2);
  EXPECT_EQ(c.runtime.threads, 4);  // the anchor's other alias keeps the file's value
  c = config::load<QforgeConfig>(write("c.yaml", "log: &l\n  level: debug\n"), {"log.file=x.log", "parallel.tp=1"});
  EXPECT_EQ(c.log.level, "debug");  // an override of one key keeps the section's others
  EXPECT_EQ(c.log.file, "x.log");
  EXPECT_EQ(c.parallel.tp, 1);
}

TEST_F(ConfigTest, AnAliasInsideItsOwnAnchorIsNamedAndNestedAliasesAreCheckedOnce) {
  EXPECT_EQ(error_of("log: {}\nlists: &a\n  more: *a\n"),
            (dir_ / "c.yaml").string() +
                ":2: 'lists.more' is an alias of a node that contains it; a config must "
                "not contain itself");
  // Ten levels of ten aliases each name 10^10 leaves: walked alias by alias this would not finish.
  std::string text = "a: &a0 [1, 2]\n";
  for (int level = 1; level <= 10; ++level) {
    const std::string previous = fmt::format("*a{}", level - 1);
    text += fmt::format("a{}: &a{} [{}]\n", level, level, fmt::join(std::vector<std::string>(10, previous), ", "));
  }
  EXPECT_NE(error_of(text).find("c.yaml:1: unknown key 'a'"), std::string::npos) << error_of(text);
  EXPECT_NE(error_of("log: {level: &x debug}\nparallel: {tp: 2}\nlog: {level: *x}\n").find("duplicate key 'log'"),
            std::string::npos);
}

TEST_F(ConfigTest, OptimizerRangesNameTheKey) {
  EXPECT_EQ(error_of("", {"train.beta1=1.5"}), "--set train.beta1=1.5: key 'train.beta1' must be in [0, 1), got '1.5'");
  EXPECT_NE(error_of("", {"train.beta2=1"}).find("key 'train.beta2' must be in [0, 1)"), std::string::npos);
  EXPECT_NE(error_of("", {"train.eps=0"}).find("key 'train.eps' must be a finite number > 0"), std::string::npos);
  EXPECT_NE(error_of("", {"train.lr=.nan"}).find("key 'train.lr' must be a finite number > 0"), std::string::npos);
  EXPECT_EQ(error_of("", {"train.beta1=0", "train.beta2=0.95", "train.eps=1e-6", "train.lr=3e-4"}), "");
}

// ---- command line ----------------------------------------------------------------------------------------

TEST(CommandLine, SharedOptionsBecomeOverrides) {
  auto line = config::parse_command_line(
      {"env", "--config", "a.yaml", "--set", "parallel.tp=2", "--set=runtime.threads=3", "--log-all-ranks",
       "--log-file", "q.{rank}.log"},
      command_specs());
  EXPECT_EQ(line.command, "env");
  EXPECT_EQ(line.config_file, "a.yaml");
  EXPECT_EQ(line.overrides, (std::vector<std::string>{"parallel.tp=2", "runtime.threads=3", "log.all_ranks=true",
                                                      "log.file=q.{rank}.log"}));
  EXPECT_FALSE(line.help);
}

TEST(CommandLine, BadInputIsAUsageError) {
  auto message = [](std::vector<std::string> args) {
    try {
      config::parse_command_line(args, command_specs());
      return std::string();
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
  };
  EXPECT_EQ(message({"frobnicate"}).rfind("unknown command 'frobnicate'; commands: env", 0), 0u);
  EXPECT_EQ(message({"env", "--bogus"}), "qforge env: unknown option '--bogus' (see qforge env --help)");
  EXPECT_EQ(message({"env", "--config"}), "qforge env: option '--config' needs a value");
  EXPECT_EQ(message({"env", "stray"}), "qforge env: unexpected argument 'stray'");
  EXPECT_EQ(message({"env", "--log-all-ranks=yes"}), "qforge env: option '--log-all-ranks' takes no value");
  EXPECT_NE(message({}).find("no command given"), std::string::npos);
}

TEST(CommandLine, HelpListsCommandsAndOptions) {
  auto line = config::parse_command_line({"env", "--help"}, command_specs());
  EXPECT_TRUE(line.help);
  std::string text = config::usage(command_specs(), "env");
  EXPECT_NE(text.find("env "), std::string::npos);
  EXPECT_NE(text.find("--set VALUE"), std::string::npos);
}

}  // namespace
}  // namespace qforge
