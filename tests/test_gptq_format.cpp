// The GPTQ checkpoint format (quant/gptq_format.h): AutoGPTQ's golden export (../shared/golden/gptq), round trips
// at every width, both directions through the independent numpy packer (tests/reference/gptq_pack.py), refusals,
// tensor-parallel slices and the quantization_config parser.
#include "framework/io/checkpoint_writer.h"
#include "framework/io/safetensors.h"
#include "quant/gptq_format.h"
#include "tests/npy.h"
#include "tests/test_support.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>

#ifndef QFORGE_GPTQ_PACK_REFERENCE
#error "QFORGE_GPTQ_PACK_REFERENCE (tests/reference/gptq_pack.py) must be defined by the build"
#endif

namespace qforge::quant {
namespace {

namespace fs = std::filesystem;
using test::error_of;

// Scales are stored as fp16: |scale - fp16(scale)| <= 2^-11 |scale| (round to nearest, normal range), so an element
// differs from the fp32 formula by at most |q - z| * |scale| * 2^-11, plus the rounding of the two fp32 products
// (2^-24 each, relative) and of |scale| vs |fp16(scale)|: 2^-20 covers those.
constexpr double kFp16ScaleBound = 1.0 / 2048 + 1.0 / (1 << 20);
constexpr const char* kLayer = "model.layers.7.mlp.up_proj";
constexpr GptqCheckpointFormat kFormats[] = {GptqCheckpointFormat::kV1, GptqCheckpointFormat::kV2};

// An integer quantization of a weight [out, in]: codes, fp32 scales and zeros [out, groups], g_idx [in].
struct Quantized {
  torch::Tensor codes, scales, zeros, g_idx;
};

// group_size -1: one group; act_order: g_idx shuffled (each input keeps a group, the groups are not contiguous).
// v1 needs zeros >= 1; v2 takes the whole range, 0 included.
Quantized random_quantized(int64_t out, int64_t in, int bits, int64_t group_size, bool act_order,
                           GptqCheckpointFormat format, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t maxq = (int64_t{1} << bits) - 1, groups = group_size < 0 ? 1 : (in + group_size - 1) / group_size;
  Quantized q;
  q.codes = torch::randint(0, maxq + 1, {out, in}, torch::kInt);
  q.codes.index_put_({0, 0}, 0);
  q.codes.index_put_({0, 1}, static_cast<int>(maxq));  // both ends of the range
  q.scales = torch::rand({out, groups}) * 0.05 + 1e-3;
  const int64_t low = format == GptqCheckpointFormat::kV1 ? 1 : 0;
  q.zeros = torch::randint(low, maxq + 1, {out, groups}).to(torch::kFloat);  // fp32, as GptqResult holds them
  q.zeros.index_put_({0, 0}, static_cast<double>(low));
  q.zeros.index_put_({out - 1, groups - 1}, static_cast<double>(maxq));
  torch::Tensor g = group_size < 0 ? torch::zeros({in}, torch::kLong)
                                   : torch::div(torch::arange(in, torch::kLong), group_size, "floor");
  if (act_order) g = g.index_select(0, torch::randperm(in, torch::kLong));
  q.g_idx = g.to(torch::kInt);
  return q;
}

// scales[o, g_idx[i]] * (q[o, i] - zeros[o, g_idx[i]]) in fp32 for `scales` [out, groups].
torch::Tensor formula(const Quantized& q, const torch::Tensor& scales) {
  const torch::Tensor g = q.g_idx.to(torch::kLong);
  return scales.to(torch::kFloat).index_select(1, g) * (q.codes - q.zeros.index_select(1, g)).to(torch::kFloat);
}

// max |ours - reference| / (|q - z| * |scale| * kFp16ScaleBound) over the elements (0 where both are equal).
double bound_ratio(const torch::Tensor& ours, const torch::Tensor& reference, const torch::Tensor& levels,
                   const torch::Tensor& scales) {
  const torch::Tensor bound = levels.abs().to(torch::kDouble) * scales.abs().to(torch::kDouble) * kFp16ScaleBound;
  const torch::Tensor diff = (ours.to(torch::kDouble) - reference.to(torch::kDouble)).abs();
  return torch::where(diff == 0, torch::zeros_like(diff), diff / bound).max().item<double>();
}

std::vector<std::pair<std::string, torch::Tensor>> named(const GptqPacked& p, const std::string& layer) {
  return {{layer + ".qweight", p.qweight}, {layer + ".qzeros", p.qzeros}, {layer + ".scales", p.scales},
          {layer + ".g_idx", p.g_idx}};
}

GptqPacked read_packed(const io::SafetensorsFile& file, const std::string& layer) {
  return {file.read(layer + ".qweight", torch::kInt), file.read(layer + ".qzeros", torch::kInt),
          file.read(layer + ".scales", torch::kHalf), file.read(layer + ".g_idx", torch::kInt)};
}

void expect_same_packed(const GptqPacked& a, const GptqPacked& b) {
  EXPECT_TRUE(torch::equal(a.qweight, b.qweight)) << "qweight";
  EXPECT_TRUE(torch::equal(a.qzeros, b.qzeros)) << "qzeros";
  EXPECT_TRUE(torch::equal(a.scales, b.scales)) << "scales";
  EXPECT_TRUE(torch::equal(a.g_idx, b.g_idx)) << "g_idx";
}

// ---------------------------------------------------------------------------------------------------------------
// AutoGPTQ's export of the golden w4 g128 sym act-order result.

class GptqFormatGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    QF_REQUIRE_SHARED(shared);
    dir_ = fs::path(shared) / "golden" / "gptq";
    file_ = std::make_unique<io::SafetensorsFile>((dir_ / "export_w4_g128_sym_act" / "model.safetensors").string());
    packed_ = read_packed(*file_, kGolden);
    const fs::path result = dir_ / "w4_g128_sym_act_b128";
    golden_ = {test::read_npy(result / "qint.npy"), test::read_npy(result / "scale.npy"),
               test::read_npy(result / "zero.npy"), test::read_npy(result / "g_idx.npy")};
  }
  static constexpr const char* kGolden = "model.layers.0.mlp.down_proj";
  fs::path dir_;
  std::unique_ptr<io::SafetensorsFile> file_;
  GptqPacked packed_;
  Quantized golden_;  // IST-DASLab/gptq's codes [out, in], fp32 scale and zero [out, groups], g_idx
};

