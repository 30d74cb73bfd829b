#include "framework/model/transformer.h"

#include "framework/common/checksum.h"
#include "framework/common/error.h"
#include "framework/model/training_grads.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace qforge::model {

// Hugging Face's rotate-half RoPE tables and the additive causal mask, built once per forward pass instead of
// once per layer. The mask is one [T, T] triangle when the positions are 0..T-1 in every row (training,
// evaluation), else [B, 1, T, keys] from the positions. (A RoPE as roll + addcmul with the score scale folded
// into q's tables saves three operations per layer but rounds differently: GPTQ's act-order then flips
// near-ties between TP layouts.)
struct AttentionTables {
  torch::Tensor positions;  // held, so that its address cannot name another tensor
  uint32_t version = 0;     // its _version() when the tables were made: an in-place change remakes them
  int64_t head_dim = 0;
  double theta = 0;
  bool by_position = false;  // keys sit at index == position in a KV cache
  torch::Tensor cos, sin;    // [B, 1, T, head_dim]
  torch::Tensor mask;        // fp32, 0 or -inf: [T, T] (triangle) or [B, 1, T, keys]
  bool triangle = false;
  int64_t query_block = 0;          // queries per block
  std::vector<int64_t> block_keys;  // keys each block of queries sees
  int64_t keys = 0;                 // keys in all (the cache's used length)

  bool matches(const torch::Tensor& p, int64_t d, double t, bool cached, int64_t block) const {
    return positions.defined() && positions.unsafeGetTensorImpl() == p.unsafeGetTensorImpl() &&
           version == p._version() && head_dim == d && theta == t && by_position == cached && query_block == block;
  }
};

namespace {

// Causal attention is computed a block of queries at a time, each against the keys it can see only: half the
// work of a full [T, T] score matrix, and blocks small enough to stay in cache. Training's steps
// (TrainingKernels) use blocks of 64: at 128 tokens a quarter less attention work (10 ms of a 1.3 s QAT step on
// the 512 model), but the scores round differently from evaluation's blocks of 128, which stay as they were.
constexpr int64_t kQueryBlock = 128;
constexpr int64_t kTrainingQueryBlock = 64;

void fill_tables(AttentionTables& t, const torch::Tensor& positions, int64_t head_dim, double theta, bool rope,
                 bool cached, int64_t query_block) {
  torch::NoGradGuard no_grad;
  t = AttentionTables{};
  t.positions = positions;
  t.version = positions._version();
  t.head_dim = head_dim;
  t.theta = theta;
  t.by_position = cached;
  t.query_block = query_block;
  const int64_t batch = positions.size(0), length = positions.size(1);
  if (rope) {
    torch::Tensor exponents = torch::arange(0, head_dim, 2, torch::kDouble) / static_cast<double>(head_dim);
    torch::Tensor inv_freq = (1.0 / torch::pow(theta, exponents)).to(torch::kFloat).to(positions.device());
    torch::Tensor freqs = positions.to(torch::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, hd/2]
    torch::Tensor angles = torch::cat({freqs, freqs}, -1).unsqueeze(1);
    t.cos = angles.cos();
    t.sin = angles.sin();
  }
  const torch::TensorOptions fp32 = positions.options().dtype(torch::kFloat);
  const float hidden = -std::numeric_limits<float>::infinity();
  torch::Tensor key_positions = positions;
  if (cached) {
    t.keys = positions.max().item<int64_t>() + 1;
    key_positions = torch::arange(t.keys, positions.options()).unsqueeze(0).expand({batch, t.keys});
  } else {
    t.keys = length;
    t.triangle = torch::equal(positions, torch::arange(length, positions.options()).unsqueeze(0).expand_as(positions));
  }
  if (t.triangle) {
    t.mask = torch::full({length, length}, hidden, fp32).triu_(1);
  } else {
    torch::Tensor masked = key_positions.view({batch, 1, 1, -1}) > positions.view({batch, 1, -1, 1});
    t.mask = torch::zeros(masked.sizes(), fp32).masked_fill_(masked, hidden);
  }
  for (int64_t start = 0; start < length; start += query_block) {
    const int64_t count = std::min(query_block, length - start);
    t.block_keys.push_back(cached ? positions.narrow(1, start, count).max().item<int64_t>() + 1 : start + count);
  }
}

uint64_t fnv1a(const std::string& text, uint64_t seed) { return fnv1a64(text, kFnv1aOffset ^ seed); }

std::string layer_prefix(const ModelConfig& c, int64_t i) {
  return c.family == Family::kLlama ? fmt::format("model.layers.{}.", i) : fmt::format("model.decoder.layers.{}.", i);
}

// softmax(q k^T + mask) v for pre-scaled q [B, kv heads, t G, d] (group_heads: G query heads per key/value head,
// interleaved by position), k and v [B, kv heads, l, d] and an additive mask that broadcasts to [B, 1, t, l]: four
// operations, one matrix product per key/value head for all of its query heads. The result is [B, kv heads, t G, d].
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask,
                     int64_t group, const Site& probs) {
  torch::Tensor scores = torch::matmul(q.to(torch::kFloat), k.to(torch::kFloat).transpose(-2, -1));
  const int64_t batch = scores.size(0), kv_heads = scores.size(1), keys = scores.size(3);
  scores.view({batch, kv_heads, scores.size(2) / group, group, keys}).add_(mask.unsqueeze(-2));
  return torch::matmul(probs(torch::softmax(scores, -1)).to(v.scalar_type()), v);
}

