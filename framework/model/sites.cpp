#include "framework/model/sites.h"

#include "framework/model/transformer.h"

#include <algorithm>

namespace qforge::model {
namespace {

thread_local int paused_depth = 0;

template <class Linear>
LinearSite linear_site(Linear& linear, int64_t layer, LinearInput input, bool row_parallel) {
  return {linear->name(), layer, input, row_parallel, linear->weight, linear->bias, &linear->input_site,
          &linear->weight_site};
}

template <class Linear>
void add_linear(std::vector<std::pair<std::string, Site*>>& sites, Linear& linear) {
  sites.emplace_back(linear->name() + ".input", &linear->input_site);
  sites.emplace_back(linear->name() + ".weight", &linear->weight_site);
}

}  // namespace

torch::Tensor Site::operator()(const torch::Tensor& x) const {
  torch::Tensor y = transform ? transform(x) : x;
  if (!observers_.empty() && paused_depth == 0) {
    const torch::Tensor seen = y.detach();
    for (const auto& [handle, observer] : observers_) observer(seen);
  }
  return y;
}

Site::Handle Site::observe(Observer observer) {
  observers_.emplace_back(next_handle_, std::move(observer));
  return next_handle_++;
}

void Site::remove(Handle handle) {
  observers_.erase(std::remove_if(observers_.begin(), observers_.end(),
                                  [handle](const auto& entry) { return entry.first == handle; }),
                   observers_.end());
}

ObserversPaused::ObserversPaused() { ++paused_depth; }
ObserversPaused::~ObserversPaused() { --paused_depth; }

const char* to_string(LinearInput input) {
  switch (input) {
    case LinearInput::kAttentionIn: return "attention input";
    case LinearInput::kAttentionOut: return "attention output";
    case LinearInput::kMlpIn: return "mlp input";
    case LinearInput::kMlpHidden: return "mlp hidden";
  }
  return "?";
}

std::vector<LinearSite> decoder_linears(CausalLM& model) {
  std::vector<LinearSite> sites;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    const auto layer = static_cast<int64_t>(i);
    auto& attention = model.layers[i]->attention;
    sites.push_back(linear_site(attention->q_proj, layer, LinearInput::kAttentionIn, false));
    sites.push_back(linear_site(attention->k_proj, layer, LinearInput::kAttentionIn, false));
    sites.push_back(linear_site(attention->v_proj, layer, LinearInput::kAttentionIn, false));
    sites.push_back(linear_site(attention->o_proj, layer, LinearInput::kAttentionOut, true));
    auto& mlp = model.layers[i]->mlp;
    if (mlp->gate) sites.push_back(linear_site(mlp->gate, layer, LinearInput::kMlpIn, false));
    sites.push_back(linear_site(mlp->up, layer, LinearInput::kMlpIn, false));
    sites.push_back(linear_site(mlp->down, layer, LinearInput::kMlpHidden, true));
  }
  return sites;
}

std::vector<std::pair<std::string, Site*>> named_sites(CausalLM& model) {
  std::vector<std::pair<std::string, Site*>> sites;
  for (auto& layer : model.layers) {
    auto& attention = layer->attention;
    sites.emplace_back(layer->attention_norm->name() + ".output", &layer->attention_norm->output_site);
    add_linear(sites, attention->q_proj);
    add_linear(sites, attention->k_proj);
    add_linear(sites, attention->v_proj);
    for (auto [suffix, site] : {std::pair<const char*, Site*>{".q", &attention->q_site}, {".k", &attention->k_site},
                                {".v", &attention->v_site}, {".k_cache", &attention->k_cache_site},
                                {".v_cache", &attention->v_cache_site}, {".probs", &attention->probs_site}})
      sites.emplace_back(attention->name() + suffix, site);
    add_linear(sites, attention->o_proj);
    sites.emplace_back(layer->mlp_norm->name() + ".output", &layer->mlp_norm->output_site);
    if (layer->mlp->gate) add_linear(sites, layer->mlp->gate);
    add_linear(sites, layer->mlp->up);
    add_linear(sites, layer->mlp->down);
  }
  if (model.final_norm) sites.emplace_back(model.final_norm->name() + ".output", &model.final_norm->output_site);
  sites.emplace_back("lm_head.input", &model.head->input_site);
  sites.emplace_back("lm_head.weight", &model.head->weight_site);
  return sites;
}

}  // namespace qforge::model
