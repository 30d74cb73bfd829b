// Whole models in the GPTQ checkpoint format, both ways through an independent reference
// (tests/reference/gptq_checkpoint.py, numpy, AutoGPTQ's layout):
//   - checkpoints the reference writes load under every TP size with every weight exactly the reference's
//     dequantization (2, 3, 4, 8 bits; v1 and v2 zeros; trivial and act-order g_idx);
//   - what export_gptq writes for a QAT student and for GPTQ results reads back in the reference with the codes
//     of an unsharded quantize() exactly and the weights within the fp16 rounding of the scales;
//   - what the format cannot hold is refused or kept in fp16 with one clear message.
#include "framework/common/error.h"
#include "framework/io/safetensors.h"
#include "framework/model/checkpoint_io.h"
#include "quant/gptq_checkpoint.h"
#include "quant/ptq.h"
#include "quant/qat.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace qforge::quant {
namespace {
namespace fs = std::filesystem;
using model::runtime;

// The reference and the loader compute one fp32 product of the same fp16 scale and integer: bitwise equal.
constexpr double kDequantizationAbsTol = 0.0;
// A stored scale is the fp32 scale rounded to fp16 (relative error <= 2^-11), and each product is rounded in fp32
// (2^-24 each side): |s16 (q - z) - s (q - z)| <= |s (q - z)| (2^-11 + 2^-22).
constexpr double kFp16ScaleRelTol = 1.0 / 2048 + 1.0 / (1 << 22);

// All decoder linears pack at every width: in a multiple of 32, out of 32.
model::ModelConfig packable_llama() {
  model::ModelConfig c = model::llama(4, 4, /*tied=*/false);
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  return c;
}

bool is_linear_weight(const std::string& name) {
  for (const char* s : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
                        "up_proj.weight", "down_proj.weight"})
    if (name.size() > std::strlen(s) && name.compare(name.size() - std::strlen(s), std::strlen(s), s) == 0) return true;
  return false;
}

// |actual - fake| <= |fake| kFp16ScaleRelTol everywhere: the same grid with the scales rounded to fp16.
void expect_within_fp16_scale_rounding(const torch::Tensor& actual, const torch::Tensor& fake, const std::string& what) {
  const double worst = ((actual - fake).abs() - fake.abs() * kFp16ScaleRelTol).max().item<double>();
  EXPECT_LE(worst, 0.0) << what << ": beyond the fp16 rounding of the scales";
}

// Runs the reference on rank 0; every rank gets its exit status and output.
test::CommandResult reference(const std::string& arguments) {
  test::CommandResult result;
  if (runtime().rank() == 0)
    result = test::run_command("/usr/bin/python3 " + test::quoted(QFORGE_GPTQ_CHECKPOINT_REFERENCE) + " " + arguments);
  torch::Tensor status = torch::tensor({result.status});
  runtime().world().broadcast(status, 0);
  result.status = static_cast<int>(status.item<int64_t>());
  return result;
}

std::map<std::string, torch::Tensor> read_all(const std::string& path) {
  io::SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, info] : file.tensors()) tensors[name] = file.read(name, info.dtype);
  return tensors;
}

// This rank's slice of `full` as `e` holds it (vocabulary padding left out).
torch::Tensor shard_of(const torch::Tensor& full, const model::WeightEntry& e) {
  return e.spec.replicated() ? full : full.narrow(e.spec.dim, e.spec.start, e.spec.stored_length());
}

torch::Tensor stored_part(const model::WeightEntry& e) {
  return e.spec.replicated() ? e.param.detach() : e.param.detach().narrow(e.spec.dim, 0, e.spec.stored_length());
}

class GptqCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    int missing = 0;
    if (runtime().rank() == 0)
      missing = test::run_command("/usr/bin/python3 -c 'import numpy'").status != 0;
    torch::Tensor flag = torch::tensor({missing});
    runtime().world().broadcast(flag, 0);
    if (flag.item<int64_t>()) GTEST_SKIP() << "/usr/bin/python3 with numpy is absent (Debian: python3-numpy)";
    register_gptq_reader();
    dir_ = std::make_unique<model::SharedDir>("gptq_ckpt");
  }
  void TearDown() override { dir_.reset(); }
  std::string path(const std::string& name) const { return *dir_ / name; }
  // A random fp32 checkpoint at path("fp32"), written by rank 0.
  void save_random_model(const model::ModelConfig& config, uint64_t seed) const {
    if (runtime().rank() == 0) {
      model::CausalLM full(config, runtime().self());
      model::init_random(full, seed, 0.05);
      model::save_pretrained(full, path("fp32"), true);
    }
    runtime().world().barrier();
  }

  std::unique_ptr<model::SharedDir> dir_;
};

