// A .safetensors file (framework/io/safetensors.*): the header SafetensorsFile validates, then every tensor small
// enough read whole and as a slice, so that an offset the header check let through would be read.
#include "framework/io/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qforge::fuzz::write_input("model.safetensors", data, size);
  qforge::fuzz::expect_clean_outcome([&] {
    const qforge::io::SafetensorsFile file(path);
    for (const auto& [name, info] : file.tensors()) {
      if (info.nbytes > (int64_t{1} << 20)) continue;
      (void)file.read(name, torch::kFloat32);
      if (!info.shape.empty() && info.shape[0] > 1) (void)file.read(name, info.dtype, 0, 1, info.shape[0] - 1);
    }
  });
  return 0;
}
