// SentencePiece BPE models (LLaMA's tokenizer.model), read and run natively: the normalization the model's flags
// ask for, the merge loop shared with the llama2.c tokenizer (bpe.h), byte fallback, and decoding as
// SentencePiece's own SentencePieceProcessor does it (checked against Google's implementation in the tests).
#include "framework/common/error.h"
#include "framework/tokenizer/bpe.h"
#include "framework/tokenizer/sentencepiece_model.h"
#include "framework/tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string_view>

namespace qforge::tok {
namespace {

const std::string kSpaceSymbol = "\xE2\x96\x81";           // U+2581 "▁", SentencePiece's spelling of a space
const std::string kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

bool is_trail_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }
bool is_valid_code_point(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// The length of the well-formed UTF-8 character that starts `text` (no overlong forms, surrogates or code points
// past U+10FFFF), or 0 when it does not start with one: SentencePiece's string_util::IsValidDecodeUTF8.
std::size_t valid_utf8_length(std::string_view text) {
  const auto lead = static_cast<unsigned char>(text[0]);
  if (lead < 0x80) return 1;
  auto bits = [&](std::size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(text[i]) & 0x3F); };
  if ((lead & 0xE0) == 0xC0 && text.size() >= 2) {
    const uint32_t c = ((lead & 0x1Fu) << 6) | bits(1);
    return is_trail_byte(text[1]) && c >= 0x80 && is_valid_code_point(c) ? 2 : 0;
  }
  if ((lead & 0xF0) == 0xE0 && text.size() >= 3) {
    const uint32_t c = ((lead & 0x0Fu) << 12) | (bits(1) << 6) | bits(2);
    return is_trail_byte(text[1]) && is_trail_byte(text[2]) && c >= 0x800 && is_valid_code_point(c) ? 3 : 0;
  }
  if ((lead & 0xF8) == 0xF0 && text.size() >= 4) {
    const uint32_t c = ((lead & 0x07u) << 18) | (bits(1) << 12) | (bits(2) << 6) | bits(3);
    const bool trails = is_trail_byte(text[1]) && is_trail_byte(text[2]) && is_trail_byte(text[3]);
    return trails && c >= 0x10000 && is_valid_code_point(c) ? 4 : 0;
  }
  return 0;
}

// `bytes` as text: each well-formed UTF-8 character as it is, each other byte as U+FFFD.
void append_utf8_or_replacement(std::string_view bytes, std::string& text) {
  while (!bytes.empty()) {
    const std::size_t length = valid_utf8_length(bytes);
    if (length == 0) text += kReplacementCharacter;
    text.append(bytes.substr(0, length));
    bytes.remove_prefix(std::max<std::size_t>(length, 1));
  }
}

std::string replace_all(std::string_view text, const std::string& from, const std::string& to) {
  std::string result;
  for (std::size_t at = 0; at < text.size();) {
    const std::size_t found = text.find(from, at);
    result.append(text.substr(at, found == std::string_view::npos ? std::string_view::npos : found - at));
    if (found == std::string_view::npos) break;
    result += to;
    at = found + from.size();
  }
  return result;
}

// What this reader runs: BPE with identity normalization and the dummy prefix in front.
void check_supported(const std::string& path, const SentencePieceModel& model) {
  if (model.model_type != ModelType::kBpe)
    throw Error(fmt::format(
        "{}: SentencePiece model_type {} ({}) is not supported, expected 2 (BPE, as LLaMA's "
        "tokenizer.model)",
        path, static_cast<int32_t>(model.model_type), model.model_type == ModelType::kUnigram ? "UNIGRAM" : "not BPE"));
  if (!model.normalizer.precompiled_charsmap.empty())
    throw Error(
        fmt::format("{}: the SentencePiece normalizer '{}' has normalization rules (precompiled_charsmap), "
                    "which are not supported; expected the 'identity' normalizer, as LLaMA's",
                    path, model.normalizer.name));
  if (!model.denormalizer.precompiled_charsmap.empty())
    throw Error(
        fmt::format("{}: the SentencePiece denormalizer has rules (precompiled_charsmap), which are not "
                    "supported",
                    path));
  if (model.treat_whitespace_as_suffix)
    throw Error(
        fmt::format("{}: SentencePiece treat_whitespace_as_suffix is not supported, expected the space "
                    "symbol in front of words, as LLaMA's",
                    path));
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string path, SentencePieceModel model)
      : path_(std::move(path)),
        model_(std::move(model)),
        normal_ids_(index_pieces([](PieceType type) {
          return type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
        })),
        reserved_ids_(index_pieces([](PieceType type) {
          return !(type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused);
        })),
        user_defined_ids_(index_pieces([](PieceType type) { return type == PieceType::kUserDefined; })),
        merges_(normal_ids_, model_.scores, [](int32_t) { return true; }) {
    for (const auto& [piece, id] : user_defined_ids_)
      longest_user_defined_ = std::max(longest_user_defined_, piece.size());
    for (const auto& [piece, id] : reserved_ids_)
      if (model_.types[id] == PieceType::kByte) byte_ids_[byte_of_piece(piece)] = id;
    index_unused_splits();
  }

