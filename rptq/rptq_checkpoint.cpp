#include "rptq/rptq_checkpoint.h"

#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/quantized_checkpoint.h"

#include <fmt/format.h>

#include <filesystem>

namespace qforge::rptq {
namespace fs = std::filesystem;
namespace {

std::string index_name(const std::string& norm) { return norm + ".output_index"; }
std::string rope_name(const std::string& attention) { return attention + ".rope_index"; }

// Every tensor of the file for `layers`, in model order.
std::vector<std::pair<std::string, torch::Tensor>> rptq_tensors(model::CausalLM& model,
                                                                const std::vector<RptqLayer>& layers,
                                                                const std::string& mode) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    auto& block = model.layers[i];
    const LayerReorder& r = layers[i].reorder;
    tensors.emplace_back(index_name(block->attention_norm->name()), r.index[kR1][0].contiguous());
    tensors.emplace_back(index_name(block->mlp_norm->name()), r.index[kR4][0].contiguous());
    if (model.config().family == model::Family::kLlama)
      tensors.emplace_back(rope_name(block->attention->name()), r.index[kR2].contiguous());
    const LayerQuantizers& q = mode == "per_tensor" ? layers[i].per_tensor : layers[i].rptq;
    for (std::size_t s = 0; s < kSiteCount; ++s) {
      if (q.sites[s].bits == 16) continue;
      const std::string site = site_name(model, static_cast<int64_t>(i), kSiteKinds[s]);
      tensors.emplace_back(site + ".act_scale", q.sites[s].params.scale.contiguous());
      tensors.emplace_back(site + ".act_zero", q.sites[s].params.zero.contiguous());
    }
  }
  return tensors;
}

class RptqReader : public model::QuantizedWeightReader {
 public:
  RptqReader(nlohmann::json config, std::string config_path, const io::Checkpoint& checkpoint)
      : config_(std::move(config)), config_path_(std::move(config_path)), dir_(checkpoint.dir()) {
    auto gptq = config_.find("gptq");  // weights in the GPTQ format: its reader loads them
    if (gptq != config_.end()) weights_ = model::make_quantized_reader(*gptq, config_path_, checkpoint);
  }

  // Fake-quantized weights are ordinary tensors; packed ones are the GPTQ reader's.
  bool load(const model::WeightEntry& e) const override { return weights_ && weights_->load(e); }

  void finish(model::CausalLM& model) const override {
    const std::string path = (fs::path(dir_) / kRptqFile).string();
    if (!fs::exists(path))
      throw Error(fmt::format("{}: quant_method rptq needs {} beside it, which is missing", config_path_, path));
    io::SafetensorsFile file(path);
    const model::ModelConfig& c = model.config();
    dist::Communicator& tp = model.tp();
    const int probs_bits = setting<int>("probs_bits");
    const ActGrid grid = parse_act_grid(setting<std::string>("grid"));
    const nlohmann::json& sites = config_.at("sites");
    for (std::size_t i = 0; i < model.layers.size(); ++i) {
      auto& block = model.layers[i];
      const torch::Device device = block->attention->q_proj->weight.device();
      block->attention_norm->output_index = permutation(file, index_name(block->attention_norm->name()),
                                                        {c.hidden_size}).to(device);
      block->mlp_norm->output_index = permutation(file, index_name(block->mlp_norm->name()), {c.hidden_size})
                                          .to(device);
      if (c.family == model::Family::kLlama) {
        const int64_t local_kv = c.num_kv_heads / tp.size();
        torch::Tensor rope = permutation(file, rope_name(block->attention->name()), {c.num_kv_heads, c.head_dim()});
        block->attention->rope_index = rope.narrow(0, tp.rank() * local_kv, local_kv).contiguous().to(device);
      }
      LayerQuantizers q;
      q.probs_bits = probs_bits;
      for (std::size_t s = 0; s < kSiteCount; ++s) {
        const std::string site = site_name(model, static_cast<int64_t>(i), kSiteKinds[s]);
        auto it = sites.find(site);
        if (it == sites.end()) continue;
        const SiteLayout layout = site_layout(kSiteKinds[s], c);
        SiteQuantizer& sq = q.sites[s];
        sq.bits = it->get<int>();
        sq.params.bits = sq.bits;
        sq.params.grid = grid;
        sq.params.scale = tensor(file, site + ".act_scale", {layout.rows, layout.columns}, torch::kFloat);
        sq.params.zero = tensor(file, site + ".act_zero", {layout.rows, layout.columns}, torch::kFloat);
      }
      attach_static(model, static_cast<int64_t>(i), q);
    }
  }

