// GPT-2 byte-level BPE: the tokenizer (reading its files is gpt2_bpe_files.cpp). Encoding: added tokens cut out,
// GPT-2's regex, each word's bytes merged by rank with the merge loop the tokenizers share (bpe.h; a score of minus
// the rank merges the lowest rank first, as encoder.py's bpe() and Hugging Face's BPE do); words repeat, so their
// ids are cached.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "framework/tokenizer/gpt2_bpe.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "framework/common/error.h"

namespace qforge::tok {
namespace {

// The Unicode White_Space property, which GPT-2's `\s` means (Python's `regex` module); PCRE2's own \s leaves out
// U+0085. \S and the class of "other" characters are written with the same list.
constexpr const char* kWhiteSpace =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::string gpt2_pattern() {
  return fmt::format(
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{{L}}+| ?\\p{{N}}+| ?[^{0}\\p{{L}}\\p{{N}}]+|[{0}]+(?![^{0}])|[{0}]+", kWhiteSpace);
}

std::string utf8(uint32_t code_point) {
  std::string text;
  if (code_point < 0x80) {
    text += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    text += static_cast<char>(0xC0 | (code_point >> 6));
    text += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    text += static_cast<char>(0xE0 | (code_point >> 12));
    text += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    text += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return text;
}

// GPT-2's regex, compiled once (with JIT where PCRE2 has it). Invalid UTF-8 is allowed in the text: no
// alternative matches a malformed byte, and split() hands out such gaps as words of their own.
class Pretokenizer {
 public:
  Pretokenizer() {
    const std::string pattern = gpt2_pattern();
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      throw Error(fmt::format("PCRE2 cannot compile GPT-2's pre-tokenizer regex at offset {}: {}", offset,
                              reinterpret_cast<const char*>(message)));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // without JIT, the interpreter runs the same regex
  }
  ~Pretokenizer() { pcre2_code_free(code_); }
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  // Calls `word` with each piece of `text`, in order; together they are `text`.
  template <class Word>
  void split(std::string_view text, Word&& word) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (!data) throw Error("out of memory for PCRE2's match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    for (PCRE2_SIZE at = 0; at < text.size();) {
      const int rc = pcre2_match(code_, subject, text.size(), at, 0, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        word(text.substr(at));
        return;
      }
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        throw Error(fmt::format("GPT-2's pre-tokenizer regex failed at byte {}: {}", at,
                                reinterpret_cast<const char*>(message)));
      }
      const PCRE2_SIZE* match = pcre2_get_ovector_pointer(data.get());
      if (match[0] > at) word(text.substr(at, match[0] - at));
      const PCRE2_SIZE end = std::max(match[1], match[0] + 1);  // every alternative is non-empty
      word(text.substr(match[0], end - match[0]));
      at = end;
    }
  }

 private:
  pcre2_code* code_ = nullptr;
};

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Words longer than this are not cached, nor more words than kCacheWords.
constexpr std::size_t kCachedWordBytes = 256;
constexpr std::size_t kCacheWords = 1 << 18;

// What an id is: absent (a gap in the ids), a vocabulary token, a non-special added token, or special (no text).
enum class IdKind : uint8_t { kAbsent, kToken, kAddedText, kSpecial };

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  explicit Gpt2BpeTokenizer(Gpt2BpeModel model) : model_(std::move(model)) {
    int32_t last = -1;
    for (const auto& [token, id] : model_.vocab) last = std::max(last, id);
    for (const AddedToken& token : model_.added) last = std::max(last, token.id);
    pieces_.resize(last + 1);
    texts_.resize(last + 1);
    kinds_.assign(last + 1, IdKind::kAbsent);
    for (const auto& [token, id] : model_.vocab) {
      pieces_[id] = token;
      kinds_[id] = IdKind::kToken;
    }
    for (const AddedToken& token : model_.added) {
      if (kinds_[token.id] == IdKind::kToken && pieces_[token.id] != token.content)
        throw Error(fmt::format("{}: added token \"{}\" has id {}, which is the vocabulary's \"{}\"", model_.path,
                                token.content, token.id, pieces_[token.id]));
      pieces_[token.id] = token.content;
      kinds_[token.id] = token.special ? IdKind::kSpecial : IdKind::kAddedText;
      texts_[token.id] = token.content;
    }
    added_ = model_.added;
    std::stable_sort(added_.begin(), added_.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    find_special_ids();
    index_bytes();
    for (std::size_t rank = 0; rank < model_.merges.size(); ++rank) {
      const auto& [left, right] = model_.merges[rank];
      merges_.add(model_.vocab.at(left), model_.vocab.at(right),
                  {model_.vocab.at(left + right), -static_cast<float>(rank)});
    }
  }

  std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int64_t> ids;
    ids.reserve(text.size() / 3 + 2);
    if (bos) ids.push_back(defined_id(bos_, "BOS"));
    const std::string_view all(text);
    std::vector<std::size_t> next(added_.size());
    for (std::size_t k = 0; k < added_.size(); ++k) next[k] = all.find(added_[k].content);
    for (std::size_t start = 0;;) {
      std::size_t best = std::string_view::npos, which = 0;
      for (std::size_t k = 0; k < added_.size(); ++k) {
        if (next[k] != std::string_view::npos && next[k] < start) next[k] = all.find(added_[k].content, start);
        if (next[k] < best) best = next[k], which = k;  // ties go to the longer token, which comes first
      }
      if (best == std::string_view::npos) {
        encode_segment(all.substr(start), ids);
        break;
      }
      std::size_t begin = best, end = best + added_[which].content.size();
      if (added_[which].lstrip)
        while (begin > start && is_ascii_space(all[begin - 1])) --begin;
      if (added_[which].rstrip)
        while (end < all.size() && is_ascii_space(all[end])) ++end;
      encode_segment(all.substr(start, begin - start), ids);
      ids.push_back(added_[which].id);
      start = end;
    }
    if (eos) ids.push_back(defined_id(eos_, "EOS"));
    return ids;
  }

