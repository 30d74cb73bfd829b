#include "framework/model/checkpoint_io.h"

#include "framework/common/atomic_file.h"
#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"
#include "framework/log/log.h"
#include "framework/model/quantized_checkpoint.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace qforge::model {
namespace fs = std::filesystem;

void load_entry(const WeightEntry& e, const io::Checkpoint& checkpoint, const std::string& dir) {
  if (!checkpoint.contains(e.name))
    throw Error(fmt::format("{}: the checkpoint has no tensor '{}', which config.json implies", dir, e.name));
  const io::TensorInfo& info = checkpoint.info(e.name);
  if (!c10::isFloatingType(info.dtype))
    throw Error(fmt::format("{}: tensor '{}' is stored as {}, not as a floating-point weight (F32, F16, BF16, F64)",
                            info.file, e.name, c10::toString(info.dtype)));
  if (info.shape != e.full_shape)
    throw Error(fmt::format("{}: tensor '{}' has shape {}, config.json implies {}", dir, e.name,
                            shape_text(info.shape), shape_text(e.full_shape)));
  if (e.spec.replicated()) {
    checkpoint.read_into(e.name, e.param);
    return;
  }
  const int64_t stored = e.spec.stored_length();
  if (stored < e.spec.length) e.param.narrow(e.spec.dim, stored, e.spec.length - stored).zero_();  // vocabulary padding
  if (stored > 0) checkpoint.read_into(e.name, e.param.narrow(e.spec.dim, 0, stored), e.spec.dim, e.spec.start);
}

torch::Tensor gather_full(const WeightEntry& e, dist::Communicator& tp) {
  torch::Tensor local = e.param.detach().contiguous();
  if (e.spec.replicated()) return local;
  torch::Tensor full = tp.size() == 1 ? local : tp.all_gather(local, e.spec.dim);
  return full.narrow(e.spec.dim, 0, e.spec.full_extent).contiguous();
}

namespace {

// NaN or Inf in a weight would only surface as a perplexity or a gradient norm of nan: refused at loading, naming
// the tensor and the file it came from.
void check_finite(const WeightEntry& e, const io::Checkpoint& checkpoint, const std::string& dir) {
  const int64_t bad = io::count_nonfinite(e.param);
  if (bad == 0) return;
  const std::string file = checkpoint.contains(e.name) ? checkpoint.info(e.name).file : dir;
  throw Error(fmt::format("{}: tensor '{}' holds {} NaN or infinite value(s); expected finite weights", file, e.name,
                          bad));
}

// config.json against the checkpoint's tensors, before the model is allocated: the embedding and the final norm
// (vocab_size, hidden_size), layer 0's MLP output (intermediate_size), and the layers present (num_hidden_layers),
// so that a damaged config.json is named instead of allocating what it implies or dropping tensors silently.
void check_config_against_checkpoint(const ModelConfig& c, const io::Checkpoint& checkpoint,
                                     const std::string& config_path) {
  const bool llama = c.family == Family::kLlama;
  const std::string base = llama ? "model." : "model.decoder.";
  auto expect_shape = [&](const std::string& name, std::vector<int64_t> shape, const char* keys) {
    if (!checkpoint.contains(name) || checkpoint.info(name).shape == shape) return;
    throw Error(fmt::format("{}: {} imply tensor '{}' of shape {}, but {} stores it as {}", config_path, keys, name,
                            shape_text(shape), checkpoint.info(name).file, shape_text(checkpoint.info(name).shape)));
  };
  expect_shape(base + "embed_tokens.weight", {c.vocab_size, c.embed_dim()},
               llama ? "vocab_size and hidden_size" : "vocab_size and word_embed_proj_dim");
  expect_shape(llama ? "model.norm.weight" : "model.decoder.final_layer_norm.weight", {c.hidden_size}, "hidden_size");
  expect_shape(base + (llama ? "layers.0.mlp.down_proj.weight" : "layers.0.fc2.weight"),
               {c.hidden_size, c.intermediate_size}, "hidden_size and intermediate_size");
  const std::string layers = base + "layers.";
  std::vector<std::string> unused;
  int64_t highest = -1;
  for (const std::string& name : checkpoint.names()) {
    if (name.rfind(layers, 0) != 0) continue;
    const int64_t index = std::atoll(name.c_str() + layers.size());
    highest = std::max(highest, index);
    if (index >= c.num_layers) unused.push_back(name);
  }
  if (!unused.empty()) {
    const std::vector<std::string> first(unused.begin(), unused.begin() + std::min<size_t>(3, unused.size()));
    throw Error(fmt::format("{}: num_hidden_layers is {}, but {} holds layers up to {}: {} tensor(s) would be left "
                            "unused ({}{}); expected num_hidden_layers {}", config_path, c.num_layers,
                            checkpoint.info(unused.front()).file, highest, unused.size(), fmt::join(first, ", "),
                            unused.size() > first.size() ? ", ..." : "", highest + 1));
  }
  if (highest >= 0 && highest + 1 < c.num_layers)
    throw Error(fmt::format("{}: num_hidden_layers is {}, but {} holds tensors of layers 0..{} only", config_path,
                            c.num_layers, checkpoint.dir(), highest));
}

// Parameters created while it lives take `dtype` (libtorch's default dtype), so that a model is built in the
// dtype it is loaded into: no fp32 copy of a bf16 model ever exists.
class DefaultDtype {
 public:
  explicit DefaultDtype(torch::ScalarType dtype) : previous_(c10::get_default_dtype()) {
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
  }
  ~DefaultDtype() { c10::set_default_dtype(previous_); }