 private:
  template <class T>
  T setting(const char* key) const {
    auto it = config_.find(key);
    if (it == config_.end()) throw Error(fmt::format("{}: quantization_config has no '{}'", config_path_, key));
    try {
      return it->get<T>();
    } catch (const nlohmann::json::exception&) {
      throw Error(fmt::format("{}: quantization_config.{} has the wrong type", config_path_, key));
    }
  }

  torch::Tensor tensor(const io::SafetensorsFile& file, const std::string& name, std::vector<int64_t> shape,
                       torch::ScalarType dtype) const {
    if (!file.contains(name))
      throw Error(fmt::format("{}: no tensor '{}', which {} implies", file.path(), name, config_path_));
    const io::TensorInfo& info = file.info(name);
    if (info.shape != shape)
      throw Error(fmt::format("{}: tensor '{}' has shape {}, the model implies {}", file.path(), name,
                              shape_text(info.shape), shape_text(shape)));
    return file.read(name, dtype);
  }

  // An index whose every row is a permutation of 0..columns-1.
  torch::Tensor permutation(const io::SafetensorsFile& file, const std::string& name,
                            std::vector<int64_t> shape) const {
    torch::Tensor index = tensor(file, name, shape, torch::kLong);
    torch::Tensor rows = index.reshape({-1, shape.back()});
    torch::Tensor sorted = std::get<0>(rows.sort(1));
    if (!sorted.equal(torch::arange(shape.back(), torch::kLong).unsqueeze(0).expand_as(sorted)))
      throw Error(fmt::format("{}: '{}' is not a permutation of 0..{} in every row", file.path(), name,
                              shape.back() - 1));
    return index;
  }

  nlohmann::json config_;
  std::string config_path_, dir_;
  std::unique_ptr<model::QuantizedWeightReader> weights_;
};

}  // namespace

nlohmann::json rptq_quantization_config(const quant::PtqSettings& ptq, const RptqSettings& s, model::CausalLM& model) {
  nlohmann::json sites = nlohmann::json::object();
  for (std::size_t i = 0; i < model.layers.size(); ++i)
    for (SiteKind kind : kSiteKinds)
      if (site_bits(kind, s) != 16) sites[site_name(model, static_cast<int64_t>(i), kind)] = site_bits(kind, s);
  return {{"quant_method", "rptq"},
          {"bits", ptq.wbits},
          {"weights", s.weight_ranges == "clusters" ? "per (row, input cluster), reference grid" : ptq.describe()},
          {"act_bits", s.act_bits},
          {"kv_only", s.kv_only},
          {"activations", s.activations},
          {"grid", s.grid},
          {"calibration", s.calibration},
          {"probs_bits", probs_bits(s)},
          {"reorder", s.reorder},
          {"clusters", {{"R1", s.r1_clusters}, {"R2", s.r2_clusters}, {"R3", s.r3_clusters}, {"R4", s.r4_clusters},
                        {"R5", s.r5_clusters}}},
          {"file", kRptqFile},
          {"sites", sites}};
}

void save_rptq(model::CausalLM& model, const std::vector<RptqLayer>& layers, const quant::PtqSettings& ptq,
               const RptqSettings& settings, const std::string& dir, bool write, int64_t max_shard_bytes,
               const quant::GptqExport* packed) {
  if (write && model.tp().rank() == 0)
    io::save_safetensors_file((fs::path(dir) / kRptqFile).string(), rptq_tensors(model, layers, settings.activations),
                              {{"format", "pt"}});
  nlohmann::json config = rptq_quantization_config(ptq, settings, model);
  config["weights_format"] = packed ? "gptq" : "fake";
  if (!packed) {
    model::save_pretrained(model, dir, write, max_shard_bytes, {{"quantization_config", config}});
    return;
  }
  quant::export_gptq(model, *packed, dir, write, max_shard_bytes, [&](const nlohmann::json& gptq) {
    nlohmann::json wrapped = config;
    wrapped["gptq"] = gptq;
    return wrapped;
  });
}

void register_rptq_reader() {
  quant::register_gptq_reader();  // packed weights inside RPTQ's checkpoint are the GPTQ reader's
  model::register_quantized_format(
      "rptq", [](const nlohmann::json& json, const std::string& config_path, const io::Checkpoint& checkpoint) {
        return std::make_unique<RptqReader>(json, config_path, checkpoint);
      });
}

}  // namespace qforge::rptq
