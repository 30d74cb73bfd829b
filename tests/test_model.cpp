// The tensor-parallel transformer against an unsharded reference in the same process: logits, gradients, KV-cache
// decoding and perplexity, for LLaMA (multi-head and grouped-query) and OPT (pre-norm and OPT-350m's post-norm
// with project_in/out), as 1, 2 and 4 MPI ranks over every TP x DP grid the world allows.
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/eval/perplexity.h"
#include "framework/model/generation.h"
#include "framework/model/parallel.h"
#include "framework/model/training_grads.h"
#include "framework/model/transformer.h"
#include "framework/system/cpu_features.h"
#include "tests/model_fixtures.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

namespace qforge::model {
namespace {

// fp32 tolerances: TP changes only the order of summation (a few ulps per reduction, amplified by depth).
constexpr double kLogitAbsTol = 2e-5;
constexpr double kLogitRelTol = 1e-4;
constexpr double kGradAbsTol = 1e-6;
constexpr double kGradRelTol = 1e-3;
constexpr double kNllAbsTol = 1e-5;
// bf16 keeps 8 bits of mantissa: weights and activations round at 2^-9 relative, over two layers.
constexpr double kBf16LogitAbsTol = 2e-3;
constexpr double kBf16LogitRelTol = 2e-2;  // measured: 0.5-1.1% of the largest logit

struct NamedConfig {
  const char* name;
  ModelConfig config;
};
std::vector<NamedConfig> configs() {
  return {{"llama multi-head, untied", llama(4, 4, false)},
          {"llama grouped-query 8/4, tied", llama(8, 4, true)},
          {"opt pre-norm", opt(false)},
          {"opt-350m style: post-norm, project_in/out", opt(true)}};
}

TEST(TensorParallel, LogitsMatchTheUnshardedModel) {
  for (const auto& [name, config] : configs())
    for (int tp : tp_sizes()) {
      if (config.num_kv_heads % tp != 0) continue;
      dist::Grid grid(runtime(), tp);
      CausalLM sharded(config, grid.tp_group()), reference(config, runtime().self());
      init_random(sharded, 7);
      init_random(reference, 7);
      torch::NoGradGuard no_grad;
      torch::Tensor ids = random_ids(3, 17, config.vocab_size, 11);
      torch::Tensor logits = gather_vocab(sharded.forward(ids), grid.tp_group(), config.vocab_size);
      torch::Tensor expected = reference.forward(ids).narrow(-1, 0, config.vocab_size);
      expect_close(logits, expected, kLogitAbsTol, kLogitRelTol, fmt::format("{} under TP {}", name, tp));
      EXPECT_GT(expected.std().item<double>(), 1e-3) << "random weights must give non-trivial logits";
    }
}

TEST(TensorParallel, PaddedVocabularyNeverReceivesProbability) {
  ModelConfig config = llama(4, 4, false);
  const int tp = runtime().size();
  if (config.num_heads % tp != 0 || config.intermediate_size % tp != 0) GTEST_SKIP() << "tp " << tp;
  dist::Grid grid(runtime(), tp);
  CausalLM model(config, grid.tp_group());
  init_random(model, 3);
  torch::NoGradGuard no_grad;
  torch::Tensor logits = model.forward(random_ids(1, 5, config.vocab_size, 1));
  torch::Tensor full = grid.tp_group().all_gather(logits, -1);
  const int64_t padded = full.size(-1) - config.vocab_size;
  EXPECT_EQ(padded, (tp - config.vocab_size % tp) % tp);
  if (padded > 0) {
    EXPECT_TRUE(torch::isinf(full.narrow(-1, config.vocab_size, padded)).all().item<bool>());
  }
  torch::Tensor probs = torch::softmax(full, -1);
  EXPECT_NEAR(probs.narrow(-1, 0, config.vocab_size).sum(-1).min().item<double>(), 1.0, 1e-5);
}

TEST(TensorParallel, HeadsThatDoNotSplitAreAUsageError) {
  if (runtime().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  dist::Grid grid(runtime(), 2);
  try {
    CausalLM model(llama(4, 1, false), grid.tp_group());  // multi-query: one key/value head
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.tp = 2 does not divide the model's 1 key/value heads"), std::string::npos)
        << e.what();
  }
}

// The vocabulary-parallel cross-entropy and the TP model's gradients against torch's own cross_entropy on the
// unsharded model.
TEST(TensorParallel, GradientsMatchTheUnshardedModel) {
  for (const auto& [name, config] : configs())
    for (int tp : tp_sizes()) {
      if (config.num_kv_heads % tp != 0) continue;
      dist::Grid grid(runtime(), tp);
      CausalLM sharded(config, grid.tp_group()), reference(config, runtime().self());
      init_random(sharded, 5);
      init_random(reference, 5);
      torch::Tensor ids = random_ids(2, 9, config.vocab_size, 21);
      torch::Tensor targets = random_ids(2, 9, config.vocab_size, 22).reshape({-1});

      torch::Tensor logits = sharded.forward(ids);
      torch::Tensor loss = vocab_parallel_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets,
                                                        grid.tp_group(), sharded.vocab_start()).mean();
      loss.backward();
      torch::Tensor ref_logits = reference.forward(ids).narrow(-1, 0, config.vocab_size);
      torch::Tensor ref_loss = torch::nn::functional::cross_entropy(ref_logits.reshape({-1, config.vocab_size}), targets);
      ref_loss.backward();
      const std::string where = fmt::format("{} under TP {}", name, tp);
      EXPECT_NEAR(loss.item<double>(), ref_loss.item<double>(), kNllAbsTol) << where;

      expect_gradients_match(sharded, reference, kGradAbsTol, kGradRelTol, where);
    }
}

// The fused fp32 backward passes of RMSNorm and SwiGLU against autograd through the same operations in fp64 (an
// independent computation of the same gradients): values equal to libtorch's, gradients within fp32 rounding.
constexpr double kFusedGradRelTol = 1e-5;  // of the largest gradient entry; fp32 against fp64
constexpr double kFusedForwardRelTol = 1e-6;  // of the largest output; fp32 against fp32 summed in another order
TEST(TrainingGrads, RmsNormAndSwigluMatchAutogradInDouble) {
  auto check = [](const torch::Tensor& ours, const torch::Tensor& reference, const char* what) {
    const double scale = reference.abs().max().item<double>();
    const double error = (ours.to(torch::kDouble) - reference).abs().max().item<double>();
    EXPECT_LE(error, kFusedGradRelTol * scale) << what << ": max error " << error << " of " << scale;
    EXPECT_GT(scale, 0.0) << what;
  };
  torch::manual_seed(3);
  torch::Tensor x = (torch::randn({3, 5, 64}) * 2).requires_grad_(true), w = torch::randn({64}).requires_grad_(true);
  torch::Tensor dy = torch::randn({3, 5, 64});
  torch::Tensor y = rms_norm(x, w, 1e-5);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(y, w * (x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5)))) << "the forward is libtorch's";
  }
  (y * dy).sum().backward();
  torch::Tensor x64 = x.detach().to(torch::kDouble).requires_grad_(true),
                w64 = w.detach().to(torch::kDouble).requires_grad_(true);
  (w64 * (x64 * torch::rsqrt(x64.pow(2).mean(-1, true) + 1e-5)) * dy.to(torch::kDouble)).sum().backward();
  check(x.grad(), x64.grad(), "RMSNorm dx");
  check(w.grad(), w64.grad(), "RMSNorm dweight");

  torch::Tensor g = (torch::randn({4, 96}) * 3).requires_grad_(true), u = torch::randn({4, 96}).requires_grad_(true);
  {
    torch::NoGradGuard no_grad;
    g.narrow(1, 0, 1).zero_();  // sigma = 1/2 where the gate is 0
  }
  torch::Tensor dh = torch::randn({4, 96});
  torch::Tensor h = swiglu(g, u);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(h, torch::silu(g) * u)) << "the forward is libtorch's";
  }
  (h * dh).sum().backward();
  torch::Tensor g64 = g.detach().to(torch::kDouble).requires_grad_(true),
                u64 = u.detach().to(torch::kDouble).requires_grad_(true);
  (torch::silu(g64) * u64 * dh.to(torch::kDouble)).sum().backward();
  check(g.grad(), g64.grad(), "SwiGLU dgate");
  check(u.grad(), u64.grad(), "SwiGLU dup");
}

