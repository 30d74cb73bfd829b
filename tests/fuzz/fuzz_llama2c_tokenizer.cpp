// A llama2.c tokenizer.bin (framework/tokenizer/llama2c_tokenizer.cpp): the reader, then encode / decode with it.
#include "framework/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/tokenizer_use.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  qforge::fuzz::expect_clean_outcome(
      [&] { qforge::fuzz::use_tokenizer(*qforge::tok::llama2c_tokenizer_from_bytes("tokenizer.bin", bytes)); });
  return 0;
}
