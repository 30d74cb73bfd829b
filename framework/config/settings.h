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
  double max_shard_gb = 5.0;  // checkpoints above this many GB go out as shards plus an index (Hugging Face's 5GB)
  int64_t max_shard_bytes() const { return static_cast<int64_t>(max_shard_gb * 1e9); }
  template <class V>
  void visit(V& v) {
    v("dir", dir);
    v("max_shard_gb", max_shard_gb, [](double gb) { return gb > 0 ? std::string() : std::string("> 0"); });
  }
};

struct ModelSettings {
  std::string path;       // Hugging Face checkpoint directory (config.json + safetensors)
  std::string tokenizer;  // tokenizer.model, tokenizer.bin, tokenizer.json, vocab.json or a directory; "": the model's
  std::string dtype = "float32";  // float32, bfloat16, float16 (the last two for CUDA)
  std::string device = "cpu";     // cpu, or cuda (each rank takes the GPU of its node-local rank)
  // A published architecture by name (framework/model/presets.h), for `qforge plan` when model.path holds no
  // config.json; the checkpoint's config.json, when there is one, is what every command uses.
  std::string architecture;
  template <class V>
  void visit(V& v) {
    v("path", path);
    v("architecture", architecture);
    v("tokenizer", tokenizer);
    v("dtype", dtype, config::one_of({"float32", "bfloat16", "float16"}));
    v("device", device, config::one_of({"cpu", "cuda"}));
  }
};

struct EvalSettings {
  std::string text;        // text file for perplexity
  int64_t seq_len = 0;     // window length; 0: the model's context length
  int64_t batch_size = 4;  // windows (qforge eval tasks: contexts or prompts) per forward pass
  // qforge eval tasks (docs/evaluation.md)
  std::string tasks = "piqa,arc_easy,arc_challenge,openbookqa,winogrande,boolq,hellaswag";  // comma-separated
  std::string data_dir;    // a folder laid out as ../shared/tasks
  std::string paths;       // per-task files: "piqa=FILE,mmlu=DIR,wikitext2=FILE,c4=FILE"
  int64_t shots = -1;      // -1: each task's default (MMLU 5, others 0)
  int64_t limit = 0;       // 0: every item; N: the first N (MMLU: of each subject)
  bool log_samples = false;  // one JSON line per item in output.dir/samples_TASK.jsonl
  bool add_bos = true;     // BOS before every context (the harness's add_bos_token=True)
  int64_t c4_windows = 256;  // GPTQ's C4 convention
  int64_t seed = 0;        // C4 windows; few-shot sampling uses seed + 1234
  template <class V>
  void visit(V& v) {
    v("text", text);
    v("seq_len", seq_len, config::at_least(0));
    v("batch_size", batch_size, config::at_least(1));
    v("tasks", tasks);
    v("data_dir", data_dir);
    v("paths", paths);
    v("shots", shots, config::at_least(-1));
    v("limit", limit, config::at_least(0));
    v("log_samples", log_samples);
    v("add_bos", add_bos);
    v("c4_windows", c4_windows, config::at_least(1));
    v("seed", seed, config::at_least(0));
  }
};

struct GenerateTextSettings {
  std::string prompt = "Once upon a time";
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  int64_t seed = 0;
  template <class V>
  void visit(V& v) {
    v("prompt", prompt);
    v("max_new_tokens", max_new_tokens, config::at_least(1));
    v("temperature", temperature, config::at_least(0));
    v("top_k", top_k, config::at_least(0));
    v("top_p", top_p, [](double p) { return p > 0 && p <= 1 ? std::string() : std::string("in (0, 1]"); });
    v("seed", seed, config::at_least(0));
  }
};

namespace config {
// Name of the resolved config written beside every output.
inline constexpr const char* kResolvedConfigName = "qforge_config.yaml";
// Writes `yaml` (a resolved config) as `dir`/qforge_config.yaml, atomically, creating `dir` if needed.
void save_resolved(const std::string& yaml, const std::string& dir);
}  // namespace config

}  // namespace qforge
