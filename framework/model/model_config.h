// Decoder-only architectures read from a Hugging Face config.json: the LLaMA family and the OPT family, as
// options of one structure.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace qforge::model {

enum class Family { kLlama, kOpt };

struct ModelConfig {
  Family family = Family::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // LLaMA intermediate_size, OPT ffn_dim
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;       // < num_heads: grouped-query (1: multi-query) attention
  int64_t max_positions = 0;
  double norm_eps = 1e-5;         // LLaMA rms_norm_eps; OPT LayerNorm eps
  double rope_theta = 10000.0;    // LLaMA only
  bool tie_word_embeddings = false;
  int64_t word_embed_proj_dim = 0;  // OPT: != hidden_size adds project_in / project_out (OPT-350m)
  bool norm_before = true;          // OPT do_layer_norm_before (false: post-LayerNorm, OPT-350m)
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  int64_t pad_token_id = -1;

  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t embed_dim() const { return family == Family::kOpt ? word_embed_proj_dim : hidden_size; }
  bool has_projections() const { return family == Family::kOpt && word_embed_proj_dim != hidden_size; }

  // Throws qforge::Error naming `source` (the file) and the key when a key is missing, mistyped or inconsistent.
  static ModelConfig from_json(const nlohmann::json& json, const std::string& source);
  static ModelConfig from_file(const std::string& config_json_path);
  // config.json parsed (Error naming the file when it cannot be read or is not JSON), for from_json and readers.
  static nlohmann::json read_file(const std::string& config_json_path);
  // A Hugging Face config.json for this architecture ("architectures", "model_type", ...).
  nlohmann::json to_json() const;

  // Checks that `tp` ranks can share the model: heads and key/value heads divisible by tp, and so on.
  // Throws UsageError naming parallel.tp.
  void check_tensor_parallel(int tp) const;
};

}  // namespace qforge::model
