// A corpus journal (.qfcj, framework/io/corpus.*): read_corpus_journals over a directory holding the input. The
// first input byte steers the harness: bit 0 recomputes the header's and the records' CRC-32s as a writer would
// (so that mutations reach the checks behind them), bit 1 reads with top-K 2 instead of 0; the rest is the file.
#include "framework/io/corpus.h"
#include "tests/fuzz/fuzz_input.h"

#include <cstring>
#include <filesystem>
#include <vector>

namespace {

uint32_t u32_at(const std::vector<uint8_t>& bytes, size_t at) {
  uint32_t value;
  std::memcpy(&value, bytes.data() + at, 4);  // little-endian, as the format (x86-64)
  return value;
}

void put_crc(std::vector<uint8_t>& bytes, size_t begin, size_t end) {
  const uint32_t crc = qforge::io::crc32(bytes.data() + begin, end - begin);
  std::memcpy(bytes.data() + end, &crc, 4);
}

// The journal with every CRC-32 the layout places recomputed, as far as the lengths in it allow.
void fix_crcs(std::vector<uint8_t>& bytes, int64_t topk) {
  if (bytes.size() < 12) return;
  size_t at = 12 + static_cast<size_t>(u32_at(bytes, 8));
  if (at + 4 > bytes.size()) return;
  put_crc(bytes, 0, at);
  at += 4;
  while (at + 12 <= bytes.size()) {
    const auto length = static_cast<int32_t>(u32_at(bytes, at + 8));
    if (length < 1 || length > (1 << 20)) return;
    const size_t end = at + 12 + 4 * static_cast<size_t>(length) * (1 + 2 * static_cast<size_t>(topk)) - 8 * topk;
    if (end + 4 > bytes.size()) return;
    put_crc(bytes, at, end);
    at = end + 4;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  qforge::io::CorpusIdentity identity;
  identity.num_samples = 6;
  identity.seq_len = 8;
  identity.vocab_size = 300;
  identity.topk = (data[0] & 2) ? 2 : 0;
  identity.attributes = {{"teacher", "fuzz"}};
  std::vector<uint8_t> journal(data + 1, data + size);
  if (data[0] & 1) fix_crcs(journal, identity.topk);
  const std::string dir = qforge::fuzz::scratch_dir() + "/journals";
  std::filesystem::create_directories(dir);
  qforge::fuzz::write_input("journals/rank0.qfcj", journal.data(), journal.size());
  qforge::fuzz::expect_clean_outcome([&] { (void)qforge::io::read_corpus_journals(dir, identity); });
  return 0;
}