// A decoder block that keeps only its input: the backward pass runs the block again under autograd and
// back-propagates through that (parameter gradients accumulate there). Collectives inside the block run again
// too, in the same order on every rank.
struct RecomputedBlock : torch::autograd::Function<RecomputedBlock> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& positions, int64_t block_handle) {
    ctx->save_for_backward({x, positions});
    ctx->saved_data["block"] = block_handle;
    torch::NoGradGuard no_grad;
    return block_of(block_handle).forward(x, positions, nullptr, nullptr);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor x = saved[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      ObserversPaused observed_in_the_forward_pass;
      y = block_of(ctx->saved_data["block"].toInt()).forward(x, saved[1], nullptr, nullptr);
    }
    torch::autograd::backward({y}, {grads[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor()};
  }
  static DecoderBlockImpl& block_of(int64_t handle) {
    return *reinterpret_cast<DecoderBlockImpl*>(static_cast<intptr_t>(handle));
  }
};

}  // namespace

// ---- Norm ----------------------------------------------------------------------------------------------------

NormImpl::NormImpl(const std::string& name, const ModelConfig& config, int64_t dim, WeightTable& table)
    : name_(name), rms_(config.family == Family::kLlama), eps_(config.norm_eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  table.add(name + ".weight", weight, {dim}, ShardSpec{});
  if (!rms_) {
    bias = register_parameter("bias", torch::zeros({dim}));
    table.add(name + ".bias", bias, {dim}, ShardSpec{});
  }
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  torch::Tensor x32 = x.to(torch::kFloat);
  if (!rms_) {
    torch::Tensor normed = torch::layer_norm(x32, {x.size(-1)}, weight.to(torch::kFloat), bias.to(torch::kFloat), eps_);
    if (output_index.defined()) normed = normed.index_select(-1, output_index);
    return output_site(normed.to(x.scalar_type()));
  }
  const bool fp32 = x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat;
  // fp32: the same operations, with a fused backward pass.
  torch::Tensor y = fp32 ? rms_norm(x32, weight, eps_)
                         : weight * (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps_)).to(x.scalar_type());
  return output_site(output_index.defined() ? y.index_select(-1, output_index) : y);
}

// ---- Attention ---------------------------------------------------------------------------------------------

