#include "launch/memory_plan.h"

#include "framework/common/error.h"
#include "framework/model/presets.h"
#include "framework/system/memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

namespace qforge {
namespace {

using model::Family;
using model::ModelConfig;

int64_t dtype_bytes(const std::string& dtype) { return dtype == "float32" ? 4 : 2; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string count_text(int64_t n) { return fmt::format("{:.2f}B", static_cast<double>(n) / 1e9); }

// Widths of one decoder block on one TP rank, and what a token of it costs.
struct Block {
  const ModelConfig& c;
  int tp;
  int64_t b;  // bytes of model.dtype

  bool llama() const { return c.family == Family::kLlama; }
  int64_t h() const { return c.hidden_size; }
  int64_t q() const { return c.hidden_size / tp; }  // local query width (heads x head_dim)
  int64_t kv() const { return c.num_kv_heads * c.head_dim() / tp; }
  int64_t inter() const { return c.intermediate_size / tp; }
  int64_t heads() const { return c.num_heads / tp; }

  // Bytes one token keeps for the backward pass of one block (training, autograd), for sequences of `length`.
  // An estimate from what the block's operations save: replicated norms and residuals (fp32 inside the
  // norms), the sharded q/k/v, RoPE and GQA copies, the attention context, transformer.cpp's attend() per
  // block of 128 queries (fp32 q and keys, the fp32 softmax over the keys a query sees: length / 2 on
  // average, and its copy in the model's dtype), and the MLP (SwiGLU: gate, up, silu, product; OPT: fc1, relu).
  int64_t trained_per_token(int64_t length, bool fake_quant_inputs, bool fake_quant_kv) const {
    int64_t bytes = 6 * h() * b + 4 * h() * 4;
    bytes += (q() + 2 * kv() + (llama() ? q() + kv() : 0) + (kv() < q() ? 2 * q() : 0) + q()) * b;
    bytes += q() * 4 + q() * 4 * length / 256 + heads() * (length / 2) * (b == 4 ? 4 : 4 + b);
    bytes += (llama() ? 4 : 2) * inter() * b;
    if (fake_quant_inputs) bytes += ((llama() ? 5 : 4) * h() + q() + inter()) * b;  // quantized linear inputs
    if (fake_quant_kv) bytes += 2 * kv() * b;
    return bytes;
  }

  // The transient of one block's forward pass without autograd over `batch` rows of `queries` new tokens each,
  // attending to `keys` positions: the widest intermediates plus one 128-query block of fp32 scores.
  int64_t inference(int64_t batch, int64_t queries, int64_t keys) const {
    const int64_t tokens = batch * queries;
    const int64_t widths = 4 * h() + q() + 2 * kv() + (llama() ? q() + kv() : 0) + (llama() ? 3 : 2) * inter();
    return tokens * widths * b + batch * heads() * std::min<int64_t>(queries, 128) * keys * 4 * 2;
  }

  // Local elements of the linears of one block (the fake-quantized copies of one block's weights).
  int64_t linear_elements() const {
    return h() * (q() + 2 * kv()) + q() * h() + (llama() ? 3 : 2) * h() * inter();
  }
};

struct Weights {
  int64_t local = 0;          // elements of this rank
  int64_t largest_local = 0;  // the largest tensor of this rank
  int64_t largest_full = 0;   // the largest tensor of the checkpoint
  int64_t full_total = 0;     // parameters of the model
};

Weights weights_of(const ModelConfig& model, int tp) {
  Weights w;
  for (const PlannedWeight& p : planned_weights(model, tp)) {
    int64_t full = 1;
    for (int64_t d : p.full_shape) full *= d;
    w.local += p.local_numel();
    w.largest_local = std::max(w.largest_local, p.local_numel());
    w.largest_full = std::max(w.largest_full, full);
    w.full_total += full;
  }
  return w;
}

class PlanBuilder {
 public:
  PlanBuilder(const QforgeConfig& config, const ModelConfig& model, PlanStage stage, int ranks)
      : c_(config), m_(model), tp_(config.parallel.tp), b_(dtype_bytes(config.model.dtype)), block_{m_, tp_, b_} {
    if (ranks < 1 || ranks % tp_ != 0)
      throw UsageError(fmt::format("parallel.tp = {} does not divide the {} ranks planned for", tp_, ranks));
    m_.check_tensor_parallel(tp_);
    w_ = weights_of(m_, tp_);
    plan_.stage = stage;
    plan_.tp = tp_;
    plan_.dp = ranks / tp_;
    plan_.parameters = w_.full_total;
    plan_.layout = fmt::format("TP {} x DP {}, {}", tp_, plan_.dp, c_.model.dtype);
  }

  MemoryPlan build() {
    add("process baseline", kProcessBaselineBytes, "libtorch, MPI and qforge before any model (measured)");
    switch (plan_.stage) {
      case PlanStage::kGenerate: generate(); break;
      case PlanStage::kQat: qat(); break;
      case PlanStage::kPtq: ptq(); break;
      case PlanStage::kEval: eval(); break;
    }
    return plan_;
  }

 private:
  void add(std::string name, int64_t bytes, std::string note) {
    plan_.terms.push_back({std::move(name), bytes, std::move(note)});
  }
  void add_weights(const std::string& name) {
    add(name, w_.local * b_,
        fmt::format("{} of {} parameters on this rank x {} bytes ({})", count_text(w_.local),
                    count_text(w_.full_total), b_, c_.model.dtype));
  }
  // Loading reads each tensor into the model's dtype directly (no fp32 model first); the streaming save
  // gathers one full tensor at a time over the writing TP group. The checkpoint code this assumes: docs/memory.md.
  // Loading copies 8 MB of the file at a time into the parameters, or dequantizes a GPTQ linear 256 inputs at a time
  // (int64 and fp32 temporaries, about 40 bytes an element, over the widest local output: quant/gptq_checkpoint).
  void add_transients(bool saves) {
    const int64_t rows = std::max(m_.hidden_size, ceil_div(m_.intermediate_size, tp_));
    const int64_t load = std::max<int64_t>(8 << 20, 256 * rows * 40), save = saves ? w_.largest_full * b_ : 0;
    add("load/save transient", std::max(load, save),
        saves ? "the largest full tensor, gathered over the writing TP group by the streaming save"
              : "reading: an 8 MB chunk, or 256 inputs of a GPTQ linear dequantized at a time");
  }
  int64_t vocab_local() const { return ceil_div(m_.vocab_size, tp_); }

  void generate() {
    const auto& g = c_.generate;
    add_weights("teacher weights");
    const int64_t cache = 2 * m_.num_layers * g.batch_size * (m_.num_kv_heads / tp_) * g.seq_len * m_.head_dim() * b_;
    add("KV cache", cache,
        fmt::format("2 x {} layers x batch {} x {} kv heads x {} positions x {} x {} bytes", m_.num_layers,
                    g.batch_size, m_.num_kv_heads / tp_, g.seq_len, m_.head_dim(), b_));
    add("activations", block_.inference(g.batch_size, 1, g.seq_len), "one decoder block decoding one token per row");
    add("logits", g.batch_size * (vocab_local() + 2 * m_.vocab_size) * 4,
        "fp32: the vocabulary shard, the gathered vocabulary and its sampling copy");
    add_transients(false);
  }

  void eval() {
    const auto& e = c_.eval;
    const int64_t length = e.seq_len > 0 ? e.seq_len : m_.max_positions;
    add_weights("weights");
    add("activations", block_.inference(e.batch_size, length, length),
        fmt::format("one decoder block over {} windows of {} tokens, no autograd", e.batch_size, length));
    add("logits", 3 * e.batch_size * length * vocab_local() * 4,
        "fp32 vocabulary shard: logits, exp and softmax of the cross-entropy");
    add_transients(false);
  }

  void qat() {
    const auto& t = c_.train;
    const quant::QuantSettings& q = c_.quant;
    const int64_t length = c_.generate.seq_len, tokens = t.micro_batch * length;
    const bool teacher = c_.distill.teacher == "model", zero = t.zero && plan_.dp > 1;
    const int64_t state_parts = zero ? plan_.dp : 1;
    const int64_t state = ceil_div(w_.local, state_parts) * 4;
    const std::string state_note = zero ? fmt::format("fp32, 1/{} of the local parameters (ZeRO-1)", plan_.dp)
                                        : "fp32, every local parameter (no ZeRO-1)";
    plan_.layout += fmt::format(", {}{}", t.zero ? "ZeRO-1" : "no ZeRO", t.recompute ? ", recompute" : "");
    if (teacher) add_weights("teacher weights");
    add_weights("student weights");
    add("gradients", w_.local * b_, fmt::format("the student's dtype ({})", c_.model.dtype));
    add("AdamW master weights", state, state_note);
    add("AdamW moments", 2 * state, "two moments, " + state_note);
    add("reduced gradients", state, "summed over DP, what AdamW steps on: " + state_note);
    const int64_t bucket = std::max(static_cast<int64_t>(t.bucket_mb * 1024 * 1024 / 4), w_.largest_local) * 4;
    add("DP buckets", bucket * (zero ? 2 : 1),
        fmt::format("fp32 bucket of train.bucket_mb {} or the largest tensor{}", t.bucket_mb,
                    zero ? ", and its all-gather of the masters" : ""));

    const quant::BitWidths bits = quant::parse_bits(q.bits);
    const int64_t per_layer = tokens * block_.trained_per_token(length, bits.act < 16, bits.kv < 16);
    const int64_t kept = t.recompute ? m_.num_layers * tokens * m_.hidden_size * b_ + per_layer
                                     : m_.num_layers * per_layer;
    add("activations", kept,
        t.recompute ? fmt::format("{} block inputs of {} tokens, and one block recomputed", m_.num_layers, tokens)
                    : fmt::format("{} blocks x {} tokens (micro batch {} x {}), kept for backward (estimate)",
                                  m_.num_layers, tokens, t.micro_batch, length));
    if (bits.weight < 16) {
      const int64_t copies = (t.recompute ? 1 : m_.num_layers) * block_.linear_elements() * b_;
      add("fake-quantized weights", copies,
          t.recompute ? "one block's quantized weights (recomputed)"
                      : "every linear's quantized weight, kept for backward");
    }
    const int64_t copies = teacher ? 7 : 5;
    add("logits", copies * tokens * vocab_local() * 4,
        fmt::format("fp32 vocabulary shard x {}: student{} logits and rows, the loss, its gradient", copies,
                    teacher ? " and teacher" : ""));
    add_transients(true);
  }

  void ptq() {
    const auto& p = c_.ptq;
    // seq_len 0: the model's context for a text, the corpus's sample length (generate.seq_len) for a corpus.
    const int64_t context = p.calib_corpus.empty() ? m_.max_positions : c_.generate.seq_len;
    const int64_t length = p.seq_len > 0 ? p.seq_len : context;
    const int64_t sequences = ceil_div(p.nsamples, plan_.dp);
    add_weights("weights");
    add("calibration activations", sequences * length * m_.hidden_size * b_,
        fmt::format("the block inputs of {} sequences (1/{} of {}) x {} tokens x hidden {}", sequences, plan_.dp,
                    p.nsamples, length, m_.hidden_size));
    add("block forward", block_.inference(p.batch_size, length, length),
        fmt::format("one decoder block over a batch of {}", p.batch_size));

    const int64_t hb = p.hessian_dtype == "float64" ? 8 : 4, n = std::max(m_.hidden_size, m_.intermediate_size);
    const int64_t square = n * n;
    // GPTQ's fp32 H and two factors of its Cholesky chain, on the widest input it quantizes with: a column-parallel
    // linear's whole input, the row-parallel MLP down's whole input (exact mode) or this rank's block (shard mode).
    const bool shard_mode = p.row_parallel == "shard" && tp_ > 1;
    const int64_t down_in = m_.intermediate_size / (shard_mode ? tp_ : 1);
    const int64_t width = std::max(m_.hidden_size, down_in);
    // The whole sum is gathered for GPTQ in exact mode and for the error report; shard mode without errors keeps
    // only this rank's rows of it.
    const bool gathered = p.errors || !shard_mode;
    const int64_t hessians =
        (tp_ > 1 ? square / tp_ * hb : 0) + (gathered ? square * hb : 0) + 3 * width * width * 4;
    add("Hessians", hessians,
        fmt::format("input width {}: X^T X in {} (1/tp of the rows{}); GPTQ's fp32 H and 2 factors at width {}{}", n,
                    p.hessian_dtype, gathered ? ", the gathered sum" : "", width,
                    shard_mode ? " (row-parallel shard mode)" : ""));

    // The largest linear's fp32 working set: MLP down (row-parallel) and up (column-parallel).
    const int64_t out = m_.hidden_size, in = m_.intermediate_size;
    const bool exact = p.row_parallel == "exact" && tp_ > 1;
    const int64_t down = exact ? (2 * out * in + out * in / tp_ + 3 * out / tp_ * in) * 4 : 4 * out * in / tp_ * 4;
    const int64_t up = 4 * in / tp_ * out * 4;
    add("GPTQ weights", std::max(down, up),
        exact ? "fp32: MLP down gathered whole twice (row_parallel exact), its shard, GPTQ's W, Q, codes"
              : "fp32: the largest local weight, and GPTQ's W, Q, codes");
    add_transients(true);
  }

  const QforgeConfig& c_;
  ModelConfig m_;
  int tp_;
  int64_t b_;
  Block block_;
  Weights w_;
  MemoryPlan plan_;
};

}  // namespace

const std::vector<std::string>& plan_stage_names() {
  static const std::vector<std::string> names = {"generate", "qat", "ptq", "eval"};
  return names;
}

PlanStage parse_plan_stage(const std::string& name) {
  const auto& names = plan_stage_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end())
    throw UsageError(
        fmt::format("qforge plan: unknown stage '{}' (expected one of: {})", name, fmt::join(names, ", ")));
  return static_cast<PlanStage>(it - names.begin());
}

const char* stage_name(PlanStage stage) { return plan_stage_names()[static_cast<size_t>(stage)].c_str(); }

std::optional<PlanStage> stage_of_command(const std::string& command) {
  const auto& names = plan_stage_names();
  const auto it = std::find(names.begin(), names.end(), command);
  if (it == names.end()) return std::nullopt;
  return static_cast<PlanStage>(it - names.begin());
}

int64_t MemoryPlan::total() const {
  int64_t sum = 0;
  for (const MemoryTerm& t : terms) sum += t.bytes;
  return sum;
}

const MemoryTerm& MemoryPlan::largest() const {
  QF_CHECK(!terms.empty(), "a memory plan has no terms");
  return *std::max_element(terms.begin(), terms.end(),
                           [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes < b.bytes; });
}

std::string MemoryPlan::table() const {
  std::string text = fmt::format("{:<24} {:>16} {:>10}  {}\n", "term", "bytes per rank", "", "note");
  for (const MemoryTerm& t : terms)
    text += fmt::format("{:<24} {:>16} {:>10}  {}\n", t.name, t.bytes, sys::bytes_text(t.bytes), t.note);
  text += fmt::format("{:<24} {:>16} {:>10}\n", "total", total(), sys::bytes_text(total()));
  return text;
}

int64_t PlannedWeight::local_numel() const {
  int64_t n = 1;
  for (int64_t d : local_shape) n *= d;
  return n;
}

// Mirrors CausalLM's constructor (framework/model/transformer.cpp) and the layers of parallel.cpp; test_plan
// compares the result with a real model's WeightTable.
std::vector<PlannedWeight> planned_weights(const ModelConfig& c, int tp) {
  c.check_tensor_parallel(tp);
  std::vector<PlannedWeight> weights;
  // dim: the split dimension (-1: replicated); pad: the vocabulary, padded to a multiple of tp.
  auto add = [&](std::string name, std::vector<int64_t> full, int dim, bool pad = false) {
    std::vector<int64_t> local = full;
    if (dim >= 0) local[dim] = pad ? ceil_div(full[dim], tp) : full[dim] / tp;
    weights.push_back({std::move(name), std::move(full), std::move(local), dim < 0});
  };
  auto column = [&](const std::string& name, int64_t in, int64_t out, bool bias) {
    add(name + ".weight", {out, in}, 0);
    if (bias) add(name + ".bias", {out}, 0);
  };
  auto row = [&](const std::string& name, int64_t in, int64_t out, bool bias) {
    add(name + ".weight", {out, in}, 1);
    if (bias) add(name + ".bias", {out}, -1);
  };
  const bool llama = c.family == Family::kLlama;
  auto norm = [&](const std::string& name) {
    add(name + ".weight", {c.hidden_size}, -1);
    if (!llama) add(name + ".bias", {c.hidden_size}, -1);
  };
  const std::string base = llama ? "model." : "model.decoder.";
  add(base + "embed_tokens.weight", {c.vocab_size, c.embed_dim()}, 0, /*pad=*/true);
  if (!llama) add(base + "embed_positions.weight", {c.max_positions + 2, c.hidden_size}, -1);
  if (c.has_projections()) {
    add(base + "project_in.weight", {c.hidden_size, c.embed_dim()}, -1);
    add(base + "project_out.weight", {c.embed_dim(), c.hidden_size}, -1);
  }
  const int64_t h = c.hidden_size, kv = c.num_kv_heads * c.head_dim(), inter = c.intermediate_size;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("{}layers.{}.", base, i);
    norm(p + (llama ? "input_layernorm" : "self_attn_layer_norm"));
    for (auto [name, out] : {std::pair{"q_proj", h}, {"k_proj", kv}, {"v_proj", kv}})
      column(p + "self_attn." + name, h, out, !llama);
    row(p + "self_attn." + (llama ? "o_proj" : "out_proj"), h, h, !llama);
    norm(p + (llama ? "post_attention_layernorm" : "final_layer_norm"));
    if (llama) {
      column(p + "mlp.gate_proj", h, inter, false);
      column(p + "mlp.up_proj", h, inter, false);
      row(p + "mlp.down_proj", inter, h, false);
    } else {
      column(p + "fc1", h, inter, true);
      row(p + "fc2", inter, h, true);
    }
  }
  if (llama || c.norm_before) norm(llama ? "model.norm" : "model.decoder.final_layer_norm");
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, c.embed_dim()}, 0, /*pad=*/true);
  return weights;
}

