// RPTQ's numerics: K-Means of channels, the reorder, static per-cluster activation parameters and GPTQ with ranges
// fixed per (row, input cluster), against the reference's golden layer (../shared/golden/rptq) and closed forms.
#include "quant/gptq.h"
#include "rptq/act_quant.h"
#include "rptq/kmeans.h"
#include "rptq/settings.h"
#include "rptq/weight_ranges.h"
#include "tests/npy.h"
#include "tests/test_support.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace qforge::rptq {
namespace {

using test::read_npy;

// sklearn's KMeans draws from another random stream: where two partitions have nearly the same inertia ours may
// land on the other one. A partition that differs must then be as good as the reference's. With 32 clusters of
// 128 points the best of 10 runs is itself a random draw (over seeds 0..7 ours spread 1.117..1.159 at R1,
// 1.407..1.502 at R4, against sklearn's 1.120 and 1.425), so the claim tested is that our best of kGoldenRuns
// runs (the `rptq` section's default kmeans_n_init) is as good as the reference's best of 10:
constexpr double kInertiaSlack = 1.01;         // our inertia <= golden inertia * this
constexpr int kGoldenRuns = 100;               // n_init of the run compared by inertia: RptqSettings's default
constexpr double kGoldenInertiaRtol = 1e-9;    // inertia of the golden labels (recomputed) vs manifest
constexpr double kSeedInertiaRtol = 0.01;      // inertia with another seed vs seed 0
constexpr double kRangeRtol = 1e-5;            // EMA ranges, scales, zero points (fp32 chains in another order)
constexpr double kScaleRtol = 1e-6;            // scales from the same fp32 operations
constexpr double kMinCodesEqual = 0.99;        // GPTQ codes equal to the reference's (BLAS/LAPACK last bits)
constexpr double kMaxStepsOff = 1.0;           // max |Q - Q_ref| / scale: a flipped code is one step off
constexpr double kLossRtol = 1e-3;             // sum of Losses vs manifest losses

constexpr int64_t kHeads = 4, kHeadDim = 32;   // the golden layer's attention heads (R2, R3 cluster per head)
constexpr int64_t kSamples = 6, kTokens = 64;  // X_reordered: 6 samples x 64 tokens

double relative(double ours, double reference) { return std::abs(ours - reference) / std::abs(reference); }

// max |a - b| / max |b|.
double max_relative(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         b.to(torch::kDouble).abs().max().item<double>();
}

// Two labelings make the same partition when the labels map one to one onto each other.
bool same_partition(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() != b.numel()) return false;
  std::map<int64_t, int64_t> forward, backward;
  const torch::Tensor x = a.to(torch::kInt64).contiguous(), y = b.to(torch::kInt64).contiguous();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t p = x.data_ptr<int64_t>()[i], q = y.data_ptr<int64_t>()[i];
    if (forward.emplace(p, q).first->second != q || backward.emplace(q, p).first->second != p) return false;
  }
  return true;
}

// Sum of squared distances of `points` [n, d] to the means of the clusters `labels` makes.
double inertia_of(const torch::Tensor& points, const torch::Tensor& labels) {
  const torch::Tensor x = points.to(torch::kDouble);
  double inertia = 0;
  for (int64_t c = 0; c <= labels.max().item<int64_t>(); ++c) {
    const torch::Tensor members = x.index({labels == c});
    if (members.size(0) > 0) inertia += (members - members.mean(0)).pow(2).sum().item<double>();
  }
  return inertia;
}