AttentionImpl::AttentionImpl(const std::string& name, const ModelConfig& config, dist::Communicator& tp,
                             WeightTable& table)
    : name_(name),
      config_(config),
      local_heads_(config.num_heads / tp.size()),
      local_kv_heads_(config.num_kv_heads / tp.size()) {
  const bool bias = config.family == Family::kOpt;
  const int64_t hidden = config.hidden_size, kv_width = config.num_kv_heads * config.head_dim();
  q_proj = register_module("q_proj", ColumnParallelLinear(name + ".q_proj", hidden, hidden, bias, tp, table));
  k_proj = register_module("k_proj", ColumnParallelLinear(name + ".k_proj", hidden, kv_width, bias, tp, table));
  v_proj = register_module("v_proj", ColumnParallelLinear(name + ".v_proj", hidden, kv_width, bias, tp, table));
  const std::string out_name = config.family == Family::kLlama ? ".o_proj" : ".out_proj";
  o_proj = register_module("o_proj", RowParallelLinear(name + out_name, hidden, hidden, bias, tp, table));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* cache_keys,
                                     torch::Tensor* cache_values) {
  const int64_t batch = x.size(0), length = x.size(1), head_dim = config_.head_dim();
  const torch::Tensor input = copy_to_tp(x, q_proj->tp());  // one backward all-reduce for q, k and v
  torch::Tensor q = q_site(q_proj->forward_shared(input).view({batch, length, local_heads_, head_dim}).transpose(1, 2));
  torch::Tensor k =
      k_site(k_proj->forward_shared(input).view({batch, length, local_kv_heads_, head_dim}).transpose(1, 2));
  torch::Tensor v =
      v_site(v_proj->forward_shared(input).view({batch, length, local_kv_heads_, head_dim}).transpose(1, 2));
  const bool rope = config_.family == Family::kLlama, cached = cache_keys != nullptr;
  if (!tables) tables = std::make_shared<AttentionTables>();
  const int64_t query_block = TrainingKernels::active() ? kTrainingQueryBlock : kQueryBlock;
  if (!tables->matches(positions, head_dim, config_.rope_theta, cached, query_block))
    fill_tables(*tables, positions, head_dim, config_.rope_theta, rope, cached, query_block);
  const AttentionTables& t = *tables;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));  // of the scores, applied to q
  const int64_t group = local_heads_ / local_kv_heads_;
  bool q_done = false;                 // q already scaled and grouped (by the fused RoPE)
  if (rope && rope_index.defined()) {  // each kv head's channels in their permuted order; q heads follow their kv head
    torch::Tensor kv_index = rope_index.view({1, local_kv_heads_, 1, head_dim}).expand({batch, -1, length, -1});
    torch::Tensor q_index =
        rope_index.repeat_interleave(group, 0).view({1, local_heads_, 1, head_dim}).expand({batch, -1, length, -1});
    q = q * t.cos.expand_as(q).gather(-1, q_index) + rotate_half(q) * t.sin.expand_as(q).gather(-1, q_index);
    k = k * t.cos.expand_as(k).gather(-1, kv_index) + rotate_half(k) * t.sin.expand_as(k).gather(-1, kv_index);
  } else if (rope) {
    q = rotary(q, t.cos, t.sin, scale, group);  // the same roundings as scaling afterwards
    k = rotary(k, t.cos, t.sin);
    q_done = true;
  }
  k = k_cache_site(k);
  v = v_cache_site(v);

  if (cached) {
    torch::Tensor slots = positions.view({batch, 1, length, 1}).expand({batch, local_kv_heads_, length, head_dim});
    cache_keys->scatter_(2, slots, k.to(cache_keys->scalar_type()));
    cache_values->scatter_(2, slots, v.to(cache_values->scalar_type()));
    k = cache_keys->narrow(2, 0, t.keys);
    v = cache_values->narrow(2, 0, t.keys);
  }
  if (!q_done) q = group_heads(q * scale, group);
  // Views chosen for the backward pass: q's blocks by one split (its gradient is one concatenation), and k and v
  // whole where a block sees every key (a narrowed view's gradient is a zero-filled full tensor to accumulate).
  const std::vector<torch::Tensor> q_blocks =
      t.block_keys.size() == 1 ? std::vector<torch::Tensor>{q} : q.split(t.query_block * group, 2);
  auto first_keys = [](const torch::Tensor& x, int64_t keys) { return keys == x.size(2) ? x : x.narrow(2, 0, keys); };
  std::vector<torch::Tensor> blocks;
  for (size_t b = 0; b < t.block_keys.size(); ++b) {
    const int64_t start = static_cast<int64_t>(b) * t.query_block, count = std::min(t.query_block, length - start);
    const int64_t keys = t.block_keys[b];
    const torch::Tensor mask = t.triangle ? t.mask.narrow(0, start, count).narrow(1, 0, keys)
                                          : t.mask.narrow(2, start, count).narrow(3, 0, keys);
    blocks.push_back(attend(q_blocks[b], first_keys(k, keys), first_keys(v, keys), mask, group, probs_site));
  }
  // [B, kv heads, T G, d] -> [B, T, kv heads, G, d]: heads in their order (head j G + g)
  torch::Tensor context = (blocks.size() == 1 ? blocks[0] : torch::cat(blocks, 2))
                              .view({batch, local_kv_heads_, length, group, head_dim})
                              .transpose(1, 2)
                              .reshape({batch, length, local_heads_ * head_dim});
  return o_proj(context);
}