// ---- the reference writes, qforge reads -------------------------------------------------------------------

struct WrittenCase {
  int bits;
  const char* format;
  int group;
  bool act_order;
};

TEST_F(GptqCheckpoint, ReferenceCheckpointsLoadUnderEveryTpAsTheReferenceDequantizes) {
  const model::ModelConfig config = packable_llama();
  save_random_model(config, 11);
  const auto original = read_all(path("fp32") + "/model.safetensors");
  for (const WrittenCase& c : {WrittenCase{4, "v1", 32, false}, WrittenCase{3, "v2", 32, true},
                               WrittenCase{2, "v2", 16, true}, WrittenCase{8, "v1", -1, false}}) {
    const std::string tag = fmt::format("w{}_{}_g{}{}", c.bits, c.format, c.group, c.act_order ? "_act" : "");
    const auto written = reference(fmt::format("write {} {} {} --bits {} --format {} --group {}{} --seed {}",
                                               test::quoted(path("fp32")), test::quoted(path(tag)),
                                               test::quoted(path(tag + ".expected.safetensors")), c.bits, c.format,
                                               c.group, c.act_order ? " --act-order" : "", c.bits));
    ASSERT_EQ(written.status, 0) << written.output;
    const auto expected = read_all(path(tag + ".expected.safetensors"));
    ASSERT_EQ(expected.size(), 14u) << "2 layers x 7 linears";
    for (int tp : model::tp_sizes()) {
      dist::Grid grid(runtime(), tp);
      for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
        auto model = model::load_pretrained(path(tag), grid.tp_group(), dtype);
        for (const model::WeightEntry& e : model->weights().entries()) {
          ASSERT_EQ(e.param.scalar_type(), dtype) << e.name << ": parameters are built in the loaded dtype";
          const bool linear = is_linear_weight(e.name);
          // Linears: the reference's dequantization; others: the fp16 the reference stored.
          const torch::Tensor want =
              linear ? expected.at(e.name) : original.at(e.name).to(torch::kHalf).to(torch::kFloat);
          model::expect_close(stored_part(e).to(torch::kFloat), shard_of(want, e).to(dtype).to(torch::kFloat),
                              kDequantizationAbsTol, 0.0, fmt::format("{} {} TP {} {}", tag, e.name, tp,
                                                                      c10::toString(dtype)));
        }
      }
    }
  }
}

// ---- qforge writes, the reference reads --------------------------------------------------------------------

QuantSettings weight_settings(const std::string& bits, const std::string& granularity, int64_t group, bool sym) {
  QuantSettings s;
  s.bits = bits;
  s.weight_granularity = granularity;
  s.group_size = group;
  s.weight_symmetric = sym;
  return s;
}

// Reads `dir` with the reference: its codes and weights by module.
std::map<std::string, torch::Tensor> read_with_reference(const std::string& dir, const std::string& out,
                                                         std::string* summary) {
  const auto read = reference("read " + test::quoted(dir) + " " + test::quoted(out));
  EXPECT_EQ(read.status, 0) << read.output;
  if (summary) *summary = read.output;
  return read.status == 0 ? read_all(out) : std::map<std::string, torch::Tensor>{};
}

