// The GPTQ checkpoint format's quantize_config.json, or config.json with its "quantization_config"
// (quant/gptq_format.*): read_gptq_quantization_config, and what it accepted must be what the file says. The
// format's safetensors header is fuzz_safetensors's.
#include "quant/gptq_format.h"
#include "tests/fuzz/fuzz_input.h"

#include <cstdio>
#include <cstdlib>

namespace {

// bits and group_size as the file writes them (a value that wrapped on the way in differs).
void check_as_written(const uint8_t* data, size_t size, const qforge::quant::GptqQuantizationConfig& config) {
  const auto json = nlohmann::json::parse(data, data + size);  // valid: the reader parsed it
  const auto& object = json.contains("quantization_config") ? json["quantization_config"] : json;
  const std::string bits = object["bits"].dump(), group_size = object["group_size"].dump();
  if (bits != std::to_string(config.bits) || group_size != std::to_string(config.group_size)) {
    std::fprintf(stderr, "read bits %d, group_size %lld from a file that says %s, %s\n", config.bits,
                 static_cast<long long>(config.group_size), bits.c_str(), group_size.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("quantize_config.json", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const auto config = qforge::quant::read_gptq_quantization_config(path);
    check_as_written(data, size, config);
    (void)qforge::quant::gptq_quantization_config_json(config).dump();
    (void)qforge::quant::gptq_run_words(config.bits);
  });
  return 0;
}
