// Hugging Face checkpoints in and out of a tensor-parallel CausalLM. Loading reads only this rank's slice of
// each tensor (by the WeightTable's name rules) from the memory-mapped safetensors; saving gathers each tensor
// over the TP group and writes config.json + safetensors on TP rank 0, atomically.
#pragma once

#include "framework/model/transformer.h"

#include <memory>
#include <string>

namespace qforge::io {
class Checkpoint;
}

namespace qforge::model {

// Fills this rank's shard of every parameter from `checkpoint`. A missing tensor or a shape that disagrees with
// config.json is an Error naming the tensor and both shapes.
void load_weights(CausalLM& model, const io::Checkpoint& checkpoint, const std::string& dir);

// Fills this rank's shard of one parameter from `checkpoint` (what load_weights does for each); call it under
// torch::NoGradGuard.
void load_entry(const WeightEntry& e, const io::Checkpoint& checkpoint, const std::string& dir);

// The full tensor of `e`, gathered over the TP group (vocabulary padding dropped). Collective over `tp`.
torch::Tensor gather_full(const WeightEntry& e, dist::Communicator& tp);

// config.json + weights from `dir`, sharded over `tp`, then moved to `device` and `dtype` (fp32 on CPU; bf16 or
// fp16 on CUDA).
std::shared_ptr<CausalLM> load_pretrained(const std::string& dir, dist::Communicator& tp,
                                          torch::ScalarType dtype = torch::kFloat, torch::Device device = torch::kCPU);

// A fingerprint of the checkpoint in `dir` that does not depend on how it is sharded or loaded: FNV-1a over every
// tensor's name, dtype, shape and its first and last rows (16 hex digits). Cheap for any model size; it tells
// checkpoints apart, it does not prove two are bit-identical.
std::string checkpoint_fingerprint(const std::string& dir);

// "float32", "bfloat16", "float16" -> dtype; throws UsageError naming model.dtype otherwise.
torch::ScalarType parse_dtype(const std::string& name);

// Collective over the model's TP group: gathers every tensor. When `write` (pass true on one TP group only,
// e.g. DP rank 0), its TP rank 0 writes `dir`/config.json and the safetensors (sharded above max_shard_bytes
// when > 0).
void save_pretrained(CausalLM& model, const std::string& dir, bool write, int64_t max_shard_bytes = 0);

// Imports a llama2.c checkpoint (legacy fp32 format: 7 int32 header dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size (negative: separate classifier), seq_len) into a Hugging Face LLaMA checkpoint in
// `out_dir`, permuting q/k rows from llama2.c's interleaved rotary pairs to Hugging Face's rotate-half, and
// copies `tokenizer` (a llama2.c tokenizer.bin) beside it as tokenizer.bin. Single process.
void convert_llama2c(const std::string& checkpoint_path, const std::string& tokenizer_path, const std::string& out_dir);

}  // namespace qforge::model
