// What the tokenizer fuzz targets do with a tokenizer a reader accepted: every path a model's text takes.
#pragma once

#include "framework/tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace qforge::fuzz {

inline void use_tokenizer(const tok::Tokenizer& tokenizer) {
  const std::string text = "Once upon a time, a <0x0A> tiny\tcat said \xE2\x96\x81hi \xF0\x9F\x98\x80 \xFF\xC3.\n";
  const std::vector<int64_t> ids = tokenizer.encode(text, true, true);
  (void)tokenizer.decode(ids);
  int64_t previous = tokenizer.bos_id();
  for (int64_t id : ids) {
    (void)tokenizer.decode_next(previous, id);
    previous = id;
  }
  const int64_t vocab = tokenizer.vocab_size();
  std::vector<int64_t> first;
  for (int64_t id = 0; id < std::min<int64_t>(vocab, 300); ++id) {
    (void)tokenizer.piece(id);
    first.push_back(id);
  }
  (void)tokenizer.decode(first);
  (void)tokenizer.kind();
  (void)tokenizer.eos_id();
}

}  // namespace qforge::fuzz