TEST_F(GptqFormatGolden, ConfigSaysV1FourBitsGroup128ActOrder) {
  for (const char* name : {"config.json", "quantize_config.json"}) {
    const GptqQuantizationConfig config =
        read_gptq_quantization_config((dir_ / "export_w4_g128_sym_act" / name).string());
    EXPECT_EQ(config.bits, 4) << name;
    EXPECT_EQ(config.group_size, 128) << name;
    EXPECT_TRUE(config.desc_act) << name;
    EXPECT_TRUE(config.sym) << name;
    EXPECT_EQ(config.checkpoint_format, GptqCheckpointFormat::kV1) << name;
    EXPECT_FALSE(config.static_groups) << name;
    EXPECT_DOUBLE_EQ(config.damp_percent, 0.01) << name;
  }
}

TEST_F(GptqFormatGolden, UnpacksToTheReferenceCodesAndWeight) {
  const GptqUnpacked ours = unpack_gptq(packed_, 4, GptqCheckpointFormat::kV1, kGolden);
  ASSERT_TRUE(ours.codes.sizes().equals(golden_.codes.sizes()));
  const int64_t codes_differing = ours.codes.ne(golden_.codes).sum().item<int64_t>();
  EXPECT_EQ(codes_differing, 0);
  EXPECT_TRUE(torch::equal(ours.g_idx, golden_.g_idx));
  EXPECT_TRUE(torch::equal(ours.zeros, golden_.zeros.t().to(torch::kInt)));  // the stored 7 + 1 = 8
  const double scale_rel = ((ours.scales - golden_.scales.t()).abs() / golden_.scales.t().abs()).max().item<double>();
  EXPECT_LE(scale_rel, 1.0 / 2048);

  const io::SafetensorsFile reference((dir_ / "export_w4_g128_sym_act" / "reference_fp32.safetensors").string());
  const torch::Tensor expected = reference.read(std::string(kGolden) + ".weight", torch::kFloat);
  const torch::Tensor weight = dequantize_gptq(packed_, 4, GptqCheckpointFormat::kV1, kGolden);
  ASSERT_TRUE(weight.sizes().equals(expected.sizes()));
  const torch::Tensor g = golden_.g_idx.to(torch::kLong);
  const torch::Tensor levels = golden_.codes - golden_.zeros.index_select(1, g);
  const double ratio = bound_ratio(weight, expected, levels, golden_.scales.index_select(1, g));
  const double max_diff = (weight - expected).abs().max().item<double>();
  std::printf("[ figures  ] golden export: %lld of %lld codes differ; scales within %.3g relative of fp32; weight "
              "max |diff| %.3g = %.3f of the fp16-scale bound\n",
              static_cast<long long>(codes_differing), static_cast<long long>(golden_.codes.numel()), scale_rel,
              max_diff, ratio);
  EXPECT_LE(ratio, 1.0);
  EXPECT_GT(max_diff, 0.0);  // fp16 scales do round: the bound is not vacuous
}