// ---- MLP -----------------------------------------------------------------------------------------------------

MlpImpl::MlpImpl(const std::string& prefix, const ModelConfig& config, dist::Communicator& tp, WeightTable& table)
    : gated_(config.family == Family::kLlama) {
  const int64_t hidden = config.hidden_size, width = config.intermediate_size;
  if (gated_) {
    gate = register_module("gate", ColumnParallelLinear(prefix + "mlp.gate_proj", hidden, width, false, tp, table));
    up = register_module("up", ColumnParallelLinear(prefix + "mlp.up_proj", hidden, width, false, tp, table));
    down = register_module("down", RowParallelLinear(prefix + "mlp.down_proj", width, hidden, false, tp, table));
  } else {
    up = register_module("up", ColumnParallelLinear(prefix + "fc1", hidden, width, true, tp, table));
    down = register_module("down", RowParallelLinear(prefix + "fc2", width, hidden, true, tp, table));
  }
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  if (gated_) {
    const torch::Tensor input = copy_to_tp(x, up->tp());  // one backward all-reduce for gate and up
    return down(swiglu(gate->forward_shared(input), up->forward_shared(input)));
  }
  return down(torch::relu(up(x)));
}

// ---- decoder block -----------------------------------------------------------------------------------------

DecoderBlockImpl::DecoderBlockImpl(const std::string& prefix, const ModelConfig& config, dist::Communicator& tp,
                                   WeightTable& table)
    : norm_before_(config.norm_before) {
  const bool llama = config.family == Family::kLlama;
  attention_norm = register_module("attention_norm", Norm(prefix + (llama ? "input_layernorm" : "self_attn_layer_norm"),
                                                          config, config.hidden_size, table));
  attention = register_module("attention", Attention(prefix + "self_attn", config, tp, table));
  mlp_norm = register_module("mlp_norm", Norm(prefix + (llama ? "post_attention_layernorm" : "final_layer_norm"),
                                              config, config.hidden_size, table));
  mlp = register_module("mlp", Mlp(prefix, config, tp, table));
}

torch::Tensor DecoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& positions,
                                        torch::Tensor* cache_keys, torch::Tensor* cache_values) {
  if (norm_before_) {
    torch::Tensor h = x + attention(attention_norm(x), positions, cache_keys, cache_values);
    return h + mlp(mlp_norm(h));
  }
  torch::Tensor h = attention_norm(x + attention(x, positions, cache_keys, cache_values));  // OPT-350m: post-norm
  return mlp_norm(h + mlp(h));
}

// ---- model ---------------------------------------------------------------------------------------------------

CausalLM::CausalLM(ModelConfig config, dist::Communicator& tp) : config_(std::move(config)), tp_(tp) {
  const ModelConfig& c = config_;
  c.check_tensor_parallel(tp.size());
  const bool llama = c.family == Family::kLlama;
  const std::string base = llama ? "model." : "model.decoder.";
  embed_tokens = register_module(
      "embed_tokens", VocabParallelEmbedding(base + "embed_tokens", c.vocab_size, c.embed_dim(), tp, table_));
  if (!llama) {
    embed_positions = register_module("embed_positions", torch::nn::Embedding(c.max_positions + 2, c.hidden_size));
    table_.add(base + "embed_positions.weight", embed_positions->weight, {c.max_positions + 2, c.hidden_size},
               ShardSpec{});
  }
  if (c.has_projections()) {
    project_in = register_module("project_in",
                                 torch::nn::Linear(torch::nn::LinearOptions(c.embed_dim(), c.hidden_size).bias(false)));
    project_out = register_module(
        "project_out", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.embed_dim()).bias(false)));
    table_.add(base + "project_in.weight", project_in->weight, {c.hidden_size, c.embed_dim()}, ShardSpec{});
    table_.add(base + "project_out.weight", project_out->weight, {c.embed_dim(), c.hidden_size}, ShardSpec{});
  }
  auto tables = std::make_shared<AttentionTables>();
  for (int64_t i = 0; i < c.num_layers; ++i) {
    layers.push_back(register_module(fmt::format("layer{}", i), DecoderBlock(layer_prefix(c, i), c, tp, table_)));
    layers.back()->attention->tables = tables;
  }
  if (llama || c.norm_before)
    final_norm = register_module(
        "final_norm", Norm(llama ? "model.norm" : "model.decoder.final_layer_norm", c, c.hidden_size, table_));
  head = register_module("head", VocabParallelHead("lm_head", c.vocab_size, c.embed_dim(), tp, table_,
                                                   c.tie_word_embeddings ? &embed_tokens : nullptr));
}