 private:
  caffe2::TypeMeta previous_;
};

}  // namespace

std::shared_ptr<CausalLM> load_pretrained(const std::string& dir, dist::Communicator& tp, torch::ScalarType dtype,
                                          torch::Device device) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const nlohmann::json config_json = ModelConfig::read_file(config_path);  // parsed once: the model and its reader
  ModelConfig config = ModelConfig::from_json(config_json, config_path);
  io::Checkpoint checkpoint(dir);
  check_config_against_checkpoint(config, checkpoint, config_path);
  std::shared_ptr<CausalLM> model;
  {
    DefaultDtype building_in(dtype);
    model = std::make_shared<CausalLM>(config, tp);
  }
  std::unique_ptr<QuantizedWeightReader> quantized = quantized_weight_reader(config_json, config_path, checkpoint);
  torch::NoGradGuard no_grad;
  const auto& entries = model->weights().entries();
  log::Progress progress("loading " + dir, static_cast<int64_t>(entries.size()), "tensors", 5.0);
  for (const WeightEntry& e : entries) {
    if (!quantized || !quantized->load(e)) load_entry(e, checkpoint, dir);
    check_finite(e, checkpoint, dir);
    progress.advance();
  }
  if (device != torch::Device(torch::kCPU)) model->to(device);
  if (quantized) quantized->finish(*model);
  model->eval();
  return model;
}

std::string checkpoint_fingerprint(const std::string& dir) {
  io::Checkpoint checkpoint(dir);
  uint64_t hash = kFnv1aOffset;
  auto mix = [&hash](const void* data, std::size_t size) {
    hash = fnv1a64(std::string_view(static_cast<const char*>(data), size), hash);
  };
  for (const std::string& name : checkpoint.names()) {
    const io::TensorInfo& info = checkpoint.info(name);
    mix(name.data(), name.size());
    mix(&info.dtype, sizeof info.dtype);
    mix(info.shape.data(), info.shape.size() * sizeof(int64_t));
    if (info.shape.empty() || info.shape[0] == 0) continue;
    const int64_t rows = std::min<int64_t>(2, info.shape[0]);
    for (int64_t start : {int64_t{0}, info.shape[0] - rows}) {
      torch::Tensor edge = checkpoint.read(name, info.dtype, 0, start, rows).contiguous();
      mix(edge.data_ptr(), edge.numel() * edge.element_size());
    }
  }
  return fmt::format("{:016x}", hash);
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kHalf: return "float16";
    default: throw Error(fmt::format("dtype {} is not a model dtype (float32, bfloat16, float16)", c10::toString(dtype)));
  }
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  throw UsageError(fmt::format("model.dtype '{}' is not one of float32, bfloat16, float16", name));
}

