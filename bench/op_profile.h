// Self time per libtorch operator, for "where does the step go" tables: a RecordFunction observer keeps a stack per
// thread and charges each operator its own time, its children's subtracted (autograd's backward nodes included,
// under their own names) and its inclusive time. Active between start() and stop(); print() writes the largest.
#pragma once

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace qforge::bench {

class OpProfile {
 public:
  void start() {
    totals().clear();
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(enter, leave));
  }
  void stop() { at::removeCallback(handle_); }

  // Seconds inside the named operators (inclusive), summed over threads.
  double seconds_in(std::initializer_list<const char*> names) const {
    int64_t ns = 0;
    for (const char* name : names) {
      auto it = totals().find(name);
      if (it != totals().end()) ns += it->second.total_ns;
    }
    return static_cast<double>(ns) * 1e-9;
  }

  // The `top` operators by self time, with their share of `wall_s` (the observed steps' wall time).
  void print(FILE* out, double wall_s, size_t top) const {
    std::vector<std::pair<std::string, Entry>> rows(totals().begin(), totals().end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
    double listed = 0;
    std::fprintf(out, "%-60s %10s %8s %8s %10s\n", "operator (self time)", "ms", "share", "calls", "incl. ms");
    for (size_t i = 0; i < rows.size() && i < top; ++i) {
      const double ms = static_cast<double>(rows[i].second.ns) * 1e-6;
      listed += ms;
      std::fprintf(out, "%-60.60s %10.1f %7.1f%% %8lld %10.1f\n", rows[i].first.c_str(), ms, 100 * ms * 1e-3 / wall_s,
                   static_cast<long long>(rows[i].second.calls), static_cast<double>(rows[i].second.total_ns) * 1e-6);
    }
    std::fprintf(out, "%-60s %10.1f %7.1f%%\n", "listed", listed, 100 * listed * 1e-3 / wall_s);
  }

 private:
  struct Entry {
    int64_t ns = 0, calls = 0, total_ns = 0;  // self time, calls, inclusive time
  };
  struct Frame {
    int64_t start, children;
  };
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static std::map<std::string, Entry>& totals() {
    static std::map<std::string, Entry> t;
    return t;
  }
  static std::mutex& lock() {
    static std::mutex m;
    return m;
  }
  static std::vector<Frame>& stack() {
    thread_local std::vector<Frame> s;
    return s;
  }
  static std::unique_ptr<at::ObserverContext> enter(const at::RecordFunction&) {
    stack().push_back({now_ns(), 0});
    return nullptr;
  }
  static void leave(const at::RecordFunction& fn, at::ObserverContext*) {
    auto& s = stack();
    if (s.empty()) return;  // started inside an operator that began before start()
    const Frame f = s.back();
    s.pop_back();
    const int64_t total = now_ns() - f.start;
    if (!s.empty()) s.back().children += total;
    std::lock_guard<std::mutex> guard(lock());
    Entry& e = totals()[fn.name()];
    e.ns += total - f.children;
    e.total_ns += total;
    e.calls += 1;
  }

  at::CallbackHandle handle_ = 0;
};

}  // namespace qforge::bench
