#include "framework/train/optimizer.h"

#include "framework/common/error.h"
#include "framework/train/adamw_cpu.h"

#include <ATen/record_function.h>
#include <fmt/format.h>

#include <cmath>

namespace qforge::train {

DistributedAdamW::DistributedAdamW(std::vector<OptimizedParameter> params, dist::Communicator& tp,
                                   dist::Communicator& dp, AdamWOptions options, int64_t bucket_elements,
                                   bool shard_state)
    : params_(std::move(params)), tp_(tp), dp_(dp), options_(options), shard_state_(shard_state) {
  if (!params_.empty()) fp32_ = fp32_.device(params_.front().param.device());
  build_layout(std::max<int64_t>(1, bucket_elements));
}

// Parameters fill buckets in order and are never split; a bucket closes when the next parameter would pass
// `bucket_elements` (a larger parameter gets a bucket of its own).
void DistributedAdamW::build_layout(int64_t bucket_elements) {
  torch::NoGradGuard no_grad;
  const int64_t parts = shard_state_ ? dp_.size() : 1;
  const int64_t part_index = shard_state_ ? dp_.rank() : 0;
  auto close = [&](Bucket& bucket, int64_t used) {
    bucket.size = (used + parts - 1) / parts * parts;
    bucket.owned_size = bucket.size / parts;
    bucket.owned_start = part_index * bucket.owned_size;
    bucket.flat = torch::zeros({bucket.size}, fp32_);
    for (const Segment& s : bucket.segments)
      bucket.flat.narrow(0, s.offset, s.numel).copy_(params_[s.param].param.detach().reshape(-1).to(torch::kFloat));
    bucket.master = bucket.flat.narrow(0, bucket.owned_start, bucket.owned_size).clone();
    bucket.flat.zero_();
    bucket.exp_avg = torch::zeros({bucket.owned_size}, fp32_);
    bucket.exp_avg_sq = torch::zeros({bucket.owned_size}, fp32_);
    if (shard_state_ && dp_.size() > 1) bucket.reduced = torch::zeros({bucket.owned_size}, fp32_);
    attach_gradients(bucket);
    buckets_.push_back(std::move(bucket));
  };
  Bucket bucket;
  int64_t used = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t numel = params_[i].param.numel();
    if (used > 0 && used + numel > bucket_elements) {
      close(bucket, used);
      bucket = Bucket{};
      used = 0;
    }
    bucket.segments.push_back({i, used, numel});
    used += numel;
  }
  if (used > 0) close(bucket, used);
}

std::vector<int64_t> DistributedAdamW::bucket_sizes() const {
  std::vector<int64_t> sizes;
  for (const Bucket& b : buckets_) sizes.push_back(b.size);
  return sizes;
}

// Points each fp32 parameter's gradient at its slot in the bucket (other dtypes keep their own .grad()).
void DistributedAdamW::attach_gradients(Bucket& bucket) {
  for (const Segment& s : bucket.segments) {
    torch::Tensor& param = params_[s.param].param;
    if (param.scalar_type() != torch::kFloat || param.device() != bucket.flat.device()) continue;
    param.mutable_grad() = bucket.flat.narrow(0, s.offset, s.numel).view(param.sizes());
  }
}

// Makes `flat` hold every gradient: a .grad() that is still the bucket's view is there already; one that
// other code replaced (or a parameter of another dtype) is copied in; a missing one counts as zero.
void DistributedAdamW::gather_gradients(Bucket& bucket) {
  for (const Segment& s : bucket.segments) {
    const torch::Tensor& grad = params_[s.param].param.grad();
    torch::Tensor slot = bucket.flat.narrow(0, s.offset, s.numel);
    if (!grad.defined())
      slot.zero_();
    else if (grad.data_ptr() != slot.data_ptr())
      slot.copy_(grad.reshape(-1));
  }
}

namespace {
// Sum of squares in fp64: one pass on the CPU (adamw_cpu.h), elsewhere a slice of 2^20 values at a time (an 8 MB
// temporary, not an fp64 copy of the bucket).
double square_sum(const torch::Tensor& values) {
  if (values.device().is_cpu() && values.is_contiguous())
    return cpu::square_sum(values.data_ptr<float>(), values.numel());
  constexpr int64_t kPiece = int64_t{1} << 20;
  double total = 0;
  for (int64_t start = 0; start < values.numel(); start += kPiece) {
    torch::Tensor piece = values.narrow(0, start, std::min(kPiece, values.numel() - start)).to(torch::kDouble);
    total += torch::dot(piece, piece).item<double>();
  }
  return total;
}
}  // namespace