  std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const override {
    const std::string normalized = normalize(text);
    std::vector<int32_t> symbols;
    std::vector<Held> held;
    split_into_characters(normalized, symbols, held);
    merge_best_pairs(symbols, merges_);
    std::vector<int64_t> ids;
    ids.reserve(symbols.size() + 2);
    if (bos) ids.push_back(defined_id(model_.bos_id, "BOS"));
    append_ids(symbols, held, ids);
    if (eos) ids.push_back(defined_id(model_.eos_id, "EOS"));
    return ids;
  }

  // SentencePieceProcessor::Decode: byte pieces gather into UTF-8 (U+FFFD for a malformed byte); the first piece
  // that starts with "▁" while the text is still empty loses that "▁" (the dummy prefix); control pieces vanish.
  std::string decode(const std::vector<int64_t>& ids) const override {
    for (int64_t id : ids) check_id(id);
    std::string text, bytes;
    bool may_be_dummy_prefix = true, dummy_prefix_seen = false;
    for (int64_t id : ids) {
      if (model_.types[id] == PieceType::kByte) {
        bytes.push_back(static_cast<char>(byte_of_piece(model_.pieces[id])));
        continue;
      }
      append_utf8_or_replacement(bytes, text);
      bytes.clear();
      if (dummy_prefix_seen || !text.empty()) may_be_dummy_prefix = false;
      dummy_prefix_seen = append_piece_text(id, may_be_dummy_prefix, text);
    }
    append_utf8_or_replacement(bytes, text);
    return text;
  }

  std::string decode_next(int64_t previous, int64_t id) const override {
    check_id(id);
    if (is_invisible(id)) return "";
    if (model_.types[id] == PieceType::kByte)
      return std::string(1, static_cast<char>(byte_of_piece(model_.pieces[id])));
    if (model_.types[id] == PieceType::kUnknown) return model_.unk_surface;
    std::string text = replace_all(model_.pieces[id], kSpaceSymbol, " ");
    if (previous == model_.bos_id && !text.empty() && text[0] == ' ') text.erase(0, 1);
    return text;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(model_.pieces.size()); }
  int64_t bos_id() const override { return model_.bos_id; }
  int64_t eos_id() const override { return model_.eos_id; }
  std::string piece(int64_t id) const override {
    check_id(id);
    return model_.pieces[id];
  }
  std::string kind() const override { return "sentencepiece"; }

 private:
  // A symbol that takes no part in merging (kHeldSymbol in the merge loop): a user-defined or reserved piece with
  // its id, or a character the vocabulary lacks (id -1), which becomes byte pieces or <unk>. (SentencePiece would
  // merge a missing character into a piece that contains it; BPE training never makes such a piece.)
  struct Held {
    int32_t id;
    std::string_view text;
  };

