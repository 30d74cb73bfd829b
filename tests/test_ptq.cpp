// Post-training quantization end to end on the model: the framework's named sites (observers, transforms,
// block-by-block runs), calibration windows drawn as Python's `random` draws them, Hessian sums reduced over DP,
// and GPTQ over every TP size the world allows giving the weights of one process. On stories260K (../shared),
// GPTQ beats RTN on every layer.
#include "framework/dist/runtime.h"
#include "framework/eval/perplexity.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/sites.h"
#include "framework/tokenizer/tokenizer.h"
#include "quant/calibration.h"
#include "quant/ptq.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

namespace qforge::quant {
namespace {
namespace fs = std::filesystem;
using model::CausalLM;
using model::randn;
using model::runtime;

// Hessian sums are fp32 sums of products in another order on each DP layout: relative rounding of fp32 sums.
constexpr double kHessianRelTol = 1e-5;
// Quantized weights under TP equal one process's except where a Hessian entry's last bits (row blocks are
// summed in another order) tip a rounding: the bound.
constexpr double kMinEqualCodes = 0.999;
// Checkpoints hold scale * (q - zero): the same code under Hessians that differ in their last bits gives values a
// few ulps apart, another code moves a value by a whole step (at least 1/2^bits of it).
constexpr double kSameCodeRelTol = 1e-5;
// The exact mode's reconstruction error under TP against one process's.
constexpr double kErrorRelTol = 1e-3;

std::vector<std::pair<std::string, model::ModelConfig>> configs() {
  return {{"llama-gqa", model::llama(8, 4, false)}, {"opt", model::opt(false)}};  // GQA that TP 4 can split
}

// ---- sites ---------------------------------------------------------------------------------------------------

TEST(Sites, EverySiteIsObservedOnceAndObserversDetachByHandle) {
  CausalLM model(model::llama(4, 2, false), runtime().self());
  model::init_random(model, 3);
  torch::Tensor ids = model::random_ids(2, 7, 250, 4);
  auto sites = model::named_sites(model);
  // 2 layers x (2 norms + 7 linears x 2 + 6 attention sites) + final norm + head input and weight.
  EXPECT_EQ(sites.size(), 2u * (2 + 14 + 6) + 3);
  std::map<std::string, int> calls;
  std::vector<std::pair<model::Site*, model::Site::Handle>> handles;
  for (auto& [name, site] : sites)
    handles.emplace_back(site, site->observe([&calls, n = name](const torch::Tensor&) { ++calls[n]; }));
  model.forward(ids);
  for (auto& [name, site] : sites) EXPECT_EQ(calls[name], 1) << name;
  EXPECT_EQ(calls.count("model.layers.1.self_attn.k_cache"), 1u);
  EXPECT_EQ(calls.count("model.layers.0.post_attention_layernorm.output"), 1u);

  // Under block recomputation the backward pass runs every block again: observers must not see it.
  calls.clear();
  model.recompute_blocks = true;
  model.forward(ids).sum().backward();
  for (auto& [name, site] : sites) EXPECT_EQ(calls[name], 1) << name << " under train.recompute";

  for (auto& [site, handle] : handles) site->remove(handle);
  calls.clear();
  model.forward(ids);
  EXPECT_TRUE(calls.empty()) << "removed observers were called";
}

TEST(Sites, ObserversSeeTheTransformedTensorAndTheTransformChangesTheModel) {
  CausalLM model(model::llama(4, 4, false), runtime().self());
  model::init_random(model, 3);
  torch::NoGradGuard no_grad;
  torch::Tensor ids = model::random_ids(1, 5, 250, 4);
  torch::Tensor before = model.forward(ids);
  model::Site& site = model.layers[0]->mlp_norm->output_site;
  site.transform = [](const torch::Tensor& x) { return x * 0; };
  torch::Tensor seen;
  const auto handle = site.observe([&seen](const torch::Tensor& x) { seen = x.clone(); });
  torch::Tensor after = model.forward(ids);
  EXPECT_EQ(seen.abs().max().item<double>(), 0.0) << "observers see the tensor after the transform";
  EXPECT_GT((after - before).abs().max().item<double>(), 1e-3) << "a zeroed MLP input must change the logits";
  site.remove(handle);
  site.transform = nullptr;
  EXPECT_TRUE(torch::equal(model.forward(ids), before));
}

TEST(Sites, BlockByBlockEqualsForward) {
  for (const auto& [name, config] : configs()) {
    CausalLM model(config, runtime().self());
    model::init_random(model, 5);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = model::random_ids(3, 9, config.vocab_size, 6);
    torch::Tensor positions = model.default_positions(3, 9);
    torch::Tensor h = model.embed(ids, positions);
    for (auto& layer : model.layers) h = layer(h, positions, nullptr, nullptr);
    EXPECT_TRUE(torch::equal(model.finish(h), model.forward(ids))) << name;
  }
}

// ---- calibration ---------------------------------------------------------------------------------------------

TEST(Calibration, WindowsAreDrawnAsPythonsRandomDrawsThem) {
  for (auto [seed, high] : {std::pair<uint32_t, int64_t>{0, 1000000}, {7, 300}, {1234, 1}}) {
    const auto python = test::run_command(fmt::format(
        "/usr/bin/python3 -c \"import random; random.seed({}); print(' '.join(str(random.randint(0, {})) for _ in "
        "range(40)))\"",
        seed, high));
    ASSERT_EQ(python.status, 0) << python.output;
    PythonRandom rng(seed);
    std::ostringstream mine;
    for (int i = 0; i < 40; ++i) mine << (i ? " " : "") << rng.randint(0, high);
    EXPECT_EQ(mine.str() + "\n", python.output) << "seed " << seed << ", randint(0, " << high << ")";
  }
}

TEST(Calibration, TooLittleTextIsOneClearError) {
  torch::Tensor tokens = torch::arange(100, torch::kLong);
  const std::string message = test::error_of([&] { text_windows(tokens, 4, 128, true, 0, "calib.txt"); });
  EXPECT_NE(message.find("calib.txt: 100 tokens are too few"), std::string::npos) << message;
  const std::string consecutive = test::error_of([&] { text_windows(tokens, 4, 30, false, 0, "calib.txt"); });
  EXPECT_NE(consecutive.find("120 needed"), std::string::npos) << consecutive;
  torch::Tensor windows = text_windows(tokens, 3, 30, false, 0, "calib.txt");
  EXPECT_TRUE(torch::equal(windows[2], torch::arange(60, 90, torch::kLong))) << "consecutive windows from the start";
}

TEST(Calibration, DpReducedHessianEqualsTheOneProcessHessian) {
  torch::Tensor inputs = randn({12, 16, 24}, 8) * torch::linspace(0.1, 10, 24);  // 12 sequences, 16 tokens
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    HessianAccumulator whole(24, 24, dtype);
    whole.add(inputs, inputs, inputs.size(0));
    HessianAccumulator shared(24, 24, dtype);
    torch::Tensor mine = dp_share(inputs, runtime().world());
    if (mine.size(0) > 0) shared.add(mine, mine, mine.size(0));
    shared.reduce(runtime().world());
    EXPECT_EQ(shared.sequences(), 12);
    const double error = ((shared.sum() - whole.sum()).abs().max() / whole.sum().abs().max()).item<double>();
    std::printf("DP %d, %s: Hessian sum relative error %.3g\n", runtime().size(),
                dtype == torch::kFloat ? "fp32" : "fp64", error);
    EXPECT_LE(error, dtype == torch::kFloat ? kHessianRelTol : 1e-12);
  }
}

// ---- GPTQ over TP x DP -------------------------------------------------------------------------------------

PtqSettings small_settings() {
  PtqSettings s;
  s.wbits = 4;
  s.group_size = 8;
  s.act_order = true;
  s.batch_size = 3;
  return s;
}

TEST(Ptq, EveryTpSizeGivesTheQuantizedWeightsOfOneProcess) {
  for (const auto& [name, config] : configs()) {
    torch::Tensor sequences = model::random_ids(8, 16, config.vocab_size, 21);
    CausalLM reference(config, runtime().self());
    model::init_random(reference, 9, 0.2);
    const auto original = model::gathered_weights(reference);
    const PtqReport expected = run_ptq(reference, sequences, small_settings(), runtime().self());
    auto reference_weights = model::gathered_weights(reference);
    double gptq = 0, rtn = 0;
    for (const LinearReport& l : expected.linears) {
      EXPECT_GT(l.error, 0) << name << " " << l.name;
      gptq += l.error;
      rtn += l.rtn_error;
    }
    EXPECT_LT(gptq, rtn) << name;
    for (int tp : model::tp_sizes()) {
      for (const char* mode : {"exact", "shard"}) {
        dist::Grid grid(runtime(), tp);
        CausalLM model(config, grid.tp_group());
        model::init_random(model, 9, 0.2);
        PtqSettings settings = small_settings();
        settings.row_parallel = mode;
        const PtqReport report = run_ptq(model, dp_share(sequences, grid.dp_group()), settings, grid.dp_group());
        ASSERT_EQ(report.sequences, 8);
        auto weights = model::gathered_weights(model);
        const bool exact = std::string(mode) == "exact" || tp == 1;
        double total = 0, fewest_equal = 1;
        for (std::size_t i = 0; i < report.linears.size(); ++i) {
          const LinearReport& l = report.linears[i];
          total += l.error;
          torch::Tensor mine = weights.at(l.name + ".weight");
          EXPECT_FALSE(torch::equal(mine, original.at(l.name + ".weight"))) << l.name << " was not quantized";
          if (!exact) continue;  // shard mode: o_proj/down differ, and so do the inputs of every later layer
          torch::Tensor theirs = reference_weights.at(l.name + ".weight");
          const double equal = ((mine - theirs).abs() <= kSameCodeRelTol * torch::max(mine.abs(), theirs.abs()))
                                   .to(torch::kDouble)
                                   .mean()
                                   .item<double>();
          EXPECT_GE(equal, kMinEqualCodes) << name << " " << l.name << " under TP " << tp;
          fewest_equal = std::min(fewest_equal, equal);
          EXPECT_NEAR(l.error, expected.linears[i].error, kErrorRelTol * expected.linears[i].error) << l.name;
        }
        if (runtime().rank() == 0)
          std::printf("%s, %s, %s: reconstruction error %.6g (TP 1: %.6g, RTN %.6g)%s\n", name.c_str(),
                      grid.describe().c_str(), mode, total, gptq, rtn,
                      exact ? fmt::format("; codes equal to TP 1's: at least {:.4f} per linear", fewest_equal).c_str()
                            : "");
        if (exact) {
          EXPECT_NEAR(total, gptq, kErrorRelTol * gptq) << name << " under TP " << tp;
        }
        EXPECT_LT(total, rtn) << name << " under TP " << tp << " (" << mode << "): GPTQ must still beat RTN";
      }
    }
  }
}

// Layer 0's linears from run_ptq equal gptq_quantize on Hessians built here: q/k/v from the RMSNorm of the
// embedding rows written out by its formula; o_proj from the attention context of the full-precision block
// (true-sequential off) or of the block with q/k/v already quantized (on).
TEST(Ptq, TheDriverFeedsEachLinearTheHessianOfItsInputs) {
  const model::ModelConfig config = model::llama(4, 2, false);
  const torch::Tensor sequences = model::random_ids(6, 16, config.vocab_size, 3);
  torch::NoGradGuard no_grad;
  auto hessian_of = [](const torch::Tensor& x) {
    torch::Tensor flat = x.reshape({-1, x.size(-1)}).to(torch::kDouble);
    return (flat.t().mm(flat) * (2.0 / static_cast<double>(x.size(0)))).to(torch::kFloat);
  };
  std::map<bool, torch::Tensor> o_proj_by_mode;
  for (bool true_sequential : {false, true}) {
    PtqSettings settings = small_settings();
    settings.true_sequential = true_sequential;
    const GptqOptions options = settings.gptq_options();
    CausalLM copy(config, runtime().self());
    model::init_random(copy, 9, 0.2);
    auto& attention = copy.layers[0]->attention;
    torch::Tensor h = copy.embed_tokens->weight.index_select(0, sequences.reshape({-1})).view({6, 16, -1});
    const torch::Tensor& norm_weight = copy.layers[0]->attention_norm->weight;
    torch::Tensor x = h * torch::rsqrt(h.pow(2).mean(-1, true) + config.norm_eps) * norm_weight;
    std::map<std::string, torch::Tensor> expected;
    for (auto* linear : {&attention->q_proj, &attention->k_proj, &attention->v_proj}) {
      torch::Tensor q = gptq_quantize((*linear)->weight, hessian_of(x), options).weight;
      expected[(*linear)->name()] = q;
      if (true_sequential) (*linear)->weight.copy_(q);
    }
    torch::Tensor context;
    const auto handle = attention->o_proj->input_site.observe([&context](const torch::Tensor& c) { context = c; });
    copy.layers[0](h, copy.default_positions(6, 16), nullptr, nullptr);
    attention->o_proj->input_site.remove(handle);
    expected[attention->o_proj->name()] = gptq_quantize(attention->o_proj->weight, hessian_of(context), options).weight;
    o_proj_by_mode[true_sequential] = expected[attention->o_proj->name()];

    CausalLM model(config, runtime().self());
    model::init_random(model, 9, 0.2);
    run_ptq(model, sequences, settings, runtime().self());
    for (const model::LinearSite& site : model::decoder_linears(model)) {
      auto it = expected.find(site.name);
      if (it == expected.end()) continue;
      const double equal = ((site.weight - it->second).abs() <=
                            kSameCodeRelTol * torch::max(site.weight.abs(), it->second.abs()))
                               .to(torch::kDouble)
                               .mean()
                               .item<double>();
      EXPECT_GE(equal, kMinEqualCodes) << site.name << (true_sequential ? " (true-sequential)" : "");
    }
  }
  EXPECT_FALSE(torch::allclose(o_proj_by_mode[false], o_proj_by_mode[true]))
      << "o_proj must see quantized q/k/v under true-sequential, full-precision ones without it";
}

// ---- a real model ------------------------------------------------------------------------------------------

TEST(Ptq, GptqBeatsRtnOnEveryLayerOfStories260K) {
  QF_REQUIRE_SHARED(shared);
  model::SharedDir dir("ptq_stories");
  if (runtime().rank() == 0)
    model::convert_llama2c(shared + "/models/stories260K/stories260K.bin", shared + "/models/stories260K/tok512.bin",
                           dir / "model");
  runtime().world().barrier();
  dist::Grid grid(runtime(), 1);
  auto tokenizer = tok::load_tokenizer(dir / "model/tokenizer.bin");
  torch::Tensor tokens = eval::tokenize_text_file(shared + "/data/tinystories/tinystories_val.txt", *tokenizer);
  torch::Tensor sequences = text_windows(tokens, 16, 256, true, 0, "tinystories_val.txt");
  for (int bits : {4, 3}) {
    auto model = model::load_pretrained(dir / "model", grid.tp_group());
    PtqSettings settings;
    settings.wbits = bits;
    const PtqReport report = run_ptq(*model, dp_share(sequences, grid.dp_group()), settings, grid.dp_group());
    ASSERT_EQ(report.linears.size(), 35u);
    double gptq = 0, rtn = 0;
    for (const LinearReport& l : report.linears) {
      EXPECT_GT(l.gptq_error, 0) << l.name << " at W" << bits << ": a quantized weight has an error";
      EXPECT_LT(l.gptq_error, l.rtn_error) << l.name << " at W" << bits;
      gptq += l.gptq_error;
      rtn += l.rtn_error;
    }
    if (runtime().rank() == 0)
      std::printf("stories260K W%d per row: GPTQ error %.4g, RTN %.4g (%.1f%%)\n", bits, gptq, rtn, 100 * gptq / rtn);
  }
}

}  // namespace
}  // namespace qforge::quant
