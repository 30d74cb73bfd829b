// GPT-2 byte-level BPE (internal to framework/tokenizer): OpenAI's encoder.py, as Hugging Face's GPT2Tokenizer and
// its ByteLevel BPE tokenizer.json run it. The text is cut by GPT-2's pre-tokenizer regex (run by PCRE2), each
// piece's bytes are spelled with GPT-2's byte->unicode map and merged by merges.txt's ranks (the lowest first).
// OPT uses the same merges with fairseq ids; its vocabulary has "</s>", which is then both BOS and EOS.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "framework/tokenizer/bpe.h"
#include "framework/tokenizer/tokenizer.h"

namespace qforge::tok {

// A tokenizer.json added token: cut out of the text before the regex (leftmost, the longest at one place) and
// given its id as a whole, as Hugging Face does for every added token.
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;  // decode skips it
  bool lstrip = false;   // takes in the whitespace before it
  bool rstrip = false;   // takes in the whitespace after it
};

// What a byte-level BPE tokenizer is made of, as read (and checked) from vocab.json + merges.txt or tokenizer.json:
// every merge's two tokens and their concatenation are in `vocab`.
struct Gpt2BpeModel {
  std::string path;                                         // named in errors
  PieceIds vocab;                                           // byte-level spelling ("Ġthe") -> id
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  std::vector<AddedToken> added;
  std::string unk_token;  // for a byte the vocabulary lacks; "" when there is none
  bool add_prefix_space = false;
  bool use_regex = true;        // false: each text between added tokens is one word
  bool ignore_merges = false;   // a word that is a token is that token, unmerged
  bool tokenizer_json = false;  // special ids from added tokens; else from the names <s> <pad> </s> <unk>
};

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(Gpt2BpeModel model);

// vocab.json (token -> id) and merges.txt ("#version" line, then one "A B" merge a line, in rank order).
std::unique_ptr<Tokenizer> gpt2_tokenizer_from_files(const std::string& vocab_path, const std::string& merges_path);
// A .json file: a Hugging Face tokenizer.json (an object with "model"), else a vocab.json with merges.txt beside it.
std::unique_ptr<Tokenizer> gpt2_tokenizer_from_json_file(const std::string& path);

// The words GPT-2's pre-tokenizer regex cuts `text` into, in order (a malformed UTF-8 byte no alternative matches
// is a word of its own); for tests.
std::vector<std::string> gpt2_words(const std::string& text);

// GPT-2's bytes_to_unicode(): the printable bytes of Latin-1 stand for themselves, the other 68 bytes, in order,
// for U+0100 onwards (space is "Ġ", U+0120). The UTF-8 spelling of each byte.
const std::vector<std::string>& gpt2_byte_spellings();

}  // namespace qforge::tok
