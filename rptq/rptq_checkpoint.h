// RPTQ's checkpoint (docs/rptq.md): a Hugging Face checkpoint of the reordered weights, fake-quantized or in the
// GPTQ checkpoint format, whose config.json carries quantization_config {"quant_method": "rptq", ...}, and beside
// it `rptq.safetensors` with, per decoder layer, the norms' output orders, the RoPE pair orders (LLaMA) and the
// static activation quantizers' per-channel scale and zero point. `qforge eval ppl --model DIR` runs it with those
// quantizers.
#pragma once

#include "quant/gptq_checkpoint.h"
#include "rptq/rptq.h"

#include <nlohmann/json.hpp>

namespace qforge::rptq {

inline constexpr const char* kRptqFile = "rptq.safetensors";

// The quantization_config of the checkpoint.
nlohmann::json rptq_quantization_config(const quant::PtqSettings& ptq, const RptqSettings& settings,
                                        model::CausalLM& model);

// Writes the checkpoint into `dir` (rptq.safetensors, the weights, config.json last): the weights fake-quantized,
// or, given `packed` (the PTQ report's GPTQ grids), in the GPTQ checkpoint format, with quantization_config
// {"quant_method": "rptq", "weights_format": "gptq", "gptq": {GPTQ's}, ...}. Collective over the TP group as
// save_pretrained; `write` as there.
void save_rptq(model::CausalLM& model, const std::vector<RptqLayer>& layers, const quant::PtqSettings& ptq,
               const RptqSettings& settings, const std::string& dir, bool write, int64_t max_shard_bytes,
               const quant::GptqExport* packed = nullptr);

// Registers the "rptq" reader (and the "gptq" one it uses) with the framework's loader (before loading).
void register_rptq_reader();

}  // namespace qforge::rptq
