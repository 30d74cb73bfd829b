// Tokenizer speed: GPT-2 byte-level BPE (../shared/models/gpt2_tokenizer) on all of WikiText-2's test text, the
// first call (empty word cache) and the best of the later ones, against the llama2.c tokenizer of stories260K
// (tok512.bin) on the same text in the same process. The aim: WikiText-2 in well under a second.
//   bench_tokenizer [--shared DIR] [--rounds N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "framework/tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

const char* string_option(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Timing {
  double load = 0, first = 0, best = 0;
  std::size_t tokens = 0;
};

Timing time_tokenizer(const std::string& path, const std::string& text, int rounds) {
  Timing timing;
  auto start = std::chrono::steady_clock::now();
  const auto tokenizer = qforge::tok::load_tokenizer(path);
  timing.load = seconds_since(start);
  for (int round = 0; round <= rounds; ++round) {
    start = std::chrono::steady_clock::now();
    timing.tokens = tokenizer->encode(text, /*bos=*/true, /*eos=*/false).size();
    const double seconds = seconds_since(start);
    if (round == 0)
      timing.first = timing.best = seconds;
    else
      timing.best = std::min(timing.best, seconds);
  }
  std::printf("%-60s load %6.3f s; first %6.3f s, best of %d later %6.3f s; %zu tokens, %.0f tokens/s\n", path.c_str(),
              timing.load, timing.first, rounds, timing.best, timing.tokens,
              static_cast<double>(timing.tokens) / timing.first);
  return timing;
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path shared = string_option(argc, argv, "--shared", QFORGE_SHARED_DIR);
  const int rounds = std::max(1, std::atoi(string_option(argc, argv, "--rounds", "3")));
  const fs::path wikitext = shared / "data/wikitext-2/wiki.test.raw";
  const fs::path gpt2 = shared / "models/gpt2_tokenizer";
  const fs::path tok512 = shared / "models/stories260K/tok512.bin";
  for (const fs::path& path : {wikitext, gpt2 / "vocab.json", tok512})
    if (!fs::exists(path)) {
      std::fprintf(stderr, "bench_tokenizer: %s is absent (the shared data, --shared DIR)\n", path.c_str());
      return 1;
    }
  std::ifstream in(wikitext, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::printf("WikiText-2 test: %zu bytes\n", text.size());
  const Timing bpe = time_tokenizer(gpt2.string(), text, rounds);
  const Timing llama2c = time_tokenizer(tok512.string(), text, rounds);
  std::printf(
      "gpt2-bpe WikiText-2: %.3f s (first call), %.3f s (best); time ratio gpt2-bpe / llama2c: %.2f (first), "
      "%.2f (best)\n",
      bpe.first, bpe.best, bpe.first / llama2c.first, bpe.best / llama2c.best);
  return 0;
}
