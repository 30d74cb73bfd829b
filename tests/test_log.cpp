// Log tags, per-rank log files and the progress helper (driven by a fake clock).
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/log/log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>

namespace qforge::log {
namespace {

TEST(Log, TagCarriesTimeRankAndLevel) {
  const auto& rt = *dist::Runtime::current();
  set_rank(rt.rank(), rt.size());
  const std::string t = tag(Level::kWarn);
  EXPECT_TRUE(std::regex_match(t, std::regex(R"(\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} r\d+/\d+\] W)"))) << t;
  EXPECT_NE(t.find(fmt::format(" r{}/{}]", rt.rank(), rt.size())), std::string::npos) << t;
}

TEST(Log, PerRankFileGetsEveryLineOfItsRank) {
  const auto& rt = *dist::Runtime::current();
  set_rank(rt.rank(), rt.size());
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("qforge_log_test_{}", ::getpid());
  std::filesystem::create_directories(dir);
  configure(Options{Level::kDebug, false, (dir / "run.{rank}.log").string()});
  debug("hello from rank {}", rt.rank());
  configure(Options{});
  std::ifstream in(dir / fmt::format("run.{}.log", rt.rank()));
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_NE(line.find(fmt::format("D hello from rank {}", rt.rank())), std::string::npos) << line;
  std::filesystem::remove_all(dir);
}

TEST(Log, UnknownLevelIsAUsageError) {
  EXPECT_EQ(parse_level("warn"), Level::kWarn);
  EXPECT_THROW(parse_level("loud"), UsageError);
}

TEST(Progress, RateAndEtaFollowTheClock) {
  double now = 100.0;
  Progress progress("generate", 1000, "samples", 10.0, [&now] { return now; });
  EXPECT_EQ(progress.eta_seconds(), -1);
  now = 105.0;
  progress.update(250);
  EXPECT_DOUBLE_EQ(progress.rate(), 50.0);
  EXPECT_DOUBLE_EQ(progress.eta_seconds(), 15.0);
  EXPECT_EQ(progress.status(), "generate: 250/1000 samples (25.0%), 50.0 samples/s, ETA 15s");
  now = 120.0;
  progress.advance(750);
  EXPECT_EQ(progress.status(), "generate: 1000/1000 samples (100.0%), 50.0 samples/s, done in 20s");
}

TEST(Progress, DurationsReadAsAPersonWouldWriteThem) {
  EXPECT_EQ(format_duration(45.4), "45s");
  EXPECT_EQ(format_duration(725), "12m05s");
  EXPECT_EQ(format_duration(3 * 3600 + 7 * 60 + 30), "3h07m");
  EXPECT_EQ(format_duration(2 * 86400 + 4 * 3600), "2d04h");
}

}  // namespace
}  // namespace qforge::log