// Sum of squares of the owned gradient slice, leaving out TP-replicated parameters except on TP rank 0.
double DistributedAdamW::owned_square_norm(const Bucket& bucket) const {
  double total = square_sum(bucket.grad);
  if (tp_.rank() == 0) return total;
  const int64_t begin = bucket.owned_start, end = begin + bucket.owned_size;
  for (const Segment& s : bucket.segments) {
    if (!params_[s.param].tp_replicated) continue;
    const int64_t lo = std::max(begin, s.offset), hi = std::min(end, s.offset + s.numel);
    if (lo < hi) total -= square_sum(bucket.grad.narrow(0, lo - begin, hi - lo));
  }
  return total;
}

double DistributedAdamW::reduce_gradients() {
  torch::NoGradGuard no_grad;
  RECORD_FUNCTION("qforge::reduce_gradients", std::vector<c10::IValue>());  // named in profiles
  double square_norm = 0;
  for (Bucket& bucket : buckets_) {
    gather_gradients(bucket);
    if (bucket.reduced.defined()) {
      dp_.reduce_scatter_into(bucket.flat, bucket.reduced, dist::ReduceOp::kSum);
      bucket.grad = bucket.reduced;
    } else {  // the whole bucket is owned: reduce in place (nothing to do on one rank)
      dp_.all_reduce(bucket.flat, dist::ReduceOp::kSum);
      bucket.grad = bucket.flat;
    }
    square_norm += owned_square_norm(bucket);
  }
  torch::Tensor total = torch::tensor({square_norm}, torch::TensorOptions(torch::kDouble).device(fp32_.device()));
  if (shard_state_) dp_.all_reduce(total, dist::ReduceOp::kSum);
  tp_.all_reduce(total, dist::ReduceOp::kSum);
  return std::sqrt(total.item<double>());
}

// torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments), on fp32 masters: one fused pass on
// the CPU (adamw_cpu.h), libtorch's in-place operations elsewhere.
void DistributedAdamW::step(double lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  RECORD_FUNCTION("qforge::adamw_step", std::vector<c10::IValue>());
  ++steps_;
  const double correction1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(options_.beta2, static_cast<double>(steps_));
  for (Bucket& bucket : buckets_) {
    QF_CHECK(bucket.grad.defined(), "DistributedAdamW::step called before reduce_gradients");
    torch::Tensor& grad = bucket.grad;  // every update below is in place, into buffers allocated once
    if (bucket.master.device().is_cpu()) {
      cpu_step(bucket, lr, grad_scale, correction1, correction2);
      continue;
    }
    if (grad_scale != 1.0) grad.mul_(grad_scale);
    bucket.exp_avg.mul_(options_.beta1).add_(grad, 1 - options_.beta1);
    bucket.exp_avg_sq.mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
    if (options_.weight_decay != 0) bucket.master.mul_(1 - lr * options_.weight_decay);
    torch::Tensor denom = scratch(bucket.owned_size);
    torch::sqrt_out(denom, bucket.exp_avg_sq).div_(std::sqrt(correction2)).add_(options_.eps);
    bucket.master.addcdiv_(bucket.exp_avg, denom, -lr / correction1);
    bucket.grad = torch::Tensor();
    refresh_parameters(bucket);
  }
}

