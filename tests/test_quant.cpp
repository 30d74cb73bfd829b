// quant/: MinMax quantizers against closed forms, the straight-through gradient, the half-step error bound; QAT
// hooks on LLaMA and OPT under every TP size the world allows (logits, quantized weights and gradients equal to
// TP 1); bit-packed export and its round trip. Runs as 1, 2 and 4 MPI ranks.
#include "framework/common/error.h"
#include "framework/config/config.h"
#include "framework/dist/runtime.h"
#include "framework/model/checkpoint_io.h"
#include "framework/model/parallel.h"
#include "framework/model/transformer.h"
#include "quant/qat.h"
#include "quant/quantizer.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>

namespace qforge::quant {
namespace {
namespace fs = std::filesystem;
using model::CausalLM;
using model::ModelConfig;
using model::randn;
using model::runtime;
using model::SharedDir;
using model::tp_sizes;

// fp32 tolerances of test_model: TP changes only the order of summation.
constexpr double kLogitAbsTol = 2e-5;
constexpr double kLogitRelTol = 1e-4;
constexpr double kGradAbsTol = 1e-6;
constexpr double kGradRelTol = 1e-3;
// |x̂ - x| <= scale * (1/2 + this): x / scale in fp32 is off by a few ulps of |x / scale| <= 2^8.
constexpr double kHalfStepSlack = 1e-4;
QuantSpec spec_of(int bits, bool symmetric, Granularity granularity, int64_t group_size = 128, double ste_clip = 2.0) {
  return {bits, symmetric, granularity, group_size, ste_clip};
}

torch::Tensor tensor2d(std::vector<std::vector<float>> rows) {
  std::vector<torch::Tensor> parts;
  for (auto& row : rows) parts.push_back(torch::tensor(row));
  return torch::stack(parts);
}

// The scale of every element (codes 1, zero points 0): what one quantization step is worth there.
torch::Tensor step_per_element(const QuantizedTensor& q, const QuantSpec& spec) {
  QuantizedTensor ones{torch::ones_like(q.codes), q.scales, q.zeros.defined() ? torch::zeros_like(q.zeros) : torch::Tensor()};
  return dequantize(ones, spec);
}

using test::error_of;

// ---- closed forms ------------------------------------------------------------------------------------------

TEST(Quantizer, Int4SymmetricPerChannelClosedForm) {
  // Row absmax 1.75 and 3.5: scales 0.25 and 0.5 exactly.
  torch::Tensor w = tensor2d({{1.75f, -0.75f, 0.3f, 0.1f}, {-3.5f, 1.1f, 0.4f, 2.2f}});
  const QuantSpec spec = spec_of(4, true, Granularity::kChannel);
  QuantizedTensor q = quantize(w, spec);
  EXPECT_TRUE(torch::equal(q.codes, torch::tensor({7, -3, 1, 0, -7, 2, 1, 4}, torch::kInt).view({2, 4})));
  EXPECT_TRUE(torch::equal(q.scales, torch::tensor({0.25f, 0.5f}).view({2, 1})));
  EXPECT_FALSE(q.zeros.defined());
  torch::Tensor expected = tensor2d({{1.75f, -0.75f, 0.25f, 0.0f}, {-3.5f, 1.0f, 0.5f, 2.0f}});
  EXPECT_TRUE(torch::equal(fake_quantize(w, spec), expected)) << fake_quantize(w, spec);
  EXPECT_TRUE(torch::equal(dequantize(q, spec), expected));
}

TEST(Quantizer, Int4AsymmetricClosedFormWidensTheRangeToZero) {
  // Row 0: [-1, 2.75], scale 3.75 / 15 = 0.25, zero point 4. Row 1 is positive: its range is widened to [0, 3.75].
  torch::Tensor w = tensor2d({{-1.0f, 0.3f, 2.0f, 2.75f}, {0.5f, 1.0f, 3.75f, 2.0f}});
  const QuantSpec spec = spec_of(4, false, Granularity::kChannel);
  QuantizedTensor q = quantize(w, spec);
  EXPECT_TRUE(torch::equal(q.codes, torch::tensor({0, 5, 12, 15, 2, 4, 15, 8}, torch::kInt).view({2, 4})));
  EXPECT_TRUE(torch::equal(q.scales, torch::tensor({0.25f, 0.25f}).view({2, 1})));
  EXPECT_TRUE(torch::equal(q.zeros, torch::tensor({4, 0}, torch::kInt).view({2, 1})));
  torch::Tensor expected = tensor2d({{-1.0f, 0.25f, 2.0f, 2.75f}, {0.5f, 1.0f, 3.75f, 2.0f}});
  EXPECT_TRUE(torch::equal(fake_quantize(w, spec), expected)) << fake_quantize(w, spec);
}

TEST(Quantizer, PerGroupRangesAreIndependent) {
  // Groups of 4 with absmax 1.75, 0.875, 3.5 and 0 (all zero: scale 1, values kept).
  torch::Tensor w = tensor2d({{1.75f, 0.5f, -0.3f, 0.1f, 0.875f, -0.25f, 0.1f, 0.0f},
                              {-3.5f, 0.7f, 1.3f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}});
  const QuantSpec spec = spec_of(4, true, Granularity::kGroup, 4);
  QuantizedTensor q = quantize(w, spec);
  EXPECT_TRUE(torch::equal(q.scales, tensor2d({{0.25f, 0.125f}, {0.5f, 1.0f}}))) << q.scales;
  EXPECT_TRUE(torch::equal(q.codes, torch::tensor({7, 2, -1, 0, 7, -2, 1, 0, -7, 1, 3, 0, 0, 0, 0, 0}, torch::kInt).view({2, 8})))
      << q.codes;
  torch::Tensor expected = tensor2d({{1.75f, 0.5f, -0.25f, 0.0f, 0.875f, -0.25f, 0.125f, 0.0f},
                                     {-3.5f, 0.5f, 1.5f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}});
  EXPECT_TRUE(torch::equal(fake_quantize(w, spec), expected)) << fake_quantize(w, spec);
}

TEST(Quantizer, PerTokenActivationRangesAndPerTensor) {
  // [B 2, T 2, F 4]: token absmax 1.75, 3.5, 0.875, 0.
  torch::Tensor x = torch::tensor({1.75f, -0.6f, 0.3f, 0.0f, 3.5f, -1.1f, 0.0f, 2.4f, 0.875f, 0.2f, -0.3f, 0.0f,
                                   0.0f, 0.0f, 0.0f, 0.0f}).view({2, 2, 4});
  const QuantSpec token = spec_of(4, true, Granularity::kToken);
  QuantizedTensor q = quantize(x, token);
  EXPECT_TRUE(torch::equal(q.scales, torch::tensor({0.25f, 0.5f, 0.125f, 1.0f}).view({4, 1}))) << q.scales;
  torch::Tensor expected = torch::tensor({1.75f, -0.5f, 0.25f, 0.0f, 3.5f, -1.0f, 0.0f, 2.5f, 0.875f, 0.25f, -0.25f, 0.0f,
                                          0.0f, 0.0f, 0.0f, 0.0f}).view({2, 2, 4});
  EXPECT_TRUE(torch::equal(fake_quantize(x, token), expected)) << fake_quantize(x, token);

  // One range for everything: scale 0.5; the third token's 0.875 becomes 1.0 (1.75 steps round to 2).
  const QuantSpec tensor = spec_of(4, true, Granularity::kTensor);
  EXPECT_TRUE(torch::equal(quantize(x, tensor).scales, torch::tensor({0.5f}).view({1, 1})));
  EXPECT_EQ(fake_quantize(x, tensor)[1][0][0].item<float>(), 1.0f);
}

TEST(Quantizer, KvPerTokenSpansTheHeadsPerHeadDoesNot) {
  // [B 1, H 2, T 2, d 2]. Per token: position 0 has absmax 3.5 over both heads, position 1 has 1.75.
  torch::Tensor kv = torch::tensor({3.5f, 1.0f, 1.75f, -0.5f,      // head 0: t0, t1
                                    0.875f, 0.3f, 0.4375f, 0.1f})  // head 1: t0, t1
                         .view({1, 2, 2, 2});
  const QuantSpec token = spec_of(4, true, Granularity::kToken), head = spec_of(4, true, Granularity::kHead);
  EXPECT_TRUE(torch::equal(quantize(kv, token).scales, torch::tensor({0.5f, 0.25f}).view({2, 1})));
  EXPECT_TRUE(torch::equal(quantize(kv, head).scales, torch::tensor({0.5f, 0.25f, 0.125f, 0.0625f}).view({4, 1})));
  torch::Tensor by_token = torch::tensor({3.5f, 1.0f, 1.75f, -0.5f, 1.0f, 0.5f, 0.5f, 0.0f}).view({1, 2, 2, 2});
  torch::Tensor by_head = torch::tensor({3.5f, 1.0f, 1.75f, -0.5f, 0.875f, 0.25f, 0.4375f, 0.125f}).view({1, 2, 2, 2});
  EXPECT_TRUE(torch::equal(fake_quantize(kv, token), by_token)) << fake_quantize(kv, token);
  EXPECT_TRUE(torch::equal(fake_quantize(kv, head), by_head)) << fake_quantize(kv, head);
  // The hook sees keys as a transposed view: the layout must not depend on contiguity.
  torch::Tensor strided = kv.transpose(1, 2).contiguous().transpose(1, 2);
  EXPECT_TRUE(torch::equal(fake_quantize(strided, token), by_token));
}

TEST(Quantizer, SixteenBitsIsTheIdentityAndOtherWidthsAreRejected) {
  torch::Tensor x = randn({3, 8}, 1);
  EXPECT_TRUE(fake_quantize(x, spec_of(16, true, Granularity::kChannel)).is_same(x));
  for (int bits : {0, 1, 9, 15, 17}) {
    EXPECT_THROW(fake_quantize(x, spec_of(bits, true, Granularity::kChannel)), UsageError) << bits;
    EXPECT_THROW(quantize(x, spec_of(bits, false, Granularity::kTensor)), UsageError) << bits;
  }
  EXPECT_NE(error_of([&] { fake_quantize(x, spec_of(9, true, Granularity::kChannel)); }).find("got 9"), std::string::npos);
  EXPECT_EQ(describe(spec_of(4, true, Granularity::kChannel)), "int4 sym per-channel");
  EXPECT_EQ(describe(spec_of(8, false, Granularity::kToken)), "int8 asym per-token");
  EXPECT_EQ(describe(spec_of(3, true, Granularity::kGroup, 64)), "int3 sym per-group(64)");
  EXPECT_EQ(describe(spec_of(16, true, Granularity::kHead)), "full precision");
}

TEST(Quantizer, GroupsThatDoNotDivideTheRowAreAnErrorNamingShapeAndGroupSize) {
  const std::string message = error_of([] { quantize(randn({4, 12}, 2), spec_of(4, true, Granularity::kGroup, 8)); });
  EXPECT_NE(message.find("[4, 12]"), std::string::npos) << message;
  EXPECT_NE(message.find("group_size 8"), std::string::npos) << message;
  EXPECT_THROW(quantize(randn({2, 3, 8}, 2), spec_of(4, true, Granularity::kGroup, 4)), Error);
  EXPECT_THROW(quantize(randn({2, 8}, 2), spec_of(4, true, Granularity::kHead)), Error);
}

TEST(Quantizer, ErrorIsAtMostHalfAStepAtEveryWidth) {
  struct Case {
    Granularity granularity;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {{Granularity::kTensor, {16, 64}}, {Granularity::kChannel, {16, 64}},
                                   {Granularity::kGroup, {16, 64}},  {Granularity::kToken, {3, 5, 64}},
                                   {Granularity::kToken, {2, 4, 5, 8}}, {Granularity::kHead, {2, 4, 5, 8}}};
  uint64_t seed = 100;
  for (int bits = 2; bits <= 8; ++bits)
    for (bool symmetric : {true, false})
      for (const Case& c : cases) {
        const QuantSpec spec = spec_of(bits, symmetric, c.granularity, 16);
        torch::Tensor x = randn(c.shape, ++seed) * 0.05 + (symmetric ? 0.0 : 0.03);  // asymmetric: off-centre data
        const std::string where = describe(spec) + " of shape " + fmt::format("{}", fmt::join(c.shape, "x"));
        QuantizedTensor q = quantize(x, spec);
        torch::Tensor fake = fake_quantize(x, spec);
        EXPECT_TRUE(torch::equal(fake, dequantize(q, spec))) << where;
        torch::Tensor excess = (fake - x).abs() - step_per_element(q, spec) * (0.5 + kHalfStepSlack);
        EXPECT_LE(excess.max().item<double>(), 0.0) << where;
        EXPECT_GT((fake - x).abs().max().item<double>(), 0.0) << where << ": the data must really round";
        const int64_t low = symmetric ? -((1 << (bits - 1)) - 1) : 0;
        const int64_t high = symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
        EXPECT_GE(q.codes.min().item<int64_t>(), low) << where;
        EXPECT_LE(q.codes.max().item<int64_t>(), high) << where;
      }
}

TEST(Quantizer, RangesAreFp32AndTheDtypeIsKept) {
  torch::Tensor x = randn({4, 32}, 3);
  const QuantSpec spec = spec_of(8, true, Granularity::kChannel);
  torch::Tensor half = fake_quantize(x.to(torch::kBFloat16), spec);
  EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(half, fake_quantize(x.to(torch::kBFloat16).to(torch::kFloat), spec).to(torch::kBFloat16)));
}

// The fused CPU kernels (quant/fake_quant_cpu.cpp) against libtorch's operations written out here, bit for bit
// (signed zeros included): per-channel rows with exact ties (x / scale = k + 1/2), small negatives that round to -0,
// an all-zero row (scale 1) and random data, symmetric and asymmetric, at 2, 4 and 8 bits.
TEST(Quantizer, FusedKernelsEqualTheLibtorchOperationsBitForBit) {
  torch::Tensor ties = torch::tensor({7.0f, 0.5f, 1.5f, -2.5f, -0.25f, 3.5f, -6.5f, 0.0f});  // scale 1 at 4 bits
  torch::Tensor x = torch::cat({ties.view({1, 8}), torch::zeros({1, 8}), randn({6, 8}, 7) * 0.3});
  for (int bits : {2, 4, 8})
    for (bool symmetric : {true, false}) {
      const QuantSpec spec = spec_of(bits, symmetric, Granularity::kChannel);
      torch::Tensor expected;
      if (symmetric) {
        const double qmax = (1 << (bits - 1)) - 1;
        torch::Tensor absmax = x.abs().amax(1, true);
        torch::Tensor scale = torch::where(absmax > 0, absmax / qmax, torch::ones_like(absmax));
        expected = (x / scale).round().clamp(-qmax, qmax) * scale;
      } else {
        const double levels = (1 << bits) - 1;
        torch::Tensor max = x.amax(1, true).clamp_min(0), neg_min = (-x.amin(1, true)).clamp_min(0);
        torch::Tensor range = max + neg_min;
        torch::Tensor scale = torch::where(range > 0, range / levels, torch::ones_like(range));
        torch::Tensor zero = (neg_min / scale).round();
        expected = (((x / scale).round() + zero).clamp(0, levels) - zero) * scale;
      }
      torch::Tensor fake = fake_quantize(x, spec);
      EXPECT_TRUE(torch::equal(fake.view(torch::kInt), expected.view(torch::kInt)))
          << describe(spec) << ": " << fake << " vs " << expected;
    }
}

// ---- straight-through gradients ----------------------------------------------------------------------------

TEST(StraightThrough, GradientIsTheUpstreamGradientInsideTheClipRange) {
  // x = -3, -2.75, ..., 3 (exact): 17 values with |x| <= 2 (indices 4..20).
  torch::Tensor upstream = torch::arange(1, 26, torch::kFloat);
  for (Granularity granularity : {Granularity::kTensor, Granularity::kToken}) {
    torch::Tensor x = (torch::arange(-12, 13, torch::kFloat) / 4).requires_grad_(true);
    (fake_quantize(x, spec_of(4, true, granularity)) * upstream).sum().backward();
    torch::Tensor expected = upstream.clone();
    expected.narrow(0, 0, 4).zero_();
    expected.narrow(0, 21, 4).zero_();
    EXPECT_TRUE(torch::equal(x.grad(), expected)) << x.grad();

    // An activation (not a leaf) keeps a byte mask instead of x: the same gradient reaches the leaf behind it.
    torch::Tensor leaf = (torch::arange(-12, 13, torch::kFloat) / 8).requires_grad_(true);
    (fake_quantize(leaf * 2, spec_of(4, true, granularity)) * upstream).sum().backward();
    EXPECT_TRUE(torch::equal(leaf.grad(), expected * 2)) << leaf.grad();

    torch::Tensor plain = (torch::arange(-12, 13, torch::kFloat) / 4).requires_grad_(true);
    (fake_quantize(plain, spec_of(4, false, granularity, 128, /*ste_clip=*/0.0)) * upstream).sum().backward();
    EXPECT_TRUE(torch::equal(plain.grad(), upstream)) << plain.grad();
  }
}

// A weight behind a linear layer gets its gradient transposed: the clipped gradient is still the upstream one
// where |w| <= ste_clip (here about a third of the entries lie outside), bit for bit; and a weight inside the clip
// range passes its gradient through untouched.
TEST(StraightThrough, TransposedWeightGradientsAreClippedElementwise) {
  const torch::Tensor input = randn({3, 5}, 12), upstream = randn({3, 6}, 13);
  for (double spread : {2.0, 0.3}) {
    torch::Tensor w = (randn({6, 5}, 11) * spread).requires_grad_(true);
    (torch::matmul(input, fake_quantize(w, spec_of(8, true, Granularity::kChannel)).t()) * upstream).sum().backward();
    torch::Tensor plain = w.detach().clone().requires_grad_(true);
    (torch::matmul(input, plain.t()) * upstream).sum().backward();
    const torch::Tensor inside = w.detach().abs() <= 2.0;
    if (spread == 2.0) {
      EXPECT_GT((~inside).sum().item<int64_t>(), 3) << "some weights must lie outside the clip";
    }
    EXPECT_TRUE(torch::equal(w.grad(), plain.grad().masked_fill(~inside, 0))) << w.grad() << plain.grad();
  }
}

// ---- QAT on the model ----------------------------------------------------------------------------------------

struct NamedConfig {
  const char* name;
  ModelConfig config;
};
std::vector<NamedConfig> configs() {
  return {{"llama multi-head, untied", model::llama(4, 4, false)},
          {"llama grouped-query 8/4, tied", model::llama(8, 4, true)},
          {"opt pre-norm", model::opt(false)},
          {"opt-350m style: post-norm, project_in/out", model::opt(true)}};
}

QuantSettings qat_settings(const std::string& bits, const std::string& kv_place, const std::string& granularity,
                           bool symmetric = true) {
  QuantSettings s;
  s.bits = bits;
  s.kv_place = kv_place;
  s.weight_granularity = granularity;
  s.group_size = 4;  // divides every row-parallel shard of the fixtures at TP 4 (8, 12, 16 columns)
  s.weight_symmetric = symmetric;
  s.act_symmetric = symmetric;
  s.kv_symmetric = symmetric;
  return s;
}

// 4-8-4 with both KV places and channel and group weights.
std::vector<QuantSettings> w4a8kv4_variants() {
  std::vector<QuantSettings> variants;
  for (const char* place : {"pre_rope", "post_rope"})
    for (const char* granularity : {"channel", "group"}) variants.push_back(qat_settings("4-8-4", place, granularity));
  return variants;
}

torch::Tensor full_logits(CausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return model::gather_vocab(model.forward(ids), model.tp(), model.config().vocab_size);
}

bool supports_tp(const ModelConfig& config, int tp) { return config.num_kv_heads % tp == 0; }

TEST(Qat, BakingWritesTheFakeQuantizedWeightsAndKeepsTheFunction) {
  for (int tp : tp_sizes()) {
    dist::Grid grid(runtime(), tp);
    CausalLM model(model::llama(4, 4, false), grid.tp_group());
    model::init_random(model, 4);
    torch::Tensor ids = model::random_ids(2, 7, 250, 5);
    attach_quantizers(model, qat_settings("4-16-16", "pre_rope", "channel"));
    std::vector<torch::Tensor> expected;
    for (const LinearSite& site : decoder_linears(model)) expected.push_back(site.weight_site->transform(site.weight).detach());
    torch::Tensor before = full_logits(model, ids);
    bake_weight_quantizers(model);
    const auto sites = decoder_linears(model);
    for (size_t i = 0; i < sites.size(); ++i)
      EXPECT_TRUE(torch::equal(sites[i].weight, expected[i])) << sites[i].name << " under TP " << tp;
    detach_quantizers(model);  // the baked weights alone compute what the quantized model did
    model::expect_close(full_logits(model, ids), before, 1e-6, 1e-5, fmt::format("baked model under TP {}", tp));
  }
}

TEST(Qat, AttachReportCountsEveryDecoderLinearAndDetachRestores) {
  for (const auto& [name, config] : configs()) {
    CausalLM model(config, runtime().self());
    model::init_random(model, 4);
    torch::Tensor ids = model::random_ids(2, 7, config.vocab_size, 5);
    torch::Tensor fp = full_logits(model, ids);
    const int64_t per_layer = config.family == model::Family::kLlama ? 7 : 6;

    AttachReport report = attach_quantizers(model, qat_settings("4-8-4", "pre_rope", "channel"));
    EXPECT_EQ(report.quantized_linears, per_layer * config.num_layers) << name;
    EXPECT_EQ(report.attention_layers, config.num_layers) << name;
    for (const LinearSite& site : decoder_linears(model))
      EXPECT_TRUE(site.weight_site->transform && site.input->transform) << site.name;
    const double change = (full_logits(model, ids) - fp).abs().max().item<double>();
    EXPECT_GT(change, 1e-4) << name << ": W4A8KV4 must change the logits";

    QuantSettings excluding = qat_settings("4-16-16", "pre_rope", "channel");
    excluding.exclude = {"self_attn.q_proj", "layers.1."};
    report = attach_quantizers(model, excluding);
    EXPECT_EQ(report.quantized_linears, per_layer - 1) << name;
    EXPECT_EQ(report.attention_layers, 0) << name;
    for (const LinearSite& site : decoder_linears(model)) {
      const bool excluded = site.name.find("q_proj") != std::string::npos || site.name.find("layers.1.") != std::string::npos;
      EXPECT_EQ(static_cast<bool>(site.weight_site->transform), !excluded) << site.name;
      EXPECT_FALSE(site.input->transform) << site.name << ": activations are 16-bit";
    }
    EXPECT_FALSE(model.layers[0]->attention->k_site.transform) << "re-attaching replaces the earlier transforms";

    detach_quantizers(model);
    EXPECT_TRUE(torch::equal(full_logits(model, ids), fp)) << name;
  }
}

TEST(Qat, HuggingFaceNamesOfTheLinears) {
  CausalLM llama(model::llama(4, 4, false), runtime().self()), opt(model::opt(false), runtime().self());
  std::vector<std::string> llama_names, opt_names;
  for (const LinearSite& s : decoder_linears(llama)) llama_names.push_back(s.name);
  for (const LinearSite& s : decoder_linears(opt)) opt_names.push_back(s.name + (s.row_parallel ? " (row)" : ""));
  EXPECT_EQ(llama_names[0], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(llama_names[4], "model.layers.0.mlp.gate_proj");
  EXPECT_EQ(llama_names[13], "model.layers.1.mlp.down_proj");
  EXPECT_EQ(opt_names[3], "model.decoder.layers.0.self_attn.out_proj (row)");
  EXPECT_EQ(opt_names[4], "model.decoder.layers.0.fc1");
  EXPECT_EQ(opt_names[5], "model.decoder.layers.0.fc2 (row)");
}

struct QuantRoot {
  QuantSettings quant;
  template <class V>
  void visit(V& v) {
    v("quant", quant);
  }
};

TEST(Qat, SettingsAreCheckedAndGiveTheSpecs) {
  const BitWidths widths = parse_bits("4-8-2");
  EXPECT_EQ(widths.weight, 4);
  EXPECT_EQ(widths.act, 8);
  EXPECT_EQ(widths.kv, 2);
  for (const char* bad : {"4-8", "4-8-4-4", "1-8-4", "4-9-4", "a-8-4", "4--4", "4-8-4-", "", "016-8-4"}) {
    const std::string message = error_of([&] { config::load<QuantRoot>("", {fmt::format("quant.bits='{}'", bad)}); });
    EXPECT_NE(message.find("quant.bits"), std::string::npos) << bad << ": " << message;
  }
  EXPECT_THROW(config::load<QuantRoot>("", {"quant.kv_place=after"}), config::ConfigError);
  EXPECT_THROW(config::load<QuantRoot>("", {"quant.weight_granularity=token"}), config::ConfigError);
  EXPECT_THROW(config::load<QuantRoot>("", {"quant.ste_clip=-1"}), config::ConfigError);

  QuantRoot root = config::load<QuantRoot>(
      "", {"quant.bits=4-8-2", "quant.weight_granularity=group", "quant.group_size=64", "quant.kv_place=post_rope",
           "quant.act_symmetric=false", "quant.exclude=[down_proj]"});
  const QuantSettings& s = root.quant;
  EXPECT_EQ(describe(s.weight_spec()), "int4 sym per-group(64)");
  EXPECT_EQ(describe(s.act_spec()), "int8 asym per-token");
  EXPECT_EQ(describe(s.kv_spec()), "int2 sym per-head");
  EXPECT_EQ(s.describe(), "W int4 sym per-group(64), A int8 asym per-token, KV int2 sym per-head (post_rope)");
  EXPECT_EQ(s.exclude, std::vector<std::string>{"down_proj"});
  EXPECT_EQ(QuantSettings().describe(), "W full precision, A full precision, KV full precision");
}

TEST(Qat, GroupSizeThatDoesNotDivideTheWeightIsAUsageError) {
  CausalLM single(model::llama(4, 4, false), runtime().self());
  QuantSettings s = qat_settings("4-16-16", "pre_rope", "group");
  s.group_size = 5;
  std::string message = error_of([&] { attach_quantizers(single, s); });
  EXPECT_NE(message.find("quant.group_size = 5 does not divide the 32 input columns of model.layers.0.self_attn.q_proj "
                         "(weight [32, 32])"), std::string::npos) << message;
  if (runtime().size() % 2 != 0) return;
  // down_proj [32, 48]: 16 divides 48 but not the 24 columns of each of 2 ranks.
  dist::Grid grid(runtime(), 2);
  CausalLM sharded(model::llama(4, 4, false), grid.tp_group());
  s.group_size = 16;
  EXPECT_NO_THROW(attach_quantizers(single, s));
  message = error_of([&] { attach_quantizers(sharded, s); });
  EXPECT_NE(message.find("quant.group_size = 16 does not divide the 24 input columns of model.layers.0.mlp.down_proj "
                         "that each of parallel.tp = 2 ranks holds (weight [32, 48])"), std::string::npos) << message;
}

// Logits [B, T, V] of a quantized model under TP against TP 1. TP changes the order of summation, so a value that
// TP 1 places within an ulp of a rounding boundary can round the other way under TP 2 or 4: one quantization step
// apart at one position. Every position must match to fp32 tolerance but a few, and those within a step's effect.
struct PositionComparison {
  int64_t positions = 0, off = 0;  // positions, and those beyond the fp32 tolerance
  double worst_relative = 0;       // largest |error| / max |logit| of any position
};

PositionComparison compare_positions(const torch::Tensor& actual, const torch::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  torch::Tensor error = std::get<0>((actual - expected).abs().flatten(0, 1).max(-1));
  PositionComparison c;
  c.positions = error.numel();
  c.off = (error > kLogitAbsTol + kLogitRelTol * scale).sum().item<int64_t>();
  c.worst_relative = error.max().item<double>() / scale;
  return c;
}

// Measured: 1 of 51 positions off in 1 of 48 cases under TP 4, by 2.9e-4 of the largest logit (an 8-bit
// activation step); all others within 1e-7.
constexpr double kMaxOffPositionFraction = 0.1;
constexpr double kRoundingFlipRelTol = 3e-3;

TEST(Qat, LogitsUnderEveryTpSizeMatchTp1) {
  PositionComparison total;
  for (const auto& [name, config] : configs())
    for (const QuantSettings& settings : w4a8kv4_variants()) {
      CausalLM reference(config, runtime().self());
      model::init_random(reference, 7);
      torch::Tensor ids = model::random_ids(3, 17, config.vocab_size, 11);
      attach_quantizers(reference, settings);
      torch::Tensor expected = full_logits(reference, ids);
      for (int tp : tp_sizes()) {
        if (!supports_tp(config, tp)) continue;
        dist::Grid grid(runtime(), tp);
        CausalLM sharded(config, grid.tp_group());
        model::init_random(sharded, 7);
        attach_quantizers(sharded, settings);
        const PositionComparison c = compare_positions(full_logits(sharded, ids), expected);
        const std::string where = fmt::format("{}, {} under TP {}", name, settings.describe(), tp);
        EXPECT_LE(c.off, kMaxOffPositionFraction * c.positions) << where << ": " << c.off << " positions differ";
        EXPECT_LE(c.worst_relative, kRoundingFlipRelTol) << where;
        total.positions += c.positions;
        total.off += c.off;
        total.worst_relative = std::max(total.worst_relative, c.worst_relative);
      }
    }
  if (runtime().rank() == 0)
    std::printf("[ figures  ] W4A8KV4 logits under TP vs TP 1: %lld of %lld positions beyond fp32 tolerance, "
                "largest error %.2g of the largest logit\n",
                static_cast<long long>(total.off), static_cast<long long>(total.positions), total.worst_relative);
}

// The quantizers alone, on the same inputs: under TP each rank quantizes its shard of the features (or heads),
// and the gathered result is bitwise TP 1's. This isolates the TP rules from the order of summation.
TEST(Qat, ActivationAndKvQuantizersAreBitwiseTheSameUnderEveryTp) {
  const ModelConfig config = model::llama(8, 8, false);
  const int64_t hidden = config.hidden_size, head_dim = config.head_dim();
  torch::Tensor features = randn({2, 5, hidden}, 41) * 2;
  torch::Tensor keys = randn({2, config.num_kv_heads, 5, head_dim}, 42);
  torch::Tensor values = randn({2, config.num_kv_heads, 5, head_dim}, 43) + 0.5;
  for (bool symmetric : {true, false})
    for (const char* place : {"pre_rope", "post_rope"}) {
      const QuantSettings settings = qat_settings("4-8-4", place, "channel", symmetric);
      CausalLM reference(config, runtime().self());
      attach_quantizers(reference, settings);
      auto& ref_attention = reference.layers[0]->attention;
      torch::Tensor ref_keys = keys.clone(), ref_values = values.clone();
      const bool pre = std::string(place) == "pre_rope";
      ref_keys = (pre ? ref_attention->k_site : ref_attention->k_cache_site)(ref_keys);
      ref_values = (pre ? ref_attention->v_site : ref_attention->v_cache_site)(ref_values);
      torch::Tensor ref_features = ref_attention->o_proj->input_site(features);
      for (int tp : tp_sizes()) {
        dist::Grid grid(runtime(), tp);
        CausalLM sharded(config, grid.tp_group());
        attach_quantizers(sharded, settings);
        auto& attention = sharded.layers[0]->attention;
        const int64_t heads = config.num_kv_heads / tp, rank = grid.tp_rank();
        torch::Tensor k = keys.narrow(1, rank * heads, heads).clone(), v = values.narrow(1, rank * heads, heads).clone();
        k = (pre ? attention->k_site : attention->k_cache_site)(k);
        v = (pre ? attention->v_site : attention->v_cache_site)(v);
        torch::Tensor x = attention->o_proj->input_site(features.narrow(-1, rank * hidden / tp, hidden / tp));
        const std::string where = fmt::format("{} under TP {}", settings.describe(), tp);
        EXPECT_TRUE(torch::equal(grid.tp_group().all_gather(k.contiguous(), 1), ref_keys)) << where << ": keys";
        EXPECT_TRUE(torch::equal(grid.tp_group().all_gather(v.contiguous(), 1), ref_values)) << where << ": values";
        EXPECT_TRUE(torch::equal(grid.tp_group().all_gather(x.contiguous(), -1), ref_features)) << where << ": o_proj input";
        EXPECT_TRUE(torch::equal(attention->q_proj->input_site(features), reference.layers[0]->attention->q_proj->input_site(features)))
            << where << ": q_proj input";
      }
    }
}

// Every decoder linear's fake-quantized weight, gathered over TP into the checkpoint's full tensor.
std::map<std::string, torch::Tensor> quantized_weights(CausalLM& model) {
  std::map<std::string, model::WeightEntry> entries;
  for (const model::WeightEntry& e : model.weights().entries()) entries[e.name] = e;
  std::map<std::string, torch::Tensor> weights;
  torch::NoGradGuard no_grad;
  for (const LinearSite& site : decoder_linears(model)) {
    model::WeightEntry e = entries.at(site.name + ".weight");
    e.param = site.weight_site->transform ? site.weight_site->transform(site.weight) : site.weight;
    weights[site.name] = model::gather_full(e, model.tp());
  }
  return weights;
}

TEST(Qat, QuantizedWeightsAreBitwiseTheSameUnderEveryTp) {
  for (const auto& [name, config] : configs())
    for (const char* granularity : {"tensor", "channel", "group"})
      for (bool symmetric : {true, false}) {
        const QuantSettings settings = qat_settings("4-16-16", "pre_rope", granularity, symmetric);
        CausalLM reference(config, runtime().self());
        model::init_random(reference, 9);
        attach_quantizers(reference, settings);
        const auto expected = quantized_weights(reference);
        for (int tp : tp_sizes()) {
          if (!supports_tp(config, tp) || tp == 1) continue;
          dist::Grid grid(runtime(), tp);
          CausalLM sharded(config, grid.tp_group());
          model::init_random(sharded, 9);
          attach_quantizers(sharded, settings);
          for (const auto& [linear, weight] : quantized_weights(sharded)) {
            const torch::Tensor& full = expected.at(linear);
            EXPECT_TRUE(torch::equal(weight, full)) << name << ", " << settings.describe() << " under TP " << tp << ": "
                                                    << linear << " max |diff| " << (weight - full).abs().max().item<double>();
          }
        }
      }
}

// Loss and gradients of the model under `tp` with quantizers against the quantized TP 1 model, torch's own
// cross-entropy on full logits.
void expect_gradients_match(const ModelConfig& config, const QuantSettings& settings, int tp, const std::string& where) {
  dist::Grid grid(runtime(), tp);
  CausalLM sharded(config, grid.tp_group()), reference(config, runtime().self());
  model::init_random(sharded, 5);
  model::init_random(reference, 5);
  attach_quantizers(sharded, settings);
  attach_quantizers(reference, settings);
  torch::Tensor ids = model::random_ids(2, 9, config.vocab_size, 21);
  torch::Tensor targets = model::random_ids(2, 9, config.vocab_size, 22).reshape({-1});

  torch::Tensor logits = sharded.forward(ids);
  torch::Tensor loss = model::vocab_parallel_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets,
                                                           grid.tp_group(), sharded.vocab_start()).mean();
  loss.backward();
  torch::Tensor ref_logits = reference.forward(ids).narrow(-1, 0, config.vocab_size);
  torch::Tensor ref_loss = torch::nn::functional::cross_entropy(ref_logits.reshape({-1, config.vocab_size}), targets);
  ref_loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref_loss.item<double>(), kLogitAbsTol) << where;

