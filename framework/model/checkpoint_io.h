// Hugging Face checkpoints in and out of a tensor-parallel CausalLM. Loading reads only this rank's slice of
// each tensor (by the WeightTable's name rules) from the memory-mapped safetensors; saving gathers each tensor
// over the TP group and writes config.json + safetensors on TP rank 0, atomically.
#pragma once

#include "framework/model/transformer.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace qforge::io {
class Checkpoint;
}

namespace qforge::model {

// Fills this rank's shard of one parameter from `checkpoint` (what load_weights does for each); call it under
// torch::NoGradGuard.
void load_entry(const WeightEntry& e, const io::Checkpoint& checkpoint, const std::string& dir);

// The full tensor of `e`, gathered over the TP group (vocabulary padding dropped). Collective over `tp`.
torch::Tensor gather_full(const WeightEntry& e, dist::Communicator& tp);

// config.json + weights from `dir`, sharded over `tp`: every parameter is created in `dtype` and read straight
// into it from the file, one tensor at a time (a bf16 checkpoint loaded as bf16 never exists in fp32), then the
// model moves to `device`. Linears stored quantized (config.json's quantization_config; see
// quantized_checkpoint.h) are dequantized, each rank reading only what its shard needs.
std::shared_ptr<CausalLM> load_pretrained(const std::string& dir, dist::Communicator& tp,
                                          torch::ScalarType dtype = torch::kFloat, torch::Device device = torch::kCPU);

// A fingerprint of the checkpoint in `dir` that does not depend on how it is sharded or loaded: FNV-1a over every
// tensor's name, dtype, shape and its first and last rows (16 hex digits). Cheap for any model size; it tells
// checkpoints apart, it does not prove two are bit-identical.
std::string checkpoint_fingerprint(const std::string& dir);

// The inverse of parse_dtype; throws for other dtypes.
std::string dtype_name(torch::ScalarType dtype);

// "float32", "bfloat16", "float16" -> dtype; throws UsageError naming model.dtype otherwise.
torch::ScalarType parse_dtype(const std::string& name);

// When `write` (pass true on one TP group only, e.g. DP rank 0, and the same value on every rank of a TP group):
// collective over the model's TP group, which gathers one tensor at a time while its TP rank 0 streams it into
// `dir` (sharded above max_shard_bytes when > 0; see io::CheckpointWriter), then writes config.json. No rank
// holds more than its shard and one gathered tensor. Other groups return at once. `config_extra`'s keys are added
// to config.json (e.g. a quantization_config), which is written last: the checkpoint is complete once it exists.
void save_pretrained(CausalLM& model, const std::string& dir, bool write, int64_t max_shard_bytes = 0,
                     const nlohmann::json& config_extra = nlohmann::json::object());

// Imports a llama2.c checkpoint (legacy fp32 format: 7 int32 header dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size (negative: separate classifier), seq_len) into a Hugging Face LLaMA checkpoint in
// `out_dir`, permuting q/k rows from llama2.c's interleaved rotary pairs to Hugging Face's rotate-half, and
// copies `tokenizer` (a llama2.c tokenizer.bin) beside it as tokenizer.bin. Single process.
void convert_llama2c(const std::string& checkpoint_path, const std::string& tokenizer_path, const std::string& out_dir);

}  // namespace qforge::model
