#include "framework/model/model_config.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>

namespace qforge::model {
namespace {

using nlohmann::json;

class JsonFields {
 public:
  JsonFields(const json& j, const std::string& source) : j_(j), source_(source) {}

  int64_t integer(const char* key) const {
    const json& v = at(key);
    // An unsigned integer above int64's range would wrap (2^64 - 1 to -1): not an integer here.
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX))
      throw Error(fmt::format("{}: key '{}' must be an integer of at most 2^63 - 1, got {}", source_, key, v.dump()));
    return v.get<int64_t>();
  }
  int64_t integer(const char* key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    if (!v.is_number()) throw Error(fmt::format("{}: key '{}' must be a number, got {}", source_, key, v.dump()));
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    if (!v.is_boolean()) throw Error(fmt::format("{}: key '{}' must be true or false, got {}", source_, key, v.dump()));
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    if (!v.is_string()) throw Error(fmt::format("{}: key '{}' must be a string, got {}", source_, key, v.dump()));
    return v.get<std::string>();
  }
  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

 private:
  const json& at(const char* key) const {
    if (!has(key)) throw Error(fmt::format("{}: missing key '{}'", source_, key));
    return j_.at(key);
  }
  const json& j_;
  const std::string& source_;
};

void require_positive(int64_t value, const char* key, const std::string& source) {
  if (value <= 0) throw Error(fmt::format("{}: key '{}' must be positive, got {}", source, key, value));
}

// Sizes no published model comes near, kept well below where products of them (weights, their bytes, the memory
// plan's terms) overflow 64 bits: a typo such as a hidden_size of 1e12 is refused before anything is allocated.
constexpr int64_t kMaxParameters = int64_t{1} << 42;  // 4.4 trillion

