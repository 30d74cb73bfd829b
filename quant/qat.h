// Quantization-aware training as in LLM-QAT: fake quantizers on the weight and the input of every decoder
// linear layer (q, k, v, o; gate/up/down or fc1/fc2) and on the key/value cache, attached through the model's
// hooks. Embeddings, the LM head, norms and the attention softmax stay in full precision.
//
// Under tensor parallelism a range that spans a dimension TP splits is max-reduced over the TP group, so the
// quantized model computes the same function at every TP size:
//   column-parallel weight [out/tp, in]: channel, group local; tensor reduced;
//   row-parallel weight [out, in/tp]:    channel, tensor reduced; group local (in/tp must be a multiple of it);
//   input of a column-parallel layer (replicated): local; of a row-parallel layer (features split): reduced;
//   KV pre_rope (per token over all heads): reduced; post_rope (per head): local.
#pragma once

#include "framework/config/config.h"
#include "framework/model/sites.h"
#include "framework/model/transformer.h"
#include "quant/gptq_checkpoint.h"
#include "quant/quantizer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::quant {

// "W-A-KV" bit widths, e.g. "4-8-4"; each 2..8, or 16 for full precision.
struct BitWidths {
  int weight = 16, act = 16, kv = 16;
};
// Throws UsageError naming quant.bits when `text` is not of that form.
BitWidths parse_bits(const std::string& text);

struct QuantSettings {  // config section `quant`
  std::string bits = "16-16-16";                 // W-A-KV, e.g. 4-8-4; 16 = off for that part
  std::string weight_granularity = "channel";    // tensor | channel | group
  int64_t group_size = 128;                      // input columns per weight range (group)
  bool weight_symmetric = true;
  std::string act_granularity = "token";         // token | tensor
  bool act_symmetric = true;
  std::string kv_place = "pre_rope";             // pre_rope: per token over all heads, before RoPE (LLM-QAT);
                                                 // post_rope: per head after RoPE, what a deployed cache stores
  bool kv_symmetric = true;
  double ste_clip = 2.0;                         // gradients zeroed where |x| > ste_clip; 0: plain STE
  std::vector<std::string> exclude;              // substrings of Hugging Face linear names kept in full precision

  template <class V>
  void visit(V& v) {
    v("bits", bits, [](const std::string& text) { return bits_format_problem(text); });
    v("weight_granularity", weight_granularity, config::one_of({"tensor", "channel", "group"}));
    v("group_size", group_size, config::at_least(1));
    v("weight_symmetric", weight_symmetric);
    v("act_granularity", act_granularity, config::one_of({"token", "tensor"}));
    v("act_symmetric", act_symmetric);
    v("kv_place", kv_place, config::one_of({"pre_rope", "post_rope"}));
    v("kv_symmetric", kv_symmetric);
    v("ste_clip", ste_clip, config::at_least(0));
    v("exclude", exclude);
  }

  QuantSpec weight_spec() const;
  QuantSpec act_spec() const;
  QuantSpec kv_spec() const;
  // "W int4 sym per-channel, A int8 sym per-token, KV int4 sym per-token (pre_rope)".
  std::string describe() const;

  // "" when `text` is a valid W-A-KV string, else what was expected (for the config check).
  static std::string bits_format_problem(const std::string& text);
};

struct AttachReport {
  int64_t quantized_linears = 0;  // linears with a weight or input quantizer
  int64_t attention_layers = 0;   // attentions with a KV quantizer
};

// Sets the quantizers as the transforms of the input and weight sites of every decoder linear not matched by
// settings.exclude and of the key/value sites of every attention (replacing any set before; observers stay). Throws UsageError when quant.group_size does not divide a weight's input columns
// (or, for a row-parallel layer, the columns each TP rank holds).
AttachReport attach_quantizers(model::CausalLM& model, const QuantSettings& settings);

// Clears every quantizer transform: the model is full precision again.
void detach_quantizers(model::CausalLM& model);

// Replaces every quantized weight by its fake-quantized value, e.g. before saving the student as an ordinary
// checkpoint. Collective over the model's TP group (ranges may be reduced). The transforms stay attached.
void bake_weight_quantizers(model::CausalLM& model);

// The grid of every decoder linear whose weights `settings` quantize (scales and zero points of quantize() on the
// current weights, ranges reduced over the TP group as fake_quantize reduces them), for export_gptq after
// bake_weight_quantizers. Symmetric codes are stored shifted by 2^(bits - 1) (the format's symmetric zero); per
// tensor and per channel ranges are one group per row (group_size -1). Empty when weights stay in full precision.
// Collective over the model's TP group. Throws UsageError for bit widths the format cannot hold.
GptqExport qat_gptq_export(model::CausalLM& model, const QuantSettings& settings);

// The decoder linears and their sites live in the framework (framework/model/sites.h).
using model::decoder_linears;
using model::LinearSite;

// Whether `name` contains one of the `exclude` substrings.
bool is_excluded(const std::string& name, const std::vector<std::string>& exclude);

}  // namespace qforge::quant
