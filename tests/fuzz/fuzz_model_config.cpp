// config.json of a Hugging Face checkpoint (framework/model/model_config.*): ModelConfig::from_file.
#include "framework/model/model_config.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("config.json", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const auto config = qforge::model::ModelConfig::from_file(path);
    (void)config.head_dim();
    (void)config.to_json().dump();
    config.check_tensor_parallel(2);
  });
  return 0;
}
