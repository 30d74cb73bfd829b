// Config sections owned by the framework. Commands compose them (and the methods' own sections) into the root
// config of each command; see launch/qforge_config.h.
#pragma once

#include "framework/config/config.h"

#include <string>

namespace qforge {

struct ParallelSettings {
  int tp = 1;  // tensor-parallel ranks per model replica; data parallelism is world size / tp
  template <class V>
  void visit(V& v) {
    v("tp", tp, config::at_least(1));
  }
};

struct RuntimeSettings {
  int threads = 0;  // CPU threads per rank; 0: the node's cores shared evenly among its ranks
  template <class V>
  void visit(V& v) {
    v("threads", threads, config::at_least(0));
  }
};

struct LogSettings {
  std::string level = "info";
  bool all_ranks = false;          // print from every rank, not only rank 0
  std::string file;                // per-rank log file; "{rank}" is replaced by the rank
  double progress_interval_s = 10;  // seconds between progress lines of long loops
  template <class V>
  void visit(V& v) {
    v("level", level, config::one_of({"debug", "info", "warn", "error"}));
    v("all_ranks", all_ranks);
    v("file", file);
    v("progress_interval_s", progress_interval_s, config::at_least(0));
  }
};

struct OutputSettings {
  std::string dir;  // where a command writes its outputs, beside the resolved config; empty: no files
  template <class V>
  void visit(V& v) {
    v("dir", dir);
  }
};

namespace config {
// Name of the resolved config written beside every output.
inline constexpr const char* kResolvedConfigName = "qforge_config.yaml";
// Writes `yaml` (a resolved config) as `dir`/qforge_config.yaml, atomically, creating `dir` if needed.
void save_resolved(const std::string& yaml, const std::string& dir);
}  // namespace config

}  // namespace qforge