TEST_F(GptqCheckpoint, QatStudentReadsBackInTheReferenceWithUnshardedCodes) {
  const model::ModelConfig config = packable_llama();
  const int world = runtime().size();
  for (const QuantSettings& settings :
       {weight_settings("4-16-16", "group", 16, false), weight_settings("3-16-16", "channel", 0, true),
        weight_settings("8-16-16", "tensor", 0, true), weight_settings("2-16-16", "group", 16, false)}) {
    const QuantSpec spec = settings.weight_spec();
    const std::string tag = fmt::format("qat_{}", quant::describe(spec));
    dist::Grid grid(runtime(), world);
    model::CausalLM student(config, grid.tp_group());
    model::init_random(student, 21, 0.05);
    const auto latent = model::gathered_weights(student);
    attach_quantizers(student, settings);
    const GptqExport grids = qat_gptq_export(student, settings);
    bake_weight_quantizers(student);
    const auto baked = model::gathered_weights(student);
    // Sharded (about 10 files and the index), as a large model is.
    const GptqExportReport report = export_gptq(student, grids, path(tag), grid.dp_rank() == 0, 40000);
    runtime().world().barrier();
    EXPECT_TRUE(fs::exists(path(tag) + "/model.safetensors.index.json")) << tag;
    EXPECT_FALSE(fs::exists(path(tag) + "/model.safetensors")) << tag;
    std::string summary;
    const auto read = read_with_reference(path(tag), path(tag + ".read.safetensors"), &summary);
    ASSERT_FALSE(read.empty()) << tag;
    if (runtime().rank() == 0) {
      EXPECT_EQ(report.packed.size(), 14u) << tag;
      EXPECT_NE(summary.find("format=" + report.checkpoint_format + " bits=" + std::to_string(spec.bits)),
                std::string::npos) << summary;
      EXPECT_NE(summary.find("desc_act=False"), std::string::npos) << summary;
    }
    for (const auto& [name, weight] : latent) {
      if (!is_linear_weight(name)) continue;
      const std::string module = name.substr(0, name.size() - 7);
      // Codes: those of one unsharded quantize() of the trained weight, as the format stores them.
      const QuantizedTensor q = quantize(weight, spec);
      const torch::Tensor codes = q.codes + (spec.symmetric ? (1 << (spec.bits - 1)) : 0);
      EXPECT_TRUE(torch::equal(read.at(module + ".codes").to(torch::kLong), codes.to(torch::kLong)))
          << tag << " " << module << ": codes differ from the unsharded quantize()";
      expect_within_fp16_scale_rounding(read.at(module + ".weight"), baked.at(name), tag + " " + module);
    }
    // Our reader agrees with the reference's unpacking, bitwise, under this TP.
    auto loaded = model::load_pretrained(path(tag), grid.tp_group());
    for (const model::WeightEntry& e : loaded->weights().entries())
      if (is_linear_weight(e.name))
        model::expect_close(stored_part(e), shard_of(read.at(e.name.substr(0, e.name.size() - 7) + ".weight"), e),
                            kDequantizationAbsTol, 0.0, tag + " reloaded " + e.name);
  }
}

TEST_F(GptqCheckpoint, GptqActOrderResultsReadBackInTheReference) {
  const model::ModelConfig config = packable_llama();
  const int world = runtime().size();
  for (const char* row_parallel : {"exact", "shard"}) {
    if (std::string(row_parallel) == "shard" && world == 1) continue;
    dist::Grid grid(runtime(), world);
    model::CausalLM model(config, grid.tp_group());
    model::init_random(model, 31, 0.05);
    PtqSettings settings;
    settings.wbits = 4;
    settings.group_size = 16;
    settings.sym = false;
    settings.act_order = true;
    settings.row_parallel = row_parallel;
    const torch::Tensor sequences = model::random_ids(8, 16, config.vocab_size, 5);
    const PtqReport report = run_ptq(model, sequences, settings, grid.dp_group());
    const auto fake = model::gathered_weights(model);
    const std::string tag = std::string("ptq_") + row_parallel;
    const GptqExportReport exported = export_gptq(model, report.quantized, path(tag), grid.dp_rank() == 0);
    runtime().world().barrier();
    std::string summary;
    const auto read = read_with_reference(path(tag), path(tag + ".read.safetensors"), &summary);
    ASSERT_FALSE(read.empty());
    if (runtime().rank() == 0) {
      EXPECT_NE(summary.find("desc_act=True"), std::string::npos) << summary << ": act-order g_idx is not trivial";
      EXPECT_EQ(exported.kept.size(), 0u);
    }
    for (const auto& [name, weight] : fake) {
      if (!is_linear_weight(name)) continue;
      expect_within_fp16_scale_rounding(read.at(name.substr(0, name.size() - 7) + ".weight"), weight, tag + " " + name);
    }
  }
}

// ---- what the format cannot hold --------------------------------------------------------------------------

TEST_F(GptqCheckpoint, WidthsTheFormatCannotPackAreUsageErrors) {
  for (int bits : {5, 6, 7, 16}) {
    try {
      check_gptq_bits(bits, "ptq.wbits");
      ADD_FAILURE() << bits << " bits accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("ptq.wbits = " + std::to_string(bits)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("2, 3, 4 or 8"), std::string::npos) << e.what();
    }
  }
}

