#include "framework/log/log.h"

#include "framework/common/error.h"
#include "framework/dist/runtime.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

namespace qforge::log {
namespace {

struct State {
  std::mutex mutex;
  int rank = -1;  // -1: not set yet, read from the launcher's environment on first use
  int size = 1;
  Options options;
  std::ofstream file;
};

State& state() {
  static State s;
  return s;
}

void ensure_rank(State& s) {
  if (s.rank >= 0) return;
  dist::LaunchEnv env = dist::launch_env_from_environment();
  s.rank = env.rank;
  s.size = env.size;
}

char level_letter(Level level) {
  switch (level) {
    case Level::kDebug: return 'D';
    case Level::kInfo: return 'I';
    case Level::kWarn: return 'W';
    case Level::kError: return 'E';
  }
  return '?';
}

std::string file_name_for_rank(const std::string& pattern, int rank, int size) {
  std::string name = pattern;
  const std::string placeholder = "{rank}";
  if (std::size_t at = name.find(placeholder); at != std::string::npos) return name.replace(at, placeholder.size(), std::to_string(rank));
  return size > 1 ? fmt::format("{}.rank{}", name, rank) : name;
}

std::string tag_locked(const State& s, Level level) {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const std::time_t seconds = system_clock::to_time_t(now);
  const int millis = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm local{};
  localtime_r(&seconds, &local);
  char clock[32];
  std::strftime(clock, sizeof clock, "%Y-%m-%d %H:%M:%S", &local);
  return fmt::format("[{}.{:03d} r{}/{}] {}", clock, millis, s.rank, s.size, level_letter(level));
}

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Level parse_level(const std::string& name) {
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warn") return Level::kWarn;
  if (name == "error") return Level::kError;
  throw UsageError(fmt::format("unknown log level '{}' (expected debug, info, warn or error)", name));
}

void set_rank(int rank, int size) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.rank = rank;
  s.size = size;
}

void configure(const Options& options) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  ensure_rank(s);
  s.options = options;
  if (s.file.is_open()) s.file.close();
  if (options.file.empty()) return;
  const std::string name = file_name_for_rank(options.file, s.rank, s.size);
  std::error_code ignored;
  if (auto parent = std::filesystem::path(name).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent, ignored);
  s.file.open(name, std::ios::app);
  if (!s.file) throw Error(fmt::format("log.file: cannot open '{}' for writing", name));
}

std::string tag(Level level) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  ensure_rank(s);
  return tag_locked(s, level);
}

void write(Level level, std::string_view message) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  ensure_rank(s);
  if (level < s.options.level) return;
  const std::string line = fmt::format("{} {}\n", tag_locked(s, level), message);
  if (s.file.is_open()) s.file << line << std::flush;
  const bool to_console = s.rank == 0 || s.options.all_ranks || level == Level::kError;
  if (to_console) {
    std::fputs(line.c_str(), stderr);  // stdout is kept for what a command prints as its result
    std::fflush(stderr);
  }
}

// ---- Progress ---------------------------------------------------------------------------------------------

Progress::Progress(std::string what, int64_t total, std::string unit, double interval_s, Clock clock)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      interval_s_(interval_s),
      clock_(clock ? std::move(clock) : Clock(steady_seconds)),
      start_(clock_()),
      last_logged_(start_) {}

void Progress::update(int64_t done) {
  done_ = done;
  const double now = clock_();
  const bool complete = done_ >= total_;
  if (complete && !finished_logged_) {
    finished_logged_ = true;
  } else if (complete || now - last_logged_ < interval_s_) {
    return;
  }
  last_logged_ = now;
  info("{}", status());
}

double Progress::rate() const {
  const double elapsed = clock_() - start_;
  return elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
}

double Progress::eta_seconds() const {
  const double r = rate();
  if (r <= 0) return -1;
  return static_cast<double>(std::max<int64_t>(total_ - done_, 0)) / r;
}

std::string Progress::status() const {
  const double percent = total_ > 0 ? 100.0 * static_cast<double>(done_) / static_cast<double>(total_) : 100.0;
  std::string text = fmt::format("{}: {}/{} {} ({:.1f}%), {:.1f} {}/s", what_, done_, total_, unit_, percent,
                                 rate(), unit_);
  if (!detail_.empty()) text += ", " + detail_;
  if (done_ >= total_) return text + fmt::format(", done in {}", format_duration(clock_() - start_));
  const double eta = eta_seconds();
  return text + (eta < 0 ? ", ETA unknown" : fmt::format(", ETA {}", format_duration(eta)));
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(seconds, 0.0)));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02d}h", s / 86400, (s % 86400) / 3600);
}

}  // namespace qforge::log