// A 2-dimensional little-endian fp32 .npy in Fortran order (X_reordered.npy), which read_npy refuses.
torch::Tensor read_fortran_f4(const std::filesystem::path& path) {
  const std::string bytes = test::slurp(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0 || bytes[6] != 1)
    throw std::runtime_error(path.string() + ": not a version 1 .npy file");
  const size_t length = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
  const std::string header = bytes.substr(10, length);
  long rows = 0, cols = 0;
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': True") == std::string::npos ||
      std::sscanf(header.c_str() + header.find("'shape': (") + 10, "%ld, %ld", &rows, &cols) != 2)
    throw std::runtime_error(path.string() + ": not a 2-dimensional Fortran-order fp32 array: " + header);
  torch::Tensor columns = torch::empty({cols, rows});  // Fortran order: the transpose's C order
  if (bytes.size() != 10 + length + static_cast<size_t>(columns.numel()) * 4)
    throw std::runtime_error(path.string() + ": its size does not fit its shape");
  std::memcpy(columns.data_ptr<float>(), bytes.data() + 10 + length, columns.numel() * 4);
  return columns.t().contiguous();
}

class RptqGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(QFORGE_SHARED_DIR) / "golden" / "rptq";
    if (!std::filesystem::exists(dir_ / "manifest.json"))
      GTEST_SKIP() << "no golden RPTQ data at " << dir_ << " (../shared is not part of the project)";
    std::ifstream in(dir_ / "manifest.json");
    manifest_ = nlohmann::json::parse(in);
  }
  torch::Tensor load(const std::string& name) const { return read_npy(dir_ / name); }
  // K-Means features [channels, 2]: (max, min) of one statistic.
  torch::Tensor features(const std::string& stat) const {
    return torch::stack({load("stats/" + stat + "_max.npy"), load("stats/" + stat + "_min.npy")}, 1);
  }
  double golden_inertia(const std::string& site, int64_t head) const {
    return manifest_["entries"][site]["inertia_per_head"][head].get<double>();
  }

  std::filesystem::path dir_;
  nlohmann::json manifest_;
};

// One site's clustering against the reference: the same partition, or one at least as good.
void expect_as_good(const std::string& label, const torch::Tensor& points, const torch::Tensor& golden_labels,
                    int64_t clusters, double golden_inertia) {
  SCOPED_TRACE(label);
  KMeansOptions options;
  options.clusters = clusters;
  const KMeansResult ours = kmeans(points, options);  // n_init 10, as the reference
  options.n_init = kGoldenRuns;
  const KMeansResult best = kmeans(points, options);
  const bool same = same_partition(ours.labels, golden_labels) || same_partition(best.labels, golden_labels);
  const double recomputed = inertia_of(points, golden_labels);
  std::printf("[ figures  ] %s: partition equal %s, our inertia %.9g (n_init 10) %.9g (n_init %d), golden inertia "
              "%.9g\n", label.c_str(), same ? "yes" : "no", ours.inertia, best.inertia, kGoldenRuns, golden_inertia);
  EXPECT_LE(relative(recomputed, golden_inertia), kGoldenInertiaRtol) << "golden labels' inertia " << recomputed;
  // The reported inertia is that of the labels and the final centers (the labels' means can only lower it: after
  // a stop on tol the centers are those of the previous assignment, as sklearn's).
  EXPECT_LE(inertia_of(points, ours.labels), ours.inertia * (1 + 1e-12));
  EXPECT_TRUE(same || best.inertia <= golden_inertia * kInertiaSlack) << "our inertia " << best.inertia;
  EXPECT_LE(best.inertia, ours.inertia);  // runs 0..9 are among the 100
  EXPECT_EQ(ours.labels[0].item<int64_t>(), 0);  // numbered by first appearance
  EXPECT_EQ(cluster_sizes(ours.labels, clusters).min().item<int64_t>() > 0, true);
}

TEST_F(RptqGolden, KMeansMatchesTheReferenceOnWholeChannelSites) {
  EXPECT_EQ(RptqSettings().kmeans_n_init, kGoldenRuns);  // the claim is about the default
  const std::map<std::string, std::string> sites = {
      {"R1", "self_attn_layer_norm"}, {"R4", "final_layer_norm"}, {"R5", "fc2_in"}};
  for (const auto& [site, stat] : sites)
    expect_as_good(site, features(stat), load(site + "/labels.npy"), manifest_["clusters"][site],
                   golden_inertia(site, 0));
}

