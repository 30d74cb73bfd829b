#include "framework/tokenizer/tokenizer.h"

#include "framework/common/error.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace qforge::tok {
namespace {

std::string read_file(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored))
    throw Error(fmt::format("{}: is a directory, expected a tokenizer file (SentencePiece .model or llama2.c "
                            "tokenizer.bin)", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the tokenizer file ({})", path, std::strerror(errno)));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("{}: cannot read the tokenizer file ({})", path, std::strerror(errno)));
  return bytes;
}

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

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.empty())
    throw Error(fmt::format("{}: the file is empty, expected a SentencePiece .model or a llama2.c tokenizer.bin", path));
  if (looks_like_sentencepiece(bytes)) return sentencepiece_tokenizer_from_bytes(path, bytes);
  return llama2c_tokenizer_from_bytes(path, bytes);
}

}  // namespace qforge::tok