void save_pretrained(CausalLM& model, const std::string& dir, bool write, int64_t max_shard_bytes,
                     const nlohmann::json& config_extra) {
  if (!write) return;  // the whole TP group passes the same `write`: other groups take no part
  const bool writer = model.tp().rank() == 0;
  std::vector<io::TensorSpec> plan;
  for (const WeightEntry& e : model.weights().entries()) plan.push_back({e.name, e.param.scalar_type(), e.full_shape});
  std::unique_ptr<io::CheckpointWriter> out;
  if (writer) out = std::make_unique<io::CheckpointWriter>(dir, plan, max_shard_bytes);
  log::Progress progress("saving " + dir, static_cast<int64_t>(plan.size()), "tensors", 5.0);
  for (const WeightEntry& e : model.weights().entries()) {
    torch::Tensor full = gather_full(e, model.tp());  // one tensor at a time; freed before the next
    if (writer) out->write(e.name, full.device().is_cpu() ? full : full.to(torch::kCPU));
    progress.advance();
  }
  if (!writer) return;
  out->commit();
  nlohmann::json config = model.config().to_json();
  config["torch_dtype"] = dtype_name(plan.empty() ? torch::kFloat : plan.front().dtype);
  for (const auto& item : config_extra.items()) config[item.key()] = item.value();
  write_file_atomically((fs::path(dir) / "config.json").string(), config.dump(2) + "\n");
}

// ---- llama2.c ------------------------------------------------------------------------------------------------

namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// llama2.c pairs rotary dimensions (2i, 2i+1); Hugging Face pairs (i, i + head_dim/2). Rows of q/k move so
// that the rotate-half model computes what llama2.c computes (the permute of HF's convert_llama_weights_to_hf).
torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.view({heads, rows / heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

}  // namespace

void convert_llama2c(const std::string& path, const std::string& tokenizer_path, const std::string& out_dir) {
  check_input_file(path, "a llama2.c checkpoint (.bin)");
  if (!tokenizer_path.empty()) check_input_file(tokenizer_path, "a llama2.c tokenizer (.bin)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the llama2.c checkpoint", path));
  Llama2cHeader h{};
  if (!in.read(reinterpret_cast<char*>(&h), sizeof h))
    throw Error(fmt::format("{}: shorter than the 28-byte llama2.c header", path));
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = std::abs(h.vocab_size);
  for (int32_t v : {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.seq_len})
    if (v <= 0) throw Error(fmt::format("{}: header field {} is not positive; not a llama2.c legacy checkpoint", path, v));
  if (vocab == 0 || h.dim % h.n_heads != 0 || h.n_heads % h.n_kv_heads != 0)
    throw Error(fmt::format("{}: inconsistent llama2.c header (dim {}, heads {}, kv heads {}, vocab {})", path, h.dim,
                            h.n_heads, h.n_kv_heads, h.vocab_size));
  if (!tokenizer_path.empty()) {  // parsed before anything is written: one of this vocabulary
    const int64_t pieces = tok::load_tokenizer(tokenizer_path)->vocab_size();
    if (pieces != vocab)
      throw Error(fmt::format("{}: the tokenizer has {} pieces, but the checkpoint {} has a vocabulary of {}; expected "
                              "the tokenizer it was trained with", tokenizer_path, pieces, path, vocab));
  }
  const int64_t dim = h.dim, hidden = h.hidden_dim, layers = h.n_layers, head_dim = dim / h.n_heads;
  const int64_t kv_dim = h.n_kv_heads * head_dim;

  // Tensors in file order: name, shape (per layer stacked along a leading dim where layers > 1).
  struct Block { std::string name; std::vector<int64_t> shape; };
  std::vector<Block> blocks = {{"embed", {vocab, dim}},        {"rms_att", {layers, dim}},
                               {"wq", {layers, dim, dim}},      {"wk", {layers, kv_dim, dim}},
                               {"wv", {layers, kv_dim, dim}},   {"wo", {layers, dim, dim}},
                               {"rms_ffn", {layers, dim}},      {"w1", {layers, hidden, dim}},
                               {"w2", {layers, dim, hidden}},   {"w3", {layers, hidden, dim}},
                               {"rms_final", {dim}},            {"freq_cis", {2, h.seq_len, head_dim / 2}}};
  if (!shared_classifier) blocks.push_back({"wcls", {vocab, dim}});
  int64_t expected = sizeof h;
  bool overflow = false;
  for (const auto& b : blocks) {
    int64_t n = 4;
    for (int64_t s : b.shape) overflow |= __builtin_mul_overflow(n, s, &n);
    overflow |= __builtin_add_overflow(expected, n, &expected);
  }
  const int64_t actual = static_cast<int64_t>(fs::file_size(path));
  if (overflow || actual != expected)
    throw Error(fmt::format("{}: {} bytes, but its header (dim {}, hidden {}, layers {}, heads {}, kv heads {}, vocab {}, "
                            "seq_len {}) implies {} bytes", path, actual, h.dim, h.hidden_dim, h.n_layers, h.n_heads,
                            h.n_kv_heads, h.vocab_size, h.seq_len,
                            overflow ? std::string("more than 2^63") : std::to_string(expected)));
  std::map<std::string, torch::Tensor> raw;
  for (const auto& b : blocks) {
    torch::Tensor t = torch::empty(b.shape, torch::kFloat);
    in.read(static_cast<char*>(t.data_ptr()), t.numel() * 4);
    raw[b.name] = t;
  }

  ModelConfig c;
  c.family = Family::kLlama;
  c.vocab_size = vocab;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_layers = layers;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.max_positions = h.seq_len;
  c.norm_eps = 1e-5;  // llama2.c's rmsnorm
  c.tie_word_embeddings = shared_classifier;

  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"model.embed_tokens.weight", raw["embed"]}};
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    tensors.emplace_back(p + "input_layernorm.weight", raw["rms_att"][i]);
    tensors.emplace_back(p + "self_attn.q_proj.weight", interleaved_to_rotate_half(raw["wq"][i], h.n_heads));
    tensors.emplace_back(p + "self_attn.k_proj.weight", interleaved_to_rotate_half(raw["wk"][i], h.n_kv_heads));
    tensors.emplace_back(p + "self_attn.v_proj.weight", raw["wv"][i]);
    tensors.emplace_back(p + "self_attn.o_proj.weight", raw["wo"][i]);
    tensors.emplace_back(p + "post_attention_layernorm.weight", raw["rms_ffn"][i]);
    tensors.emplace_back(p + "mlp.gate_proj.weight", raw["w1"][i]);
    tensors.emplace_back(p + "mlp.down_proj.weight", raw["w2"][i]);
    tensors.emplace_back(p + "mlp.up_proj.weight", raw["w3"][i]);
  }
  tensors.emplace_back("model.norm.weight", raw["rms_final"]);
  if (!shared_classifier) tensors.emplace_back("lm_head.weight", raw["wcls"]);
  for (auto& [name, t] : tensors) t = t.contiguous();

  AtomicDirectory out(out_dir, /*owner=*/true);  // appears under out_dir once complete
  io::save_checkpoint(out.temp_path(), tensors, 0,
                      {{"format", "pt"}, {"source", "llama2.c " + fs::path(path).filename().string()}});
  write_file_atomically((fs::path(out.temp_path()) / "config.json").string(), c.to_json().dump(2) + "\n");
  if (!tokenizer_path.empty()) {
    std::ifstream tok(tokenizer_path, std::ios::binary);
    if (!tok) throw Error(fmt::format("{}: cannot open the tokenizer", tokenizer_path));
    std::string bytes((std::istreambuf_iterator<char>(tok)), std::istreambuf_iterator<char>());
    write_file_atomically((fs::path(out.temp_path()) / "tokenizer.bin").string(), bytes);
  }
  out.commit();
}

}  // namespace qforge::model
