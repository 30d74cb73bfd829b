// The memory planner (launch/memory_plan.h): its weight list is the model's WeightTable, its terms have the
// closed forms they claim, every shipped config fits its layout on 80 GB per rank, and a layout that cannot fit
// is refused with a layout that does.
#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/model/presets.h"
#include "launch/memory_plan.h"
#include "tests/model_fixtures.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

namespace qforge {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kLlama7bParameters = 6'738'415'616;  // Hugging Face's count for LLaMA-7B
constexpr int64_t kOpt6p7bParameters = 6'658'473'984;  // and for OPT-6.7b
constexpr int64_t kGB = 1'000'000'000;

QforgeConfig config_for(const std::string& architecture, int tp, const std::string& dtype = "bfloat16") {
  QforgeConfig c;
  c.model.architecture = architecture;
  c.model.dtype = dtype;
  c.parallel.tp = tp;
  return c;
}

const MemoryTerm& term(const MemoryPlan& plan, const std::string& name) {
  for (const MemoryTerm& t : plan.terms)
    if (t.name == name) return t;
  throw Error("the plan has no term '" + name + "':\n" + plan.table());
}

MemoryPlan plan_of(const QforgeConfig& c, PlanStage stage, int ranks) {
  return plan_memory(c, planned_architecture(c.model), stage, ranks);
}

TEST(PlanTest, PlannedWeightsAreTheModelsWeightTable) {
  const std::map<std::string, model::ModelConfig> models = {
      {"llama gqa", model::llama(4, 2, false)}, {"llama tied", model::llama(4, 4, true)},
      {"opt", model::opt(false)}, {"opt-350m-like", model::opt(true)}};
  for (int tp : model::tp_sizes()) {
    dist::Grid grid(model::runtime(), tp);
    for (const auto& [what, config] : models) {
      model::CausalLM lm(config, grid.tp_group());
      const auto& entries = lm.weights().entries();
      const std::vector<PlannedWeight> planned = planned_weights(config, tp);
      ASSERT_EQ(planned.size(), entries.size()) << what << " tp " << tp;
      for (size_t i = 0; i < entries.size(); ++i) {
        const std::string where = what + " tp " + std::to_string(tp) + ": " + entries[i].name;
        EXPECT_EQ(planned[i].name, entries[i].name) << where;
        EXPECT_EQ(planned[i].full_shape, entries[i].full_shape) << where;
        EXPECT_EQ(planned[i].local_shape, entries[i].param.sizes().vec()) << where;
        EXPECT_EQ(planned[i].replicated, entries[i].spec.replicated()) << where;
      }
    }
  }
}

TEST(PlanTest, WeightTermIsTheParameterCountTimesTheDtype) {
  const MemoryPlan one = plan_of(config_for("llama-7b", 1), PlanStage::kEval, 1);
  EXPECT_EQ(one.parameters, kLlama7bParameters);
  EXPECT_EQ(term(one, "weights").bytes, kLlama7bParameters * 2);
  EXPECT_EQ(term(plan_of(config_for("llama-7b", 1, "float32"), PlanStage::kEval, 1), "weights").bytes,
            kLlama7bParameters * 4);
  // TP 2 halves everything but the replicated RMSNorm weights: 2 per layer and the final one.
  const int64_t norms = (32 * 2 + 1) * 4096;
  const MemoryPlan two = plan_of(config_for("llama-7b", 2), PlanStage::kEval, 2);
  EXPECT_EQ(term(two, "weights").bytes, ((kLlama7bParameters - norms) / 2 + norms) * 2);
  EXPECT_EQ(plan_of(config_for("opt-6.7b", 1), PlanStage::kEval, 1).parameters, kOpt6p7bParameters);
}

TEST(PlanTest, OptimizerStateShardsOverDpWithZero) {
  QforgeConfig c = config_for("llama-7b", 1);
  c.train.zero = true;
  const MemoryPlan zero = plan_of(c, PlanStage::kQat, 8);
  c.train.zero = false;
  const MemoryPlan whole = plan_of(c, PlanStage::kQat, 8);
  const int64_t slice = (kLlama7bParameters + 7) / 8;
  EXPECT_EQ(term(zero, "AdamW master weights").bytes, slice * 4);
  EXPECT_EQ(term(zero, "AdamW moments").bytes, 2 * slice * 4);
  EXPECT_EQ(term(whole, "AdamW moments").bytes, 2 * kLlama7bParameters * 4);
  EXPECT_EQ(term(whole, "gradients").bytes, kLlama7bParameters * 2);
  EXPECT_EQ(term(zero, "teacher weights").bytes, term(zero, "student weights").bytes);
  c.distill.teacher = "corpus";
  EXPECT_THROW(term(plan_of(c, PlanStage::kQat, 8), "teacher weights"), Error);
}

TEST(PlanTest, RecomputationKeepsOnlyBlockInputs) {
  QforgeConfig c = config_for("llama-7b", 1);
  c.generate.seq_len = 1024;
  c.train.recompute = false;
  const int64_t kept = term(plan_of(c, PlanStage::kQat, 8), "activations").bytes;
  c.train.recompute = true;
  const int64_t recomputed = term(plan_of(c, PlanStage::kQat, 8), "activations").bytes;
  // 32 blocks kept versus 32 block inputs [1024, 4096] in bf16 plus one block.
  EXPECT_EQ(recomputed, 32 * 1024 * 4096 * 2 + kept / 32);
}

TEST(PlanTest, KvCacheIsLayersBatchHeadsPositions) {
  QforgeConfig c = config_for("llama-2-70b", 8);
  c.generate.batch_size = 64;
  c.generate.seq_len = 1024;
  // K and V x 80 layers x 64 rows x 8/8 key/value heads (GQA) x 1024 positions x head_dim 128 x bf16.
  EXPECT_EQ(term(plan_of(c, PlanStage::kGenerate, 8), "KV cache").bytes, 2LL * 80 * 64 * 1 * 1024 * 128 * 2);
  EXPECT_EQ(plan_of(c, PlanStage::kGenerate, 8).parameters, 68'976'648'192);  // Llama-2-70b
}

TEST(PlanTest, TpMustDivideRanksAndModel) {
  EXPECT_NE(test::error_of([] { plan_of(config_for("llama-30b", 8), PlanStage::kEval, 8); }).find("52 attention heads"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { plan_of(config_for("llama-7b", 4), PlanStage::kEval, 6); }).find("6 ranks"),
            std::string::npos);
}

// The stages of each shipped config fit 80 GB per rank on one node of 8 GPUs, except the training of the models
// whose weights, gradients and optimizer state outgrow 8 x 80 GB (22 bytes a parameter with the bf16 teacher):
// those are planned on the ranks their config's comment gives. The two single-stage 65B configs are planned for
// their own stages and nodes.
TEST(PlanTest, ShippedConfigsFit80GBPerRank) {
  const std::map<std::string, int> qat_ranks = {
      {"llama-7b", 8},   {"llama-13b", 8}, {"llama-30b", 32}, {"llama-65b", 64}, {"llama-2-70b", 64},
      {"opt-6.7b", 8},   {"opt-13b", 8},   {"opt-30b", 16},   {"opt-66b", 64}};
  const std::map<std::string, std::map<PlanStage, int>> single_stage = {
      {"qat-llama-65b", {{PlanStage::kGenerate, 64}, {PlanStage::kQat, 64}}},
      {"ptq-llama-65b", {{PlanStage::kPtq, 16}}}};
  std::set<std::string> seen;
  for (const auto& entry : fs::directory_iterator(QFORGE_CONFIGS_DIR)) {
    const std::string name = entry.path().stem().string();
    if (entry.path().extension() != ".yaml" || name == "default") continue;
    seen.insert(name);
    std::map<PlanStage, int> stages;
    if (single_stage.count(name)) {
      stages = single_stage.at(name);
    } else {
      ASSERT_TRUE(qat_ranks.count(name)) << name << " is not planned by this test";
      stages = {{PlanStage::kGenerate, 8}, {PlanStage::kQat, qat_ranks.at(name)}, {PlanStage::kPtq, 8},
                {PlanStage::kEval, 8}};
    }
    const auto c = config::load<QforgeConfig>(entry.path().string(), {});
    const model::ModelConfig architecture = planned_architecture(c.model);
    for (const auto& [stage, ranks] : stages) {
      const MemoryPlan plan = plan_memory(c, architecture, stage, ranks);
      EXPECT_LE(plan.total(), 80 * kGB) << name << " " << stage_name(stage) << " on " << ranks << " ranks:\n"
                                        << plan.table();
    }
  }
  EXPECT_EQ(seen.size(), qat_ranks.size() + single_stage.size());
}

TEST(PlanTest, A65bQatOnOneGpuOf24GBIsRefusedWithALayoutThatFits) {
  auto c = config::load<QforgeConfig>(std::string(QFORGE_CONFIGS_DIR) + "/llama-65b.yaml", {"parallel.tp=1"});
  const model::ModelConfig architecture = planned_architecture(c.model);
  const MemoryPlan plan = plan_memory(c, architecture, PlanStage::kQat, 8);
  EXPECT_GT(plan.total(), 24 * kGB);
  EXPECT_EQ(plan.largest().name, "teacher weights");  // 130 GB each for the teacher and the student
  EXPECT_EQ(plan.largest().bytes, plan.parameters * 2);
  const std::string fix = suggest_layout(c, architecture, PlanStage::kQat, 8, 24 * kGB);
  // "parallel.tp=T ... on W ranks (TP T x DP D)": that layout fits.
  int tp = 0, world = 0;
  ASSERT_EQ(std::sscanf(fix.c_str(), "parallel.tp=%d", &tp), 1) << fix;
  ASSERT_EQ(std::sscanf(fix.substr(fix.find(" on ")).c_str(), " on %d ranks", &world), 1) << fix;
  QforgeConfig suggested = c;
  suggested.parallel.tp = tp;
  EXPECT_LE(plan_memory(suggested, architecture, PlanStage::kQat, world).total(), 24 * kGB) << fix;
  EXPECT_EQ(suggest_layout(c, architecture, PlanStage::kEval, 8, 80 * kGB), "parallel.tp=2 on 8 ranks (TP 2 x DP 4)");
}

TEST(PlanTest, ArchitectureComesFromTheCheckpointElseThePreset) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("qforge_plan_test_{}", ::getpid());
  fs::create_directories(dir);
  write_file_atomically((dir / "config.json").string(), model::architecture("opt-13b").to_json().dump());
  ModelSettings settings;
  settings.path = dir.string();
  settings.architecture = "llama-7b";
  EXPECT_EQ(planned_architecture(settings).hidden_size, 5120);  // the checkpoint's
  settings.path = (dir / "absent").string();
  EXPECT_EQ(planned_architecture(settings).hidden_size, 4096);
  settings.architecture = "llama-8b";
  EXPECT_NE(test::error_of([&] { planned_architecture(settings); }).find("one of: llama-7b, llama-13b"),
            std::string::npos);
  settings.architecture = "";
  EXPECT_NE(test::error_of([&] { planned_architecture(settings); }).find("model.architecture is empty"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace qforge
