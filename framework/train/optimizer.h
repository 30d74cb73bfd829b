// AdamW over a tensor-parallel model replicated across data-parallel ranks, with the optimizer state sharded
// across the DP group (ZeRO-1). Parameters are laid out, in order, in flat fp32 buckets; each bucket is split
// in dp equal slices and DP rank d owns slice d of every bucket: its fp32 master weights and Adam moments.
//
// A step: reduce_gradients() sums the gradients over DP one bucket at a time (reduce-scatter into the owned
// slice, or all-reduce of the whole bucket without sharding) and returns the global gradient norm over TP and
// DP; step() updates the owned slices and all-gathers them back into the parameters.
#pragma once

#include "framework/dist/communicator.h"

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace qforge::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled, as torch.optim.AdamW
};

struct OptimizedParameter {
  std::string name;
  torch::Tensor param;        // this rank's shard; its .grad() is read and zeroed
  bool tp_replicated = false;  // the same on every TP rank: counted once in the gradient norm
};

class DistributedAdamW {
 public:
  // `shard_state`: ZeRO-1 (state split across DP); false: every DP rank keeps the whole state.
  // Collective over neither group; every rank of the job builds the same layout for its own shards.
  DistributedAdamW(std::vector<OptimizedParameter> params, dist::Communicator& tp, dist::Communicator& dp,
                   AdamWOptions options, int64_t bucket_elements, bool shard_state);

  // Sums every gradient over DP (missing gradients count as zero) and returns the global L2 norm of the
  // summed gradient over the whole job. Collective over TP and DP.
  double reduce_gradients();
  // One AdamW update of the owned slices with the reduced gradients scaled by `grad_scale` (clipping), then
  // every parameter is refreshed from the masters. Collective over DP. On the CPU the gradients a step reads in
  // place are zero afterwards (zero_grad's work done in the same pass).
  void step(double lr, double grad_scale);
  void zero_grad();

  int64_t steps_taken() const { return steps_; }
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Elements of each bucket (padded to a multiple of the DP size): checkpoints compare their layout with it.
  std::vector<int64_t> bucket_sizes() const;
  // This rank's state (masters and moments of its slices, by name) and the inverse; load_state checks names
  // and shapes and refreshes the parameters from the loaded masters.
  std::vector<std::pair<std::string, torch::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, int64_t steps_taken);

 private:
  struct Segment {  // one parameter's place in a bucket
    size_t param;
    int64_t offset, numel;
  };
  struct Bucket {
    std::vector<Segment> segments;
    int64_t size = 0;         // padded
    int64_t owned_start = 0;  // this rank's slice
    int64_t owned_size = 0;
    torch::Tensor master, exp_avg, exp_avg_sq;  // [owned_size] fp32
    // [size] fp32, allocated once: the parameters' .grad() are views into it (backward accumulates in place),
    // so the DP reduction reads it without a copy. A gradient replaced by other code is copied in.
    torch::Tensor flat;
    torch::Tensor grad;  // [owned_size]: the reduced gradient; a slice of `flat` or of `reduced` below
    torch::Tensor reduced;  // [owned_size], allocated once, only where ZeRO splits over more than one rank
    bool zeroed = false;    // step() zeroed `flat` as it read it: zero_grad() has nothing left to do
  };

  void build_layout(int64_t bucket_elements);
  void attach_gradients(Bucket& bucket);
  void gather_gradients(Bucket& bucket);
  double owned_square_norm(const Bucket& bucket) const;
  void refresh_parameters(const Bucket& bucket);
  // The fused CPU update of one bucket: straight into the parameters when this rank owns the whole bucket.
  void cpu_step(Bucket& bucket, double lr, double grad_scale, double correction1, double correction2);
  torch::Tensor scratch(int64_t elements);  // the first `elements` of scratch_, grown when needed

  std::vector<OptimizedParameter> params_;
  dist::Communicator& tp_;
  dist::Communicator& dp_;
  AdamWOptions options_;
  bool shard_state_;
  torch::TensorOptions fp32_ = torch::TensorOptions(torch::kFloat);  // masters, moments, buckets: the params' device
  std::vector<Bucket> buckets_;
  torch::Tensor scratch_;  // the largest bucket: AdamW's denominator and the ZeRO all-gather, reused by every bucket
  int64_t steps_ = 0;
};

// Learning rate of step `step` (0-based) of `total`: linear warmup over `warmup` steps to `peak`, then constant,
// or cosine/linear decay to `floor` at the last step.
double scheduled_lr(const std::string& schedule, int64_t step, int64_t total, int64_t warmup, double peak, double floor);

}  // namespace qforge::train