// Under TrainingKernels the RMSNorm forward is one fused pass: within kFusedForwardRelTol of libtorch's value
// (the mean of squares is summed in another order), with and without gradients, and its gradients still match
// fp64 autograd; the guard ends with its scope.
TEST(TrainingGrads, RmsNormFusedForwardUnderTrainingKernels) {
  torch::manual_seed(5);
  torch::Tensor x = (torch::randn({4, 6, 96}) * 3).requires_grad_(true), w = torch::randn({96}).requires_grad_(true);
  const torch::Tensor dy = torch::randn({4, 6, 96});
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = w * (x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5));
  }
  const double scale = expected.abs().max().item<double>();
  torch::Tensor y, y_no_grad;
  {
    const TrainingKernels training;
    EXPECT_TRUE(TrainingKernels::active());
    y = rms_norm(x, w, 1e-5);
    torch::NoGradGuard no_grad;
    y_no_grad = rms_norm(x, w, 1e-5);
  }
  EXPECT_FALSE(TrainingKernels::active());
  EXPECT_LE((y.detach() - expected).abs().max().item<double>(), kFusedForwardRelTol * scale);
  EXPECT_TRUE(torch::equal(y.detach(), y_no_grad)) << "one kernel with and without gradients";
  EXPECT_FALSE(torch::equal(y.detach(), expected)) << "the guard chose the fused pass (its rounding differs)";
  (y * dy).sum().backward();
  torch::Tensor x64 = x.detach().to(torch::kDouble).requires_grad_(true),
                w64 = w.detach().to(torch::kDouble).requires_grad_(true);
  (w64 * (x64 * torch::rsqrt(x64.pow(2).mean(-1, true) + 1e-5)) * dy.to(torch::kDouble)).sum().backward();
  for (const auto& [ours, reference] : {std::pair{x.grad(), x64.grad()}, std::pair{w.grad(), w64.grad()}}) {
    const double largest = reference.abs().max().item<double>();
    EXPECT_LE((ours.to(torch::kDouble) - reference).abs().max().item<double>(), kFusedGradRelTol * largest);
  }
}

