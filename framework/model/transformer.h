// One decoder-only transformer for the LLaMA and OPT families, tensor-parallel over a TP communicator.
// The family only switches options: RMSNorm or LayerNorm, rotary or learned positions, SwiGLU or ReLU MLP,
// biases, pre- or post-norm, OPT's project_in/out. Parameters are registered in a WeightTable under their
// Hugging Face names. The same modules run under autograd (training) and in inference with a KV cache.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/model/model_config.h"
#include "framework/model/parallel.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

namespace qforge::model {

// Keys and values of every layer for a batch of sequences: [batch, local kv heads, capacity, head_dim].
// Each row writes at its own positions; attention reads only positions <= the query's, so a row can be
// restarted at position 0 without clearing what an earlier sequence left behind.
struct KvCache {
  std::vector<torch::Tensor> keys, values;
  int64_t capacity = 0;
};

class NormImpl : public torch::nn::Module {
 public:
  NormImpl(const std::string& name, const ModelConfig& config, int64_t dim, WeightTable& table);
  torch::Tensor forward(const torch::Tensor& x);
  const std::string& name() const { return name_; }
  torch::Tensor weight, bias;
  // When defined (int64 [dim]): the output is written in this channel order, output[..., i] = y[..., index[i]]
  // (a reorder fused into the norm, e.g. RPTQ's); the input (the residual stream) keeps its order.
  torch::Tensor output_index;
  Site output_site;

 private:
  std::string name_;
  bool rms_;
  double eps_;
};
TORCH_MODULE(Norm);

// What every layer's attention derives from one forward pass's positions (RoPE tables, the causal mask), made
// by the first layer and reused by the others (transformer.cpp).
struct AttentionTables;

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const std::string& name, const ModelConfig& config, dist::Communicator& tp, WeightTable& table);
  // x [B, T, hidden]; positions [B, T]; cache: (keys, values) of this layer or undefined tensors.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* cache_keys,
                        torch::Tensor* cache_values);
  const std::string& name() const { return name_; }  // "model.layers.0.self_attn"
  ColumnParallelLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr};
  RowParallelLinear o_proj{nullptr};
  // The projections' outputs [B, local heads, T, head_dim] before RoPE (KV quantizers attach at k and v for
  // LLM-QAT's pre-RoPE place), the keys and values the cache stores, after RoPE, and the attention
  // probabilities [B, local heads, queries, keys] (one block of queries at a time).
  Site q_site, k_site, v_site, k_cache_site, v_cache_site, probs_site;
  // When defined (int64 [local kv heads, head_dim]): the q and k projections' rows are permuted within each head
  // by this index (q heads by the index of their kv head), keeping rotate-half pairs (i, i + head_dim / 2) at
  // (j, j + head_dim / 2); RoPE then takes each channel's frequency from its original place.
  torch::Tensor rope_index;
  // Shared by the layers of one model (CausalLM sets it); each attention makes its own when unset.
  std::shared_ptr<AttentionTables> tables;

 private:
  std::string name_;
  const ModelConfig& config_;
  int64_t local_heads_, local_kv_heads_;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const std::string& prefix, const ModelConfig& config, dist::Communicator& tp, WeightTable& table);
  torch::Tensor forward(const torch::Tensor& x);
  ColumnParallelLinear gate{nullptr}, up{nullptr};  // LLaMA gate_proj, up_proj; OPT fc1 (up)
  RowParallelLinear down{nullptr};                   // LLaMA down_proj; OPT fc2

 private:
  bool gated_;
};
TORCH_MODULE(Mlp);

class DecoderBlockImpl : public torch::nn::Module {
 public:
  DecoderBlockImpl(const std::string& prefix, const ModelConfig& config, dist::Communicator& tp, WeightTable& table);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* cache_keys,
                        torch::Tensor* cache_values);
  Norm attention_norm{nullptr}, mlp_norm{nullptr};
  Attention attention{nullptr};
  Mlp mlp{nullptr};

 private:
  bool norm_before_;
};
TORCH_MODULE(DecoderBlock);

class CausalLM : public torch::nn::Module {
 public:
  CausalLM(ModelConfig config, dist::Communicator& tp);

  // Logits of this rank's vocabulary shard, fp32 [B, T, local vocab]. `positions` [B, T] (undefined:
  // 0..T-1 for every row). With a cache, keys and values are written at `positions` and attention reads
  // the cache; without one, attention is causal over `positions` within `ids`.
  torch::Tensor forward(const torch::Tensor& ids, torch::Tensor positions = {}, KvCache* cache = nullptr);

  KvCache make_cache(int64_t batch, int64_t capacity) const;

  // forward() in stages, for calibration that walks the model one decoder block at a time:
  // embed -> layers[i](h, positions, nullptr, nullptr) for each i -> finish == forward without a cache.
  // `positions` [B, T] on the model's device (default_positions for 0..T-1 in every row).
  torch::Tensor default_positions(int64_t batch, int64_t length) const;
  torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& positions);
  torch::Tensor finish(const torch::Tensor& hidden);  // final norm, OPT's project_out, head: fp32 logits

  const ModelConfig& config() const { return config_; }
  dist::Communicator& tp() { return tp_; }
  const WeightTable& weights() const { return table_; }
  int64_t vocab_start() const { return head->vocab_start(); }

  VocabParallelEmbedding embed_tokens{nullptr};
  torch::nn::Embedding embed_positions{nullptr};  // OPT
  torch::nn::Linear project_in{nullptr}, project_out{nullptr};  // OPT-350m
  std::vector<DecoderBlock> layers;
  Norm final_norm{nullptr};
  VocabParallelHead head{nullptr};
  // Training: keep only each decoder block's input and recompute its activations in the backward pass.
  bool recompute_blocks = false;

 private:
  ModelConfig config_;
  dist::Communicator& tp_;
  WeightTable table_;
};

// Every parameter of `model` from a deterministic N(0, std) draw (norm weights 1, biases small): the same full
// tensors on every TP size, sliced per rank, so sharded and unsharded models can be compared.
void init_random(CausalLM& model, uint64_t seed, double std = 0.02);

}  // namespace qforge::model
