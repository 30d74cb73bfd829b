// The pipeline's report (launch/pipeline_report.h) from QAT runs' qat.json: the loss history of every step, and one
// shorter than the steps trained (a resume from a checkpoint saved before the trainer kept the history) plotted at
// its own steps and said to be partial, none made up; more losses than steps is an error naming the file.
#include "framework/common/error.h"
#include "launch/pipeline_report.h"
#include "launch/qforge_config.h"
#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

namespace qforge {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class PipelineReport : public test::ScratchFiles {
 protected:
  // A QAT unit of `bits` whose qat.json has `steps` and `losses` (2, 1.99, ...) and its evaluation row.
  void add_qat(const std::string& bits, int64_t steps, size_t losses) {
    std::vector<double> values;
    for (size_t i = 0; i < losses; ++i) values.push_back(2.0 - 0.01 * static_cast<double>(i));
    const json qat = {{"steps", steps}, {"losses", values}, {"sizes", {{"gptq_bytes", 1234}}}};
    write("qat/" + bits + "/qat.json", qat.dump());
    units_.push_back({"qat", bits, "", "", "", (dir_ / "qat" / bits).string(), 1.5});
    units_.push_back({"eval", "", "qat", bits, (dir_ / "qat" / bits / "student").string(),
                      (dir_ / "eval" / ("qat-" + bits)).string(), 0.5});
  }
  json report() {
    QforgeConfig c;
    c.model.path = (dir_ / "teacher").string();
    c.output.dir = dir_.string();
    c.pipeline.bits = "4-8-4,2-8-8";
    const json built = build_report(report_inputs(c, units_));
    write_report(dir_.string(), built);
    return built;
  }

  std::vector<ReportUnit> units_;
};

TEST_F(PipelineReport, PlotsAShortLossHistoryAtItsStepsAndMakesNoneUp) {
  add_qat("4-8-4", 48, 48);
  add_qat("2-8-8", 48, 30);  // resumed at step 18 from a checkpoint without the history
  const json r = report();
  EXPECT_EQ(r["qat_losses"]["4-8-4"].size(), 48u);
  EXPECT_EQ(r["qat_losses"]["2-8-8"].size(), 30u);
  EXPECT_EQ(r["qat_loss_steps"]["4-8-4"], json({{"first", 1}, {"last", 48}}));
  EXPECT_EQ(r["qat_loss_steps"]["2-8-8"], json({{"first", 19}, {"last", 48}}));
  for (const json& loss : r["qat_losses"]["2-8-8"]) EXPECT_GT(loss.get<double>(), 1.0) << "no made-up zeros";
  ASSERT_EQ(r["rows"].size(), 2u);
  EXPECT_EQ(r["rows"][0]["label"], "QAT");
  EXPECT_EQ(r["rows"][0]["size_bytes"], 1234) << "the size from the qat.json read for the losses";

  const std::string svg = test::slurp(dir_ / "plots" / "distill_loss.svg");
  EXPECT_NE(svg.find(">4-8-4</text>"), std::string::npos) << svg;
  EXPECT_NE(svg.find(">2-8-8 (from step 19)</text>"), std::string::npos) << svg;
  EXPECT_NE(svg.find(">48 steps</text>"), std::string::npos) << svg;
  // The plot spans x 70..550 over steps 1..48: 2-8-8's line starts at step 19 (x 253.8), 4-8-4's at step 1.
  EXPECT_NE(svg.find("points=\"70.0,"), std::string::npos) << svg;
  EXPECT_NE(svg.find("points=\"253.8,"), std::string::npos) << svg;
  const std::string md = test::slurp(dir_ / "report.md");
  EXPECT_NE(md.find("QAT 2-8-8: losses of steps 19 to 48 only"), std::string::npos) << md;
  EXPECT_EQ(md.find("QAT 4-8-4: losses of steps"), std::string::npos) << md;
}

// A run resumed from such a checkpoint of its last step trains none: no losses, an empty line, said so.
TEST_F(PipelineReport, NoLossesAtAllIsAnEmptyLine) {
  add_qat("4-8-4", 48, 0);
  const json r = report();
  EXPECT_EQ(r["qat_losses"]["4-8-4"], json::array());
  EXPECT_EQ(r["qat_loss_steps"]["4-8-4"], json({{"first", 49}, {"last", 48}}));
  const std::string svg = test::slurp(dir_ / "plots" / "distill_loss.svg");
  EXPECT_NE(svg.find("points=\"\""), std::string::npos) << svg;
  EXPECT_NE(svg.find(">4-8-4 (none recorded)</text>"), std::string::npos) << svg;
  EXPECT_NE(test::slurp(dir_ / "report.md").find("QAT 4-8-4: no losses recorded."), std::string::npos);
}

TEST_F(PipelineReport, MoreLossesThanStepsIsAnError) {
  add_qat("4-8-4", 4, 5);
  const std::string message = test::error_of([&] { report(); });
  EXPECT_NE(message.find((dir_ / "qat" / "4-8-4" / "qat.json").string() + ": 5 losses for 4 steps"), std::string::npos)
      << message;
}

}  // namespace
}  // namespace qforge
