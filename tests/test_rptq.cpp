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

#include <tuple>

namespace qforge::rptq {
namespace {
using model::CausalLM;
using model::runtime;

// fp32 logits of a reordered model against the original: the same sums in another order.
constexpr double kReorderAbsTol = 1e-4, kReorderRelTol = 1e-4;
// Quantized weights on another grid: equal but where a Hessian's last bits tip a rounding (test_ptq's bound).
constexpr double kMinEqualWeights = 0.999;
constexpr double kSameValueRelTol = 1e-5;
// Activation parameters of layer 0: min/max of activations that TP's reduction order changes in their last bits.
constexpr double kParamRelTol = 1e-5;
// Later layers: a GPTQ code tipped in an earlier layer (above) moves their inputs by a fraction of a step, and
// their ranges follow (measured up to 6e-4 at TP 4 with the reference grid); a rounded zero point may move a step.
constexpr double kLaterParamRelTol = 2e-3;
// Logits of the quantized model on another grid: a flipped weight code, then 4-bit activations that flip with it
// (measured up to 3.6% at TP 4 with the reference's options).
constexpr double kQuantizedLogitsRelTol = 6e-2;
// GPTQ-format checkpoints hold every tensor in fp16 (a relative 5e-4 each), through a few layers.
constexpr double kPackedLogitsRelTol = 1e-2;

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

// The reference's options: EMA calibration in global sample order, its signed grid, per-(row, cluster) weight ranges.
RptqSettings reference_settings(const model::ModelConfig& c) {
  RptqSettings s = small_settings(c);
  s.calibration = "ema";
  s.grid = "reference";
  s.weight_ranges = "clusters";
  return s;
}

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
  std::vector<std::tuple<std::string, model::ModelConfig, RptqSettings>> cases;
  for (const auto& [name, config] : configs()) {
    cases.emplace_back(name, config, small_settings(config));
    cases.emplace_back(name + " (ema, reference grid, cluster weight ranges)", config, reference_settings(config));
  }
  for (const auto& [name, config, settings] : cases) {
    torch::Tensor sequences = model::random_ids(6, 16, config.vocab_size, 21);
    torch::Tensor ids = model::random_ids(2, 16, config.vocab_size, 22);
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
          model::expect_close(mine.params.scale, theirs.params.scale, 0, layer == 0 ? kParamRelTol : kLaterParamRelTol,
                              fmt::format("{}: layer {} site {} scale", where, layer, s));
          const double zero_steps = (mine.params.zero - theirs.params.zero).abs().max().item<double>();
          EXPECT_LE(zero_steps, layer == 0 ? 0.0 : 1.0) << where << " layer " << layer << " site " << s;
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

// rptq.weight_ranges clusters: every weight row takes at most 2^bits values per input cluster (its own grid), on
// the reference's signed grid: codes (w / scale + zero) integers in [-8, 7] for the cluster's (min, max).
TEST(Rptq, ClusterWeightRangesGiveEachRowAndInputClusterItsGrid) {
  const model::ModelConfig config = model::opt(false);
  dist::Grid grid(runtime(), model::tp_sizes().back());
  CausalLM model(config, grid.tp_group());
  const RptqSettings settings = reference_settings(config);
  const QuantizedModel q = quantize(config, grid, model::random_ids(4, 16, config.vocab_size, 41),
                                    model::random_ids(1, 8, config.vocab_size, 42), settings, &model);
  const LayerReorder& reorder = q.result.layers[0].reorder;
  const torch::Tensor w = q.weights.at("model.decoder.layers.0.fc1.weight");  // columns: R4's clusters
  const torch::Tensor labels = reorder.labels[kR4][0];
  int64_t most = 0;
  for (int64_t cluster = 0; cluster < reorder.clusters[kR4]; ++cluster) {
    const torch::Tensor columns = (labels == cluster).nonzero().flatten();
    ASSERT_GT(columns.numel(), 0);
    for (int64_t row = 0; row < w.size(0); ++row)
      most = std::max(most, std::get<0>(torch::_unique(w[row].index_select(0, columns))).numel());
  }
  EXPECT_LE(most, 16) << "a row holds more than 2^4 values in one input cluster";
  EXPECT_GT(most, 1);
  if (runtime().rank() == 0)
    std::printf("fc1 of layer 0, %s: at most %lld distinct values per (row, input cluster), 4 bits\n",
                grid.describe().c_str(), static_cast<long long>(most));
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
    auto save_and_load = [&](const std::string& out, const quant::GptqExport* packed) {
      save_rptq(model, q.result.layers, weight_settings(), settings, out, grid.dp_rank() == 0, 0, packed);
      runtime().world().barrier();
      return model::load_pretrained(out, grid.tp_group());
    };
    auto loaded = save_and_load(dir / "out", nullptr);
    const torch::Tensor reloaded = full_logits(*loaded, ids);
    EXPECT_TRUE(torch::equal(reloaded, q.logits)) << name << ": reloaded logits differ by "
                                                  << (reloaded - q.logits).abs().max().item<double>();
    // The weights in the GPTQ format inside RPTQ's checkpoint (every other tensor fp16, as the format stores them):
    // with the activations in full precision, the same model up to fp16 rounding.
    auto unpacked = save_and_load(dir / "packed", &q.result.ptq.quantized);
    EXPECT_TRUE(unpacked->layers[0]->attention_norm->output_index.defined()) << name;
    use_activations(*unpacked, {}, settings, "none");
    const torch::Tensor from_packed = full_logits(*unpacked, ids);
    model::expect_close(from_packed, weights_only, 0, kPackedLogitsRelTol,
                        name + ": weight-only logits from the GPTQ-packed weights");
    // The activation quantizers are part of what was saved: without them the logits differ.
    EXPECT_GT((weights_only - q.logits).abs().max().item<double>(), 1e-3) << name;
    if (runtime().rank() == 0)
      std::printf("%s, %s: reloaded logits equal; weight-only ones from GPTQ-packed weights within %.3g; activation "
                  "quantizers move them by %.3g\n", name.c_str(), grid.describe().c_str(),
                  (from_packed - weights_only).abs().max().item<double>(),
                  (weights_only - q.logits).abs().max().item<double>());
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
