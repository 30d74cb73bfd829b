// Command-line options, the random LLaMA model and the random corpus shared by the benchmarks.
#pragma once

#include "framework/io/corpus.h"
#include "framework/model/model_config.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace qforge::bench {

// The integer after `name` on the command line, or `fallback`.
inline int64_t option(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  return fallback;
}

// A LLaMA shape from --hidden, --layers and --vocab: heads of 32, SwiGLU width 8/3 of hidden (multiple of 32).
inline model::ModelConfig llama_from_options(int argc, char** argv, int64_t hidden, int64_t layers, int64_t vocab) {
  model::ModelConfig config;
  config.vocab_size = option(argc, argv, "--vocab", vocab);
  config.hidden_size = option(argc, argv, "--hidden", hidden);
  config.intermediate_size = config.hidden_size * 8 / 3 / 32 * 32;
  config.num_layers = option(argc, argv, "--layers", layers);
  config.num_heads = config.hidden_size / 32;
  config.num_kv_heads = config.num_heads;
  config.max_positions = 1024;
  return config;
}

// A corpus of `samples` uniformly random samples of `seq_len` tokens (seed 1): DIR/bench_corpus.h5.
inline std::string write_random_corpus(const std::string& dir, int64_t samples, int64_t seq_len, int64_t vocab) {
  io::CorpusIdentity identity;
  identity.num_samples = samples;
  identity.seq_len = seq_len;
  identity.vocab_size = vocab;
  std::mt19937_64 rng(1);
  std::map<int64_t, std::vector<int32_t>> tokens;
  for (int64_t i = 0; i < samples; ++i) {
    std::vector<int32_t> sample(seq_len);
    for (int32_t& t : sample) t = static_cast<int32_t>(rng() % vocab);
    tokens[i] = sample;
  }
  const std::string path = dir + "/bench_corpus.h5";
  io::write_corpus_file(path, identity, tokens);
  return path;
}

}  // namespace qforge::bench