ModelConfig planned_architecture(const ModelSettings& settings) {
  const std::filesystem::path config_json = std::filesystem::path(settings.path) / "config.json";
  if (!settings.path.empty() && std::filesystem::exists(config_json))
    return ModelConfig::from_file(config_json.string());
  if (!settings.architecture.empty()) return model::architecture(settings.architecture);
  throw UsageError(fmt::format("the model's architecture is unknown: {} and model.architecture is empty (one of: {})",
                               settings.path.empty() ? "model.path is empty" : config_json.string() + " does not exist",
                               fmt::join(model::architecture_names(), ", ")));
}

MemoryPlan plan_memory(const QforgeConfig& config, const ModelConfig& model, PlanStage stage, int ranks) {
  return PlanBuilder(config, model, stage, ranks).build();
}

std::string suggest_layout(const QforgeConfig& config, const ModelConfig& model, PlanStage stage, int ranks,
                           int64_t limit_bytes) {
  for (int64_t world = ranks; world <= 4096; world *= 2) {
    for (int tp = 1; tp <= world; ++tp) {
      if (world % tp != 0 || (world == ranks && tp < config.parallel.tp)) continue;
      for (int variant = 0; variant < 3; ++variant) {  // as configured; ZeRO-1 on; ZeRO-1 and recomputation on
        QforgeConfig changed = config;
        changed.parallel.tp = tp;
        changed.train.zero = config.train.zero || variant >= 1;
        changed.train.recompute = config.train.recompute || variant >= 2;
        try {
          if (plan_memory(changed, model, stage, static_cast<int>(world)).total() > limit_bytes) continue;
        } catch (const UsageError&) {
          break;  // this tp does not divide the model
        }
        std::string text = fmt::format("parallel.tp={}", tp);
        if (stage == PlanStage::kQat && changed.train.zero != config.train.zero) text += " train.zero=true";
        if (stage == PlanStage::kQat && changed.train.recompute != config.train.recompute)
          text += " train.recompute=true";
        return text + fmt::format(" on {} ranks (TP {} x DP {})", world, tp, world / tp);
      }
    }
  }
  return "";
}

}  // namespace qforge