// Training's SwiGLU forward is one AVX2 pass with an exponential of its own: each value within a few ulps of
// silu(g) u computed in fp64, from gates where exp(-g) overflows to ones where it underflows, and a length that
// leaves a tail after the 8-lane loop; its gradients match fp64 autograd's.
TEST(TrainingGrads, SwigluFusedForwardUnderTrainingKernels) {
  constexpr double kSwigluUlps = 4.0 * 0x1p-23;  // per value, relative to itself (measured 1.19; libtorch 1.17)
  constexpr double kUnderflow = 1e-37;           // below this silu is -0 or a denormal on either side
  torch::manual_seed(6);
  torch::Tensor g = torch::randn({3, 5, 37}) * 6;
  const std::vector<float> edges = {-100.0f, -88.6f, -87.0f, -20.0f, -1e-3f, 0.0f, 1e-3f, 20.0f, 87.5f, 100.0f};
  for (size_t i = 0; i < edges.size(); ++i) g.view(-1)[static_cast<int64_t>(i)] = edges[i];
  g.requires_grad_(true);
  torch::Tensor u = torch::randn({3, 5, 37}).requires_grad_(true);
  const torch::Tensor dh = torch::randn({3, 5, 37});
  torch::Tensor h, h_no_grad;
  {
    const TrainingKernels training;
    h = swiglu(g, u);
    torch::NoGradGuard no_grad;
    h_no_grad = swiglu(g, u);
  }
  torch::Tensor g64 = g.detach().to(torch::kDouble).requires_grad_(true),
                u64 = u.detach().to(torch::kDouble).requires_grad_(true);
  const torch::Tensor h64 = torch::silu(g64) * u64;
  const torch::Tensor error = (h.detach().to(torch::kDouble) - h64.detach()).abs();
  EXPECT_TRUE((error <= h64.detach().abs() * kSwigluUlps + kUnderflow).all().item<bool>())
      << "largest error in ulps of the value: "
      << (error / (h64.detach().abs() * 0x1p-23 + kUnderflow)).max().item<double>();
  EXPECT_TRUE(torch::equal(h.detach(), h_no_grad)) << "one kernel with and without gradients";
  if (sys::avx2_kernels()) {
    EXPECT_FALSE(torch::equal(h.detach(), (torch::silu(g) * u).detach())) << "the guard chose the fused pass";
  }
  (h * dh).sum().backward();
  (h64 * dh.to(torch::kDouble)).sum().backward();
  for (const auto& [ours, reference] : {std::pair{g.grad(), g64.grad()}, std::pair{u.grad(), u64.grad()}}) {
    const double largest = reference.abs().max().item<double>();
    EXPECT_LE((ours.to(torch::kDouble) - reference).abs().max().item<double>(), kFusedGradRelTol * largest);
  }
}

