// Command-line options and the random LLaMA model shared by the benchmarks.
#pragma once

#include "framework/model/model_config.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

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

}  // namespace qforge::bench