TEST_F(RptqGolden, KMeansMatchesTheReferencePerHead) {
  // R2: (q max, k max, q min, k min) per channel of a head; R3: out_proj's input (max, min). 4 clusters each.
  const torch::Tensor r2 = torch::stack({load("stats/q_proj_max.npy"), load("stats/k_proj_max.npy"),
                                         load("stats/q_proj_min.npy"), load("stats/k_proj_min.npy")}, 1);
  const torch::Tensor r3 = features("out_proj_in");
  for (const auto& [site, points] : std::vector<std::pair<std::string, torch::Tensor>>{{"R2", r2}, {"R3", r3}}) {
    const torch::Tensor labels = load(site + "/labels.npy");
    for (int64_t h = 0; h < kHeads; ++h)
      expect_as_good(site + " head " + std::to_string(h), points.slice(0, h * kHeadDim, (h + 1) * kHeadDim),
                     labels.slice(0, h * kHeadDim, (h + 1) * kHeadDim), 4, golden_inertia(site, h));
  }
}

TEST_F(RptqGolden, KMeansIsDeterministicAndSeedsAgreeInInertia) {
  const torch::Tensor points = features("fc2_in");
  KMeansOptions options;
  options.clusters = 32;
  const KMeansResult first = kmeans(points, options), second = kmeans(points, options);
  EXPECT_TRUE(torch::equal(first.labels, second.labels));
  EXPECT_TRUE(torch::equal(first.centers, second.centers));
  EXPECT_EQ(first.inertia, second.inertia);
  options.seed = 1;
  const KMeansResult other = kmeans(points, options);
  std::printf("[ figures  ] fc2_in k=32: inertia seed 0 %.9g, seed 1 %.9g, same partition %s\n", first.inertia,
              other.inertia, same_partition(first.labels, other.labels) ? "yes" : "no");
  EXPECT_LE(relative(other.inertia, first.inertia), kSeedInertiaRtol);
}

TEST_F(RptqGolden, ReorderIndexAndSizesMatchTheReference) {
  for (const std::string site : {"R1", "R4", "R5"}) {
    SCOPED_TRACE(site);
    const torch::Tensor labels = load(site + "/labels.npy");
    EXPECT_TRUE(torch::equal(reorder_index(labels), load(site + "/index.npy")));
    EXPECT_TRUE(torch::equal(cluster_sizes(labels, manifest_["clusters"][site]), load(site + "/counts.npy")));
  }
  // R2, R3: labels 0..3 within each head; the index reorders inside each head, the counts list the heads in turn.
  for (const std::string site : {"R2", "R3"}) {
    SCOPED_TRACE(site);
    const torch::Tensor labels = load(site + "/labels.npy");
    std::vector<torch::Tensor> index, counts;
    for (int64_t h = 0; h < kHeads; ++h) {
      const torch::Tensor head = labels.slice(0, h * kHeadDim, (h + 1) * kHeadDim);
      index.push_back(reorder_index(head) + h * kHeadDim);
      counts.push_back(cluster_sizes(head, 4));
    }
    EXPECT_TRUE(torch::equal(torch::cat(index), load(site + "/index.npy")));
    EXPECT_TRUE(torch::equal(torch::cat(counts), load(site + "/counts.npy")));
  }
}

