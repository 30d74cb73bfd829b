// The GPTQ checkpoint format's quantize_config.json, or config.json with its "quantization_config"
// (quant/gptq_format.*): read_gptq_quantization_config. The format's safetensors header is fuzz_safetensors's.
#include "quant/gptq_format.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("quantize_config.json", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const auto config = qforge::quant::read_gptq_quantization_config(path);
    (void)qforge::quant::gptq_quantization_config_json(config).dump();
    (void)qforge::quant::gptq_run_words(config.bits);
  });
  return 0;
}
