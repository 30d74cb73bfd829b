// Log lines tagged with time and rank: "[2026-11-23 14:30:01.123 r2/4] W message". Rank 0 prints by default;
// errors print from every rank; lines go to stderr (stdout carries a command's result); a per-rank file, when
// configured, receives every line of its rank.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace qforge::log {

enum class Level { kDebug, kInfo, kWarn, kError };

// "debug", "info", "warn", "error"; throws UsageError for anything else.
Level parse_level(const std::string& name);

struct Options {
  Level level = Level::kInfo;
  bool all_ranks = false;
  std::string file;  // "{rank}" replaced by the rank; without it ".rank<R>" is appended when size > 1
};

// Rank and size used in tags. Before MPI is up these come from the launcher's environment.
void set_rank(int rank, int size);
// Applies options; opens the per-rank file (throws qforge::Error when it cannot).
void configure(const Options& options);

void write(Level level, std::string_view message);
// The tag written before each line, for the current time.
std::string tag(Level level);

template <typename... Args>
void debug(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::kDebug, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::kInfo, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::kWarn, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> format, Args&&... args) {
  write(Level::kError, fmt::format(format, std::forward<Args>(args)...));
}

// Progress of a long loop, logged (at info level, so on rank 0) at most every `interval_s` seconds and at the
// end: "generate: 250/1000 samples (25.0%), 50.0 samples/s, ETA 15s". Counts are whatever the caller passes
// (a caller that wants job-wide figures reduces them first).
class Progress {
 public:
  using Clock = std::function<double()>;  // seconds, monotonic

  Progress(std::string what, int64_t total, std::string unit, double interval_s = 10.0, Clock clock = {});

  // Sets the count done so far; logs when the interval has passed or the work is complete.
  void update(int64_t done);
  void advance(int64_t count = 1) { update(done_ + count); }

  // Extra text appended to each line, e.g. "81920 tokens, 812 tokens/s".
  void set_detail(std::string detail) { detail_ = std::move(detail); }

  int64_t done() const { return done_; }
  double rate() const;             // units per second since construction
  double eta_seconds() const;      // -1 while the rate is unknown
  std::string status() const;

 private:
  std::string what_;
  std::string unit_;
  std::string detail_;
  int64_t total_;
  int64_t done_ = 0;
  double interval_s_;
  Clock clock_;
  double start_;
  double last_logged_;
  bool finished_logged_ = false;
};

// "45s", "12m05s", "3h07m", "2d04h".
std::string format_duration(double seconds);

}  // namespace qforge::log