TEST_F(GptqFormatGolden, PackingTheReferenceResultGivesAutoGptqsFileBitwise) {
  const GptqPacked ours = pack_gptq(golden_.codes, golden_.scales, golden_.zeros, golden_.g_idx, 4,
                                    GptqCheckpointFormat::kV1, kGolden);
  expect_same_packed(ours, packed_);
}

// ---------------------------------------------------------------------------------------------------------------
// Round trips.

TEST(GptqFormat, RoundTripsAtEveryWidthFormatAndGrouping) {
  double worst_ratio = 0;
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (GptqCheckpointFormat format : kFormats) {
      for (int64_t group_size : {int64_t{-1}, int64_t{32}}) {
        for (bool act_order : {false, true}) {
          SCOPED_TRACE("bits " + std::to_string(bits) + " " + gptq_checkpoint_format_name(format) + " group " +
                       std::to_string(group_size) + (act_order ? " act-order" : ""));
          const int64_t out = bits == 3 ? 64 : 48, in = 128;  // 48: whole words, not whole runs of 32, at 2/4/8
          const Quantized q = random_quantized(out, in, bits, group_size, act_order, format, 100 + cases);
          const GptqPacked p = pack_gptq(q.codes, q.scales, q.zeros, q.g_idx, bits, format, kLayer);
          const int64_t groups = q.scales.size(1);
          EXPECT_TRUE(p.qweight.sizes().equals({in * bits / 32, out}));
          EXPECT_TRUE(p.qzeros.sizes().equals({groups, out * bits / 32}));
          EXPECT_TRUE(p.scales.sizes().equals({groups, out}));
          EXPECT_EQ(p.scales.scalar_type(), torch::kHalf);

          const GptqUnpacked u = unpack_gptq(p, bits, format, kLayer);
          EXPECT_TRUE(torch::equal(u.codes, q.codes));
          EXPECT_TRUE(torch::equal(u.zeros, q.zeros.t().to(torch::kInt)));
          EXPECT_TRUE(torch::equal(u.scales, q.scales.to(torch::kHalf).to(torch::kFloat).t()));
          EXPECT_TRUE(torch::equal(u.g_idx, q.g_idx));

          const torch::Tensor weight = dequantize_gptq(p, bits, format, kLayer);
          // Bitwise the formula with fp16-rounded scales; within the fp16 bound of the fp32 scales' formula.
          EXPECT_TRUE(torch::equal(weight, formula(q, q.scales.to(torch::kHalf))));
          const torch::Tensor g = q.g_idx.to(torch::kLong);
          const double ratio = bound_ratio(weight, formula(q, q.scales), q.codes - q.zeros.index_select(1, g),
                                           q.scales.index_select(1, g));
          EXPECT_LE(ratio, 1.0);
          worst_ratio = std::max(worst_ratio, ratio);
          ++cases;
        }
      }
    }
  }
  std::printf("[ figures  ] %d round trips (2, 3, 4, 8 bits; v1, v2; group -1, 32; act-order or not): codes, zeros "
              "exact; dequantized within %.3f of the fp16-scale bound\n",
              cases, worst_ratio);
}

