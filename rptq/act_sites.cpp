#include "rptq/act_sites.h"

#include "framework/common/error.h"

#include <cmath>
#include <limits>

namespace qforge::rptq {

int site_bits(SiteKind kind, const RptqSettings& s) {
  if (s.act_bits == 16) return 16;
  if (s.kv_only) return kind == SiteKind::kK || kind == SiteKind::kV ? s.act_bits : 16;
  return kind == SiteKind::kAttnNorm || kind == SiteKind::kMlpNorm ? s.norm_bits() : s.act_bits;
}

int probs_bits(const RptqSettings& s) { return s.act_bits == 16 || s.kv_only || !s.quantize_probs ? 16 : 8; }

LayerQuantizers static_quantizers(const std::array<SampleStats, kSiteCount>& stats, const LayerReorder& reorder,
                                  const model::ModelConfig& config, const RptqSettings& s, RangeScope scope) {
  LayerQuantizers out;
  out.probs_bits = probs_bits(s);
  const ActGrid grid = parse_act_grid(s.grid);
  for (std::size_t i = 0; i < kSiteCount; ++i) {
    const SiteKind kind = kSiteKinds[i];
    SiteQuantizer& q = out.sites[i];
    q.bits = site_bits(kind, s);
    if (q.bits == 16) continue;
    auto [index, labels] = site_order(reorder, kind, config);  // [rows, columns]
    const int64_t rows = index.size(0), columns = index.size(1), samples = stats[i].min.size(0);
    QF_CHECK(samples > 0, "RPTQ: no calibration samples reached " + std::string(reorder_name(reorder_of(kind))));
    torch::Tensor gather_index = index.unsqueeze(0).expand({samples, rows, columns});
    torch::Tensor sample_min = stats[i].min.gather(2, gather_index).reshape({samples, rows * columns});
    torch::Tensor sample_max = stats[i].max.gather(2, gather_index).reshape({samples, rows * columns});
    // Each channel's range group: (row, cluster), or the whole site.
    const int64_t clusters = reorder.clusters[reorder_of(kind)];
    torch::Tensor groups = scope == RangeScope::kTensor
                               ? torch::zeros({rows * columns}, torch::kLong)
                               : (labels + torch::arange(rows, torch::kLong).unsqueeze(1) * clusters).flatten();
    const int64_t group_count = scope == RangeScope::kTensor ? 1 : rows * clusters;
    const float inf = std::numeric_limits<float>::infinity();
    torch::Tensor expanded = groups.unsqueeze(0).expand({samples, rows * columns});
    torch::Tensor group_min =
        torch::full({samples, group_count}, inf).scatter_reduce(1, expanded, sample_min, "amin", true);
    torch::Tensor group_max =
        torch::full({samples, group_count}, -inf).scatter_reduce(1, expanded, sample_max, "amax", true);
    torch::Tensor low, high;
    if (s.calibration == "ema") {
      std::tie(low, high) = ema_ranges(group_min, group_max, s.ema_momentum);
    } else {
      low = group_min.amin(0);
      high = group_max.amax(0);
    }
    // Every channel its group's range; each channel is then its own "cluster" for the parameters.
    torch::Tensor channel_min = low.index_select(0, groups), channel_max = high.index_select(0, groups);
    q.params = params_from_ranges(channel_min, channel_max, torch::arange(rows * columns + 1, torch::kLong), q.bits,
                                  grid);
    q.params.scale = q.params.scale.reshape({rows, columns});
    q.params.zero = q.params.zero.reshape({rows, columns});
  }
  return out;
}

void attach_static(model::CausalLM& model, int64_t layer, const LayerQuantizers& quantizers) {
  const model::ModelConfig& config = model.config();
  dist::Communicator& tp = model.tp();
  const torch::Device device = model.layers.at(static_cast<std::size_t>(layer))->attention->q_proj->weight.device();
  for (std::size_t i = 0; i < kSiteCount; ++i) {
    const SiteKind kind = kSiteKinds[i];
    const SiteQuantizer& q = quantizers.sites[i];
    model::Site& site = site_of(model, layer, kind);
    if (q.bits == 16) {
      site.transform = nullptr;
      continue;
    }
    const SiteLayout layout = site_layout(kind, config);
    auto local = [&](const torch::Tensor& full) {
      torch::Tensor t = full;
      if (layout.shard_dim >= 0) {
        const int64_t extent = full.size(layout.shard_dim) / tp.size();
        t = full.narrow(layout.shard_dim, tp.rank() * extent, extent);
      }
      // [B, heads, T, d] sites take [heads, 1, d]; [B, T, channels] sites the flattened channels.
      const bool heads_first = kind == SiteKind::kQ || kind == SiteKind::kK || kind == SiteKind::kV;
      return (heads_first ? t.unsqueeze(1) : t.reshape({-1})).contiguous().to(device);
    };
    StaticQuantParams params = q.params;
    params.scale = local(q.params.scale);
    params.zero = local(q.params.zero);
    site.transform = [params](const torch::Tensor& x) { return fake_quantize_static(x, params); };
  }
  auto& attention = model.layers.at(static_cast<std::size_t>(layer))->attention;
  const int bits = quantizers.probs_bits;
  attention->probs_site.transform =
      bits == 16 ? model::TensorHook() : [bits](const torch::Tensor& p) { return quantize_probabilities(p, bits); };
}

void detach_layer(model::CausalLM& model, int64_t layer) {
  for (SiteKind kind : kSiteKinds) site_of(model, layer, kind).transform = nullptr;
  model.layers.at(static_cast<std::size_t>(layer))->attention->probs_site.transform = nullptr;
}

torch::Tensor quantize_probabilities(const torch::Tensor& p, int bits) {
  const double steps = std::ldexp(1.0, bits) - 1;
  torch::Tensor p32 = p.to(torch::kFloat);
  torch::Tensor q = (p32 * steps).round_().clamp_(0, steps).div_(steps);
  return (p32 + (q - p32).detach()).to(p.scalar_type());
}

}  // namespace qforge::rptq