  model::expect_gradients_match(sharded, reference, kGradAbsTol, kGradRelTol, where);
}

TEST(Qat, GradientsFlowToEveryWeightAndMatchTp1) {
  for (const auto& [name, config] : configs())
    for (const QuantSettings& settings : {qat_settings("4-8-4", "pre_rope", "channel"),
                                          qat_settings("4-8-4", "post_rope", "group", /*symmetric=*/false)})
      for (int tp : tp_sizes()) {
        if (!supports_tp(config, tp)) continue;
        expect_gradients_match(config, settings, tp, fmt::format("{}, {} under TP {}", name, settings.describe(), tp));
      }
}

TEST(Qat, CachedDecodingMatchesTheFullForward) {
  // Every range lies within one token position, so decoding token by token quantizes as the full pass does.
  for (const QuantSettings& settings : w4a8kv4_variants()) {
    const int tp = runtime().size() % 2 == 0 ? 2 : 1;
    dist::Grid grid(runtime(), tp);
    CausalLM model(model::llama(8, 4, true), grid.tp_group());
    model::init_random(model, 9);
    attach_quantizers(model, settings);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = model::random_ids(2, 12, model.config().vocab_size, 31);
    torch::Tensor full = model.forward(ids);
    model::KvCache cache = model.make_cache(2, 16);
    std::vector<torch::Tensor> steps = {model.forward(ids.narrow(1, 0, 5), torch::arange(5).expand({2, 5}), &cache)};
    for (int64_t t = 5; t < 12; ++t)
      steps.push_back(model.forward(ids.narrow(1, t, 1), torch::full({2, 1}, t, torch::kLong), &cache));
    model::expect_close(torch::cat(steps, 1), full, kLogitAbsTol, kLogitRelTol, settings.describe() + ": cached vs full");
  }
}

}  // namespace
}  // namespace qforge::quant