  // The bytes of the tokens, as they are (a character split over tokens comes whole from the whole sequence).
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string text;
    for (int64_t id : ids) text += texts_[checked(id)];
    return text;
  }

  std::string decode_next(int64_t previous, int64_t id) const override { return texts_[checked(id)]; }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  std::string piece(int64_t id) const override { return pieces_[checked(id)]; }
  std::string kind() const override { return "gpt2-bpe"; }

 private:
  int32_t id_of(const std::string& token) const {
    for (const AddedToken& added : model_.added)
      if (added.content == token) return added.id;
    auto found = model_.vocab.find(token);
    return found == model_.vocab.end() ? -1 : found->second;
  }

  // OPT (a vocabulary with </s>): BOS = EOS = </s>; else GPT-2's <|endoftext|>. vocab.json has no flags, so the
  // special tokens there are the named ones (Hugging Face's GPT2Tokenizer defaults and OPT's); a tokenizer.json
  // marks its own. Only added tokens are cut out of the text: "<|endoftext|>" in a text given with vocab.json is
  // text, as with OpenAI's encoder.
  void find_special_ids() {
    bos_ = eos_ = id_of("</s>");
    if (bos_ < 0) bos_ = eos_ = id_of("<|endoftext|>");
    unk_ = model_.unk_token.empty() ? id_of("<unk>") : id_of(model_.unk_token);
    std::vector<int32_t> special = {bos_, eos_, id_of("<pad>")};
    if (!model_.tokenizer_json)
      for (const char* name : {"<s>", "<unk>"}) special.push_back(id_of(name));
    for (int32_t id : special)
      if (id >= 0) kinds_[id] = IdKind::kSpecial;
    for (std::size_t id = 0; id < pieces_.size(); ++id)
      if (kinds_[id] == IdKind::kToken)
        texts_[id] = token_bytes(pieces_[id]);
      else if (kinds_[id] == IdKind::kSpecial)
        texts_[id].clear();
  }

  // A token's bytes: each character through the inverse byte map; one outside it (no byte-level file has one)
  // stands for its own UTF-8.
  static std::string token_bytes(const std::string& token) {
    static const std::unordered_map<std::string, char> kByteOf = [] {
      std::unordered_map<std::string, char> byte_of;
      for (int byte = 0; byte < 256; ++byte) byte_of.emplace(gpt2_byte_spellings()[byte], static_cast<char>(byte));
      return byte_of;
    }();
    std::string bytes;
    for (std::size_t at = 0; at < token.size();) {
      const std::size_t length = std::min(utf8_char_length(token[at]), token.size() - at);
      const std::string character = token.substr(at, length);
      auto found = kByteOf.find(character);
      if (found != kByteOf.end())
        bytes += found->second;
      else
        bytes += character;
      at += length;
    }
    return bytes;
  }