TEST_F(RptqGolden, EmaActivationParamsOfR4MatchTheReference) {
  const torch::Tensor X = read_fortran_f4(dir_ / "fc1_rptq_gptq_w4" / "X_reordered.npy");  // fc1's input, R4 order
  ASSERT_EQ(X.size(0), kSamples * kTokens);
  const torch::Tensor bounds = bounds_of(load("R4/counts.npy"));
  const int64_t clusters = bounds.size(0) - 1;
  torch::Tensor sample_min = torch::empty({kSamples, clusters}), sample_max = torch::empty({kSamples, clusters});
  for (int64_t s = 0; s < kSamples; ++s)
    for (int64_t c = 0; c < clusters; ++c) {
      const torch::Tensor part = X.slice(0, s * kTokens, (s + 1) * kTokens)
                                     .slice(1, bounds[c].item<int64_t>(), bounds[c + 1].item<int64_t>());
      sample_min[s][c] = part.min();
      sample_max[s][c] = part.max();
    }
  const auto [min, max] = ema_ranges(sample_min, sample_max);
  const StaticQuantParams p = params_from_ranges(min, max, bounds, 8, ActGrid::kReference);
  const torch::Tensor sizes = load("R4/counts.npy");
  const torch::Tensor xmin = min.repeat_interleave(sizes), xmax = max.repeat_interleave(sizes);
  const torch::Tensor zero_point = (xmax + xmin) * (p.scale.reciprocal() * -0.5);  // before rounding
  const std::string a8 = "R4/act_a8_ema/";
  const double d_min = max_relative(xmin, load(a8 + "xmin.npy")), d_max = max_relative(xmax, load(a8 + "xmax.npy"));
  const double d_scale = max_relative(p.scale, load(a8 + "scale.npy"));
  const double d_zero = max_relative(zero_point, load(a8 + "zero_point.npy"));
  const int64_t zeros_equal = p.zero.eq(load(a8 + "round_zero_point.npy")).sum().item<int64_t>();
  std::printf("[ figures  ] R4 a8 EMA: max rel. difference xmin %.3g, xmax %.3g, scale %.3g, zero_point %.3g; "
              "round_zero_point equal %ld/%ld\n", d_min, d_max, d_scale, d_zero, static_cast<long>(zeros_equal),
              static_cast<long>(p.zero.numel()));
  EXPECT_LE(d_min, kRangeRtol);
  EXPECT_LE(d_max, kRangeRtol);
  EXPECT_LE(d_scale, kRangeRtol);
  EXPECT_LE(d_zero, kRangeRtol);
  EXPECT_EQ(zeros_equal, p.zero.numel());

  // One sample through cluster_params (per-channel ranges reduced per cluster) equals its per-cluster ranges.
  const torch::Tensor first = X.slice(0, 0, kTokens);
  const StaticQuantParams one = cluster_params(std::get<0>(first.min(0)), std::get<0>(first.max(0)), bounds, 8,
                                               ActGrid::kReference);
  const StaticQuantParams direct = params_from_ranges(sample_min[0], sample_max[0], bounds, 8, ActGrid::kReference);
  EXPECT_TRUE(torch::equal(one.scale, direct.scale));
  EXPECT_TRUE(torch::equal(one.zero, direct.zero));
}

