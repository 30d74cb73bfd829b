#include "framework/tokenizer/tokenizer.h"

#include "framework/common/error.h"
#include "framework/tokenizer/bpe.h"
#include "framework/tokenizer/gpt2_bpe.h"

#include <fmt/format.h>

#include <filesystem>

namespace qforge::tok {
namespace {

namespace fs = std::filesystem;

constexpr const char* kAccepted =
    "tokenizer.model (SentencePiece), tokenizer.bin (llama2.c), tokenizer.json (Hugging Face byte-level BPE) or "
    "vocab.json + merges.txt (GPT-2/OPT)";

// A SentencePiece ModelProto starts with its first `pieces` entry: tag 0x0A, a non-zero varint length, then the
// entry's own `piece` field, tag 0x0A again. A llama2.c tokenizer.bin starts with a little-endian int32
// max_token_length, whose bytes never read that way for a plausible length (10 gives 0A 00 00 00).
bool looks_like_sentencepiece(const std::string& bytes) {
  if (bytes.size() < 3 || bytes[0] != 0x0A) return false;
  std::size_t at = 1;
  uint64_t length = 0;
  for (int shift = 0; at < bytes.size() && shift < 64; shift += 7) {
    const auto byte = static_cast<unsigned char>(bytes[at++]);
    length |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) break;
  }
  return length > 0 && at < bytes.size() && bytes[at] == 0x0A;
}

}  // namespace

std::string tokenizer_in_directory(const std::string& dir) {
  std::error_code ignored;
  for (const char* name : {"tokenizer.model", "tokenizer.bin", "tokenizer.json"})
    if (fs::is_regular_file(fs::path(dir) / name, ignored)) return (fs::path(dir) / name).string();
  if (fs::is_regular_file(fs::path(dir) / "vocab.json", ignored) &&
      fs::is_regular_file(fs::path(dir) / "merges.txt", ignored))
    return (fs::path(dir) / "vocab.json").string();
  return "";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ignored;
  if (fs::is_directory(path, ignored)) {
    const std::string file = tokenizer_in_directory(path);
    if (file.empty()) throw Error(fmt::format("{}: is a directory without a tokenizer, expected {}", path, kAccepted));
    return load_tokenizer(file);
  }
  if (fs::path(path).extension() == ".json") return gpt2_tokenizer_from_json_file(path);
  const std::string bytes = read_tokenizer_file(path);
  if (bytes.empty())
    throw Error(fmt::format("{}: the file is empty, expected a SentencePiece .model or a llama2.c tokenizer.bin", path));
  if (looks_like_sentencepiece(bytes)) return sentencepiece_tokenizer_from_bytes(path, bytes);
  return llama2c_tokenizer_from_bytes(path, bytes);
}

}  // namespace qforge::tok