  void index_bytes() {
    for (int byte = 0; byte < 256; ++byte) {
      auto found = model_.vocab.find(gpt2_byte_spellings()[byte]);
      byte_ids_[byte] = found == model_.vocab.end() ? kHeldSymbol : found->second;
    }
  }

  void encode_segment(std::string_view text, std::vector<int64_t>& ids) const {
    if (text.empty()) return;
    std::string prefixed;
    if (model_.add_prefix_space && text[0] != ' ') {
      prefixed = " " + std::string(text);
      text = prefixed;
    }
    if (!model_.use_regex) return encode_word(text, ids);
    pretokenizer_.split(text, [&](std::string_view word) { encode_word(word, ids); });
  }

  void encode_word(std::string_view word, std::vector<int64_t>& ids) const {
    const bool cached = word.size() <= kCachedWordBytes;
    std::string key;
    if (cached) {
      key.assign(word);
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (auto found = cache_.find(key); found != cache_.end()) {
        ids.insert(ids.end(), found->second.begin(), found->second.end());
        return;
      }
    }
    std::vector<int32_t> symbols = merge_word(word);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    if (!cached) return;
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheWords) cache_.emplace(std::move(key), std::move(symbols));
  }

  std::vector<int32_t> merge_word(std::string_view word) const {
    if (model_.ignore_merges) {
      std::string spelled;
      for (char byte : word) spelled += gpt2_byte_spellings()[static_cast<unsigned char>(byte)];
      if (auto found = model_.vocab.find(spelled); found != model_.vocab.end()) return {found->second};
    }
    std::vector<int32_t> symbols;
    symbols.reserve(word.size());
    for (char byte : word) symbols.push_back(byte_ids_[static_cast<unsigned char>(byte)]);
    merge_best_pairs(symbols, merges_);
    for (std::size_t i = 0; i < symbols.size(); ++i) {
      if (symbols[i] != kHeldSymbol) continue;
      if (unk_ < 0)  // a byte the vocabulary lacks (held out of merging)
        throw Error(fmt::format("{}: the vocabulary has no token for a byte of \"{}\" and no <unk>", model_.path,
                                std::string(word)));
      symbols[i] = unk_;
    }
    return symbols;
  }

  int64_t checked(int64_t id) const {
    if (id < 0 || id >= vocab_size() || kinds_[id] == IdKind::kAbsent)
      throw Error(fmt::format("token id {} is outside the vocabulary of {} ids of {}", id, vocab_size(), model_.path));
    return id;
  }

  int64_t defined_id(int64_t id, const char* name) const {
    if (id < 0)
      throw Error(
          fmt::format("{}: the vocabulary has neither </s> nor <|endoftext|>, so no {} token", model_.path, name));
    return id;
  }

  Gpt2BpeModel model_;
  std::vector<AddedToken> added_;            // the longest first
  std::vector<std::string> pieces_, texts_;  // by id: spelling, bytes decoded
  std::vector<IdKind> kinds_;
  MergeTable merges_;
  std::array<int32_t, 256> byte_ids_{};
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  Pretokenizer pretokenizer_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;  // word bytes -> ids
};

}  // namespace

const std::vector<std::string>& gpt2_byte_spellings() {
  static const std::vector<std::string> kSpellings = [] {
    std::vector<std::string> spellings(256);
    uint32_t next = 256;
    for (uint32_t byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
      spellings[byte] = utf8(printable ? byte : next++);
    }
    return spellings;
  }();
  return kSpellings;
}

std::vector<std::string> gpt2_words(const std::string& text) {
  static const Pretokenizer kPretokenizer;
  std::vector<std::string> words;
  kPretokenizer.split(text, [&](std::string_view word) { words.emplace_back(word); });
  return words;
}

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(Gpt2BpeModel model) {
  return std::make_unique<Gpt2BpeTokenizer>(std::move(model));
}

}  // namespace qforge::tok
