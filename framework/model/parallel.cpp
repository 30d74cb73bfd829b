#include "framework/model/parallel.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <limits>

namespace qforge::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int64_t to_int(dist::Communicator& comm) { return reinterpret_cast<intptr_t>(&comm); }
dist::Communicator& from_int(const c10::IValue& value) {
  return *reinterpret_cast<dist::Communicator*>(static_cast<intptr_t>(value.toInt()));
}

torch::Tensor all_reduced(const torch::Tensor& x, dist::Communicator& comm) {
  torch::Tensor y = x.clone();
  comm.all_reduce(y, dist::ReduceOp::kSum);
  return y;
}

// Identity forward, all-reduce backward: the input of a column-parallel layer.
struct CopyToTp : torch::autograd::Function<CopyToTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_reduced(grads[0], from_int(ctx->saved_data["comm"])), torch::Tensor()};
  }
};

// All-reduce forward, identity backward: the output of a row-parallel layer.
struct ReduceFromTp : torch::autograd::Function<ReduceFromTp> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t comm) {
    return all_reduced(x, from_int(comm));
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], torch::Tensor()}; }
};

struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets,
                               int64_t comm_handle, int64_t vocab_start) {
    dist::Communicator& tp = from_int(comm_handle);
    torch::Tensor x = logits.to(torch::kFloat);
    torch::Tensor row_max = std::get<0>(x.max(-1));
    tp.all_reduce(row_max, dist::ReduceOp::kMax);
    torch::Tensor exp = (x - row_max.unsqueeze(-1)).exp();
    torch::Tensor sum_exp = exp.sum(-1);
    tp.all_reduce(sum_exp, dist::ReduceOp::kSum);

    const int64_t local = x.size(-1);
    torch::Tensor local_target = targets - vocab_start;
    torch::Tensor mine = (local_target >= 0) & (local_target < local);
    local_target = local_target.masked_fill(~mine, 0);
    torch::Tensor target_logit = x.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0);
    tp.all_reduce(target_logit, dist::ReduceOp::kSum);

    ctx->save_for_backward({exp / sum_exp.unsqueeze(-1), local_target, mine});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return sum_exp.log() + row_max - target_logit;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad = saved[0].clone();  // softmax
    const torch::Tensor& local_target = saved[1];
    const torch::Tensor& mine = saved[2];
    grad.scatter_add_(-1, local_target.unsqueeze(-1), -mine.to(grad.scalar_type()).unsqueeze(-1));
    grad.mul_(grads[0].unsqueeze(-1));
    auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void WeightTable::add(std::string name, torch::Tensor param, std::vector<int64_t> full_shape, ShardSpec spec) {
  entries_.push_back(WeightEntry{std::move(name), std::move(param), std::move(full_shape), spec});
}

std::vector<torch::Tensor> WeightTable::parameters() const {
  std::vector<torch::Tensor> params;
  for (const auto& e : entries_) params.push_back(e.param);
  return params;
}

torch::Tensor copy_to_tp(const torch::Tensor& x, dist::Communicator& tp) {
  return tp.size() == 1 ? x : CopyToTp::apply(x, to_int(tp));
}

torch::Tensor reduce_from_tp(const torch::Tensor& x, dist::Communicator& tp) {
  return tp.size() == 1 ? x : ReduceFromTp::apply(x, to_int(tp));
}

std::pair<int64_t, int64_t> shard_range(int64_t extent, const dist::Communicator& tp, bool pad) {
  if (!pad && extent % tp.size() != 0)
    throw UsageError(fmt::format("parallel.tp = {} does not divide a dimension of size {}", tp.size(), extent));
  const int64_t length = (extent + tp.size() - 1) / tp.size();
  return {tp.rank() * length, length};
}

// ---- layers --------------------------------------------------------------------------------------------------

ColumnParallelLinearImpl::ColumnParallelLinearImpl(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                                   dist::Communicator& tp, WeightTable& table)
    : name_(name), tp_(tp) {
  auto [start, length] = shard_range(out, tp);
  weight = register_parameter("weight", torch::empty({length, in}));
  table.add(name + ".weight", weight, {out, in}, ShardSpec{0, start, length, out});
  if (with_bias) {
    bias = register_parameter("bias", torch::zeros({length}));
    table.add(name + ".bias", bias, {out}, ShardSpec{0, start, length, out});
  }
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& x) { return forward_shared(copy_to_tp(x, tp_)); }