TEST(GptqFormat, ThreeBitsStraddleWordsAsOneLsbFirstStream) {
  // Codes 0..7 repeating down input 0's column: value j of a run of 32 at stream bits [3j, 3j + 3).
  torch::Tensor codes = torch::zeros({32, 32}, torch::kInt);
  codes.select(0, 0).copy_(torch::arange(32, torch::kInt).remainder(8));
  const Quantized q{codes, torch::ones({32, 1}), torch::ones({32, 1}), torch::zeros({32}, torch::kInt)};
  const GptqPacked p = pack_gptq(q.codes, q.scales, q.zeros, q.g_idx, 3, GptqCheckpointFormat::kV2, kLayer);
  uint64_t stream[2] = {0, 0};  // 96 bits
  for (int j = 0; j < 32; ++j) {
    const uint64_t value = static_cast<uint64_t>(j % 8);
    const int bit = 3 * j;
    stream[bit / 64] |= value << (bit % 64);
    if (bit % 64 > 61) stream[1] |= value >> (64 - bit % 64);
  }
  const uint32_t words[3] = {static_cast<uint32_t>(stream[0]), static_cast<uint32_t>(stream[0] >> 32),
                             static_cast<uint32_t>(stream[1])};
  for (int k = 0; k < 3; ++k)
    EXPECT_EQ(static_cast<uint32_t>(p.qweight[k][0].item<int32_t>()), words[k]) << "word " << k;
}

// ---------------------------------------------------------------------------------------------------------------
// Both directions through tests/reference/gptq_pack.py.

class GptqFormatPython : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 is absent";
    if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "/usr/bin/python3 has no numpy (Debian: python3-numpy)";
    dir_ = fs::temp_directory_path() / ("qforge_gptq_format_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  // Runs gptq_pack.py; fails the test (returning false) with its output when it fails.
  bool python(const std::string& command, const fs::path& in, const fs::path& out, int bits,
              GptqCheckpointFormat format) {
    const test::CommandResult r = test::run_command(
        "/usr/bin/python3 " + test::quoted(QFORGE_GPTQ_PACK_REFERENCE) + " " + command + " " + test::quoted(in) +
        " " + test::quoted(out) + " --bits " + std::to_string(bits) + " --name " + kLayer + " --format " +
        (format == GptqCheckpointFormat::kV1 ? "v1" : "v2"));
    EXPECT_EQ(r.status, 0) << r.output;
    return r.status == 0;
  }
  fs::path dir_;
};

TEST_F(GptqFormatPython, QforgePacksPythonUnpacks) {
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (GptqCheckpointFormat format : kFormats) {
      SCOPED_TRACE("bits " + std::to_string(bits) + " " + gptq_checkpoint_format_name(format));
      const Quantized q = random_quantized(bits == 3 ? 64 : 48, 128, bits, 32, true, format, 200 + cases++);
      const GptqPacked p = pack_gptq(q.codes, q.scales, q.zeros, q.g_idx, bits, format, kLayer);
      io::save_safetensors_file((dir_ / "packed.safetensors").string(), named(p, kLayer));
      if (!python("unpack", dir_ / "packed.safetensors", dir_ / "unpacked.safetensors", bits, format)) continue;
      const io::SafetensorsFile theirs((dir_ / "unpacked.safetensors").string());
      EXPECT_TRUE(torch::equal(theirs.read("codes", torch::kInt), q.codes));
      EXPECT_TRUE(torch::equal(theirs.read("zeros", torch::kInt), q.zeros.t().to(torch::kInt)));
      EXPECT_TRUE(torch::equal(theirs.read("g_idx", torch::kInt), q.g_idx));
      EXPECT_TRUE(torch::equal(theirs.read("scales", torch::kFloat), q.scales.to(torch::kHalf).to(torch::kFloat).t()));
    }
  }
  std::printf("[ figures  ] %d layers packed by qforge, unpacked by gptq_pack.py: codes and zeros exact\n", cases);
}

