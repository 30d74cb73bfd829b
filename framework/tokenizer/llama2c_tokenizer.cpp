// llama2.c tokenizer.bin: int32 max_token_length, then per piece float32 score, int32 length, bytes, until the end
// of the file. Encoding reproduces run.c's encode() with the merge loop both tokenizers share (bpe.h).
#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/tokenizer/bpe.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <unordered_map>

namespace qforge::tok {
namespace {

constexpr int32_t kBos = 1;
constexpr int32_t kEos = 2;
constexpr int32_t kFirstByteId = 3;  // ids 3..258 are the byte pieces <0x00>..<0xFF>
constexpr int32_t kMinVocab = kFirstByteId + 256;
constexpr int32_t kMaxTokenLength = 1 << 16;
// run.c starts its search for the best pair at this score, so a merge scored at or below it never happens.
constexpr float kNoMergeScore = -1e10f;

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Sequential reads in the host's byte order (llama2.c writes its files the same way); callers check remaining().
class PieceReader {
 public:
  explicit PieceReader(const std::string& bytes) : bytes_(bytes) {}

  bool at_end() const { return offset_ == bytes_.size(); }
  std::size_t remaining() const { return bytes_.size() - offset_; }
  std::size_t offset() const { return offset_; }

  template <class T>
  T read() {
    T value;
    std::memcpy(&value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return value;
  }
  std::string read_string(std::size_t length) {
    std::string text = bytes_.substr(offset_, length);
    offset_ += length;
    return text;
  }

 private:
  const std::string& bytes_;
  std::size_t offset_ = 0;
};

struct Vocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

int32_t read_max_token_length(const std::string& path, PieceReader& reader) {
  if (reader.remaining() < sizeof(int32_t))
    throw Error(fmt::format("{}: {} bytes is too short for a SentencePiece .model or a llama2.c tokenizer.bin", path,
                            reader.remaining()));
  const auto max_length = reader.read<int32_t>();
  if (max_length < 1 || max_length > kMaxTokenLength)
    throw Error(fmt::format("{}: neither a SentencePiece .model nor a llama2.c tokenizer.bin (its first 4 bytes read "
                            "as max_token_length {}, expected 1 to {})",
                            path, max_length, kMaxTokenLength));
  return max_length;
}

Vocabulary read_vocabulary(const std::string& path, const std::string& bytes) {
  PieceReader reader(bytes);
  const int32_t max_length = read_max_token_length(path, reader);
  Vocabulary vocab;
  while (!reader.at_end()) {
    const std::size_t index = vocab.pieces.size();
    if (reader.remaining() < sizeof(float) + sizeof(int32_t))
      throw Error(fmt::format("{}: truncated llama2.c tokenizer.bin: piece {} at byte {} needs a float32 score and an "
                              "int32 length, but only {} bytes remain",
                              path, index, reader.offset(), reader.remaining()));
    const auto score = reader.read<float>();
    const auto length = reader.read<int32_t>();
    if (!std::isfinite(score))
      throw Error(fmt::format("{}: piece {} has score {}, expected a finite float32 in a llama2.c tokenizer.bin", path,
                              index, score));
    if (length < 0 || length > max_length)
      throw Error(fmt::format("{}: piece {} has length {}, expected 0 to the header's max_token_length {} in a llama2.c "
                              "tokenizer.bin",
                              path, index, length, max_length));
    if (reader.remaining() < static_cast<std::size_t>(length))
      throw Error(fmt::format("{}: truncated llama2.c tokenizer.bin: piece {} needs {} bytes, but only {} remain",
                              path, index, length, reader.remaining()));
    vocab.pieces.push_back(reader.read_string(length));
    vocab.scores.push_back(score);
  }
  return vocab;
}

// run.c hard-codes BOS 1, EOS 2 and byte fallback to id byte + 3, so a file laid out otherwise cannot be used.
void check_llama2c_layout(const std::string& path, const Vocabulary& vocab) {
  if (vocab.pieces.size() < static_cast<std::size_t>(kMinVocab))
    throw Error(fmt::format("{}: a llama2.c tokenizer.bin with {} pieces, expected at least {} (BOS 1, EOS 2 and the "
                            "byte pieces <0x00>..<0xFF> at ids 3..258)",
                            path, vocab.pieces.size(), kMinVocab));
  for (int byte = 0; byte < 256; ++byte) {
    const std::string& piece = vocab.pieces[kFirstByteId + byte];
    if (byte_of_piece(piece) != byte)
      throw Error(fmt::format("{}: piece {} of the llama2.c tokenizer.bin is '{}', expected the byte piece {}", path,
                              kFirstByteId + byte, piece, byte_piece(byte)));
  }
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::string path, Vocabulary vocab)
      : path_(std::move(path)),
        pieces_(std::move(vocab.pieces)),
        id_of_piece_(index_pieces(pieces_)),
        merges_(id_of_piece_, vocab.scores, [&](int32_t id) { return vocab.scores[id] > kNoMergeScore; }) {
    for (const std::string& piece : pieces_) byte_of_id_.push_back(byte_of_piece(piece));
  }

