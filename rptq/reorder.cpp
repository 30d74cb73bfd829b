#include "rptq/reorder.h"

#include "framework/common/error.h"
#include "rptq/kmeans.h"

#include <fmt/format.h>

namespace qforge::rptq {
namespace {

bool uses_rope(const model::ModelConfig& c) { return c.family == model::Family::kLlama; }

const char* clusters_key(int r) {
  static const char* keys[] = {"rptq.r1_clusters", "rptq.r2_clusters", "rptq.r3_clusters", "rptq.r4_clusters",
                               "rptq.r5_clusters"};
  return keys[r];
}

int64_t clusters_of(const RptqSettings& s, int r) {
  const int64_t values[] = {s.r1_clusters, s.r2_clusters, s.r3_clusters, s.r4_clusters, s.r5_clusters};
  return values[r];
}

// [rows, columns] of reorder r: kv heads x head_dim (R2, R3) or 1 x channels.
std::pair<int64_t, int64_t> reorder_shape(const model::ModelConfig& c, int r) {
  if (r == kR2 || r == kR3) return {c.num_kv_heads, c.head_dim()};
  return {1, r == kR5 ? c.intermediate_size : c.hidden_size};
}

// K-Means of `points` [n, features] -> {index, labels in the new order} (each [n]).
std::pair<torch::Tensor, torch::Tensor> cluster_points(const torch::Tensor& points, int64_t clusters,
                                                       const RptqSettings& s) {
  KMeansOptions options;
  options.clusters = clusters;
  options.n_init = static_cast<int>(s.kmeans_n_init);
  options.max_iter = static_cast<int>(s.kmeans_max_iter);
  options.tol = s.kmeans_tol;
  options.seed = static_cast<uint64_t>(s.kmeans_seed);
  const KMeansResult result = kmeans(points, options);
  torch::Tensor index = reorder_index(result.labels);
  return {index, result.labels.index_select(0, index)};
}

// Each channel's (max..., min...) over the samples for rows `rows` of a site: [columns, 2 * rows.size()].
torch::Tensor features(const SampleStats& stats, const std::vector<int64_t>& rows) {
  std::vector<torch::Tensor> maxima, minima;
  torch::Tensor max = stats.max.amax(0), min = stats.min.amin(0);  // [rows, columns]
  for (int64_t row : rows) {
    maxima.push_back(max[row]);
    minima.push_back(min[row]);
  }
  maxima.insert(maxima.end(), minima.begin(), minima.end());
  return torch::stack(maxima, 1).to(torch::kDouble);
}

std::vector<int64_t> range_of(int64_t first, int64_t count) {
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < count; ++i) rows.push_back(first + i);
  return rows;
}

void permute(torch::Tensor& param, int64_t dim, const torch::Tensor& index) {
  if (!param.defined()) return;
  param.copy_(param.index_select(dim, index.to(param.device())));
}

// Rows of a [heads * d] projection for this rank's heads (`local` of them, the first global one `first`), each
// head h permuted by row `row_of(h)` of `index` [rows, d].
torch::Tensor head_rows(const torch::Tensor& index, int64_t first, int64_t local, int64_t group) {
  const int64_t d = index.size(1);
  std::vector<torch::Tensor> parts;
  for (int64_t h = 0; h < local; ++h) parts.push_back(index[(first + h) / group] + h * d);
  return torch::cat(parts);
}

// Applies a global permutation of a dimension that TP splits: every rank ends with its slice of the new order.
void permute_split(torch::Tensor& param, int64_t dim, const torch::Tensor& index, dist::Communicator& tp) {
  if (!param.defined()) return;
  if (tp.size() == 1) return permute(param, dim, index);
  const int64_t width = param.size(dim);
  torch::Tensor full = tp.all_gather(param.contiguous(), dim);  // one layer's matrix at a time
  param.copy_(full.index_select(dim, index.to(full.device())).narrow(dim, tp.rank() * width, width));
}

}  // namespace

const char* reorder_name(int r) {
  static const char* names[] = {"R1", "R2", "R3", "R4", "R5"};
  return names[r];
}

int reorder_of(SiteKind kind) {
  switch (kind) {
    case SiteKind::kAttnNorm: return kR1;
    case SiteKind::kQ:
    case SiteKind::kK: return kR2;
    case SiteKind::kV:
    case SiteKind::kAttnOut: return kR3;
    case SiteKind::kMlpNorm: return kR4;
    case SiteKind::kMlpHidden: return kR5;
  }
  return kR1;
}

