// Helpers shared by the test suites.
#pragma once

#include <filesystem>
#include <string>

namespace qforge::test {

// ../shared beside the repository (real models and data), or "" when it is absent.
inline std::string shared_dir() {
  const std::filesystem::path dir = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared";
  return std::filesystem::exists(dir / "README.md") ? dir.string() : std::string();
}

}  // namespace qforge::test

// Skips the current test when ../shared is absent.
#define QF_REQUIRE_SHARED(dir_variable)                                                     \
  const std::string dir_variable = ::qforge::test::shared_dir();                           \
  if (dir_variable.empty()) GTEST_SKIP() << "../shared is absent: real-model test skipped"