// One pass per parameter when this rank owns the whole bucket: the update is written to the master and to the
// parameter, and the gradient (the bucket itself, reduced in place) zeroed as it is read. Under ZeRO the owned
// slice is updated in one pass and all-gathered into the parameters.
void DistributedAdamW::cpu_step(Bucket& bucket, double lr, double grad_scale, double correction1, double correction2) {
  const cpu::AdamWScalars scalars{static_cast<float>(grad_scale),
                                  static_cast<float>(options_.beta1),
                                  static_cast<float>(options_.beta2),
                                  static_cast<float>(1 - lr * options_.weight_decay),
                                  static_cast<float>(std::sqrt(correction2)),
                                  static_cast<float>(lr / correction1),
                                  static_cast<float>(options_.eps)};
  float *master = bucket.master.data_ptr<float>(), *m = bucket.exp_avg.data_ptr<float>();
  float* v = bucket.exp_avg_sq.data_ptr<float>();
  if (bucket.owned_size != bucket.size) {  // the reduced slice (`reduced`)
    cpu::adamw_update(master, m, v, bucket.grad.data_ptr<float>(), bucket.owned_size, scalars, nullptr, false);
    bucket.grad = torch::Tensor();
    refresh_parameters(bucket);
    return;
  }
  float* g = bucket.flat.data_ptr<float>();  // a whole bucket is reduced in place: its gradient is `flat`
  bucket.grad = torch::Tensor();
  for (const Segment& s : bucket.segments) {
    torch::Tensor& param = params_[s.param].param;
    const bool direct = param.scalar_type() == torch::kFloat && param.device().is_cpu() && param.is_contiguous();
    float* into = direct ? param.data_ptr<float>() : nullptr;
    cpu::adamw_update(master + s.offset, m + s.offset, v + s.offset, g + s.offset, s.numel, scalars, into, true);
    if (direct)
      param.unsafeGetTensorImpl()->bump_version();  // as copy_ would: an in-place change, seen by autograd
    else
      param.detach().view(-1).copy_(bucket.master.narrow(0, s.offset, s.numel));
  }
  bucket.zeroed = true;
}

torch::Tensor DistributedAdamW::scratch(int64_t elements) {
  if (!scratch_.defined() || scratch_.numel() < elements) scratch_ = torch::empty({elements}, fp32_);
  return scratch_.narrow(0, 0, elements);
}

void DistributedAdamW::refresh_parameters(const Bucket& bucket) {
  torch::Tensor full = bucket.master;
  if (bucket.owned_size != bucket.size) {
    full = scratch(bucket.size);
    dp_.all_gather_into(bucket.master, full);
  }
  for (const Segment& s : bucket.segments) {
    torch::Tensor& param = params_[s.param].param;
    param.detach().view(-1).copy_(full.narrow(0, s.offset, s.numel));
  }
}

// Zeroes the buckets in place (torch's zero_grad(set_to_none=False)), re-attaching any replaced gradient.
void DistributedAdamW::zero_grad() {
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    if (!bucket.zeroed) bucket.flat.zero_();
    bucket.zeroed = false;
    attach_gradients(bucket);
  }
  for (OptimizedParameter& p : params_)
    if (p.param.grad().defined() && p.param.scalar_type() != torch::kFloat) p.param.mutable_grad().zero_();
}

std::vector<std::pair<std::string, torch::Tensor>> DistributedAdamW::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    tensors.emplace_back(fmt::format("bucket.{}.master", b), buckets_[b].master);
    tensors.emplace_back(fmt::format("bucket.{}.exp_avg", b), buckets_[b].exp_avg);
    tensors.emplace_back(fmt::format("bucket.{}.exp_avg_sq", b), buckets_[b].exp_avg_sq);
  }
  return tensors;
}

void DistributedAdamW::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                  int64_t steps_taken) {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  auto take = [&](size_t b, const char* what, torch::Tensor& into) {
    const std::string name = fmt::format("bucket.{}.{}", b, what);
    auto it = by_name.find(name);
    if (it == by_name.end()) throw Error(fmt::format("optimizer state has no '{}'", name));
    if (it->second.numel() != into.numel())
      throw Error(fmt::format("optimizer state '{}' has {} elements; expected {} (a different parallel layout?)", name,
                              it->second.numel(), into.numel()));
    into.copy_(it->second.reshape(-1));
  };
  for (size_t b = 0; b < buckets_.size(); ++b) {
    take(b, "master", buckets_[b].master);
    take(b, "exp_avg", buckets_[b].exp_avg);
    take(b, "exp_avg_sq", buckets_[b].exp_avg_sq);
    refresh_parameters(buckets_[b]);
  }
  steps_ = steps_taken;
}

double scheduled_lr(const std::string& schedule, int64_t step, int64_t total, int64_t warmup, double peak,
                    double floor) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (schedule == "constant") return peak;
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double shape = schedule == "cosine" ? 0.5 * (1 + std::cos(M_PI * progress)) : 1 - progress;
  return floor + (peak - floor) * shape;
}

}  // namespace qforge::train
