// Text <-> token ids: for the LLaMA family, SentencePiece BPE .model files (read natively, with the ids and text of
// Google's SentencePiece) and llama2.c tokenizer.bin files (the same BPE, identical to llama2.c's run.c encode());
// for GPT-2 and OPT, byte-level BPE from vocab.json + merges.txt or a Hugging Face tokenizer.json (gpt2_bpe.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qforge::tok {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`, with BOS first / EOS last when asked.
  virtual std::vector<int64_t> encode(const std::string& text, bool bos, bool eos) const = 0;
  // Text of `ids`; BOS/EOS/padding ids are skipped; byte tokens (<0x0A>) become their bytes (SentencePiece writes
  // a byte that is not part of a UTF-8 character as U+FFFD, and <unk> as " ⁇ "); the leading space SentencePiece
  // adds is removed as SentencePiece's own decode does. GPT-2 BPE gives the tokens' bytes as they are and skips
  // its special tokens (<s> <pad> </s> <unk> <|endoftext|>, or tokenizer.json's "special" added tokens). An id
  // outside the vocabulary is a qforge::Error.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // The text `id` adds when it follows `previous` (for streaming generated tokens), as llama2.c's decode(prev, token);
  // BOS and EOS add nothing.
  virtual std::string decode_next(int64_t previous, int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  // GPT-2 BPE: OPT's vocabularies (with "</s>") have BOS = EOS = </s> (id 2, prepended as OPT does); GPT-2's
  // have BOS = EOS = <|endoftext|> (50256).
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  // The vocabulary's own spelling of `id`: "▁the" in a SentencePiece model, " the" in a llama2.c tokenizer.bin,
  // "Ġthe" in GPT-2 BPE (its byte->unicode map).
  virtual std::string piece(int64_t id) const = 0;
  virtual std::string kind() const = 0;  // "sentencepiece", "llama2c" or "gpt2-bpe"
};

// Loads a tokenizer from `path`: a .json file (a Hugging Face tokenizer.json with a byte-level BPE model, or a
// GPT-2/OPT vocab.json with merges.txt beside it); a directory (tokenizer_in_directory); else a SentencePiece .model
// or a llama2.c tokenizer.bin, decided by content. A missing, truncated or malformed file is a qforge::Error naming
// the file and what was expected (never a crash).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The tokenizer file of a model directory, the first there of tokenizer.model, tokenizer.bin, tokenizer.json and
// vocab.json (with merges.txt beside it); "" when it has none.
std::string tokenizer_in_directory(const std::string& dir);

// The two formats from a file's contents, for callers that know the format; `path` only names the file in errors.
std::unique_ptr<Tokenizer> llama2c_tokenizer_from_bytes(const std::string& path, const std::string& bytes);
std::unique_ptr<Tokenizer> sentencepiece_tokenizer_from_bytes(const std::string& path, const std::string& bytes);

// The llama2.c tokenizer.bin of a byte-level vocabulary: <unk>, BOS, EOS and the 256 byte pieces (259 ids), no
// merges. Every text encodes to its UTF-8 bytes; for models that need a tokenizer and no download (qforge
// init-model). Written atomically.
void write_byte_tokenizer(const std::string& path);
inline constexpr int64_t kByteTokenizerVocab = 259;

}  // namespace qforge::tok
