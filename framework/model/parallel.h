// Megatron-style tensor-parallel building blocks over a TP Communicator:
//  - copy_to_tp / reduce_from_tp: identity forward + all-reduce backward, and the reverse (autograd-correct);
//  - ColumnParallelLinear (output features split), RowParallelLinear (input features split, output reduced);
//  - VocabParallelEmbedding and the vocabulary-parallel LM head, whose logits stay sharded by vocabulary;
//  - vocab_parallel_cross_entropy, vocab_parallel_argmax, gather_vocab: every sum over the vocabulary is
//    all-reduced across the TP group.
// Each layer records its parameters in a WeightTable under their Hugging Face names with the rule that slices
// them, so checkpoints are sharded at load time by name.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/model/sites.h"

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace qforge::model {

// How a parameter relates to the full tensor in a checkpoint.
struct ShardSpec {
  int64_t dim = -1;         // split dimension; -1: replicated on every TP rank
  int64_t start = 0;        // this rank's first index along dim
  int64_t length = 0;       // this rank's extent along dim (may run past full_extent: vocabulary padding)
  int64_t full_extent = 0;  // the checkpoint tensor's extent along dim
  bool replicated() const { return dim < 0; }
  int64_t stored_length() const { return std::max<int64_t>(0, std::min(length, full_extent - start)); }
};

struct WeightEntry {
  std::string name;     // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  torch::Tensor param;  // this rank's shard
  std::vector<int64_t> full_shape;
  ShardSpec spec;
};

class WeightTable {
 public:
  void add(std::string name, torch::Tensor param, std::vector<int64_t> full_shape, ShardSpec spec);
  const std::vector<WeightEntry>& entries() const { return entries_; }
  std::vector<torch::Tensor> parameters() const;

 private:
  std::vector<WeightEntry> entries_;
};

torch::Tensor copy_to_tp(const torch::Tensor& x, dist::Communicator& tp);
torch::Tensor reduce_from_tp(const torch::Tensor& x, dist::Communicator& tp);

// Split of `extent` over the group: {start, length}; `extent` must divide unless `pad` (vocabulary).
std::pair<int64_t, int64_t> shard_range(int64_t extent, const dist::Communicator& tp, bool pad = false);

class ColumnParallelLinearImpl : public torch::nn::Module {
 public:
  ColumnParallelLinearImpl(const std::string& name, int64_t in, int64_t out, bool bias, dist::Communicator& tp,
                           WeightTable& table);
  torch::Tensor forward(const torch::Tensor& x);
  // `x` already through copy_to_tp, done once by a caller that feeds several column-parallel layers (q, k, v;
  // gate, up): their input gradients are summed locally and all-reduced once, as Megatron's fused QKV does.
  torch::Tensor forward_shared(const torch::Tensor& x);
  const std::string& name() const { return name_; }  // Hugging Face module name
  dist::Communicator& tp() const { return tp_; }
  torch::Tensor weight, bias;
  Site input_site, weight_site;

 private:
  std::string name_;
  dist::Communicator& tp_;
};
TORCH_MODULE(ColumnParallelLinear);

class RowParallelLinearImpl : public torch::nn::Module {
 public:
  RowParallelLinearImpl(const std::string& name, int64_t in, int64_t out, bool bias, dist::Communicator& tp,
                        WeightTable& table);
  // `x` holds this rank's slice of the input features.
  torch::Tensor forward(const torch::Tensor& x);
  const std::string& name() const { return name_; }  // Hugging Face module name
  torch::Tensor weight, bias;
  Site input_site, weight_site;

 private:
  std::string name_;
  dist::Communicator& tp_;
};
TORCH_MODULE(RowParallelLinear);

// Embedding rows split over TP ranks; the vocabulary is padded to a multiple of the TP size.
class VocabParallelEmbeddingImpl : public torch::nn::Module {
 public:
  VocabParallelEmbeddingImpl(const std::string& name, int64_t vocab, int64_t dim, dist::Communicator& tp,
                             WeightTable& table);
  torch::Tensor forward(const torch::Tensor& ids);
  int64_t vocab_start() const { return start_; }
  int64_t local_vocab() const { return length_; }
  torch::Tensor weight;

 private:
  dist::Communicator& tp_;
  int64_t start_, length_;
};
TORCH_MODULE(VocabParallelEmbedding);

// Logits for this rank's vocabulary slice; padding entries are -inf so they never receive probability.
class VocabParallelHeadImpl : public torch::nn::Module {
 public:
  // `tied`: use the embedding's weight shard instead of a weight of its own.
  VocabParallelHeadImpl(const std::string& name, int64_t vocab, int64_t dim, dist::Communicator& tp, WeightTable& table,
                        const VocabParallelEmbedding* tied);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t vocab_start() const { return start_; }
  torch::Tensor weight;
  Site input_site, weight_site;

 private:
  dist::Communicator& tp_;
  int64_t vocab_, start_, length_;
};
TORCH_MODULE(VocabParallelHead);

// Per-row -log softmax(logits)[target] with logits [N, V_local] sharded by vocabulary (this shard starts at
// `vocab_start`) and targets [N] global ids. Differentiable, with the closed-form local gradient.
torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           dist::Communicator& tp, int64_t vocab_start);

// Global index of the largest logit per row (ties: the lowest index) from sharded logits [N, V_local].
torch::Tensor vocab_parallel_argmax(const torch::Tensor& logits, dist::Communicator& tp, int64_t vocab_start);

// Full logits [..., vocab] from shards [..., V_local] (padding dropped).
torch::Tensor gather_vocab(const torch::Tensor& logits, dist::Communicator& tp, int64_t vocab);

}  // namespace qforge::model