// RoPE's fused passes round as libtorch's operations do: the forward and both gradients are compared for
// equality with autograd through rotate_half's operations, on a transposed view as the attention passes it, per
// batch tables and tables shared by the batch; fp64 autograd is the independent check of the gradient.
TEST(TrainingGrads, RotaryEqualsTheOperationsBitForBit) {
  torch::manual_seed(4);
  const int64_t batch = 2, heads = 4, length = 7, dim = 16;
  const double score_scale = 1.0 / std::sqrt(128.0);  // not a power of 2: its product rounds
  struct Case {
    int64_t table_batch;
    double scale;
    int64_t group;  // query heads per key/value head: the result's rows interleave them
  };
  for (const Case& c : {Case{batch, 1.0, 1}, Case{1, score_scale, 1}, Case{1, score_scale, 2}, Case{batch, 1.0, 4}}) {
    const std::string where = fmt::format("tables of batch {}, scale {}, group {}", c.table_batch, c.scale, c.group);
    const torch::Tensor angles = torch::rand({c.table_batch, 1, length, dim}) * 6;
    const torch::Tensor cos = angles.cos(), sin = angles.sin();
    const torch::Tensor base = torch::randn({batch, length, heads, dim}) * 3;
    torch::Tensor x = base.clone().requires_grad_(true), x_ops = base.clone().requires_grad_(true);
    const torch::Tensor dy = torch::randn({batch, heads / c.group, length * c.group, dim});
    torch::Tensor y = rotary(x.transpose(1, 2), cos, sin, c.scale, c.group);
    // The operations, and the heads' interleaving written out: row t G + g of kv head j is head j G + g at t.
    const torch::Tensor ops = (x_ops.transpose(1, 2) * cos + rotate_half(x_ops.transpose(1, 2)) * sin) * c.scale;
    torch::Tensor y_ops = ops.reshape({batch, heads / c.group, c.group, length, dim})
                              .permute({0, 1, 3, 2, 4})
                              .reshape({batch, heads / c.group, length * c.group, dim});
    EXPECT_TRUE(torch::equal(y, y_ops)) << "forward, " << where;
    EXPECT_TRUE(torch::equal(y[1][0][c.group * 3 + c.group - 1], ops[1][c.group - 1][3])) << where;
    EXPECT_TRUE(y.is_contiguous());
    (y * dy).sum().backward();
    (y_ops * dy).sum().backward();
    EXPECT_TRUE(torch::equal(x.grad(), x_ops.grad())) << "gradient, " << where;
    torch::Tensor x64 = base.to(torch::kDouble).requires_grad_(true);
    const torch::Tensor c64 = cos.to(torch::kDouble), s64 = sin.to(torch::kDouble);
    const torch::Tensor y64 =
        group_heads((x64.transpose(1, 2) * c64 + rotate_half(x64.transpose(1, 2)) * s64) * c.scale, c.group);
    (y64 * dy.to(torch::kDouble)).sum().backward();
    const double largest = x64.grad().abs().max().item<double>();
    EXPECT_LE((x.grad().to(torch::kDouble) - x64.grad()).abs().max().item<double>(), kFusedGradRelTol * largest);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(rotary(base.transpose(1, 2), cos, sin, c.scale, c.group), y_ops))
        << "without gradients, " << where;
  }
}