TEST_F(RptqGolden, StaticParamsOfOtherSitesAreConstantPerClusterOnTheReferenceGrid) {
  // R1, R3, R5 have no per-sample data: their golden params must be constant per cluster, follow our grid from
  // their own (xmin, xmax), and lie within the channels' overall range (an EMA of per-sample ranges does).
  struct Site {
    std::string name, stat, params;
    int bits;
  };
  for (const Site& site : {Site{"R1", "self_attn_layer_norm", "act_a8_ema", 8},
                           Site{"R3", "out_proj_in", "act_a4_ema", 4}, Site{"R5", "fc2_in", "act_a4_ema", 4}}) {
    SCOPED_TRACE(site.name);
    const std::string at = site.name + "/" + site.params + "/";
    const torch::Tensor sizes = load(site.name + "/counts.npy"), bounds = bounds_of(sizes);
    const torch::Tensor xmin = load(at + "xmin.npy"), xmax = load(at + "xmax.npy");
    const torch::Tensor first = bounds.slice(0, 0, -1);  // each cluster's first channel
    const torch::Tensor cluster_min = xmin.index({first}), cluster_max = xmax.index({first});
    EXPECT_TRUE(torch::equal(cluster_min.repeat_interleave(sizes), xmin));
    EXPECT_TRUE(torch::equal(cluster_max.repeat_interleave(sizes), xmax));
    const StaticQuantParams p = params_from_ranges(cluster_min, cluster_max, bounds, site.bits, ActGrid::kReference);
    EXPECT_LE(max_relative(p.scale, load(at + "scale.npy")), kScaleRtol);
    EXPECT_TRUE(torch::equal(p.zero, load(at + "round_zero_point.npy")));
    // The statistics in reordered order, reduced per cluster: the EMA ranges lie inside them.
    const torch::Tensor index = load(site.name + "/index.npy");
    const torch::Tensor stat_min = load("stats/" + site.stat + "_min.npy").index({index});
    const torch::Tensor stat_max = load("stats/" + site.stat + "_max.npy").index({index});
    for (int64_t c = 0; c + 1 < bounds.size(0); ++c) {
      const int64_t b0 = bounds[c].item<int64_t>(), b1 = bounds[c + 1].item<int64_t>();
      const double lowest = stat_min.slice(0, b0, b1).min().item<double>();
      const double highest = stat_max.slice(0, b0, b1).max().item<double>();
      EXPECT_GE(cluster_min[c].item<double>(), lowest - kRangeRtol * std::abs(lowest)) << "cluster " << c;
      EXPECT_LE(cluster_max[c].item<double>(), highest + kRangeRtol * std::abs(highest)) << "cluster " << c;
      EXPECT_LE(cluster_min[c].item<double>(), cluster_max[c].item<double>()) << "cluster " << c;
    }
  }
}

TEST_F(RptqGolden, Fc1RptqGptqW4MatchesTheReference) {
  const std::string at = "fc1_rptq_gptq_w4/";
  const torch::Tensor W = load("weights_reordered/fc1_w.npy");
  // The reordered weight: rows in R5 order (fc2's input channels), columns in R4 order (fc1's input channels).
  EXPECT_TRUE(torch::equal(W, load("weights_orig/fc1_w.npy").index({load("R5/index.npy")})
                                  .index_select(1, load("R4/index.npy"))));
  const torch::Tensor bounds = bounds_of(load("R4/counts.npy"));
  const quant::FixedGrid grid = cluster_weight_grid(W, bounds, 4);
  EXPECT_EQ(grid.qmin, -8);
  EXPECT_EQ(grid.qmax, 7);
  const double d_scale = max_relative(grid.scale, load(at + "scale.npy"));
  const double zeros_equal = grid.zero.eq(load(at + "round_zero_point.npy")).to(torch::kDouble).mean().item<double>();

  // H = 2/6 sum over the 6 samples of X^T X (the reference's add_batch per 64-token sample, to fp32 rounding).
  const torch::Tensor X = read_fortran_f4(dir_ / "fc1_rptq_gptq_w4" / "X_reordered.npy").to(torch::kDouble);
  const torch::Tensor H = (X.t().mm(X) * (2.0 / kSamples)).to(torch::kFloat);
  quant::GptqOptions options;
  options.block_size = 128;
  options.percdamp = 0.01;
  const quant::GptqResult ours = quant::gptq_quantize_fixed(W, H, grid, options);
  const torch::Tensor Q = load(at + "Q.npy"), qint = load(at + "qint.npy");
  const double codes_equal = ours.codes.eq(qint).to(torch::kDouble).mean().item<double>();
  const double steps_off = ((ours.weight - Q).abs() / grid.scale).max().item<double>();
  const double golden_loss = manifest_["fc1_rptq_gptq_w4"]["losses"];
  const quant::GptqResult rtn = quant::rtn_quantize_fixed(W, grid);
  const torch::Tensor S = X.t().mm(X);
  const double gptq_error = quant::reconstruction_error(W, ours.weight, S);
  const double rtn_error = quant::reconstruction_error(W, rtn.weight, S);
  std::printf("[ figures  ] fc1 W4: scale max rel. difference %.3g, zeros equal %.4f; GPTQ codes equal %.4f, "
              "max |Q - Q_ref| / scale %.3g, loss %.6g vs %.6g (rel. %.3g); ||WX^T - QX^T||^2 GPTQ %.6g, RTN %.6g\n",
              d_scale, zeros_equal, codes_equal, steps_off, ours.loss, golden_loss, relative(ours.loss, golden_loss),
              gptq_error, rtn_error);
  EXPECT_LE(d_scale, kScaleRtol);
  EXPECT_EQ(zeros_equal, 1.0);
  EXPECT_GE(codes_equal, kMinCodesEqual);
  EXPECT_LE(steps_off, kMaxStepsOff + 1e-3);
  EXPECT_LE(relative(ours.loss, golden_loss), kLossRtol);
  EXPECT_LT(gptq_error, rtn_error);  // what GPTQ is for
  EXPECT_TRUE(torch::equal(ours.scales, grid.scale));
  EXPECT_TRUE(torch::equal(ours.g_idx, torch::arange(W.size(1), torch::kInt32)));
  EXPECT_GE(ours.codes.min().item<int>(), -8);
  EXPECT_LE(ours.codes.max().item<int>(), 7);
  // RTN's codes on the golden grid: round(w / scale) + zero, clamped.
  const torch::Tensor expected = (torch::round(W.to(torch::kFloat) / grid.scale) + grid.zero).clamp(-8, 7);
  EXPECT_TRUE(torch::equal(rtn.codes, expected.to(torch::kInt32)));
  EXPECT_TRUE(torch::equal(rtn.weight, (expected - grid.zero) * grid.scale));
}