void check_reorder_settings(const model::ModelConfig& c, const RptqSettings& s) {
  if (!c.norm_before)
    throw UsageError("ptq.method rptq needs a pre-norm model: this one (OPT-350m style) normalises after the "
                     "residual add, so a norm's output cannot be reordered without reordering the residual stream");
  for (int r = 0; r < kReorderCount; ++r) {
    auto [rows, columns] = reorder_shape(c, r);
    int64_t points = columns;
    std::string what = r == kR5 ? "MLP channels" : r == kR1 || r == kR4 ? "hidden channels" : "channels per head";
    if (r == kR2 && uses_rope(c)) {
      if (columns % 2 != 0)
        throw UsageError(fmt::format("rptq R2 needs an even head_dim under RoPE (got {})", columns));
      points = columns / 2;
      what = fmt::format("rotate-half pairs per head (head_dim {}: RoPE rotates channel i with i + {}, so they "
                         "move together)", columns, points);
    }
    if (clusters_of(s, r) > points)
      throw UsageError(fmt::format("{} = {} is more clusters than the {} {} of {}", clusters_key(r), clusters_of(s, r),
                                   points, what, reorder_name(r)));
  }
}

LayerReorder identity_reorder(const model::ModelConfig& c) {
  LayerReorder reorder;
  for (int r = 0; r < kReorderCount; ++r) {
    auto [rows, columns] = reorder_shape(c, r);
    reorder.index[r] = torch::arange(columns, torch::kLong).unsqueeze(0).expand({rows, columns}).contiguous();
    reorder.labels[r] = torch::zeros({rows, columns}, torch::kLong);
    reorder.clusters[r] = 1;
  }
  return reorder;
}

LayerReorder cluster_layer(const std::array<SampleStats, kSiteCount>& stats, const model::ModelConfig& c,
                           const RptqSettings& s) {
  LayerReorder reorder = identity_reorder(c);
  const int64_t group = c.num_heads / c.num_kv_heads, d = c.head_dim();
  auto stats_of = [&](SiteKind kind) -> const SampleStats& { return stats[static_cast<std::size_t>(kind)]; };
  auto set_row = [&](int r, int64_t row, const std::pair<torch::Tensor, torch::Tensor>& order) {
    reorder.index[r][row].copy_(order.first);
    reorder.labels[r][row].copy_(order.second);
  };
  for (int r = 0; r < kReorderCount; ++r) {
    if (!s.reorders(reorder_name(r))) continue;
    const int64_t k = clusters_of(s, r);
    reorder.clusters[r] = k;
    if (r == kR1 || r == kR4 || r == kR5) {
      const SiteKind kind = r == kR1 ? SiteKind::kAttnNorm : r == kR4 ? SiteKind::kMlpNorm : SiteKind::kMlpHidden;
      set_row(r, 0, cluster_points(features(stats_of(kind), {0}), k, s));
      continue;
    }
    for (int64_t g = 0; g < c.num_kv_heads; ++g) {
      const std::vector<int64_t> q_heads = range_of(g * group, group);
      if (r == kR3) {  // the attention output of the heads that read this kv head (the reference: out_proj's input)
        set_row(r, g, cluster_points(features(stats_of(SiteKind::kAttnOut), q_heads), k, s));
        continue;
      }
      // R2: q (every head of the group) and k share one order: features (q max..., k max, q min..., k min).
      torch::Tensor q = features(stats_of(SiteKind::kQ), q_heads), kk = features(stats_of(SiteKind::kK), {g});
      torch::Tensor points = torch::cat({q.narrow(1, 0, group), kk.narrow(1, 0, 1), q.narrow(1, group, group),
                                         kk.narrow(1, 1, 1)}, 1);
      if (!uses_rope(c)) {
        set_row(r, g, cluster_points(points, k, s));
        continue;
      }
      // RoPE: a point is a rotate-half pair (i, i + d/2); the pairs' order applies to both halves.
      const int64_t half = d / 2;
      auto [pairs, pair_labels] =
          cluster_points(torch::cat({points.narrow(0, 0, half), points.narrow(0, half, half)}, 1), k, s);
      set_row(r, g, {torch::cat({pairs, pairs + half}), torch::cat({pair_labels, pair_labels})});
    }
  }
  return reorder;
}