torch::Tensor ColumnParallelLinearImpl::forward_shared(const torch::Tensor& x) {
  return torch::nn::functional::linear(input_site(x), weight_site(weight), bias);
}

RowParallelLinearImpl::RowParallelLinearImpl(const std::string& name, int64_t in, int64_t out, bool with_bias,
                                             dist::Communicator& tp, WeightTable& table)
    : name_(name), tp_(tp) {
  auto [start, length] = shard_range(in, tp);
  weight = register_parameter("weight", torch::empty({out, length}));
  table.add(name + ".weight", weight, {out, in}, ShardSpec{1, start, length, in});
  if (with_bias) {
    bias = register_parameter("bias", torch::zeros({out}));
    table.add(name + ".bias", bias, {out}, ShardSpec{});
  }
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor partial = torch::nn::functional::linear(input_site(x), weight_site(weight));
  torch::Tensor y = reduce_from_tp(partial, tp_);
  return bias.defined() ? y + bias : y;
}

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(const std::string& name, int64_t vocab, int64_t dim,
                                                       dist::Communicator& tp, WeightTable& table)
    : tp_(tp) {
  std::tie(start_, length_) = shard_range(vocab, tp, /*pad=*/true);
  weight = register_parameter("weight", torch::zeros({length_, dim}));
  table.add(name + ".weight", weight, {vocab, dim}, ShardSpec{0, start_, length_, vocab});
}

torch::Tensor VocabParallelEmbeddingImpl::forward(const torch::Tensor& ids) {
  if (tp_.size() == 1) return torch::embedding(weight, ids);
  torch::Tensor local = ids - start_;
  torch::Tensor outside = (local < 0) | (local >= length_);
  torch::Tensor rows = torch::embedding(weight, local.masked_fill(outside, 0));
  rows = rows.masked_fill(outside.unsqueeze(-1), 0.0);
  return reduce_from_tp(rows, tp_);
}

VocabParallelHeadImpl::VocabParallelHeadImpl(const std::string& name, int64_t vocab, int64_t dim,
                                             dist::Communicator& tp, WeightTable& table,
                                             const VocabParallelEmbedding* tied)
    : tp_(tp), vocab_(vocab) {
  std::tie(start_, length_) = shard_range(vocab, tp, /*pad=*/true);
  if (tied) {
    weight = (*tied)->weight;
  } else {
    weight = register_parameter("weight", torch::zeros({length_, dim}));
    table.add(name + ".weight", weight, {vocab, dim}, ShardSpec{0, start_, length_, vocab});
  }
}

torch::Tensor VocabParallelHeadImpl::forward(const torch::Tensor& x) {
  torch::Tensor input = input_site(copy_to_tp(x, tp_));
  torch::Tensor logits = torch::nn::functional::linear(input, weight_site(weight));
  const int64_t real = std::max<int64_t>(0, std::min(length_, vocab_ - start_));
  if (real == length_) return logits;
  torch::Tensor padding = torch::arange(length_) >= real;
  return logits.masked_fill(padding, -std::numeric_limits<float>::infinity());
}

// ---- vocabulary-parallel reductions -----------------------------------------------------------------------

torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           dist::Communicator& tp, int64_t vocab_start) {
  return VocabParallelCrossEntropy::apply(logits, targets, to_int(tp), vocab_start);
}

torch::Tensor vocab_parallel_argmax(const torch::Tensor& logits, dist::Communicator& tp, int64_t vocab_start) {
  auto [value, index] = logits.to(torch::kFloat).max(-1);
  if (tp.size() == 1) return index;
  torch::Tensor values = tp.all_gather(value.unsqueeze(0), 0);  // [tp, N]
  torch::Tensor indices = tp.all_gather((index + vocab_start).unsqueeze(0), 0);
  // Ranks hold increasing vocabulary ranges, so the first maximal rank holds the lowest maximal index.
  torch::Tensor best = std::get<0>(values.max(0, /*keepdim=*/true));
  torch::Tensor first = (values == best).to(torch::kInt).argmax(0, /*keepdim=*/true);
  return indices.gather(0, first).squeeze(0);
}

torch::Tensor gather_vocab(const torch::Tensor& logits, dist::Communicator& tp, int64_t vocab) {
  torch::Tensor full = tp.size() == 1 ? logits : tp.all_gather(logits.contiguous(), -1);
  return full.narrow(-1, 0, vocab);
}

}  // namespace qforge::model
