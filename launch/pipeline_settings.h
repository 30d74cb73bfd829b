// The `pipeline` section of the config (qforge pipeline, launch/pipeline.h).
#pragma once

#include <string>
#include <vector>

namespace qforge {

inline const std::vector<std::string>& pipeline_stage_names() {
  static const std::vector<std::string> names = {"generate", "qat", "ptq", "eval"};
  return names;
}

struct PipelineSettings {                        // config section `pipeline`
  std::string stages = "generate,qat,ptq,eval";  // comma-separated, run in this order; a stage left out is skipped
  // W-A-KV settings, comma-separated: each gets a QAT student, a PTQ model (weights at W bits) and the rows of the
  // report (RTN, QAT, PTQ) under its activations and KV cache.
  std::string bits = "4-8-4";

  template <class V>
  void visit(V& v) {
    v("stages", stages, [](const std::string& text) { return stages_problem(text); });
    v("bits", bits, [](const std::string& text) { return bits_problem(text); });
  }
  std::vector<std::string> stage_list() const;
  std::vector<std::string> bits_list() const;
  bool runs(const std::string& stage) const;
  static std::string stages_problem(const std::string& text);
  static std::string bits_problem(const std::string& text);
};

}  // namespace qforge