void agree_on_reorder(LayerReorder& reorder, const model::ModelConfig& c, dist::Communicator& tp,
                      dist::Communicator& dp) {
  if (tp.size() == 1 && dp.size() == 1) return;
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < kReorderCount; ++r) {
    parts.push_back(reorder.index[r].flatten());
    parts.push_back(reorder.labels[r].flatten());
    parts.push_back(torch::tensor({reorder.clusters[r]}, torch::kLong));
  }
  torch::Tensor packed = torch::cat(parts);
  // Rank 0 of DP group 0's TP group computed it: first along DP (every TP rank of DP rank 0 to its DP group),
  // then along TP (TP rank 0, which now holds rank 0's result, to its TP group).
  dp.broadcast(packed, 0);
  tp.broadcast(packed, 0);
  int64_t offset = 0;
  for (int r = 0; r < kReorderCount; ++r) {
    auto [rows, columns] = reorder_shape(c, r);
    const int64_t n = rows * columns;
    reorder.index[r] = packed.narrow(0, offset, n).view({rows, columns}).clone();
    reorder.labels[r] = packed.narrow(0, offset + n, n).view({rows, columns}).clone();
    reorder.clusters[r] = packed[offset + 2 * n].item<int64_t>();
    offset += 2 * n + 1;
  }
}

void apply_reorder(model::CausalLM& model, int64_t layer, const LayerReorder& reorder) {
  torch::NoGradGuard no_grad;
  const model::ModelConfig& c = model.config();
  dist::Communicator& tp = model.tp();
  auto& block = model.layers.at(static_cast<std::size_t>(layer));
  auto& attention = block->attention;
  auto& mlp = block->mlp;
  const torch::Device device = attention->q_proj->weight.device();
  const int64_t group = c.num_heads / c.num_kv_heads;
  const int64_t local_heads = c.num_heads / tp.size(), local_kv = c.num_kv_heads / tp.size();

  const torch::Tensor r1 = reorder.index[kR1][0];
  auto compose = [&](const torch::Tensor& old, const torch::Tensor& index) {  // a norm reordered before
    return old.defined() ? old.index_select(0, index.to(old.device())) : index.to(device);
  };
  block->attention_norm->output_index = compose(block->attention_norm->output_index, r1);
  for (auto* linear : {&attention->q_proj, &attention->k_proj, &attention->v_proj}) permute((*linear)->weight, 1, r1);

  const torch::Tensor q_rows = head_rows(reorder.index[kR2], tp.rank() * local_heads, local_heads, group);
  const torch::Tensor k_rows = head_rows(reorder.index[kR2], tp.rank() * local_kv, local_kv, 1);
  permute(attention->q_proj->weight, 0, q_rows);
  permute(attention->q_proj->bias, 0, q_rows);
  permute(attention->k_proj->weight, 0, k_rows);
  permute(attention->k_proj->bias, 0, k_rows);
  if (uses_rope(c)) attention->rope_index = reorder.index[kR2].narrow(0, tp.rank() * local_kv, local_kv).to(device);

  const torch::Tensor v_rows = head_rows(reorder.index[kR3], tp.rank() * local_kv, local_kv, 1);
  const torch::Tensor o_columns = head_rows(reorder.index[kR3], tp.rank() * local_heads, local_heads, group);
  permute(attention->v_proj->weight, 0, v_rows);
  permute(attention->v_proj->bias, 0, v_rows);
  permute(attention->o_proj->weight, 1, o_columns);

  const torch::Tensor r4 = reorder.index[kR4][0];
  block->mlp_norm->output_index = compose(block->mlp_norm->output_index, r4);
  if (mlp->gate) permute(mlp->gate->weight, 1, r4);
  permute(mlp->up->weight, 1, r4);

  const torch::Tensor r5 = reorder.index[kR5][0];
  if (mlp->gate) permute_split(mlp->gate->weight, 0, r5, tp);
  permute_split(mlp->up->weight, 0, r5, tp);
  permute_split(mlp->up->bias, 0, r5, tp);
  permute_split(mlp->down->weight, 1, r5, tp);
}

std::pair<torch::Tensor, torch::Tensor> site_order(const LayerReorder& reorder, SiteKind kind,
                                                   const model::ModelConfig& c) {
  const int r = reorder_of(kind);
  if (kind != SiteKind::kQ && kind != SiteKind::kAttnOut) return {reorder.index[r], reorder.labels[r]};
  const int64_t group = c.num_heads / c.num_kv_heads;
  torch::Tensor rows = torch::arange(c.num_heads, torch::kLong).div(group, "floor");
  return {reorder.index[r].index_select(0, rows), reorder.labels[r].index_select(0, rows)};
}

}  // namespace qforge::rptq
