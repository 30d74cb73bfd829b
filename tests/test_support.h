// Helpers shared by the test suites.
#pragma once

#include "framework/common/error.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace qforge::test {

// The message of the qforge::Error `body` throws ("" and a test failure when it throws nothing).
template <typename Body>
std::string error_of(Body body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no qforge::Error was thrown";
  return "";
}

// ../shared beside the repository (real models and data), or "" when it is absent.
inline std::string shared_dir() {
  const std::filesystem::path dir = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared";
  return std::filesystem::exists(dir / "README.md") ? dir.string() : std::string();
}

struct CommandResult {
  int status = -1;  // exit status; -1 when the command could not run or did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell (for independent references under /usr/bin/python3).
inline CommandResult run_command(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  size_t got;
  while ((got = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, got);
  const int status = ::pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// A file's bytes, and a file made of `bytes` (for tests that damage files).
inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The names of the entries of `dir` (to check that nothing, e.g. a temporary, was left behind).
inline std::set<std::string> files_in(const std::filesystem::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

// A fixture with a fresh directory per test (named by the suite and the pid), removed after it.
class ScratchFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("qforge_" + std::string(::testing::UnitTest::GetInstance()->current_test_suite()->name()) + "_" +
            std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `bytes` to `name` under the directory (creating its parents) and returns the path.
  std::string write(const std::string& name, const std::string& bytes) {
    const std::filesystem::path path = dir_ / name;
    std::filesystem::create_directories(path.parent_path());
    write_bytes(path, bytes);
    return path.string();
  }

  std::filesystem::path dir_;
};

// `path` single-quoted for the shell.
inline std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

}  // namespace qforge::test

// Skips the current test when ../shared is absent.
#define QF_REQUIRE_SHARED(dir_variable)                                                     \
  const std::string dir_variable = ::qforge::test::shared_dir();                           \
  if (dir_variable.empty()) GTEST_SKIP() << "../shared is absent: real-model test skipped"