void check_plausible(const ModelConfig& c, const std::string& source) {
  struct Bound { int64_t value; const char* key; int64_t max; };
  for (const Bound& b : {Bound{c.vocab_size, "vocab_size", 1 << 24}, Bound{c.hidden_size, "hidden_size", 1 << 20},
                         Bound{c.intermediate_size, "intermediate_size", 1 << 22},
                         Bound{c.num_layers, "num_hidden_layers", 1 << 16},
                         Bound{c.num_heads, "num_attention_heads", 1 << 16},
                         Bound{c.max_positions, "max_position_embeddings", 1 << 28},
                         Bound{c.word_embed_proj_dim, "word_embed_proj_dim", 1 << 20}})
    if (b.value > b.max)
      throw Error(fmt::format("{}: key '{}' is {}, implausibly large (expected at most {}); is config.json damaged?",
                              source, b.key, b.value, b.max));
  // Embedding, head and per-layer linears, in overflow-checked arithmetic.
  int64_t per_layer = 0, embed = 0, total = 0, linear = 0;
  bool overflow = __builtin_mul_overflow(c.hidden_size, c.hidden_size, &linear);
  overflow |= __builtin_mul_overflow(linear, int64_t{4}, &per_layer);
  overflow |= __builtin_mul_overflow(c.hidden_size, c.intermediate_size, &linear);
  overflow |= __builtin_mul_overflow(linear, int64_t{3}, &linear);
  overflow |= __builtin_add_overflow(per_layer, linear, &per_layer);
  overflow |= __builtin_mul_overflow(per_layer, c.num_layers, &total);
  overflow |= __builtin_mul_overflow(c.vocab_size, std::max(c.hidden_size, c.word_embed_proj_dim), &embed);
  overflow |= __builtin_mul_overflow(embed, int64_t{2}, &embed);
  overflow |= __builtin_add_overflow(total, embed, &total);
  if (overflow || total > kMaxParameters)
    throw Error(fmt::format("{}: hidden_size {}, intermediate_size {}, num_hidden_layers {} and vocab_size {} imply {} "
                            "parameters, implausibly many (expected at most {}); is config.json damaged?",
                            source, c.hidden_size, c.intermediate_size, c.num_layers, c.vocab_size,
                            overflow ? std::string("more than 2^63") : std::to_string(total), kMaxParameters));
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  JsonFields f(j, source);
  const std::string type = f.string("model_type", "");
  ModelConfig c;
  if (type == "llama") {
    c.family = Family::kLlama;
    c.intermediate_size = f.integer("intermediate_size");
    c.num_kv_heads = f.integer("num_key_value_heads", f.integer("num_attention_heads"));
    c.norm_eps = f.number("rms_norm_eps", 1e-6);
    c.rope_theta = f.number("rope_theta", 10000.0);
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
    c.max_positions = f.integer("max_position_embeddings", 2048);
    const std::string act = f.string("hidden_act", "silu");
    if (act != "silu") throw Error(fmt::format("{}: hidden_act '{}' is not supported for llama (expected silu)", source, act));
  } else if (type == "opt") {
    c.family = Family::kOpt;
    c.intermediate_size = f.integer("ffn_dim");
    c.num_kv_heads = f.integer("num_attention_heads");
    c.norm_eps = 1e-5;
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", true);
    c.max_positions = f.integer("max_position_embeddings");
    c.norm_before = f.boolean("do_layer_norm_before", true);
    const std::string act = f.string("activation_function", "relu");
    if (act != "relu") throw Error(fmt::format("{}: activation_function '{}' is not supported for opt (expected relu)", source, act));
    if (!f.boolean("enable_bias", true)) throw Error(fmt::format("{}: enable_bias false is not supported for opt", source));
  } else {
    throw Error(fmt::format("{}: model_type '{}' is not supported (expected 'llama' or 'opt')", source, type));
  }
  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.num_layers = f.integer("num_hidden_layers");
  c.num_heads = f.integer("num_attention_heads");
  c.word_embed_proj_dim = c.family == Family::kOpt ? f.integer("word_embed_proj_dim", c.hidden_size) : c.hidden_size;
  c.bos_token_id = f.integer("bos_token_id", c.family == Family::kOpt ? 2 : 1);
  c.eos_token_id = f.integer("eos_token_id", 2);
  c.pad_token_id = f.integer("pad_token_id", -1);
  for (auto [value, key] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "hidden_size"},
                            {c.intermediate_size, "intermediate_size"}, {c.num_layers, "num_hidden_layers"},
                            {c.num_heads, "num_attention_heads"}, {c.num_kv_heads, "num_key_value_heads"},
                            {c.max_positions, "max_position_embeddings"}})
    require_positive(value, key, source);
  check_plausible(c, source);
  if (c.hidden_size % c.num_heads != 0)
    throw Error(fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {}", source, c.hidden_size, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0)
    throw Error(fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
                            c.num_heads, c.num_kv_heads));
  return c;
}

json ModelConfig::read_file(const std::string& path) {
  check_input_file(path, "the model's config.json");
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the model's config.json", path));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
}

ModelConfig ModelConfig::from_file(const std::string& path) { return from_json(read_file(path), path); }

json ModelConfig::to_json() const {
  json j;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["max_position_embeddings"] = max_positions;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = "float32";
  if (family == Family::kLlama) {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["intermediate_size"] = intermediate_size;
    j["num_key_value_heads"] = num_kv_heads;
    j["rms_norm_eps"] = norm_eps;
    j["rope_theta"] = rope_theta;
    j["hidden_act"] = "silu";
  } else {
    j["architectures"] = {"OPTForCausalLM"};
    j["model_type"] = "opt";
    j["ffn_dim"] = intermediate_size;
    j["word_embed_proj_dim"] = word_embed_proj_dim;
    j["do_layer_norm_before"] = norm_before;
    j["activation_function"] = "relu";
    j["enable_bias"] = true;
  }
  return j;
}

void ModelConfig::check_tensor_parallel(int tp) const {
  auto fail = [tp](const std::string& what) {
    throw UsageError(fmt::format("parallel.tp = {} does not divide the model's {}; choose a tp that does", tp, what));
  };
  if (num_heads % tp != 0) fail(fmt::format("{} attention heads", num_heads));
  if (num_kv_heads % tp != 0) fail(fmt::format("{} key/value heads", num_kv_heads));
  if (intermediate_size % tp != 0) fail(fmt::format("MLP width {}", intermediate_size));
}

}  // namespace qforge::model