TEST_F(GptqFormatPython, PythonPacksQforgeUnpacksAndPacksTheSameBits) {
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (GptqCheckpointFormat format : kFormats) {
      SCOPED_TRACE("bits " + std::to_string(bits) + " " + gptq_checkpoint_format_name(format));
      const Quantized q = random_quantized(bits == 3 ? 64 : 48, 128, bits, 32, true, format, 300 + cases++);
      io::save_safetensors_file((dir_ / "integers.safetensors").string(),
                                {{"codes", q.codes}, {"scales", q.scales}, {"zeros", q.zeros}, {"g_idx", q.g_idx}});
      if (!python("pack", dir_ / "integers.safetensors", dir_ / "packed.safetensors", bits, format)) continue;
      const io::SafetensorsFile file((dir_ / "packed.safetensors").string());
      const GptqPacked theirs = read_packed(file, kLayer);
      const GptqUnpacked u = unpack_gptq(theirs, bits, format, kLayer);
      EXPECT_TRUE(torch::equal(u.codes, q.codes));
      EXPECT_TRUE(torch::equal(u.zeros, q.zeros.t().to(torch::kInt)));
      expect_same_packed(pack_gptq(q.codes, q.scales, q.zeros, q.g_idx, bits, format, kLayer), theirs);
    }
  }
  std::printf("[ figures  ] %d layers packed by gptq_pack.py: qforge unpacks the codes exactly and packs the same "
              "bits\n",
              cases);
}

// ---------------------------------------------------------------------------------------------------------------
// Refusals.

TEST(GptqFormat, RefusesWhatTheFormatCannotHold) {
  const auto F1 = GptqCheckpointFormat::kV1;
  const Quantized v2 = random_quantized(64, 128, 4, 32, false, GptqCheckpointFormat::kV2, 7);  // holds a zero of 0
  const auto refused = [](const std::function<void()>& body, const std::string& what) {
    const std::string message = error_of(body);
    EXPECT_NE(message.find(kLayer), std::string::npos) << message;
    EXPECT_NE(message.find(what), std::string::npos) << message;
    std::printf("[ refused  ] %s\n", message.c_str());
  };
  refused([&] { pack_gptq(v2.codes, v2.scales, v2.zeros, v2.g_idx, 4, F1, kLayer); }, "zero point of 0");
  refused([&] { pack_gptq(v2.codes, v2.scales, v2.zeros, v2.g_idx, 5, F1, kLayer); }, "bits 5");
  const Quantized narrow = random_quantized(64, 48, 4, 16, false, F1, 8);
  refused([&] { pack_gptq(narrow.codes, narrow.scales, narrow.zeros, narrow.g_idx, 4, F1, kLayer); },
          "48 input features");
  const Quantized odd_out = random_quantized(48, 128, 3, 32, false, F1, 9);  // 3 bits: out must be a multiple of 32
  refused([&] { pack_gptq(odd_out.codes, odd_out.scales, odd_out.zeros, odd_out.g_idx, 3, F1, kLayer); },
          "48 output features");
  refused([&] { pack_gptq(v2.codes + 16, v2.scales, v2.zeros, v2.g_idx, 4, GptqCheckpointFormat::kV2, kLayer); },
          "codes");
  refused([&] { pack_gptq(v2.codes, v2.scales * 1e7, v2.zeros, v2.g_idx, 4, GptqCheckpointFormat::kV2, kLayer); },
          "overflows fp16");
  refused([&] { pack_gptq(v2.codes, v2.scales.narrow(0, 0, 32), v2.zeros, v2.g_idx, 4, F1, kLayer); }, "scales");

  const Quantized ok = random_quantized(64, 128, 4, 32, false, F1, 10);
  GptqPacked p = pack_gptq(ok.codes, ok.scales, ok.zeros, ok.g_idx, 4, F1, kLayer);
  p.qweight = p.qweight.narrow(0, 0, 8);
  refused([&] { unpack_gptq(p, 4, F1, kLayer); }, "qweight");
  refused([&] { dequantize_gptq_rows(pack_gptq(ok.codes, ok.scales, ok.zeros, ok.g_idx, 4, F1, kLayer), 4, F1, 60, 8,
                                     kLayer); },
          "rows");
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor-parallel slices.

TEST(GptqFormat, RowAndColumnSlicesEqualTheFullDequantization) {
  int slices = 0;
  for (int bits : {3, 4}) {
    for (bool act_order : {false, true}) {
      const Quantized q = random_quantized(64, 256, bits, 32, act_order, GptqCheckpointFormat::kV1, 400 + bits);
      const GptqPacked p = pack_gptq(q.codes, q.scales, q.zeros, q.g_idx, bits, GptqCheckpointFormat::kV1, kLayer);
      const torch::Tensor full = dequantize_gptq(p, bits, GptqCheckpointFormat::kV1, kLayer);
      // Aligned shards (TP 2 and 4) and ranges that start and end inside a word and inside a 3-bit run.
      for (const auto& [start, length] : std::vector<std::pair<int64_t, int64_t>>{{0, 32}, {32, 32}, {16, 16},
                                                                                  {5, 17}, {11, 1}, {0, 64}}) {
        EXPECT_TRUE(torch::equal(dequantize_gptq_rows(p, bits, GptqCheckpointFormat::kV1, start, length, kLayer),
                                 full.narrow(0, start, length)))
            << "rows " << start << "+" << length << " at " << bits << " bits";
        ++slices;
      }
      for (const auto& [start, length] : std::vector<std::pair<int64_t, int64_t>>{{0, 128}, {128, 128}, {64, 64},
                                                                                  {13, 40}, {10, 12}, {255, 1}}) {
        EXPECT_TRUE(torch::equal(dequantize_gptq_columns(p, bits, GptqCheckpointFormat::kV1, start, length, kLayer),
                                 full.narrow(1, start, length)))
            << "columns " << start << "+" << length << " at " << bits << " bits";
        ++slices;
      }
    }
  }
  std::printf("[ figures  ] %d row and column slices equal the full dequantization bitwise\n", slices);
}

// ---------------------------------------------------------------------------------------------------------------
// quantization_config.

TEST(GptqFormatConfig, WritesAndParsesEveryKey) {
  GptqQuantizationConfig config;
  config.bits = 3;
  config.group_size = -1;
  config.desc_act = true;
  config.sym = false;
  config.checkpoint_format = GptqCheckpointFormat::kV2;
  config.static_groups = true;
  config.damp_percent = 0.1;
  config.true_sequential = false;
  const nlohmann::json json = gptq_quantization_config_json(config);
  EXPECT_EQ(json["quant_method"], "gptq");
  EXPECT_EQ(json["checkpoint_format"], "gptq_v2");
  const GptqQuantizationConfig back = parse_gptq_quantization_config(json, "config.json");
  EXPECT_EQ(back.bits, 3);
  EXPECT_EQ(back.group_size, -1);
  EXPECT_TRUE(back.desc_act);
  EXPECT_FALSE(back.sym);
  EXPECT_EQ(back.checkpoint_format, GptqCheckpointFormat::kV2);
  EXPECT_TRUE(back.static_groups);
  EXPECT_DOUBLE_EQ(back.damp_percent, 0.1);
  EXPECT_FALSE(back.true_sequential);
  // Absent optional keys take AutoGPTQ's defaults: v1.
  const auto minimal = nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}, {"lm_head", false}};
  EXPECT_EQ(parse_gptq_quantization_config(minimal, "q.json").checkpoint_format, GptqCheckpointFormat::kV1);
}