// --- closed forms and errors (no golden data needed) ---

TEST(RptqStaticQuant, MinMaxGridHitsBothEndpointsExactly) {
  // 4 bits over [-1, 2.75]: scale 3.75 / 15 = 0.25, zero 4; channel 1 over [0.5, 0.5] takes scale 1 and zero
  // round(-0.5) = 0 (half to even).
  const torch::Tensor bounds = torch::tensor({0, 1, 2}, torch::kInt64);
  const StaticQuantParams p =
      params_from_ranges(torch::tensor({-1.0f, 0.5f}), torch::tensor({2.75f, 0.5f}), bounds, 4, ActGrid::kMinMax);
  EXPECT_TRUE(torch::equal(p.scale, torch::tensor({0.25f, 1.0f})));
  EXPECT_TRUE(torch::equal(p.zero, torch::tensor({4.0f, 0.0f})));
  // Rows of (channel 0, channel 1): endpoints, clipping, half-to-even ties (0.125 / 0.25 = 0.5 -> 0; 1.5 -> 2).
  const torch::Tensor x = torch::tensor({-1.0f, 0.5f, 2.75f, 0.4f, 3.5f, 2.0f, -2.0f, -3.0f, 0.125f, 0.5f,
                                         0.375f, 0.6f}).reshape({3, 2, 2});
  const torch::Tensor expected = torch::tensor({-1.0f, 0.0f, 2.75f, 0.0f, 2.75f, 2.0f, -1.0f, 0.0f, 0.0f, 0.0f,
                                                0.5f, 1.0f}).reshape({3, 2, 2});
  EXPECT_TRUE(torch::equal(fake_quantize_static(x, p), expected)) << fake_quantize_static(x, p);
  // x_hat comes back in x's dtype.
  EXPECT_EQ(fake_quantize_static(x.to(torch::kDouble), p).scalar_type(), torch::kDouble);
}