TEST_F(GptqCheckpoint, WeightsOffTheirGridAreRefusedBeforeAnyFileAppears) {
  dist::Grid grid(runtime(), runtime().size());
  model::CausalLM student(packable_llama(), grid.tp_group());
  model::init_random(student, 41, 0.05);
  const QuantSettings settings = weight_settings("4-16-16", "channel", 0, true);
  attach_quantizers(student, settings);
  const GptqExport grids = qat_gptq_export(student, settings);  // not baked: the latent weights are off the grid
  const std::string message = test::error_of([&] { export_gptq(student, grids, path("off"), true); });
  EXPECT_NE(message.find("not on the grid"), std::string::npos) << message;
  EXPECT_NE(message.find("q_proj"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(path("off") + "/config.json"));
  EXPECT_FALSE(fs::exists(path("off") + "/model.safetensors"));
}

TEST_F(GptqCheckpoint, ShapesTheFormatCannotPackStayFp16AndAreNamedInTheConfig) {
  // hidden 32, MLP 48: down_proj has 48 inputs, not a multiple of 32.
  const model::ModelConfig config = model::llama(4, 2, /*tied=*/false);
  dist::Grid grid(runtime(), runtime().size() % 2 == 0 ? 2 : 1);
  model::CausalLM student(config, grid.tp_group());
  model::init_random(student, 51, 0.05);
  const QuantSettings settings = weight_settings("4-16-16", "channel", 0, true);
  attach_quantizers(student, settings);
  const GptqExport grids = qat_gptq_export(student, settings);
  bake_weight_quantizers(student);
  const auto baked = model::gathered_weights(student);
  const GptqExportReport report = export_gptq(student, grids, path("kept"), grid.dp_rank() == 0);
  runtime().world().barrier();
  if (grid.dp_rank() == 0 && grid.tp_group().rank() == 0) {
    EXPECT_EQ(report.kept, (std::vector<std::string>{"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}));
    EXPECT_EQ(report.packed.size(), 12u);
  }
  std::ifstream in(path("kept") + "/config.json");
  const nlohmann::json quantization = nlohmann::json::parse(in).at("quantization_config");
  EXPECT_TRUE(quantization.at("dynamic").contains("-:^model\\.layers\\.1\\.mlp\\.down_proj$")) << quantization.dump();
  EXPECT_EQ(quantization.at("modules_in_block_to_quantize")[0].size(), 6u) << quantization.dump();
  io::Checkpoint checkpoint(path("kept"));
  EXPECT_EQ(checkpoint.info("model.layers.0.mlp.down_proj.weight").dtype, torch::kHalf);
  auto loaded = model::load_pretrained(path("kept"), grid.tp_group());
  const auto reloaded = model::gathered_weights(*loaded);
  for (const std::string name : {"model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"}) {
    expect_within_fp16_scale_rounding(reloaded.at(name), baked.at(name), name);
  }
}

TEST_F(GptqCheckpoint, DamagedCheckpointsAreOneErrorNamingTheFileAndTensor) {
  const model::ModelConfig config = packable_llama();
  save_random_model(config, 61);
  const auto written = reference(fmt::format("write {} {} {} --bits 4 --format v1 --group 32",
                                             test::quoted(path("fp32")), test::quoted(path("w4")),
                                             test::quoted(path("w4.expected.safetensors"))));
  ASSERT_EQ(written.status, 0) << written.output;
  const std::string config_path = path("w4") + "/config.json";
  const std::string original = test::slurp(config_path);
  auto with_config = [&](const std::function<void(nlohmann::json&)>& edit) {
    runtime().world().barrier();
    if (runtime().rank() == 0) {
      nlohmann::json json = nlohmann::json::parse(original);
      edit(json);
      test::write_bytes(config_path, json.dump(2));
    }
    runtime().world().barrier();
    return test::error_of([&] { model::load_pretrained(path("w4"), runtime().self()); });
  };
  std::string e = with_config([](nlohmann::json& j) { j["quantization_config"]["bits"] = 8; });
  EXPECT_NE(e.find("model.layers.0.self_attn.q_proj.qweight"), std::string::npos) << e;
  EXPECT_NE(e.find("I32 [8, 64]"), std::string::npos) << e << ": the shape found";
  EXPECT_NE(e.find("I32 [16, 64]"), std::string::npos) << e << ": the shape 8 bits imply";
  e = with_config([](nlohmann::json& j) { j["quantization_config"]["quant_method"] = "awq"; });
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("\"awq\""), std::string::npos) << e;
  EXPECT_NE(e.find("gptq"), std::string::npos) << e << ": what it reads";
  e = with_config([](nlohmann::json& j) { j["quantization_config"]["group_size"] = 16; });
  EXPECT_NE(e.find("scales hold 2 groups"), std::string::npos) << e;
}

}  // namespace
}  // namespace qforge::quant