TEST(GptqFormatConfig, ErrorsNameTheFileAndTheKey) {
  const auto base = nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}};
  const auto message_for = [&](const std::string& key, const nlohmann::json& value, bool erase = false) {
    nlohmann::json json = base;
    if (erase) json.erase(key);
    else json[key] = value;
    const std::string message = error_of([&] { parse_gptq_quantization_config(json, "dir/config.json"); });
    EXPECT_NE(message.find("dir/config.json"), std::string::npos) << message;
    EXPECT_NE(message.find("\"" + key + "\""), std::string::npos) << message;
    return message;
  };
  message_for("bits", nullptr, true);
  message_for("bits", "4");
  message_for("bits", 5);
  message_for("group_size", 0);
  message_for("quant_method", "awq");
  message_for("checkpoint_format", "marlin");
  message_for("desc_act", 1);
  message_for("damp_percent", 1.5);
  std::printf("[ refused  ] %s\n", message_for("checkpoint_format", "marlin").c_str());

  const fs::path bad = fs::temp_directory_path() / ("qforge_gptq_config_" + std::to_string(::getpid()) + ".json");
  std::ofstream(bad) << "{\"quantization_config\": {\"bits\": 4";
  const std::string message = error_of([&] { read_gptq_quantization_config(bad.string()); });
  EXPECT_NE(message.find(bad.string()), std::string::npos) << message;
  fs::remove(bad);
}

}  // namespace
}  // namespace qforge::quant
