// Named places in the model's computation where methods attach: any number of observers (calibration statistics,
// Hessians) and one transform (a quantizer, a reorder). Every decoder linear has an `input` and a `weight` site,
// every norm an `output` site, and every attention `q`, `k`, `v` (the projections' outputs [B, heads, T, d],
// before RoPE), `k_cache`, `v_cache` (after RoPE: what the KV cache stores) and `probs` (softmax probabilities, a
// block of queries at a time: [B, kv heads, queries x query heads per kv head, keys], attend() in transformer.cpp).
//
// A site passes a tensor through its transform (identity when none is set); observers are then called with the
// tensor the computation goes on with (after the transform), in the order they were added. Observers see values,
// not gradients: the tensor they get is detached. While an ObserversPaused guard lives on the thread (recomputed
// blocks in the backward pass), observers are not called, so a forward is observed once.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace qforge::model {

class CausalLM;

// A function applied to a tensor on its way into a computation (quantizers attach here); empty: identity.
using TensorHook = std::function<torch::Tensor(const torch::Tensor&)>;
using Observer = std::function<void(const torch::Tensor&)>;

class Site {
 public:
  using Handle = int64_t;

  torch::Tensor operator()(const torch::Tensor& x) const;

  // Adds an observer; the handle removes it. Observers run in the order they were added.
  Handle observe(Observer observer);
  // Removes the observer of `handle` (nothing when it is gone already).
  void remove(Handle handle);
  void clear_observers() { observers_.clear(); }
  std::size_t observer_count() const { return observers_.size(); }

  TensorHook transform;  // at most one; empty: identity

 private:
  std::vector<std::pair<Handle, Observer>> observers_;
  Handle next_handle_ = 0;
};

// Observers are not called on this thread while a guard lives (guards nest).
class ObserversPaused {
 public:
  ObserversPaused();
  ~ObserversPaused();
  ObserversPaused(const ObserversPaused&) = delete;
  ObserversPaused& operator=(const ObserversPaused&) = delete;
};

// Which activation a decoder linear reads; linears that read the same one share it (q/k/v; gate/up).
enum class LinearInput {
  kAttentionIn,   // the attention norm's output: q, k, v
  kAttentionOut,  // the attention context: o_proj / out_proj
  kMlpIn,         // the MLP norm's output: gate, up (OPT: fc1)
  kMlpHidden,     // the MLP's inner activation: down (OPT: fc2)
};
const char* to_string(LinearInput input);

// One decoder linear layer: its Hugging Face name ("model.layers.0.self_attn.q_proj") and its sites.
struct LinearSite {
  std::string name;
  int64_t layer = 0;
  LinearInput input_kind = LinearInput::kAttentionIn;
  bool row_parallel = false;  // weight [out, in/tp] with the input features split; else [out/tp, in]
  torch::Tensor weight;       // this rank's shard (the parameter itself)
  torch::Tensor bias;         // undefined when the layer has none
  Site* input = nullptr;
  Site* weight_site = nullptr;
};

// Every decoder linear of `model`, layer by layer, in the order q, k, v, o, gate, up, down (OPT: q, k, v,
// out_proj, fc1, fc2).
std::vector<LinearSite> decoder_linears(CausalLM& model);

// Every site of `model` under its name: "<module>.input", "<module>.weight" for linears (LM head included),
// "<norm>.output", "<layer>.self_attn.{q,k,v,k_cache,v_cache,probs}"; in model order.
std::vector<std::pair<std::string, Site*>> named_sites(CausalLM& model);

}  // namespace qforge::model