  PieceIds index_pieces(bool (*wanted)(PieceType)) const {
    PieceIds ids;
    for (std::size_t id = 0; id < model_.pieces.size(); ++id)
      if (wanted(model_.types[id])) ids.emplace(model_.pieces[id], static_cast<int32_t>(id));
    return ids;
  }

  // SentencePiece merges into an UNUSED piece, then splits it again into the two pieces it was merged from.
  // Where an UNUSED piece splits several ways, this takes the one with the shortest left part.
  void index_unused_splits() {
    for (std::size_t id = 0; id < model_.pieces.size(); ++id) {
      if (model_.types[id] != PieceType::kUnused) continue;
      const std::string& whole = model_.pieces[id];
      for (std::size_t split = 1; split < whole.size(); ++split) {
        auto left = normal_ids_.find(whole.substr(0, split));
        auto right = normal_ids_.find(whole.substr(split));
        if (left == normal_ids_.end() || right == normal_ids_.end()) continue;
        unused_splits_.emplace(static_cast<int32_t>(id), std::make_pair(left->second, right->second));
        break;
      }
    }
  }

  // SentencePiece's Normalizer::Normalize without rules: optionally drop leading, trailing and repeated spaces;
  // the dummy prefix; spaces as "▁"; a malformed UTF-8 byte as U+FFFD. An empty text stays empty.
  std::string normalize(const std::string& text) const {
    const NormalizerSpec& spec = model_.normalizer;
    std::string_view rest(text);
    if (spec.remove_extra_whitespaces) rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
    if (rest.empty()) return "";
    const std::string space = spec.escape_whitespaces ? kSpaceSymbol : " ";
    std::string normalized;
    normalized.reserve(rest.size() * 3 / 2 + space.size());
    if (spec.add_dummy_prefix) normalized += space;
    bool previous_space = spec.remove_extra_whitespaces;
    while (!rest.empty()) {
      const std::size_t length = valid_utf8_length(rest);
      const bool is_space = rest[0] == ' ';
      if (is_space && previous_space) {
        // an extra space: dropped
      } else if (is_space) {
        normalized += space;
      } else {
        normalized += length == 0 ? std::string_view(kReplacementCharacter) : rest.substr(0, length);
      }
      previous_space = spec.remove_extra_whitespaces && is_space;
      rest.remove_prefix(std::max<std::size_t>(length, 1));
    }
    if (spec.remove_extra_whitespaces)
      while (normalized.size() >= space.size() &&
             normalized.compare(normalized.size() - space.size(), space.size(), space) == 0)
        normalized.resize(normalized.size() - space.size());
    return normalized;
  }

  // The length of the longest user-defined piece `text` starts with, or 0.
  std::size_t user_defined_prefix(std::string_view text, int32_t& id) const {
    for (std::size_t length = std::min(longest_user_defined_, text.size()); length > 0; --length) {
      auto found = user_defined_ids_.find(std::string(text.substr(0, length)));
      if (found == user_defined_ids_.end()) continue;
      id = found->second;
      return length;
    }
    return 0;
  }

  // bpe_model.cc's first pass: each user-defined piece found at the current position (the longest) stays whole and
  // never merges; otherwise each UTF-8 character is a symbol.
  void split_into_characters(const std::string& normalized, std::vector<int32_t>& symbols,
                             std::vector<Held>& held) const {
    symbols.reserve(normalized.size());
    std::string character;
    for (std::size_t at = 0; at < normalized.size();) {
      const std::string_view rest = std::string_view(normalized).substr(at);
      int32_t id = -1;
      std::size_t length = longest_user_defined_ > 0 ? user_defined_prefix(rest, id) : 0;
      if (length == 0) {
        length = std::min(utf8_char_length(rest[0]), rest.size());
        character.assign(rest.data(), length);
        if (auto normal = normal_ids_.find(character); normal != normal_ids_.end()) {
          symbols.push_back(normal->second);
          at += length;
          continue;
        }
        auto reserved = reserved_ids_.find(character);
        if (reserved != reserved_ids_.end() && reserved->second != model_.unk_id) id = reserved->second;
      }
      symbols.push_back(kHeldSymbol);
      held.push_back({id, rest.substr(0, length)});
      at += length;
    }
  }