torch::Tensor CausalLM::default_positions(int64_t batch, int64_t length) const {
  return torch::arange(length, embed_tokens->weight.options().dtype(torch::kLong).requires_grad(false))
      .unsqueeze(0)
      .expand({batch, length});
}

torch::Tensor CausalLM::embed(const torch::Tensor& ids, const torch::Tensor& positions) {
  torch::Tensor h = embed_tokens(ids.to(embed_tokens->weight.device()));
  if (project_in) h = project_in(h);
  if (embed_positions) h = h + embed_positions(positions + 2);  // OPT's learned positions start at offset 2
  return h;
}

torch::Tensor CausalLM::finish(const torch::Tensor& hidden) {
  torch::Tensor h = final_norm ? final_norm(hidden) : hidden;
  if (project_out) h = project_out(h);
  return head(h).to(torch::kFloat);
}

torch::Tensor CausalLM::forward(const torch::Tensor& input_ids, torch::Tensor positions, KvCache* cache) {
  const torch::Device device = embed_tokens->weight.device();
  const torch::Tensor ids = input_ids.to(device);
  const int64_t batch = ids.size(0), length = ids.size(1);
  positions = positions.defined() ? positions.to(device) : default_positions(batch, length);
  if (cache && positions.max().item<int64_t>() >= cache->capacity)
    throw Error(fmt::format("position {} is past the KV cache's capacity {}", positions.max().item<int64_t>(),
                            cache->capacity));
  torch::Tensor h = embed(ids, positions);
  const bool recompute = recompute_blocks && !cache && torch::GradMode::is_enabled();
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (recompute)
      h = RecomputedBlock::apply(h, positions, reinterpret_cast<intptr_t>(layers[i].get()));
    else
      h = layers[i](h, positions, cache ? &cache->keys[i] : nullptr, cache ? &cache->values[i] : nullptr);
  }
  return finish(h);
}

KvCache CausalLM::make_cache(int64_t batch, int64_t capacity) const {
  KvCache cache;
  cache.capacity = capacity;
  const int64_t local_kv = config_.num_kv_heads / tp_.size();
  torch::TensorOptions options = embed_tokens->weight.options().requires_grad(false);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    cache.keys.push_back(torch::zeros({batch, local_kv, capacity, config_.head_dim()}, options));
    cache.values.push_back(torch::zeros({batch, local_kv, capacity, config_.head_dim()}, options));
  }
  return cache;
}

void init_random(CausalLM& model, uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  for (const WeightEntry& e : model.weights().entries()) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(fnv1a(e.name, seed));
    torch::Tensor full = torch::randn(e.full_shape, generator, torch::kFloat) * std;
    const bool is_norm = e.name.find("norm") != std::string::npos;
    if (is_norm && e.name.size() > 7 && e.name.compare(e.name.size() - 7, 7, ".weight") == 0) full = full * 5 + 1.0;
    if (e.spec.replicated()) {
      e.param.copy_(full);
    } else {
      const int64_t stored = e.spec.stored_length();
      e.param.zero_();
      e.param.narrow(e.spec.dim, 0, stored).copy_(full.narrow(e.spec.dim, e.spec.start, stored));
    }
  }
}

}  // namespace qforge::model
