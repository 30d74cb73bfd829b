// RPTQ in the model: the reorder fused into norms and weights preserves the function (LLaMA with GQA and RoPE, OPT)
// at every TP size; statistics, clustering and the quantized model do not depend on the TP x DP grid; the saved
// checkpoint reloads with its reorders and static quantizers; bad settings are one clear error. The numerics of
// K-Means, the grids and the fixed-grid GPTQ against the reference's outputs are in test_rptq_numerics.
#include "framework/dist/runtime.h"
#include "framework/model/checkpoint_io.h"
#include "quant/calibration.h"
#include "rptq/rptq.h"
#include "rptq/rptq_checkpoint.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

namespace qforge::rptq {
namespace {
using model::CausalLM;
using model::runtime;

// fp32 logits of a reordered model against the original: the same sums in another order.
constexpr double kReorderAbsTol = 1e-4, kReorderRelTol = 1e-4;
// Quantized weights on another grid: equal but where a Hessian's last bits tip a rounding (test_ptq's bound).
constexpr double kMinEqualWeights = 0.999;
constexpr double kSameValueRelTol = 1e-5;
// Activation parameters: min/max of activations that TP's reduction order changes in their last bits.
constexpr double kParamRelTol = 1e-5;
// Logits of the quantized model on another grid: a flipped code (above) moves them a little.
constexpr double kQuantizedLogitsRelTol = 2e-2;

// GQA that TP 4 can split, with head_dim 8 (4 rotate-half pairs, so that R2 has an order to choose).
model::ModelConfig llama_gqa() {
  model::ModelConfig c = model::llama(8, 4, false);
  c.hidden_size = 64;
  return c;
}

std::vector<std::pair<std::string, model::ModelConfig>> configs() {
  return {{"llama-gqa", llama_gqa()}, {"opt", model::opt(false)}};
}

RptqSettings small_settings(const model::ModelConfig& c) {
  RptqSettings s;
  s.r1_clusters = 4;
  s.r2_clusters = 3;  // LLaMA: of 4 rotate-half pairs
  s.r3_clusters = 2;
  s.r4_clusters = 4;
  s.r5_clusters = 6;
  s.act_bits = 4;
  return s;
}

quant::PtqSettings weight_settings() {
  quant::PtqSettings p;
  p.method = "rptq";
  p.wbits = 4;
  p.group_size = -1;
  p.sym = false;
  return p;
}

torch::Tensor full_logits(CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return model::gather_vocab(model.forward(ids), model.tp(), model.config().vocab_size);
}

// Every layer's reorder from statistics of `ids` (this DP rank's share), agreed over the grid, and applied.
std::vector<LayerReorder> reorder_model(CausalLM& model, const torch::Tensor& ids, const RptqSettings& s,
                                        dist::Grid& grid) {
  torch::NoGradGuard no_grad;
  std::vector<std::unique_ptr<LayerStatistics>> observed;
  for (std::size_t i = 0; i < model.layers.size(); ++i)
    observed.push_back(std::make_unique<LayerStatistics>(model, static_cast<int64_t>(i)));
  model.forward(quant::dp_share(ids, grid.dp_group()));
  std::vector<LayerReorder> reorders;
  for (std::size_t i = 0; i < model.layers.size(); ++i) {
    auto stats = observed[i]->gather(grid.dp_group(), ids.size(0));
    const bool root = grid.tp_rank() == 0 && grid.dp_rank() == 0;
    LayerReorder r = root ? cluster_layer(stats, model.config(), s) : identity_reorder(model.config());
    agree_on_reorder(r, model.config(), grid.tp_group(), grid.dp_group());
    reorders.push_back(r);
  }
  for (std::size_t i = 0; i < model.layers.size(); ++i) apply_reorder(model, static_cast<int64_t>(i), reorders[i]);
  return reorders;
}

TEST(Reorder, TheFusedReorderPreservesTheFunctionAtEveryTpSize) {
  for (const auto& [name, config] : configs()) {
    torch::Tensor ids = model::random_ids(4, 12, config.vocab_size, 5);
    CausalLM reference(config, runtime().self());
    model::init_random(reference, 11, 0.2);
    const torch::Tensor expected = full_logits(reference, ids);
    std::vector<LayerReorder> first;
    for (int tp : model::tp_sizes()) {
      dist::Grid grid(runtime(), tp);
      CausalLM model(config, grid.tp_group());
      model::init_random(model, 11, 0.2);
      const auto reorders = reorder_model(model, ids, small_settings(config), grid);
      for (int r = 0; r < kReorderCount; ++r) {
        const torch::Tensor identity = identity_reorder(config).index[r];
        EXPECT_FALSE(torch::equal(reorders[0].index[r], identity)) << name << " " << reorder_name(r) << " is identity";
        if (first.empty()) continue;
        EXPECT_TRUE(torch::equal(reorders[0].index[r], first[0].index[r]))
            << name << " " << reorder_name(r) << ": TP " << tp << " clusters otherwise than TP 1";
      }
      if (first.empty()) first = reorders;
      if (config.family == model::Family::kLlama) {  // rotate-half pairs stay together
        const torch::Tensor r2 = reorders[0].index[kR2];
        const int64_t half = config.head_dim() / 2;
        EXPECT_TRUE(torch::equal(r2.narrow(1, half, half), r2.narrow(1, 0, half) + half)) << name;
      }
      const torch::Tensor actual = full_logits(model, ids);
      model::expect_close(actual, expected, kReorderAbsTol, kReorderRelTol,
                          fmt::format("{} reordered, {}", name, grid.describe()));
      if (runtime().rank() == 0)
        std::printf("%s, %s: reordered logits, max |difference| %.3g at scale %.3g\n", name.c_str(),
                    grid.describe().c_str(), (actual - expected).abs().max().item<double>(),
                    expected.abs().max().item<double>());
    }
  }
}

struct QuantizedModel {
  std::map<std::string, torch::Tensor> weights;
  RptqResult result;
  torch::Tensor logits;
};

QuantizedModel quantize(const model::ModelConfig& config, dist::Grid& grid, const torch::Tensor& sequences,
                        const torch::Tensor& ids, const RptqSettings& settings, CausalLM* keep = nullptr) {
  CausalLM local(config, grid.tp_group());
  CausalLM& model = keep ? *keep : local;
  model::init_random(model, 9, 0.2);
  QuantizedModel q;
  q.result = run_rptq(model, quant::dp_share(sequences, grid.dp_group()), weight_settings(), settings,
                      grid.dp_group());
  q.weights = model::gathered_weights(model);
  q.logits = full_logits(model, ids);
  return q;
}

TEST(Rptq, EveryGridGivesTheQuantizedModelOfOneProcess) {
  for (const auto& [name, config] : configs()) {
    torch::Tensor sequences = model::random_ids(6, 16, config.vocab_size, 21);
    torch::Tensor ids = model::random_ids(2, 16, config.vocab_size, 22);
    const RptqSettings settings = small_settings(config);
    // One process: the reference (every rank computes it alone).
    CausalLM reference_model(config, runtime().self());
    model::init_random(reference_model, 9, 0.2);
    const RptqResult expected = run_rptq(reference_model, sequences, weight_settings(), settings, runtime().self());
    const auto expected_weights = model::gathered_weights(reference_model);
    const torch::Tensor expected_logits = full_logits(reference_model, ids);
    for (int tp : model::tp_sizes()) {
      dist::Grid grid(runtime(), tp);
      const QuantizedModel q = quantize(config, grid, sequences, ids, settings);
      const std::string where = fmt::format("{}, {}", name, grid.describe());
      for (std::size_t layer = 0; layer < expected.layers.size(); ++layer) {
        for (int r = 0; r < kReorderCount; ++r)
          EXPECT_TRUE(torch::equal(q.result.layers[layer].reorder.index[r], expected.layers[layer].reorder.index[r]))
              << where << ": layer " << layer << " " << reorder_name(r);
        for (std::size_t s = 0; s < kSiteCount; ++s) {
          const SiteQuantizer& mine = q.result.layers[layer].rptq.sites[s];
          const SiteQuantizer& theirs = expected.layers[layer].rptq.sites[s];
          ASSERT_EQ(mine.bits, theirs.bits);
          if (mine.bits == 16) continue;
          model::expect_close(mine.params.scale, theirs.params.scale, 0, kParamRelTol,
                              fmt::format("{}: layer {} site {} scale", where, layer, s));
          EXPECT_TRUE(torch::equal(mine.params.zero, theirs.params.zero)) << where << " layer " << layer;
        }
      }
      double fewest_equal = 1;
      for (const auto& [weight, theirs] : expected_weights) {
        const torch::Tensor& mine = q.weights.at(weight);
        const double equal = ((mine - theirs).abs() <= kSameValueRelTol * torch::max(mine.abs(), theirs.abs()))
                                 .to(torch::kDouble).mean().item<double>();
        EXPECT_GE(equal, kMinEqualWeights) << where << " " << weight;
        fewest_equal = std::min(fewest_equal, equal);
      }
      model::expect_close(q.logits, expected_logits, 0, kQuantizedLogitsRelTol, where + ": quantized logits");
      if (runtime().rank() == 0)
        std::printf("%s: reorders equal to one process's; weights equal: at least %.5f per tensor; logits max "
                    "|difference| %.3g at scale %.3g\n", where.c_str(), fewest_equal,
                    (q.logits - expected_logits).abs().max().item<double>(),
                    expected_logits.abs().max().item<double>());
    }
  }
}

TEST(Rptq, TheSavedCheckpointReloadsWithItsReordersAndQuantizers) {
  register_rptq_reader();
  for (const auto& [name, config] : configs()) {
    torch::Tensor sequences = model::random_ids(4, 16, config.vocab_size, 31);
    torch::Tensor ids = model::random_ids(2, 16, config.vocab_size, 32);
    const int tp = model::tp_sizes().back();
    dist::Grid grid(runtime(), tp);
    CausalLM model(config, grid.tp_group());
    const RptqSettings settings = small_settings(config);
    const QuantizedModel q = quantize(config, grid, sequences, ids, settings, &model);
    use_activations(model, q.result.layers, settings, "none");
    const torch::Tensor weights_only = full_logits(model, ids);
    use_activations(model, q.result.layers, settings, "rptq");
    model::SharedDir dir("rptq_" + name);
    save_rptq(model, q.result.layers, weight_settings(), settings, dir / "out", grid.dp_rank() == 0, 0);
    runtime().world().barrier();
    auto loaded = model::load_pretrained(dir / "out", grid.tp_group());
    const torch::Tensor reloaded = full_logits(*loaded, ids);
    EXPECT_TRUE(torch::equal(reloaded, q.logits)) << name << ": reloaded logits differ by "
                                                  << (reloaded - q.logits).abs().max().item<double>();
    // The activation quantizers are part of what was saved: without them the logits differ.
    EXPECT_GT((weights_only - q.logits).abs().max().item<double>(), 1e-3) << name;
    if (runtime().rank() == 0)
      std::printf("%s, %s: reloaded logits equal; activation quantizers move them by %.3g\n", name.c_str(),
                  grid.describe().c_str(), (weights_only - q.logits).abs().max().item<double>());
  }
}

TEST(Rptq, BadSettingsAreOneClearError) {
  const model::ModelConfig llama = llama_gqa(), opt = model::opt(false);
  RptqSettings s = small_settings(llama);
  s.r1_clusters = 65;
  EXPECT_EQ(test::error_of([&] { check_reorder_settings(llama, s); }),
            "rptq.r1_clusters = 65 is more clusters than the 64 hidden channels of R1");
  s = small_settings(llama);
  s.r2_clusters = 5;
  EXPECT_EQ(test::error_of([&] { check_reorder_settings(llama, s); }),
            "rptq.r2_clusters = 5 is more clusters than the 4 rotate-half pairs per head (head_dim 8: RoPE rotates "
            "channel i with i + 4, so they move together) of R2");
  s = small_settings(opt);
  s.r3_clusters = 9;
  EXPECT_EQ(test::error_of([&] { check_reorder_settings(opt, s); }),
            "rptq.r3_clusters = 9 is more clusters than the 8 channels per head of R3");
  s = small_settings(opt);
  s.r5_clusters = 65;
  EXPECT_EQ(test::error_of([&] { check_reorder_settings(opt, s); }),
            "rptq.r5_clusters = 65 is more clusters than the 64 MLP channels of R5");
  EXPECT_NE(test::error_of([&] { check_reorder_settings(model::opt(true), small_settings(opt)); })
                .find("needs a pre-norm model"),
            std::string::npos);
  RptqSettings setting = small_settings(opt);
  setting.setting = "W4A5";
  EXPECT_EQ(test::error_of([&] { resolve_settings(weight_settings(), setting, opt); }),
            "rptq.setting 'W4A5' must be empty or one of W4A16, W4A8, W4A4, W4A4KV, W4A3KV, W3A3KV");
  setting.setting = "W3A3KV";
  auto [p, r] = resolve_settings(weight_settings(), setting, opt);
  EXPECT_EQ(p.wbits, 3);
  EXPECT_EQ(r.act_bits, 3);
  EXPECT_TRUE(r.kv_only);
  EXPECT_EQ(site_bits(SiteKind::kAttnNorm, r), 16);
  EXPECT_EQ(site_bits(SiteKind::kK, r), 3);
  r.kv_only = false;
  EXPECT_EQ(site_bits(SiteKind::kAttnNorm, r), 8);  // norm outputs at max(8, A)
  EXPECT_EQ(site_bits(SiteKind::kMlpHidden, r), 3);
}

}  // namespace
}  // namespace qforge::rptq
