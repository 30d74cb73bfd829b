#include "framework/model/presets.h"

#include "framework/common/error.h"

#include <fmt/format.h>

namespace qforge::model {
namespace {

struct Preset {
  const char* name;
  Family family;
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab, positions;
  double norm_eps;
};

// From the checkpoints' config.json files. OPT's ffn_dim is 4 x hidden; LLaMA's vocabulary is 32000, OPT's 50272.
constexpr Preset kPresets[] = {
    {"llama-7b", Family::kLlama, 4096, 11008, 32, 32, 32, 32000, 2048, 1e-6},
    {"llama-13b", Family::kLlama, 5120, 13824, 40, 40, 40, 32000, 2048, 1e-6},
    {"llama-30b", Family::kLlama, 6656, 17920, 60, 52, 52, 32000, 2048, 1e-6},
    {"llama-65b", Family::kLlama, 8192, 22016, 80, 64, 64, 32000, 2048, 1e-5},
    {"llama-2-70b", Family::kLlama, 8192, 28672, 80, 64, 8, 32000, 4096, 1e-5},
    {"opt-6.7b", Family::kOpt, 4096, 16384, 32, 32, 32, 50272, 2048, 1e-5},
    {"opt-13b", Family::kOpt, 5120, 20480, 40, 40, 40, 50272, 2048, 1e-5},
    {"opt-30b", Family::kOpt, 7168, 28672, 48, 56, 56, 50272, 2048, 1e-5},
    {"opt-66b", Family::kOpt, 9216, 36864, 64, 72, 72, 50272, 2048, 1e-5},
};

nlohmann::json config_json(const Preset& p) {
  nlohmann::json j = {{"vocab_size", p.vocab},          {"hidden_size", p.hidden},
                      {"num_hidden_layers", p.layers},  {"num_attention_heads", p.heads},
                      {"max_position_embeddings", p.positions}};
  if (p.family == Family::kLlama) {
    j.update({{"model_type", "llama"}, {"intermediate_size", p.intermediate}, {"num_key_value_heads", p.kv_heads},
              {"rms_norm_eps", p.norm_eps}, {"bos_token_id", 1}, {"eos_token_id", 2}});
  } else {
    j.update({{"model_type", "opt"}, {"ffn_dim", p.intermediate}, {"word_embed_proj_dim", p.hidden},
              {"bos_token_id", 2}, {"eos_token_id", 2}, {"pad_token_id", 1}});
  }
  return j;
}

}  // namespace

std::vector<std::string> architecture_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

ModelConfig architecture(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return ModelConfig::from_json(config_json(p), fmt::format("architecture '{}'", name));
  throw UsageError(fmt::format("model.architecture '{}' is not a known architecture (expected one of: {})", name,
                               fmt::join(architecture_names(), ", ")));
}

}  // namespace qforge::model