  // The merged symbols as ids: UNUSED pieces split again, held symbols back in place, and each character the
  // vocabulary lacks as its byte pieces (byte_fallback) or as <unk>, one <unk> for a run of them.
  void append_ids(const std::vector<int32_t>& symbols, const std::vector<Held>& held, std::vector<int64_t>& ids) const {
    std::size_t next_held = 0;
    bool previous_unknown = false;
    for (int32_t symbol : symbols) {
      if (symbol != kHeldSymbol) {
        append_resegmented(symbol, ids);
        previous_unknown = false;
        continue;
      }
      const Held& h = held[next_held++];
      if (h.id >= 0) {
        ids.push_back(h.id);
      } else if (model_.byte_fallback) {
        for (char byte : h.text) ids.push_back(byte_ids_[static_cast<unsigned char>(byte)]);
      } else if (!previous_unknown) {
        ids.push_back(model_.unk_id);
      }
      previous_unknown = h.id < 0;
    }
  }

  void append_resegmented(int32_t id, std::vector<int64_t>& ids) const {
    auto split = unused_splits_.find(id);
    if (split == unused_splits_.end()) {
      ids.push_back(id);
      return;
    }
    append_resegmented(split->second.first, ids);
    append_resegmented(split->second.second, ids);
  }

  // Appends the text of a non-byte piece; returns whether it consumed the dummy prefix.
  bool append_piece_text(int64_t id, bool may_be_dummy_prefix, std::string& text) const {
    if (is_invisible(id)) return false;
    if (model_.types[id] == PieceType::kUnknown) {
      text += model_.unk_surface;
      return false;
    }
    std::string_view piece = model_.pieces[id];
    bool consumed = false;
    const NormalizerSpec& spec = model_.normalizer;
    if (may_be_dummy_prefix && (spec.add_dummy_prefix || spec.remove_extra_whitespaces) &&
        piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
      consumed = !spec.remove_extra_whitespaces;  // without extra spaces, every leading "▁" goes
    }
    text += replace_all(piece, kSpaceSymbol, " ");
    return consumed;
  }

  // Control pieces (<s>, </s>, <pad>) and the BOS, EOS and padding ids have no text.
  bool is_invisible(int64_t id) const {
    return model_.types[id] == PieceType::kControl || id == model_.bos_id || id == model_.eos_id || id == model_.pad_id;
  }

  void check_id(int64_t id) const {
    if (id < 0 || id >= vocab_size())
      throw Error(fmt::format("token id {} is outside the vocabulary of {} pieces of {}", id, vocab_size(), path_));
  }

  int64_t defined_id(int64_t id, const char* name) const {
    if (id < 0) throw Error(fmt::format("{}: the SentencePiece model defines no {} piece", path_, name));
    return id;
  }

  std::string path_;
  SentencePieceModel model_;
  PieceIds normal_ids_;        // NORMAL, USER_DEFINED and UNUSED pieces: what merging produces
  PieceIds reserved_ids_;      // UNKNOWN, CONTROL and BYTE pieces
  PieceIds user_defined_ids_;  // matched whole, before characters
  MergeTable merges_;
  std::size_t longest_user_defined_ = 0;
  std::array<int32_t, 256> byte_ids_{};  // the id of <0xXX> (byte_fallback models have all 256)
  std::unordered_map<int32_t, std::pair<int32_t, int32_t>> unused_splits_;
};

}  // namespace

std::unique_ptr<Tokenizer> sentencepiece_tokenizer_from_bytes(const std::string& path, const std::string& bytes) {
  SentencePieceModel model = read_sentencepiece_model(path, bytes);
  check_supported(path, model);
  return std::make_unique<SentencePieceTokenizer>(path, std::move(model));
}

}  // namespace qforge::tok
