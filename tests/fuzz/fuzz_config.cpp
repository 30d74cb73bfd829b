// The YAML config (framework/config/config.*): config::load of every section the framework owns plus lists of each
// element kind the Reader parses, then the resolved config written back.
#include "framework/config/config.h"
#include "framework/config/settings.h"
#include "tests/fuzz/fuzz_input.h"

#include <cstdint>
#include <string>
#include <vector>

namespace {

struct Lists {
  std::vector<int64_t> integers;
  std::vector<double> numbers;
  std::vector<std::string> strings;
  std::vector<bool> flags;
  template <class V>
  void visit(V& v) {
    v("integers", integers);
    v("numbers", numbers);
    v("strings", strings);
    v("flags", flags);
  }
};

struct Root {
  qforge::ParallelSettings parallel;
  qforge::RuntimeSettings runtime;
  qforge::LogSettings log;
  qforge::OutputSettings output;
  qforge::ModelSettings model;
  qforge::EvalSettings eval;
  qforge::GenerateTextSettings generate_text;
  Lists lists;
  template <class V>
  void visit(V& v) {
    v("parallel", parallel);
    v("runtime", runtime);
    v("log", log);
    v("output", output);
    v("model", model);
    v("eval", eval);
    v("generate_text", generate_text);
    v("lists", lists);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("config.yaml", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const Root root = qforge::config::load<Root>(path, {"parallel.tp=2"});
    (void)qforge::config::to_yaml(root);
  });
  return 0;
}