  // run.c's merge loop also pairs BOS with the first symbol; BOS never merges in a real vocabulary, so it joins
  // after merging.
  std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int32_t> symbols = initial_symbols(text);
    merge_best_pairs(symbols, merges_);
    std::vector<int64_t> ids;
    ids.reserve(symbols.size() + 2);
    if (bos) ids.push_back(kBos);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    if (eos) ids.push_back(kEos);
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    bool first = true;
    for (int64_t id : ids) {
      check_id(id);
      if (id == kBos || id == kEos) continue;
      append_text(text, id, first);
      first = false;
    }
    return text;
  }

  std::string decode_next(int64_t previous, int64_t id) const override {
    check_id(id);
    std::string text;
    if (id != kBos && id != kEos) append_text(text, id, previous == kBos);
    return text;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return kBos; }
  int64_t eos_id() const override { return kEos; }
  std::string piece(int64_t id) const override {
    check_id(id);
    return pieces_[id];
  }
  std::string kind() const override { return "llama2c"; }

 private:
  void check_id(int64_t id) const {
    if (id < 0 || id >= vocab_size())
      throw Error(fmt::format("token id {} is outside the vocabulary of {} pieces of {}", id, vocab_size(), path_));
  }

  void append_text(std::string& text, int64_t id, bool strip_leading_space) const {
    if (byte_of_id_[id] >= 0) {
      text.push_back(static_cast<char>(byte_of_id_[id]));
      return;
    }
    const std::string& piece = pieces_[id];
    const bool strip = strip_leading_space && !piece.empty() && piece[0] == ' ';
    text.append(piece, strip ? 1 : 0, std::string::npos);
  }

  void append_piece_or_bytes(const std::string& text, std::vector<int32_t>& symbols) const {
    auto found = id_of_piece_.find(text);
    if (found != id_of_piece_.end()) {
      symbols.push_back(found->second);
      return;
    }
    for (char c : text) symbols.push_back(kFirstByteId + static_cast<unsigned char>(c));
  }

  // run.c's first pass: the dummy-prefix " ", then each UTF-8 code point (at most 4 bytes) as a piece, or its bytes.
  // Unlike run.c, a vocabulary without a " " piece gets the byte piece <0x20> instead of id -1.
  std::vector<int32_t> initial_symbols(const std::string& text) const {
    std::vector<int32_t> symbols;
    if (text.empty()) return symbols;
    symbols.reserve(text.size() + 1);
    append_piece_or_bytes(" ", symbols);
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const bool code_point_continues =
          i + 1 < text.size() && is_utf8_continuation(text[i + 1]) && i + 1 - start < 4;
      if (code_point_continues) continue;
      append_piece_or_bytes(text.substr(start, i + 1 - start), symbols);
      start = i + 1;
    }
    return symbols;
  }

  // A piece that appears twice keeps its first id.
  static PieceIds index_pieces(const std::vector<std::string>& pieces) {
    PieceIds ids;
    for (std::size_t id = 0; id < pieces.size(); ++id) ids.emplace(pieces[id], static_cast<int32_t>(id));
    return ids;
  }

  std::string path_;
  std::vector<std::string> pieces_;
  PieceIds id_of_piece_;
  MergeTable merges_;            // run.c never takes a pair scored at or below kNoMergeScore
  std::vector<int> byte_of_id_;  // -1 for a piece that is not <0xXX>
};

}  // namespace

std::unique_ptr<Tokenizer> llama2c_tokenizer_from_bytes(const std::string& path, const std::string& bytes) {
  Vocabulary vocab = read_vocabulary(path, bytes);
  check_llama2c_layout(path, vocab);
  return std::make_unique<Llama2cTokenizer>(path, std::move(vocab));
}

void write_byte_tokenizer(const std::string& path) {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  for (int byte = 0; byte < 256; ++byte) pieces.push_back(byte_piece(byte));
  std::string bytes;
  auto append = [&bytes](const auto& value) { bytes.append(reinterpret_cast<const char*>(&value), sizeof(value)); };
  append(int32_t{6});  // max_token_length: "<0xFF>"
  for (const std::string& piece : pieces) {
    append(0.0f);
    append(static_cast<int32_t>(piece.size()));
    bytes += piece;
  }
  write_file_atomically(path, bytes);
}

}  // namespace qforge::tok
