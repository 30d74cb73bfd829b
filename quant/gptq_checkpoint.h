// Whole models in the GPTQ checkpoint format (gptq_format.h): the writer for PTQ results and the QAT student, and
// the reader load_pretrained uses for any checkpoint whose config.json says quant_method "gptq" (AutoGPTQ's,
// GPTQModel's, ours).
//
// The writer streams, like model::save_pretrained: one linear (or tensor) at a time is gathered over the TP group
// to its rank 0, packed and written; every other tensor is stored fp16 and config.json says torch_dtype float16.
// Codes are not kept during quantization: each linear's weight already holds scale * (q - zero) (the fake-quantized
// value), so the writer recovers q = round(w / scale) + zero from the weight and the scales, and checks that every
// weight lies on its grid. A linear whose shape the format cannot hold (inputs not a multiple of 32, outputs not a
// multiple of 32 / gcd(32, bits)) is kept as an fp16 weight, named in the log and in the config (transformers'
// modules_in_block_to_quantize, GPTQModel's dynamic exclusions).
#pragma once

#include "framework/model/transformer.h"
#include "quant/gptq_format.h"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace qforge::quant {

// One quantized linear on this rank: its weight's grid.
struct QuantizedLinear {
  torch::Tensor scales;  // fp32 [rows, groups]: the weight shard's rows (column-parallel), or all rows (row-parallel)
  torch::Tensor zeros;   // the scales' shape: integers in [0, 2^bits - 1] (symmetric: 2^(bits - 1))
  torch::Tensor g_idx;   // integer [in], the whole input: the group (column of scales) of each input feature
};

struct GptqExport {
  GptqQuantizationConfig config;  // bits, group_size, sym, ...; checkpoint_format and desc_act are the writer's
  std::map<std::string, QuantizedLinear> linears;  // by weight name, "model.layers.0.self_attn.q_proj.weight"
};

struct GptqExportReport {
  int64_t bytes = 0;                 // of the files written (on the writing TP group; 0 elsewhere)
  std::string checkpoint_format;     // "gptq" or "gptq_v2"
  std::vector<std::string> packed;   // modules stored packed
  std::vector<std::string> kept;     // quantized modules whose shape the format cannot hold, kept fp16
};

// Throws UsageError naming `key` when `bits` cannot be stored in the format (2, 3, 4, 8 can), ending with `hint`:
// for commands to check before the work that produces the weights.
void check_gptq_bits(int bits, const std::string& key, const std::string& hint = "");

// Collective over the model's TP group when `write` (the same value on every rank of a TP group; true on one group,
// e.g. DP rank 0): writes `dir` (config.json, quantize_config.json, the safetensors, sharded above max_shard_bytes
// when > 0). checkpoint_format: "gptq" (v1) when no zero point is 0, else "gptq_v2". Throws qforge::Error naming the
// layer for a weight off its grid or a scale fp16 cannot hold.
// `quantization_config`, when given, makes config.json's quantization_config from the GPTQ one (a method that
// stores its weights in this format inside its own, e.g. RPTQ's); quantize_config.json keeps the GPTQ one.
GptqExportReport export_gptq(model::CausalLM& model, const GptqExport& quantized, const std::string& dir, bool write,
                             int64_t max_shard_bytes = 0,
                             const std::function<nlohmann::json(const nlohmann::json&)>& quantization_config = {});

// Registers the reader of quant_method "gptq" with load_pretrained (model/quantized_checkpoint.h): 2, 3, 4 and
// 8 bits, v1 and v2 zeros, trivial and act-order g_idx (with desc_act false the groups are i / group_size, as the
// loaders assume); each rank reads the packed words its shard covers. Idempotent.
void register_gptq_reader();

}  // namespace qforge::quant