TEST(Precision, Bfloat16LogitsStayCloseToFp32UnderTp) {
  for (const auto& [name, config] : configs()) {
    const int tp = runtime().size() % 2 == 0 ? 2 : 1;
    dist::Grid grid(runtime(), tp);
    CausalLM model(config, grid.tp_group());
    init_random(model, 8, 0.1);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = random_ids(2, 11, config.vocab_size, 5);
    torch::Tensor fp32 = gather_vocab(model.forward(ids), grid.tp_group(), config.vocab_size);
    model.to(torch::kBFloat16);
    torch::Tensor bf16 = gather_vocab(model.forward(ids), grid.tp_group(), config.vocab_size);
    EXPECT_EQ(bf16.scalar_type(), torch::kFloat);
    EXPECT_GT((bf16 - fp32).abs().max().item<double>(), 0.0) << "the bf16 run must really round";
    expect_close(bf16, fp32, kBf16LogitAbsTol, kBf16LogitRelTol, fmt::format("{}: bf16 vs fp32 under TP {}", name, tp));
  }
}

TEST(KvCache, IncrementalDecodingMatchesTheFullForward) {
  for (const auto& [name, config] : configs()) {
    const int tp = runtime().size() % 2 == 0 ? 2 : 1;
    dist::Grid grid(runtime(), tp);
    CausalLM model(config, grid.tp_group());
    init_random(model, 9);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = random_ids(2, 12, config.vocab_size, 31);
    torch::Tensor full = model.forward(ids);
    KvCache cache = model.make_cache(2, 16);
    std::vector<torch::Tensor> steps = {model.forward(ids.narrow(1, 0, 5), torch::arange(5).expand({2, 5}), &cache)};
    for (int64_t t = 5; t < 12; ++t)
      steps.push_back(model.forward(ids.narrow(1, t, 1), torch::full({2, 1}, t, torch::kLong), &cache));
    auto vocab = [&](const torch::Tensor& t) { return gather_vocab(t, grid.tp_group(), config.vocab_size); };
    expect_close(vocab(torch::cat(steps, 1)), vocab(full), kLogitAbsTol, kLogitRelTol, fmt::format("{}: cached vs full", name));
  }
}

// The layers share RoPE tables and the mask made for one positions tensor; a positions tensor changed in place
// between two forward passes must remake them (the same positions object, a new _version()).
TEST(KvCache, PositionsChangedInPlaceAreNotServedStaleTables) {
  for (const auto& [name, config] : configs()) {
    CausalLM model(config, runtime().self());
    init_random(model, 9);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = random_ids(2, 6, config.vocab_size, 32);
    torch::Tensor positions = torch::zeros({2, 6}, torch::kLong);  // every key visible to every query
    model.forward(ids, positions);
    positions.add_(torch::arange(6));  // now 0..5 (causal), in place
    const torch::Tensor changed = model.forward(ids, positions);  // before any other positions reach the model
    expect_close(changed, model.forward(ids), 0, 0, fmt::format("{}: in-place positions", name));
  }
}

