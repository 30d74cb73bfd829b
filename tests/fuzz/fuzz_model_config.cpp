// config.json of a Hugging Face checkpoint (framework/model/model_config.*): ModelConfig::from_file, and every
// integer it accepted written back by to_json() as the file says it (a value that wrapped on the way in differs).
#include "framework/model/model_config.h"
#include "tests/fuzz/fuzz_input.h"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("config.json", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const auto config = qforge::model::ModelConfig::from_file(path);
    const auto input = nlohmann::json::parse(data, data + size);  // valid: the reader parsed it
    auto written = config.to_json();
    written["pad_token_id"] = config.pad_token_id;  // to_json() leaves out a negative one
    for (const auto& [key, value] : written.items()) {
      if (!value.is_number_integer() || !input.contains(key) || !input[key].is_number_integer()) continue;
      if (value.dump() != input[key].dump()) {
        std::fprintf(stderr, "'%s' is %s in the file but read as %s\n", key.c_str(), input[key].dump().c_str(),
                     value.dump().c_str());
        std::abort();
      }
    }
    (void)config.head_dim();
    config.check_tensor_parallel(2);
  });
  return 0;
}
