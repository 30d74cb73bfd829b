// Per-channel activation statistics of one decoder layer at RPTQ's sites, per calibration sample: the minimum
// and maximum of every channel over the sample's tokens. Observers on the framework's sites record this rank's
// samples; gather() makes the statistics global: channels from every TP rank, samples from every DP rank in the
// job's sample order (DP rank r holds samples r, r + dp, ..., as quant::dp_share deals them). Every rank then
// holds the same tensors, so clustering and static ranges depend neither on TP nor on DP.
#pragma once

#include "framework/dist/communicator.h"
#include "framework/model/transformer.h"

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace qforge::rptq {

// The sites of one decoder layer, each viewed as [rows, columns] channels (global layout):
//   kAttnNorm, kMlpNorm  [1, hidden]        replicated on every TP rank
//   kQ                   [heads, head_dim]  rows split over TP
//   kK, kV               [kv heads, head_dim]
//   kAttnOut             [heads, head_dim]  (o_proj / out_proj input)
//   kMlpHidden           [1, intermediate]  columns split over TP (down / fc2 input)
enum class SiteKind { kAttnNorm, kQ, kK, kV, kAttnOut, kMlpNorm, kMlpHidden };
constexpr std::array<SiteKind, 7> kSiteKinds = {SiteKind::kAttnNorm, SiteKind::kQ,       SiteKind::kK,
                                                SiteKind::kV,        SiteKind::kAttnOut, SiteKind::kMlpNorm,
                                                SiteKind::kMlpHidden};
constexpr std::size_t kSiteCount = kSiteKinds.size();

struct SiteLayout {
  int64_t rows = 1, columns = 1;  // global
  int shard_dim = -1;             // -1 replicated; 0 rows; 1 columns
};
SiteLayout site_layout(SiteKind kind, const model::ModelConfig& config);
// The framework's site of `kind` in `layer` and its name ("model.layers.0.self_attn.q", "...down_proj.input").
model::Site& site_of(model::CausalLM& model, int64_t layer, SiteKind kind);
std::string site_name(model::CausalLM& model, int64_t layer, SiteKind kind);

struct SampleStats {
  torch::Tensor min, max;  // fp32 [samples, rows, columns]
};

class LayerStatistics {
 public:
  // Starts observing every site of `layer` (removed by the destructor or stop()).
  LayerStatistics(model::CausalLM& model, int64_t layer);
  ~LayerStatistics();
  LayerStatistics(const LayerStatistics&) = delete;
  LayerStatistics& operator=(const LayerStatistics&) = delete;
  void stop();

  // The job's statistics per site (indexed by SiteKind), the same on every rank: collective over the model's TP
  // group and over `dp`. `samples` is the job's sample count.
  std::array<SampleStats, kSiteCount> gather(dist::Communicator& dp, int64_t samples);

 private:
  model::CausalLM& model_;
  int64_t layer_;
  std::array<std::vector<torch::Tensor>, kSiteCount> min_, max_;  // per batch [B, local rows, local columns]
  std::array<model::Site::Handle, kSiteCount> handles_{};
  bool observing_ = false;
};

// Rows r, r + dp, ... of the job's `samples` from each DP rank's `local` [n_r, ...] (collective over `dp`):
// [samples, ...] in the job's order.
torch::Tensor gather_samples(const torch::Tensor& local, dist::Communicator& dp, int64_t samples);

}  // namespace qforge::rptq
