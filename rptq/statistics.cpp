#include "rptq/statistics.h"

#include "framework/common/error.h"

namespace qforge::rptq {

SiteLayout site_layout(SiteKind kind, const model::ModelConfig& c) {
  switch (kind) {
    case SiteKind::kAttnNorm:
    case SiteKind::kMlpNorm: return {1, c.hidden_size, -1};
    case SiteKind::kQ:
    case SiteKind::kAttnOut: return {c.num_heads, c.head_dim(), 0};
    case SiteKind::kK:
    case SiteKind::kV: return {c.num_kv_heads, c.head_dim(), 0};
    case SiteKind::kMlpHidden: return {1, c.intermediate_size, 1};
  }
  throw Error("unknown RPTQ site");
}

namespace {

// A site of a layer: the framework's Site, and its name as the module that owns it plus a suffix.
struct SiteEntry {
  model::Site& site;
  const std::string& owner;
  const char* suffix;
};

SiteEntry site_entry(model::CausalLM& model, int64_t layer, SiteKind kind) {
  auto& block = model.layers.at(static_cast<std::size_t>(layer));
  auto& attention = block->attention;
  switch (kind) {
    case SiteKind::kAttnNorm: return {block->attention_norm->output_site, block->attention_norm->name(), ".output"};
    case SiteKind::kQ: return {attention->q_site, attention->name(), ".q"};
    case SiteKind::kK: return {attention->k_site, attention->name(), ".k"};
    case SiteKind::kV: return {attention->v_site, attention->name(), ".v"};
    case SiteKind::kAttnOut: return {attention->o_proj->input_site, attention->o_proj->name(), ".input"};
    case SiteKind::kMlpNorm: return {block->mlp_norm->output_site, block->mlp_norm->name(), ".output"};
    case SiteKind::kMlpHidden: return {block->mlp->down->input_site, block->mlp->down->name(), ".input"};
  }
  throw Error("unknown RPTQ site");
}

}  // namespace

model::Site& site_of(model::CausalLM& model, int64_t layer, SiteKind kind) {
  return site_entry(model, layer, kind).site;
}

std::string site_name(model::CausalLM& model, int64_t layer, SiteKind kind) {
  const SiteEntry entry = site_entry(model, layer, kind);
  return entry.owner + entry.suffix;
}

LayerStatistics::LayerStatistics(model::CausalLM& model, int64_t layer) : model_(model), layer_(layer) {
  const model::ModelConfig& c = model.config();
  const int64_t tp = model.tp().size();
  for (std::size_t s = 0; s < kSiteCount; ++s) {
    const SiteKind kind = kSiteKinds[s];
    const SiteLayout layout = site_layout(kind, c);
    const int64_t rows = layout.shard_dim == 0 ? layout.rows / tp : layout.rows;
    const int64_t columns = layout.shard_dim == 1 ? layout.columns / tp : layout.columns;
    const bool heads_first = kind == SiteKind::kQ || kind == SiteKind::kK || kind == SiteKind::kV;
    auto* mins = &min_[s];
    auto* maxs = &max_[s];
    handles_[s] = site_of(model, layer, kind).observe([=](const torch::Tensor& x) {
      // [B, heads, T, d] reduces over T (dim 2); [B, T, channels] over T (dim 1).
      const int64_t token_dim = heads_first ? 2 : 1;
      torch::Tensor x32 = x.to(torch::kFloat);
      mins->push_back(x32.amin(token_dim).reshape({x.size(0), rows, columns}).cpu());
      maxs->push_back(x32.amax(token_dim).reshape({x.size(0), rows, columns}).cpu());
    });
  }
  observing_ = true;
}

LayerStatistics::~LayerStatistics() { stop(); }

void LayerStatistics::stop() {
  if (!observing_) return;
  for (std::size_t s = 0; s < kSiteCount; ++s) site_of(model_, layer_, kSiteKinds[s]).remove(handles_[s]);
  observing_ = false;
}

std::array<SampleStats, kSiteCount> LayerStatistics::gather(dist::Communicator& dp, int64_t samples) {
  stop();
  dist::Communicator& tp = model_.tp();
  std::array<SampleStats, kSiteCount> out;
  for (std::size_t s = 0; s < kSiteCount; ++s) {
    const SiteLayout layout = site_layout(kSiteKinds[s], model_.config());
    const int64_t rows = layout.shard_dim == 0 ? layout.rows / tp.size() : layout.rows;
    const int64_t columns = layout.shard_dim == 1 ? layout.columns / tp.size() : layout.columns;
    auto local = [&](std::vector<torch::Tensor>& parts) {
      torch::Tensor t = parts.empty() ? torch::zeros({0, rows, columns}) : torch::cat(parts, 0);
      parts.clear();
      if (layout.shard_dim >= 0 && tp.size() > 1) t = tp.all_gather(t.contiguous(), layout.shard_dim + 1);
      return gather_samples(t, dp, samples);
    };
    out[s].min = local(min_[s]);
    out[s].max = local(max_[s]);
  }
  return out;
}

torch::Tensor gather_samples(const torch::Tensor& local, dist::Communicator& dp, int64_t samples) {
  const int64_t n = dp.size();
  const int64_t expected = dp.rank() < samples ? (samples - dp.rank() + n - 1) / n : 0;
  QF_CHECK(local.size(0) == expected, "RPTQ statistics: a DP rank holds another share of the samples");
  if (n == 1) return local;
  const int64_t most = (samples + n - 1) / n;
  std::vector<int64_t> padded_shape = local.sizes().vec();
  padded_shape[0] = most;
  torch::Tensor padded = torch::zeros(padded_shape, local.options());
  padded.narrow(0, 0, local.size(0)).copy_(local);
  torch::Tensor all = dp.all_gather(padded, 0);  // [n * most, ...]: rank r's rows at r * most
  std::vector<int64_t> order(static_cast<std::size_t>(samples));
  for (int64_t i = 0; i < samples; ++i) order[static_cast<std::size_t>(i)] = (i % n) * most + i / n;
  return all.index_select(0, torch::tensor(order, torch::kLong));
}

}  // namespace qforge::rptq