TEST(RptqStaticQuant, ReferenceGridClipsTheMaximumByOneStep) {
  // 4 bits over [-1, 2.2]: scale 3.2 / 16 = 0.2, zero_point 1.2 * (-0.5 / 0.2) = -3, codes -8..7: the lowest
  // value is (-8 + 3) * 0.2 = -1 (the minimum), the highest (7 + 3) * 0.2 = 2 (one step under the maximum).
  const torch::Tensor bounds = torch::tensor({0, 1}, torch::kInt64);
  const StaticQuantParams p =
      params_from_ranges(torch::tensor({-1.0f}), torch::tensor({2.2f}), bounds, 4, ActGrid::kReference);
  const float scale = p.scale[0].item<float>();
  EXPECT_NEAR(scale, 0.2, 1e-7);
  EXPECT_EQ(p.zero[0].item<float>(), -3.0f);
  const torch::Tensor x = torch::tensor({-1.0f, 2.2f, 2.0f, 5.0f, -4.0f, 0.0f, 0.29f});
  const torch::Tensor x_hat = fake_quantize_static(x.unsqueeze(1), p).squeeze(1);
  const std::vector<float> codes = {-8, 7, 7, 7, -8, -3, -2};  // round(x / 0.2) - 3, clamped to [-8, 7]
  for (size_t i = 0; i < codes.size(); ++i)
    EXPECT_EQ(x_hat[static_cast<int64_t>(i)].item<float>(), (codes[i] + 3.0f) * scale) << "x = " << x[i].item<float>();
  EXPECT_NEAR(x_hat[1].item<float>(), 2.0, 1e-6);  // the maximum 2.2, clipped by one step
  // A range narrower than 1e-4 * 2^bits takes the reference's minimum scale 1e-4 (a singleton at 0.0549).
  const StaticQuantParams tiny =
      params_from_ranges(torch::tensor({0.0549f}), torch::tensor({0.0549f}), bounds, 4, ActGrid::kReference);
  EXPECT_EQ(tiny.scale[0].item<float>(), 1e-4f);
  EXPECT_EQ(tiny.zero[0].item<float>(), -549.0f);
  EXPECT_EQ(code_range(4, ActGrid::kReference), (std::pair<int64_t, int64_t>{-8, 7}));
  EXPECT_EQ(code_range(8, ActGrid::kMinMax), (std::pair<int64_t, int64_t>{0, 255}));
}

TEST(RptqStaticQuant, ClusterParamsShareOneRangePerClusterAndGradientsPassStraight) {
  // Channels 0..1 one cluster, 2..4 another: ranges (-1, 3) and (-0.5, 4).
  const torch::Tensor min = torch::tensor({-1.0, 0.0, -0.5, 1.0, 0.0}), max = torch::tensor({1.0, 3.0, 0.5, 4.0, 2.0});
  const torch::Tensor bounds = bounds_of(torch::tensor({2, 3}, torch::kInt64));
  EXPECT_TRUE(torch::equal(bounds, torch::tensor({0, 2, 5}, torch::kInt64)));
  const StaticQuantParams p = cluster_params(min, max, bounds, 8, ActGrid::kMinMax);
  const float s0 = 4.0f / 255, s1 = 4.5f / 255;
  EXPECT_TRUE(torch::equal(p.scale, torch::tensor({s0, s0, s1, s1, s1})));
  EXPECT_TRUE(torch::equal(p.zero, torch::round(torch::tensor({1.0f / s0, 1.0f / s0, 0.5f / s1, 0.5f / s1,
                                                               0.5f / s1}))));
  const torch::Tensor x = torch::randn({3, 5}, torch::requires_grad());
  fake_quantize_static(x, p).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones({3, 5})));
  // EMA: first row as is, then 0.99 v + 0.01 row.
  const auto [lo, hi] = ema_ranges(torch::tensor({{-1.0, -2.0}, {-3.0, 0.0}}), torch::tensor({{1.0, 2.0}, {3.0, 4.0}}));
  EXPECT_TRUE(torch::allclose(lo, torch::tensor({-1.02, -1.98})));
  EXPECT_TRUE(torch::allclose(hi, torch::tensor({1.02, 2.02})));
}