TEST(Generation, BatchedPromptsOfDifferentLengthsMatchOneAtATime) {
  ModelConfig config = llama(8, 4, true);
  const int tp = runtime().size() % 2 == 0 ? 2 : 1;
  dist::Grid grid(runtime(), tp);
  CausalLM model(config, grid.tp_group());
  init_random(model, 13, 0.2);  // larger weights: peaked distributions, so greedy choices are not near-ties
  std::vector<std::vector<int64_t>> prompts = {{5, 9, 17, 3}, {44}, {7, 7, 100, 200, 31, 8, 2}};
  auto together = generate(model, prompts, 10, SamplingOptions{});
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto alone = generate(model, {prompts[i]}, 10, SamplingOptions{});
    EXPECT_EQ(together[i], alone[0]) << "prompt " << i;
  }
  // Sampling: a seed fixes the result; another seed changes it.
  const SamplingOptions sampled{1.0, 50, 0.95, 42};
  auto first = generate(model, prompts, 10, sampled);
  EXPECT_EQ(generate(model, prompts, 10, sampled), first);
  EXPECT_NE(generate(model, prompts, 10, SamplingOptions{1.0, 50, 0.95, 43}), first);
}

TEST(Generation, SamplingRespectsTopKAndTopP) {
  torch::Tensor logits = torch::tensor({{0.0f, 3.0f, 1.0f, 2.9f}, {5.0f, 0.0f, 0.0f, 0.0f}});
  std::map<int64_t, int> counts;
  for (int i = 0; i < 400; ++i) {
    torch::Tensor u = torch::tensor({uniform_from(1, i), uniform_from(2, i)}, torch::kDouble);
    EXPECT_TRUE(torch::equal(sample_from_logits(logits, {1.0, 1, 1.0, 0}, u), torch::tensor({1L, 0L})));
    torch::Tensor top2 = sample_from_logits(logits, {1.0, 2, 1.0, 0}, u);
    EXPECT_TRUE(top2[0].item<int64_t>() == 1 || top2[0].item<int64_t>() == 3);
    EXPECT_TRUE(torch::equal(sample_from_logits(logits, {1.0, 0, 0.05, 0}, u), torch::tensor({1L, 0L})));
    ++counts[sample_from_logits(logits, {1.0, 0, 1.0, 0}, u)[0].item<int64_t>()];
  }
  // Closed form: softmax(0, 3, 1, 2.9) = (0.0238, 0.4785, 0.0648, 0.4329); 400 draws, 4 sigma bands.
  const std::vector<double> p = {0.02382, 0.47848, 0.06475, 0.43294};
  for (int64_t t = 0; t < 4; ++t) {
    const double expected = 400 * p[t], sigma = std::sqrt(400 * p[t] * (1 - p[t]));
    EXPECT_NEAR(counts[t], expected, 4 * sigma + 1) << "token " << t;
  }
}

TEST(Perplexity, EveryGridGivesTheSingleRankValue) {
  ModelConfig config = llama(8, 4, false);
  torch::Tensor tokens = random_ids(1, 700, config.vocab_size, 41).reshape({-1});
  CausalLM reference(config, runtime().self());
  init_random(reference, 17, 0.1);
  // Independent value: torch's cross_entropy over the same windows of the unsharded model.
  torch::NoGradGuard no_grad;
  const int64_t seq_len = 32, windows = 700 / seq_len;
  torch::Tensor batch = tokens.narrow(0, 0, windows * seq_len).view({windows, seq_len});
  torch::Tensor logits = reference.forward(batch.narrow(1, 0, seq_len - 1)).narrow(-1, 0, config.vocab_size);
  const double expected = torch::nn::functional::cross_entropy(logits.reshape({-1, config.vocab_size}),
                                                               batch.narrow(1, 1, seq_len - 1).reshape({-1})).item<double>();
  for (int tp : tp_sizes()) {
    if (config.num_kv_heads % tp != 0) continue;
    dist::Grid grid(runtime(), tp);
    CausalLM model(config, grid.tp_group());
    init_random(model, 17, 0.1);
    eval::PerplexityResult r = eval::perplexity(model, tokens, seq_len, 3, grid.dp_group());
    EXPECT_EQ(r.windows, windows);
    EXPECT_EQ(r.tokens, windows * (seq_len - 1));
    EXPECT_NEAR(r.mean_nll, expected, kNllAbsTol) << grid.describe();
    EXPECT_NEAR(r.perplexity, std::exp(expected), 1e-4 * std::exp(expected)) << grid.describe();
  }
}

}  // namespace
}  // namespace qforge::model