TEST(RptqStaticQuant, BadInputsAreReported) {
  EXPECT_EQ(parse_act_grid("reference"), ActGrid::kReference);
  EXPECT_STREQ(to_string(parse_act_grid("minmax")), "minmax");
  EXPECT_NE(test::error_of([] { parse_act_grid("mse"); }).find("rptq.grid"), std::string::npos);
  const torch::Tensor range = torch::zeros({2});
  const torch::Tensor bounds = torch::tensor({0, 1, 2}, torch::kInt64), empty = torch::tensor({0, 2, 2}, torch::kInt64);
  EXPECT_NE(test::error_of([&] { params_from_ranges(range, range, empty, 4, ActGrid::kMinMax); }).find("bounds"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { params_from_ranges(range, range, bounds, 1, ActGrid::kMinMax); }).find("bits"),
            std::string::npos);
  const StaticQuantParams p = params_from_ranges(range, range, bounds, 4, ActGrid::kMinMax);
  EXPECT_FALSE(test::error_of([&] { fake_quantize_static(torch::zeros({3}), p); }).empty());
}

TEST(RptqKMeans, DuplicatePointsAndTrivialCasesAreDeterministic) {
  // 10 points, 3 distinct: 5 clusters leave empty ones to relocate; the inertia is 0 either way.
  const torch::Tensor points = torch::tensor({0.0, 0.0, 1.0, 1.0, 1.0, 5.0, 5.0, 0.0, 1.0, 5.0}).unsqueeze(1);
  KMeansOptions options;
  options.clusters = 5;
  const KMeansResult a = kmeans(points, options), b = kmeans(points, options);
  EXPECT_EQ(a.inertia, 0.0);
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  EXPECT_EQ(a.labels[0].item<int64_t>(), 0);
  // Equal points share a label: the partition is the 3 distinct values' (no distinct value is split).
  options.clusters = 3;
  const KMeansResult three = kmeans(points, options);
  EXPECT_TRUE(same_partition(three.labels, torch::tensor({0, 0, 1, 1, 1, 2, 2, 0, 1, 2})));
  const torch::Tensor centers = std::get<0>(three.centers.squeeze(1).sort());
  EXPECT_TRUE(torch::allclose(centers, torch::tensor({0.0, 1.0, 5.0}, torch::kDouble)));
  // One cluster: the mean; n clusters: every point its own.
  options.clusters = 1;
  EXPECT_NEAR(kmeans(points, options).inertia, inertia_of(points, torch::zeros({10}, torch::kInt64)), 1e-12);
  const torch::Tensor distinct = torch::arange(6, torch::kDouble).unsqueeze(1);
  options.clusters = 6;
  EXPECT_TRUE(torch::equal(kmeans(distinct, options).labels, torch::arange(6, torch::kInt64)));
  options.clusters = 7;
  EXPECT_NE(test::error_of([&] { kmeans(distinct, options); }).find("clusters"), std::string::npos);
  options.clusters = 0;
  EXPECT_NE(test::error_of([&] { kmeans(distinct, options); }).find("clusters"), std::string::npos);
  const torch::Tensor labels = torch::tensor({2, 0, 2, 1, 0}, torch::kInt64);
  EXPECT_TRUE(torch::equal(reorder_index(labels), torch::tensor({1, 4, 3, 0, 2}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(cluster_sizes(labels, 4), torch::tensor({2, 1, 2, 0}, torch::kInt64)));
}

TEST(RptqKMeans, ThirtyThousandPointsClusterQuickly) {
  // The size of a large model's FFN: 30k channels of (max, min), 32 clusters.
  torch::manual_seed(0);
  const torch::Tensor points = torch::randn({30000, 2}, torch::kDouble) * torch::tensor({3.0, 1.0}, torch::kDouble);
  KMeansOptions options;
  options.clusters = 32;
  const auto start = std::chrono::steady_clock::now();
  const KMeansResult result = kmeans(points, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ figures  ] 30000 x 2 points, 32 clusters, n_init 10: %.2f s, inertia %.6g, %d iterations\n", seconds,
              result.inertia, result.iterations);
  EXPECT_LE(inertia_of(points, result.labels), result.inertia * (1 + 1e-12));
  EXPECT_EQ(cluster_sizes(result.labels, 32).min().item<int64_t>() > 0, true);
}

}  // namespace
}  // namespace qforge::rptq
