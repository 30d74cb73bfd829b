// Tokenizers: our native SentencePiece reader and our llama2.c BPE against public facts and against Google's
// SentencePiece (run through /usr/bin/python3, tests/reference/sentencepiece_ids.py), our llama2.c BPE against a
// literal transcription of run.c's encode(), models built here (flags, piece types, malformed files), round trips,
// byte fallback, bad files, speed.
#include "framework/common/error.h"
#include "framework/tokenizer/tokenizer.h"
#include "tests/test_support.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <thread>
#include <unordered_map>

namespace qforge::tok {
namespace {

namespace fs = std::filesystem;

const fs::path kShared = QFORGE_SHARED_DIR;
const fs::path kTok512 = kShared / "models/stories260K/tok512.bin";
const fs::path kLlamaModel = kShared / "models/llama2_tokenizer/tokenizer.model";
const fs::path kLlamaBin = kShared / "models/llama2_tokenizer/tokenizer.bin";
const fs::path kTinyStories = kShared / "data/tinystories/tinystories_val.txt";
const fs::path kReferenceScript = QFORGE_SENTENCEPIECE_REFERENCE;

#define SKIP_WITHOUT(path)                                                                                  \
  if (!fs::exists(path))                                                                                    \
  GTEST_SKIP() << (path).string() << " is absent: the shared test data (../shared beside the repository) " \
                                     "is not on this machine"

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

bool is_blank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

// Blocks of lines separated by blank lines; a block's lines are joined with "\n", spaces kept.
std::vector<std::string> read_paragraphs(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> paragraphs;
  std::string line, current;
  bool open = false;
  while (std::getline(in, line)) {
    if (is_blank(line)) {
      if (open) paragraphs.push_back(current);
      current.clear();
      open = false;
      continue;
    }
    current += (open ? "\n" : "") + line;
    open = true;
  }
  if (open) paragraphs.push_back(current);
  return paragraphs;
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string text;
  for (int64_t id : ids) text += (text.empty() ? "" : ", ") + std::to_string(id);
  return "[" + text + "]";
}

// Sentences that exercise spaces, newlines, punctuation, digits, accents, CJK and emoji.
const std::vector<std::string> kSentences = {
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    " a leading space",
    "a trailing space ",
    "two  spaces,   three and    four",
    "Tabs\tand\nnewlines\n\nand a blank line",
    "Numbers: 3.14159, 2024-06-01, 1,000,000 and 42%!",
    "naïve café — “curly quotes” and ‘single’ ones…",
    "日本語のテキストです。",
    "emoji: 😀👍🏽 and a flag 🇫🇷",
    "int main() { return argc > 1 ? 0 : -1; }  // code",
    "ALL CAPS and MiXeD cAsE WoRdS",
    "https://example.com/path?query=1&x=y#frag",
    "",
};

// ---- Google's SentencePiece, the independent reference ---------------------------------------------------------

// Why Google's SentencePiece cannot run on this machine, or "" when it can.
const std::string& google_sentencepiece_missing() {
  static const std::string reason = []() -> std::string {
    if (!fs::exists("/usr/bin/python3")) return "/usr/bin/python3 is absent";
    if (std::system("/usr/bin/python3 -c 'import sentencepiece' >/dev/null 2>&1") != 0)
      return "/usr/bin/python3 has no sentencepiece module (Debian: python3-sentencepiece)";
    return "";
  }();
  return reason;
}

#define SKIP_WITHOUT_GOOGLE_SENTENCEPIECE()    \
  if (!google_sentencepiece_missing().empty()) \
  GTEST_SKIP() << google_sentencepiece_missing() << ": Google's SentencePiece, the reference, cannot run"

std::string hex(const std::string& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string text;
  for (unsigned char c : bytes) text += {kDigits[c >> 4], kDigits[c & 15]};
  return text;
}

struct GoogleResult {
  std::vector<std::vector<int64_t>> ids;  // of each text, without BOS/EOS
  std::vector<std::string> texts;         // of each id list
};

// Google's SentencePiece with `model` on `texts` (encode) and on `id_lists` (decode).
GoogleResult google_sentencepiece(const fs::path& model, const std::vector<std::string>& texts,
                                  const std::vector<std::vector<int64_t>>& id_lists = {}) {
  static int calls = 0;
  const fs::path request_file =
      fs::temp_directory_path() / fmt::format("qforge_sentencepiece_request_{}_{}.json", ::getpid(), ++calls);
  nlohmann::json request = {{"encode", nlohmann::json::array()}, {"decode", id_lists}};
  for (const std::string& text : texts) request["encode"].push_back(hex(text));
  std::ofstream(request_file) << request.dump();
  const std::string command = fmt::format("/usr/bin/python3 '{}' '{}' < '{}'", kReferenceScript.string(),
                                          model.string(), request_file.string());
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string output;
  char buffer[1 << 16];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  fs::remove(request_file);
  if (status != 0) throw std::runtime_error(fmt::format("{} failed with status {}", command, status));
  const nlohmann::json reply = nlohmann::json::parse(output);
  return {reply.at("encode").get<std::vector<std::vector<int64_t>>>(),
          reply.at("decode").get<std::vector<std::string>>()};
}

std::vector<int64_t> with_bos_eos(std::vector<int64_t> ids) {
  ids.insert(ids.begin(), 1);
  ids.push_back(2);
  return ids;
}

// Beyond kSentences: malformed UTF-8 (a stray byte, a cut character, a surrogate, an overlong form), a literal
// U+FFFD, runs of spaces, control characters.
const std::vector<std::string> kHardTexts = {
    "a\xff b",
    "cut \xe6\x97",
    "\xed\xa0\x80 surrogate",
    "overlong \xc0\xaf",
    "\xef\xbf\xbd literal",
    " ",
    "   ",
    "a   ",
    "          x",
    "\x01\x02 control",
    "\t\ttabs",
    "\n",
    "<s> and </s> and <unk> as text",
    "▁ itself",
};

// ---- the native SentencePiece reader against public facts and Google ----------------------------------------

TEST(SentencePiece, LlamaModelPublicFacts) {
  SKIP_WITHOUT(kLlamaModel);
  auto tokenizer = load_tokenizer(kLlamaModel.string());
  EXPECT_EQ(tokenizer->kind(), "sentencepiece");
  EXPECT_EQ(tokenizer->encode("Hello world", true, false), (std::vector<int64_t>{1, 15043, 3186}));
  EXPECT_EQ(tokenizer->encode("Hello world", true, true), (std::vector<int64_t>{1, 15043, 3186, 2}));
  EXPECT_EQ(tokenizer->vocab_size(), 32000);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->piece(15043), "▁Hello");
  EXPECT_EQ(tokenizer->decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(tokenizer->decode_next(1, 15043), "Hello");
  EXPECT_EQ(tokenizer->decode_next(15043, 3186), " world");
  EXPECT_EQ(tokenizer->decode_next(3186, 13), "\n");  // <0x0A>
  EXPECT_THROW(tokenizer->piece(32000), Error);
  EXPECT_THROW(tokenizer->decode({1, -1}), Error);
}

TEST(SentencePiece, AgreesWithGoogleOnLlama) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kTinyStories);
  SKIP_WITHOUT_GOOGLE_SENTENCEPIECE();
  auto tokenizer = load_tokenizer(kLlamaModel.string());
  auto paragraphs = read_paragraphs(kTinyStories);
  ASSERT_GE(paragraphs.size(), 200u);
  paragraphs.resize(200);
  std::vector<std::string> texts = kSentences;
  texts.insert(texts.end(), kHardTexts.begin(), kHardTexts.end());
  texts.insert(texts.end(), paragraphs.begin(), paragraphs.end());
  // Decoding: Google's own ids with BOS/EOS, the dummy-prefix piece alone first, <unk>, bytes that are not UTF-8.
  std::vector<std::vector<int64_t>> id_lists = {{29871, 15043},
                                                {1, 29871, 29871, 15043},
                                                {29871, 1, 15043},
                                                {0, 15043},
                                                {15043, 0},
                                                {3 + 0xE6, 3 + 0x41},
                                                {3 + 0xE6, 15043},
                                                {1, 2},
                                                {}};
  const GoogleResult encoded = google_sentencepiece(kLlamaModel, texts);
  for (const auto& ids : encoded.ids) id_lists.push_back(with_bos_eos(ids));
  const GoogleResult decoded = google_sentencepiece(kLlamaModel, {}, id_lists);
  int agree = 0, decoded_alike = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tokenizer->encode(texts[i], false, false);
    agree += ids == encoded.ids[i];
    EXPECT_EQ(ids, encoded.ids[i]) << "'" << texts[i] << "'";
  }
  for (std::size_t i = 0; i < id_lists.size(); ++i) {
    const std::string text = tokenizer->decode(id_lists[i]);
    decoded_alike += text == decoded.texts[i];
    EXPECT_EQ(text, decoded.texts[i]) << ids_text(id_lists[i]);
  }
  std::printf(
      "native SentencePiece and Google's agree on the ids of %d of %zu texts (%zu sentences, %zu hard "
      "texts, %zu TinyStories paragraphs) and on the text of %d of %zu id lists\n",
      agree, texts.size(), kSentences.size(), kHardTexts.size(), paragraphs.size(), decoded_alike, id_lists.size());
  EXPECT_EQ(agree, static_cast<int>(texts.size()));
  for (const std::string& paragraph : paragraphs)
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(paragraph, true, true)), paragraph);
}

// ---- our llama2.c BPE against Google's SentencePiece --------------------------------------------------------

TEST(Llama2c, LlamaVocabularyAgreesWithGoogleSentencePiece) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  SKIP_WITHOUT_GOOGLE_SENTENCEPIECE();
  auto llama2c = load_tokenizer(kLlamaBin.string());
  ASSERT_EQ(llama2c->kind(), "llama2c");
  ASSERT_EQ(llama2c->vocab_size(), 32000);

  const GoogleResult sentences = google_sentencepiece(kLlamaModel, kSentences);
  std::vector<std::vector<int64_t>> sentence_ids;
  for (const auto& ids : sentences.ids) sentence_ids.push_back(with_bos_eos(ids));
  const GoogleResult decoded = google_sentencepiece(kLlamaModel, {}, sentence_ids);
  for (std::size_t i = 0; i < kSentences.size(); ++i) {
    EXPECT_EQ(llama2c->encode(kSentences[i], true, true), sentence_ids[i]) << "'" << kSentences[i] << "'";
    EXPECT_EQ(llama2c->decode(sentence_ids[i]), decoded.texts[i]) << "'" << kSentences[i] << "'";
    EXPECT_EQ(llama2c->decode(sentence_ids[i]), kSentences[i]);
  }

  auto paragraphs = read_paragraphs(kTinyStories);
  ASSERT_GE(paragraphs.size(), 200u);
  paragraphs.resize(200);
  const GoogleResult google = google_sentencepiece(kLlamaModel, paragraphs);
  int agree = 0;
  for (std::size_t i = 0; i < paragraphs.size(); ++i) {
    const auto ids = llama2c->encode(paragraphs[i], false, false);
    agree += ids == google.ids[i];
    EXPECT_EQ(ids, google.ids[i]) << "'" << paragraphs[i] << "'";
    EXPECT_EQ(llama2c->decode(ids), paragraphs[i]);
  }
  std::printf("llama2.c BPE and Google's SentencePiece agree on %d of %zu TinyStories paragraphs\n", agree,
              paragraphs.size());
  EXPECT_EQ(agree, 200);
}

// A long text (20,000 characters) in one call: both tokenizers give Google's ids, quickly.
TEST(Tokenizers, LongTextAgreesWithGoogleSentencePiece) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  SKIP_WITHOUT_GOOGLE_SENTENCEPIECE();
  const std::string text = read_text(kTinyStories).substr(0, 20000);
  const std::vector<int64_t> expected = with_bos_eos(google_sentencepiece(kLlamaModel, {text}).ids.at(0));
  for (const fs::path& file : {kLlamaModel, kLlamaBin}) {
    auto tokenizer = load_tokenizer(file.string());
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tokenizer->encode(text, true, true);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s: %zu characters -> %zu tokens in %.1f ms\n", tokenizer->kind().c_str(), text.size(), ids.size(),
                seconds * 1e3);
    EXPECT_TRUE(ids == expected) << file << ": the ids of the long text differ from Google's";
    EXPECT_TRUE(tokenizer->decode(ids) == text) << file << ": the long text does not round-trip";
  }
}

// Tokenizers are shared between threads: concurrent calls give the sequential results, for both formats.
TEST(Tokenizers, ConcurrentEncodingMatchesSequential) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kTinyStories);
  auto paragraphs = read_paragraphs(kTinyStories);
  paragraphs.resize(std::min<std::size_t>(paragraphs.size(), 400));
  for (const fs::path& file : {kLlamaModel, kLlamaBin}) {
    auto tokenizer = load_tokenizer(file.string());
    std::vector<std::vector<int64_t>> expected;
    for (const std::string& paragraph : paragraphs) expected.push_back(tokenizer->encode(paragraph, true, false));
    constexpr int kThreads = 4;
    std::vector<int> mismatches(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (std::size_t i = t; i < paragraphs.size(); i += kThreads) {
          const auto ids = tokenizer->encode(paragraphs[i], true, false);
          mismatches[t] += ids != expected[i] || tokenizer->decode(ids) != paragraphs[i];
        }
      });
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(std::accumulate(mismatches.begin(), mismatches.end(), 0), 0) << file;
  }
}

// ---- our llama2.c BPE against a literal transcription of run.c ----------------------------------------------

struct RawVocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::unordered_map<std::string, int> ids;
};

RawVocabulary read_raw_vocabulary(const fs::path& path) {
  const std::string bytes = read_text(path);
  RawVocabulary vocab;
  for (std::size_t at = 4; at < bytes.size();) {
    float score;
    int32_t length;
    std::memcpy(&score, bytes.data() + at, 4);
    std::memcpy(&length, bytes.data() + at + 4, 4);
    vocab.ids.emplace(bytes.substr(at + 8, length), static_cast<int>(vocab.pieces.size()));
    vocab.pieces.push_back(bytes.substr(at + 8, length));
    vocab.scores.push_back(score);
    at += 8 + length;
  }
  return vocab;
}

// karpathy/llama2.c run.c encode(), line for line: O(n^2), BOS included in the merge scan.
std::vector<int64_t> run_c_encode(const RawVocabulary& vocab, const std::string& text, bool bos, bool eos) {
  auto lookup = [&](const std::string& piece) {
    auto found = vocab.ids.find(piece);
    return found == vocab.ids.end() ? -1 : found->second;
  };
  std::vector<int64_t> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buffer;
  const char* c = text.c_str();
  for (; *c != '\0'; c++) {
    if ((*c & 0xC0) != 0x80) buffer.clear();
    buffer.push_back(*c);
    if ((*(c + 1) & 0xC0) == 0x80 && buffer.size() < 4) continue;
    const int id = lookup(buffer);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char byte : buffer) tokens.push_back(static_cast<unsigned char>(byte) + 3);
    }
    buffer.clear();
  }
  while (true) {
    float best_score = -1e10;
    int best_id = -1;
    int best_index = -1;
    for (std::size_t i = 0; i + 1 < tokens.size(); i++) {
      const int id = lookup(vocab.pieces[tokens[i]] + vocab.pieces[tokens[i + 1]]);
      if (id != -1 && vocab.scores[id] > best_score) {
        best_score = vocab.scores[id];
        best_id = id;
        best_index = static_cast<int>(i);
      }
    }
    if (best_index == -1) break;
    tokens[best_index] = best_id;
    tokens.erase(tokens.begin() + best_index + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

TEST(Llama2c, MatchesRunCEncode) {
  SKIP_WITHOUT(kTok512);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  for (const fs::path& file : {kTok512, kLlamaBin}) {
    auto tokenizer = load_tokenizer(file.string());
    const RawVocabulary vocab = read_raw_vocabulary(file);
    ASSERT_EQ(tokenizer->vocab_size(), static_cast<int64_t>(vocab.pieces.size()));
    for (const std::string& sentence : kSentences)
      EXPECT_EQ(tokenizer->encode(sentence, true, true), run_c_encode(vocab, sentence, true, true))
          << file << " '" << sentence << "'";
    auto paragraphs = read_paragraphs(kTinyStories);
    paragraphs.resize(std::min<std::size_t>(paragraphs.size(), 100));
    for (const std::string& paragraph : paragraphs)
      EXPECT_EQ(tokenizer->encode(paragraph, true, false), run_c_encode(vocab, paragraph, true, false))
          << file << " '" << paragraph << "'";
  }
}

// ---- tok512 (stories260K) -------------------------------------------------------------------------------------

TEST(Llama2c, Tok512OnceUponATime) {
  SKIP_WITHOUT(kTok512);
  auto tokenizer = load_tokenizer(kTok512.string());
  EXPECT_EQ(tokenizer->kind(), "llama2c");
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  const auto ids = tokenizer->encode("Once upon a time", true, false);
  std::printf("tok512: 'Once upon a time' -> %s\n", ids_text(ids).c_str());
  // Printed: [1, 403, 407, 261, 378] = BOS, " Once", " upon", " a", " time" (checked piece by piece below).
  EXPECT_EQ(ids, (std::vector<int64_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tokenizer->piece(403), " Once");
  EXPECT_EQ(tokenizer->piece(407), " upon");
  EXPECT_EQ(tokenizer->piece(261), " a");
  EXPECT_EQ(tokenizer->piece(378), " time");
  std::string pieces;
  for (std::size_t i = 1; i < ids.size(); ++i) pieces += tokenizer->piece(ids[i]);
  EXPECT_EQ(pieces, " Once upon a time");  // the dummy-prefix space starts the first piece
  EXPECT_EQ(tokenizer->decode(ids), "Once upon a time");
  std::string streamed;
  for (std::size_t i = 1; i < ids.size(); ++i) streamed += tokenizer->decode_next(ids[i - 1], ids[i]);
  EXPECT_EQ(streamed, "Once upon a time");
}

TEST(Llama2c, Tok512RoundTripsTinyStories) {
  SKIP_WITHOUT(kTok512);
  SKIP_WITHOUT(kTinyStories);
  auto tokenizer = load_tokenizer(kTok512.string());
  const auto paragraphs = read_paragraphs(kTinyStories);
  ASSERT_GT(paragraphs.size(), 1000u);
  int exact = 0;
  for (const std::string& paragraph : paragraphs) {
    const auto ids = tokenizer->encode(paragraph, true, true);
    ASSERT_EQ(ids.front(), 1);
    ASSERT_EQ(ids.back(), 2);
    const std::string text = tokenizer->decode(ids);
    exact += text == paragraph;
    EXPECT_EQ(text, paragraph);
  }
  std::printf("tok512 round trip exact for %d of %zu paragraphs\n", exact, paragraphs.size());
}

// ---- byte fallback ----------------------------------------------------------------------------------------------

TEST(Llama2c, ByteFallbackRoundTrips) {
  SKIP_WITHOUT(kTok512);
  auto tokenizer = load_tokenizer(kTok512.string());
  const std::string text = "日本 😀 ok\n";
  const auto ids = tokenizer->encode(text, true, true);
  int byte_tokens = 0;
  for (int64_t id : ids) byte_tokens += id >= 3 && id <= 258;
  // 日 and 本 are 3 UTF-8 bytes each and 😀 4; tok512 spells none of them, nor "\n".
  EXPECT_EQ(byte_tokens, 3 + 3 + 4 + 1);
  EXPECT_EQ(tokenizer->piece(3 + 0xE6), "<0xE6>");
  EXPECT_EQ(ids[2], 3 + 0xE6);  // after BOS and the lone dummy-prefix space: 日's first byte
  EXPECT_EQ(tokenizer->decode(ids), text);
  std::string streamed;
  for (std::size_t i = 1; i < ids.size(); ++i) streamed += tokenizer->decode_next(ids[i - 1], ids[i]);
  EXPECT_EQ(streamed, text);  // the lone dummy-prefix " " follows BOS, so run.c's decode strips it to nothing
}

TEST(SentencePiece, ByteFallbackRoundTrips) {
  SKIP_WITHOUT(kLlamaModel);
  auto tokenizer = load_tokenizer(kLlamaModel.string());
  const std::string text = "emoji 😀 and 日本";
  const auto ids = tokenizer->encode(text, false, false);
  const std::vector<int64_t> emoji_bytes = {3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80};
  EXPECT_NE(std::search(ids.begin(), ids.end(), emoji_bytes.begin(), emoji_bytes.end()), ids.end()) << ids_text(ids);
  EXPECT_EQ(tokenizer->decode(ids), text);
}

// ---- merge order on a vocabulary built here ---------------------------------------------------------------------

struct TestPiece {
  std::string text;
  float score;
};

// A llama2.c tokenizer.bin: <unk>, BOS, EOS, the 256 byte pieces, then `extra` (ids 259...).
std::string llama2c_file(const std::vector<TestPiece>& extra, int32_t max_token_length = 16) {
  std::vector<TestPiece> pieces = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", byte);
    pieces.push_back({name, 0});
  }
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  std::string bytes(reinterpret_cast<const char*>(&max_token_length), 4);
  for (const TestPiece& piece : pieces) {
    const auto length = static_cast<int32_t>(piece.text.size());
    bytes.append(reinterpret_cast<const char*>(&piece.score), 4);
    bytes.append(reinterpret_cast<const char*>(&length), 4);
    bytes += piece.text;
  }
  return bytes;
}

class TokenizerFiles : public test::ScratchFiles {
 protected:
  // The qforge::Error message of loading `path`, or "" when it loads.
  static std::string load_error(const std::string& path) {
    try {
      load_tokenizer(path);
      return "";
    } catch (const Error& e) {
      return e.what();
    }
  }
};

constexpr int64_t kSpace = 259, kA = 260, kB = 261, kAB = 262, kBA = 263;

TEST_F(TokenizerFiles, MergesTheHighestScoredPairLeftmostFirst) {
  // "aba": " ", a, b, a. With "ab" and "ba" scored alike the leftmost pair merges first.
  auto tie = load_tokenizer(write("tie.bin", llama2c_file({{" ", 0}, {"a", 0}, {"b", 0}, {"ab", -1}, {"ba", -1}})));
  EXPECT_EQ(tie->kind(), "llama2c");
  EXPECT_EQ(tie->encode("aba", false, false), (std::vector<int64_t>{kSpace, kAB, kA}));
  // A higher score wins wherever it is.
  auto right = load_tokenizer(write("right.bin", llama2c_file({{" ", 0}, {"a", 0}, {"b", 0}, {"ab", -2}, {"ba", -1}})));
  EXPECT_EQ(right->encode("aba", false, false), (std::vector<int64_t>{kSpace, kA, kBA}));
  // Merged pieces merge again; run.c never takes a pair scored at or below -1e10.
  auto chain = load_tokenizer(write("chain.bin", llama2c_file({{" ", 0}, {"a", 0}, {"b", 0}, {"ab", -1}, {"ba", -3},
                                                                {"abab", -2}, {" abab", -5}, {"b ", -2e10f}})));
  EXPECT_EQ(chain->encode("abab", true, true), (std::vector<int64_t>{1, 265, 2}));
  EXPECT_EQ(chain->encode("ab ab", false, false), (std::vector<int64_t>{kSpace, kAB, kSpace, kAB}));
  EXPECT_EQ(chain->encode("b ", false, false), (std::vector<int64_t>{kSpace, kB, kSpace}));  // "b " is scored -2e10
  EXPECT_EQ(chain->encode("", true, true), (std::vector<int64_t>{1, 2}));
  // A header max_token_length of 10 starts the file with 0x0A, as a SentencePiece model does: still llama2.c.
  auto ten = load_tokenizer(write("ten.bin", llama2c_file({{" ", 0}, {"a", 0}}, 10)));
  EXPECT_EQ(ten->kind(), "llama2c");
  EXPECT_EQ(ten->encode("a", false, false), (std::vector<int64_t>{kSpace, kA}));
}

// ---- SentencePiece models built here: the protobuf wire format by hand ------------------------------------------

std::string varint(uint64_t value) {
  std::string bytes;
  for (; value >= 0x80; value >>= 7) bytes.push_back(static_cast<char>((value & 0x7F) | 0x80));
  bytes.push_back(static_cast<char>(value));
  return bytes;
}
std::string key(uint32_t field, int wire_type) { return varint(uint64_t{field} << 3 | wire_type); }
std::string varint_field(uint32_t field, int64_t value) { return key(field, 0) + varint(static_cast<uint64_t>(value)); }
std::string bytes_field(uint32_t field, const std::string& bytes) {
  return key(field, 2) + varint(bytes.size()) + bytes;
}
std::string float_field(uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  std::string bytes = key(field, 5);
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>(bits >> (8 * i)));
  return bytes;
}

enum : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct ModelPiece {
  std::string piece;
  float score = 0;
  int type = kNormal;
};

struct ModelOptions {
  int model_type = 2;  // BPE
  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;
  std::string trainer_extra;  // appended to the TrainerSpec
};

ModelOptions flags(bool byte_fallback, bool add_dummy_prefix = true, bool remove_extra_whitespaces = false,
                   bool escape_whitespaces = true) {
  ModelOptions options;
  options.byte_fallback = byte_fallback;
  options.add_dummy_prefix = add_dummy_prefix;
  options.remove_extra_whitespaces = remove_extra_whitespaces;
  options.escape_whitespaces = escape_whitespaces;
  return options;
}

// The top-level fields of a ModelProto: <unk>, <s>, </s>, the 256 byte pieces with byte_fallback, then `pieces`;
// the TrainerSpec; the NormalizerSpec.
std::vector<std::string> sentencepiece_fields(const std::vector<ModelPiece>& pieces, const ModelOptions& options) {
  std::vector<ModelPiece> all = {{"<unk>", 0, kUnknown}, {"<s>", 0, kControl}, {"</s>", 0, kControl}};
  for (int byte = 0; options.byte_fallback && byte < 256; ++byte)
    all.push_back({fmt::format("<0x{:02X}>", byte), 0, kByte});
  all.insert(all.end(), pieces.begin(), pieces.end());
  std::vector<std::string> fields;
  for (const ModelPiece& p : all)
    fields.push_back(bytes_field(1, bytes_field(1, p.piece) + float_field(2, p.score) + varint_field(3, p.type)));
  const std::string trainer = varint_field(3, options.model_type) + varint_field(35, options.byte_fallback) +
                              varint_field(40, 0) + varint_field(41, 1) + varint_field(42, 2) + varint_field(43, -1) +
                              options.trainer_extra;
  const std::string normalizer = bytes_field(1, "identity") + varint_field(3, options.add_dummy_prefix) +
                                 varint_field(4, options.remove_extra_whitespaces) +
                                 varint_field(5, options.escape_whitespaces);
  fields.push_back(bytes_field(2, trainer));
  fields.push_back(bytes_field(3, normalizer));
  return fields;
}

std::string sentencepiece_file(const std::vector<ModelPiece>& pieces, const ModelOptions& options = {}) {
  std::string file;
  for (const std::string& field : sentencepiece_fields(pieces, options)) file += field;
  return file;
}

// A small BPE vocabulary with every piece type: "ca" is UNUSED (SentencePiece merges into it, then splits it
// again), "@@" USER_DEFINED (matched whole, never merged), "ab" and "▁a" tie (the leftmost pair merges first).
const std::vector<ModelPiece> kCraftedPieces = {
    {"▁", -1},
    {"a", -1},
    {"b", -1},
    {"c", -1},
    {" ", -1},
    {"é", -1},
    {"▁a", -2},
    {"ab", -2},
    {"bc", -3},
    {"▁ab", -4},
    {"abc", -5},
    {" a", -2},
    {"ca", -1.5f, kUnused},
    {"@@", 0, kUserDefined},
};

const std::vector<std::string> kCraftedTexts = {
    "abc", "a b  c", "  ab  ",  "ab@@c", "@@",  "@@@", "xyz ab",       "cab",      "",        " ",
    "   ", "é",      "a\xff b", "ca ca", "aaa", "x y", "\xef\xbf\xbd", "bca@@@ab", "ab\n\nc", "  a  b  ",
};

// Each flag the reader honours, with and without byte fallback, against Google on the same file.
TEST_F(TokenizerFiles, BuiltModelsAgreeWithGoogle) {
  SKIP_WITHOUT_GOOGLE_SENTENCEPIECE();
  struct Variant {
    const char* name;
    ModelOptions options;
  };
  const std::vector<Variant> variants = {
      {"llama_flags", flags(false)},
      {"byte_fallback", flags(true)},
      {"remove_extra_whitespaces", flags(true, true, true)},
      {"no_dummy_prefix", flags(false, false, false)},
      {"no_dummy_prefix_remove_spaces", flags(true, false, true)},
      {"unescaped_spaces", flags(false, true, false, false)},
  };
  int agree = 0, total = 0;
  for (const Variant& variant : variants) {
    const std::string path =
        write(std::string(variant.name) + ".model", sentencepiece_file(kCraftedPieces, variant.options));
    auto tokenizer = load_tokenizer(path);
    ASSERT_EQ(tokenizer->kind(), "sentencepiece");
    GoogleResult google = google_sentencepiece(path, kCraftedTexts);
    std::vector<std::vector<int64_t>> id_lists = google.ids;
    const int64_t last = tokenizer->vocab_size() - 1;
    id_lists.push_back({last - 13, last - 12, 1, last - 13, 0, 2, last - 2});  // ▁ a <s> ▁ <unk> </s> " a"
    id_lists.push_back({0, last - 13, last - 6});                              // <unk> ▁ ab
    id_lists.push_back({last - 13, last - 4, last - 13});                      // ▁ ▁ab ▁
    id_lists.push_back({last - 13, 1, last - 4});                              // ▁ <s> ▁ab
    const GoogleResult decoded = google_sentencepiece(path, {}, id_lists);
    for (std::size_t i = 0; i < kCraftedTexts.size(); ++i) {
      const auto ids = tokenizer->encode(kCraftedTexts[i], false, false);
      agree += ids == google.ids[i];
      ++total;
      EXPECT_EQ(ids, google.ids[i]) << variant.name << " '" << kCraftedTexts[i] << "'";
    }
    for (std::size_t i = 0; i < id_lists.size(); ++i)
      EXPECT_EQ(tokenizer->decode(id_lists[i]), decoded.texts[i]) << variant.name << " " << ids_text(id_lists[i]);
  }
  std::printf("models built here: native SentencePiece and Google's agree on %d of %d encodings\n", agree, total);
  EXPECT_EQ(agree, total);
}

TEST_F(TokenizerFiles, BuiltModelPieceTypes) {
  auto tokenizer = load_tokenizer(write("types.model", sentencepiece_file(kCraftedPieces)));
  constexpr int64_t kUnk = 0, kDummy = 3, kA = 4, kB = 5, kC = 6, kDummyA = 9, kAB = 10, kBC = 11, kDummyAB = 12,
                    kAt = 16;
  // "abc": ▁+a and a+b tie at -2; the leftmost merges first, then b+c (-3) beats ▁a+b (-4).
  EXPECT_EQ(tokenizer->encode("abc", false, false), (std::vector<int64_t>{kDummyA, kBC}));
  // "cab": c+a ("ca", UNUSED, -1.5) merges before a+b ("ab", -2), then splits back into c, a.
  EXPECT_EQ(tokenizer->encode("cab", false, false), (std::vector<int64_t>{kDummy, kC, kA, kB}));
  EXPECT_EQ(tokenizer->encode("ab@@c", false, false), (std::vector<int64_t>{kDummyAB, kAt, kC}));
  // Without byte fallback a run of missing characters is one <unk>, written back as " ⁇ ".
  EXPECT_EQ(tokenizer->encode("xyz ab", false, false), (std::vector<int64_t>{kDummy, kUnk, kDummyAB}));
  EXPECT_EQ(tokenizer->decode({kDummy, kUnk, kDummyAB}), " ⁇  ab");
  EXPECT_EQ(tokenizer->encode("ab", true, true), (std::vector<int64_t>{1, kDummyAB, 2}));
  EXPECT_EQ(tokenizer->decode({1, kDummyAB, 2}), "ab");
  EXPECT_EQ(tokenizer->piece(kAB), "ab");
  EXPECT_EQ(tokenizer->vocab_size(), 3 + static_cast<int64_t>(kCraftedPieces.size()));
}

// Unknown fields of every wire type, at every level, change nothing.
TEST_F(TokenizerFiles, UnknownFieldsAreSkipped) {
  const std::string unknown = varint_field(90, 123456789) + key(91, 1) + std::string(8, '\x7f') +
                              bytes_field(92, "skipped") + float_field(93, 1.5f) + key(94, 3) + varint_field(1, 5) +
                              key(2, 3) + bytes_field(3, "nested") + key(2, 4) + key(94, 4);
  std::string plain, with_unknown;
  {
    std::vector<ModelPiece> pieces = kCraftedPieces;
    plain = sentencepiece_file(pieces);
    ModelOptions options;
    options.trainer_extra = unknown;
    with_unknown = sentencepiece_file(pieces, options);
    // Inside the first piece entry and the normalizer too, and at the end of the ModelProto.
    const std::string first_piece = bytes_field(1, "<unk>") + float_field(2, 0) + varint_field(3, kUnknown);
    const std::size_t first_size = 2 + first_piece.size();
    with_unknown = bytes_field(1, first_piece + unknown) + with_unknown.substr(first_size) + unknown +
                   bytes_field(3, unknown + varint_field(3, 1));
  }
  auto expected = load_tokenizer(write("plain.model", plain));
  const std::string path = write("unknown_fields.model", with_unknown);
  auto tokenizer = load_tokenizer(path);
  for (const std::string& text : kCraftedTexts)
    EXPECT_EQ(tokenizer->encode(text, true, true), expected->encode(text, true, true)) << "'" << text << "'";
  if (google_sentencepiece_missing().empty()) {
    const GoogleResult google = google_sentencepiece(path, kCraftedTexts);
    for (std::size_t i = 0; i < kCraftedTexts.size(); ++i)
      EXPECT_EQ(tokenizer->encode(kCraftedTexts[i], false, false), google.ids[i]) << "'" << kCraftedTexts[i] << "'";
  }
}

TEST_F(TokenizerFiles, MalformedSentencePieceModelsAreErrors) {
  const std::string good = sentencepiece_file(kCraftedPieces);
  ASSERT_EQ(load_error(write("good.model", good)), "");
  const std::string malformed = ": malformed SentencePiece .model: ";
  auto expect_error = [&](const std::string& name, const std::string& bytes, const std::string& expected) {
    const std::string path = write(name, bytes);
    const std::string message = load_error(path);
    EXPECT_NE(message.find(path + expected), std::string::npos) << name << ": " << message;
  };
  // Cut at every byte. Inside a field: a malformed model (1 or 2 bytes are too short to be told apart: an Error
  // naming the file). Between two fields the rest is a valid ModelProto: without its TrainerSpec it is UNIGRAM, an
  // Error naming the file; without only its NormalizerSpec it loads (with the .proto's default normalizer).
  std::set<std::size_t> boundaries;
  std::size_t boundary = 0;
  for (const std::string& field : sentencepiece_fields(kCraftedPieces, {})) boundaries.insert(boundary += field.size());
  const std::size_t after_trainer = *std::prev(boundaries.end(), 2);
  int cut_inside = 0;
  for (std::size_t size = 1; size < good.size(); ++size) {
    const std::string path = write("cut.model", good.substr(0, size));
    const std::string message = load_error(path);
    if (size == after_trainer) {
      EXPECT_EQ(message, "") << size;
      continue;
    }
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << size << ": " << message;
    if (size < 3 || boundaries.count(size) == 1) continue;
    EXPECT_EQ(message.rfind(path + malformed, 0), 0u) << size << ": " << message;
    ++cut_inside;
  }
  EXPECT_GT(cut_inside, 200);
  expect_error("cut_first.model", good.substr(0, 6),
               malformed + "a length of 14 runs past the end (4 bytes remain) at byte 1 (in ModelProto)");
  expect_error("cut_last.model", good.substr(0, good.size() - 1), malformed + "a length of");
  expect_error("varint_off_end.model", good + key(9, 0) + "\xff\xff",
               malformed + fmt::format("a varint runs past the end at byte {} (in ModelProto)", good.size() + 1));
  expect_error("varint_too_long.model", good + key(9, 0) + std::string(11, '\xff') + "\x01",
               malformed + "a varint is longer than 10 bytes");
  expect_error(
      "length_past_end.model", good + key(4, 2) + varint(16) + "abc",
      malformed + fmt::format("a length of 16 runs past the end (3 bytes remain) at byte {}", good.size() + 1));
  expect_error("fixed32_past_end.model", good + key(9, 5) + "ab",
               malformed + "a fixed32 needs 4 bytes but only 2 remain");
  expect_error("wrong_wire_type.model", good + float_field(2, 1.0f),
               malformed + "field 2 (trainer_spec) has wire type 5 (fixed32), expected 2 (length-delimited)");
  expect_error("score_as_varint.model", bytes_field(1, bytes_field(1, "<unk>") + varint_field(2, 3)) + good,
               malformed + "field 2 (score) has wire type 0 (varint), expected 5 (fixed32)");
  expect_error("piece_type.model", bytes_field(1, bytes_field(1, "x") + varint_field(3, 9)) + good,
               malformed + "piece type 9, expected 1 (NORMAL) to 6 (BYTE) at byte 6 (in ModelProto.pieces[0])");
  expect_error("wire_type_7.model", good + key(9, 7), malformed + "field 9 has invalid wire type 7");
  expect_error("open_group.model", good + key(9, 3) + varint_field(1, 1),
               malformed + "the group of field 9 has no end-group tag");
  expect_error("stray_end_group.model", good + key(9, 4),
               malformed + "an end-group tag for field 9 without its start-group");

  const std::string invalid = ": invalid SentencePiece .model: ";
  ModelOptions bos_999;
  bos_999.trainer_extra = varint_field(41, 999);
  expect_error("no_unknown.model",
               bytes_field(1, bytes_field(1, "a") + float_field(2, 0)) + bytes_field(2, varint_field(3, 2)),
               invalid + "no piece has type UNKNOWN (<unk>)");
  expect_error("twice.model", sentencepiece_file({{"a"}, {"b"}, {"a"}}), invalid + "piece 5 'a' is defined twice");
  expect_error("empty_piece.model", sentencepiece_file({{""}}), invalid + "piece 3 is empty");
  expect_error("byte_without_fallback.model", sentencepiece_file({{"<0x41>", 0, kByte}}),
               invalid + "piece 3 '<0x41>' is a BYTE piece but trainer_spec.byte_fallback is false");
  expect_error("bos_out_of_range.model", sentencepiece_file(kCraftedPieces, bos_999),
               invalid + "trainer_spec.bos_id is 999, expected -1 (none) or an id below 17");
  // No pieces at all: the file no longer looks like a SentencePiece model, so it is read by format.
  try {
    sentencepiece_tokenizer_from_bytes("only_trainer.model", bytes_field(2, varint_field(3, 2)));
    ADD_FAILURE() << "a model without pieces loaded";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "only_trainer.model: invalid SentencePiece .model: it has no pieces (ModelProto field 1)");
  }
}

// Every byte of a model overwritten with 0x00, 0x7F, 0x80 and 0xFF: an Error or a model that works, never a crash.
TEST_F(TokenizerFiles, CorruptedSentencePieceModelsNeverCrash) {
  const std::string good = sentencepiece_file(kCraftedPieces, flags(true));
  int errors = 0, loaded = 0;
  for (std::size_t at = 0; at < good.size(); ++at) {
    for (char value : {'\x00', '\x7f', '\x80', '\xff'}) {
      std::string bytes = good;
      bytes[at] = value;
      try {
        auto tokenizer = sentencepiece_tokenizer_from_bytes("corrupt.model", bytes);
        const auto ids = tokenizer->encode("abc ab\xff", true, true);
        tokenizer->decode(ids);
        ++loaded;
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind("corrupt.model: ", 0), 0u) << e.what();
        ++errors;
      }
    }
  }
  std::printf("%zu corrupted models: %d errors, %d still load and encode\n", good.size() * 4, errors, loaded);
  EXPECT_GT(errors, 0);
}

TEST_F(TokenizerFiles, UnsupportedSentencePieceModelsAreClearErrors) {
  ModelOptions unigram;
  unigram.model_type = 1;
  const std::string path = write("unigram.model", sentencepiece_file(kCraftedPieces, unigram));
  EXPECT_EQ(load_error(path), path +
                                  ": SentencePiece model_type 1 (UNIGRAM) is not supported, expected 2 (BPE, as "
                                  "LLaMA's tokenizer.model)");
  std::string with_rules =
      sentencepiece_file(kCraftedPieces) + bytes_field(3, bytes_field(1, "nmt_nfkc") + bytes_field(2, "rules"));
  const std::string rules = write("rules.model", with_rules);
  EXPECT_NE(load_error(rules).find(rules + ": the SentencePiece normalizer 'nmt_nfkc' has normalization rules"),
            std::string::npos)
      << load_error(rules);
  ModelOptions suffix;
  suffix.trainer_extra = varint_field(24, 1);
  const std::string suffix_path = write("suffix.model", sentencepiece_file(kCraftedPieces, suffix));
  EXPECT_NE(load_error(suffix_path).find(suffix_path + ": SentencePiece treat_whitespace_as_suffix is not supported"),
            std::string::npos)
      << load_error(suffix_path);
}

// ---- bad files ----------------------------------------------------------------------------------------------------

TEST_F(TokenizerFiles, BadFilesAreErrorsNamingTheFile) {
  const std::string missing = (dir_ / "absent.model").string();
  EXPECT_NE(load_error(missing).find(missing + ": cannot open the tokenizer file"), std::string::npos)
      << load_error(missing);

  const std::string empty = write("empty.bin", "");
  EXPECT_EQ(load_error(empty), empty + ": the file is empty, expected a SentencePiece .model or a llama2.c tokenizer.bin");

  const std::string good = llama2c_file({{" ", 0}, {"hello", -1}});
  ASSERT_EQ(load_error(write("good.bin", good)), "");
  // Cut inside the last piece's bytes ("hel" of "hello"), then inside a piece's length field.
  const std::string cut_in_piece = write("cut_piece.bin", good.substr(0, good.size() - 2));
  EXPECT_EQ(load_error(cut_in_piece),
            cut_in_piece + ": truncated llama2.c tokenizer.bin: piece 260 needs 5 bytes, but only 3 remain");
  const std::string cut_in_header = write("cut_length.bin", good.substr(0, good.size() - 7));
  EXPECT_NE(load_error(cut_in_header).find(cut_in_header + ": truncated llama2.c tokenizer.bin: piece 260"),
            std::string::npos)
      << load_error(cut_in_header);

  const std::string text = write("notes.txt", "These are notes, not a tokenizer.\n");
  EXPECT_NE(load_error(text).find(text + ": neither a SentencePiece .model nor a llama2.c tokenizer.bin"),
            std::string::npos)
      << load_error(text);
  const std::string tiny = write("tiny.bin", "ab");
  EXPECT_NE(load_error(tiny).find(tiny + ": 2 bytes is too short"), std::string::npos) << load_error(tiny);

  const std::string no_bytes = write("no_bytes.bin", llama2c_file({}).substr(0, 4 + 3 * 8 + 5 + 5 + 6));
  EXPECT_NE(load_error(no_bytes).find(no_bytes + ": a llama2.c tokenizer.bin with 3 pieces, expected at least 259"),
            std::string::npos)
      << load_error(no_bytes);

  const std::string directory = dir_.string();
  EXPECT_NE(load_error(directory).find(directory + ": is a directory"), std::string::npos) << load_error(directory);
}

TEST_F(TokenizerFiles, TruncatedRealFilesAreErrors) {
  SKIP_WITHOUT(kTok512);
  SKIP_WITHOUT(kLlamaModel);
  // tok512.bin cut in the middle of piece 300's bytes.
  const std::string tok512 = read_text(kTok512);
  std::size_t at = 4;
  for (int piece = 0; piece < 300; ++piece) {
    int32_t length;
    std::memcpy(&length, tok512.data() + at + 4, 4);
    at += 8 + length;
  }
  int32_t length;
  std::memcpy(&length, tok512.data() + at + 4, 4);
  ASSERT_GE(length, 2);
  const std::string cut = write("tok512_cut.bin", tok512.substr(0, at + 8 + length / 2));
  EXPECT_NE(load_error(cut).find(cut + ": truncated llama2.c tokenizer.bin: piece 300 needs"), std::string::npos)
      << load_error(cut);

  const std::string model = read_text(kLlamaModel);
  for (std::size_t size :
       {model.size() - 1, model.size() - 300, model.size() / 2, std::size_t{1000}, std::size_t{100}, std::size_t{3}}) {
    const std::string half = write("half.model", model.substr(0, size));
    const std::string message = load_error(half);
    EXPECT_EQ(message.rfind(half + ": ", 0), 0u) << size << ": " << message;
  }
  const std::string one_short = write("one_short.model", model.substr(0, model.size() - 1));
  EXPECT_NE(load_error(one_short).find(one_short + ": malformed SentencePiece .model: a length of"), std::string::npos)
      << load_error(one_short);
}

// ---- speed --------------------------------------------------------------------------------------------------------

struct EncodeRun {
  std::size_t tokens = 0, characters = 0;
  double seconds = 0;
};

// Every paragraph encoded with BOS: token and byte counts and the wall time.
EncodeRun encode_all(const Tokenizer& tokenizer, const std::vector<std::string>& paragraphs) {
  EncodeRun run;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& paragraph : paragraphs) {
    run.tokens += tokenizer.encode(paragraph, true, false).size();
    run.characters += paragraph.size();
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

TEST(Llama2c, EncodesTinyStoriesQuickly) {
  SKIP_WITHOUT(kTok512);
  SKIP_WITHOUT(kTinyStories);
  auto tokenizer = load_tokenizer(kTok512.string());
  const auto paragraphs = read_paragraphs(kTinyStories);
  const auto [tokens, characters, seconds] = encode_all(*tokenizer, paragraphs);
  std::printf("tok512: %zu paragraphs, %zu bytes -> %zu tokens in %.3f s: %.0f tokens/s\n", paragraphs.size(),
              characters, tokens, seconds, tokens / seconds);
  EXPECT_GT(tokens, characters / 8);  // tok512's pieces are at most 7 bytes long
}

// LLaMA's 32,000-piece vocabulary, as tokenizer.model (native SentencePiece reader) and as tokenizer.bin (llama2.c).
TEST(SentencePiece, LoadsAndEncodesTinyStoriesQuickly) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  const auto paragraphs = read_paragraphs(kTinyStories);
  for (const fs::path& file : {kLlamaModel, kLlamaBin}) {
    const auto load_start = std::chrono::steady_clock::now();
    auto tokenizer = load_tokenizer(file.string());
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    const auto [tokens, characters, seconds] = encode_all(*tokenizer, paragraphs);
    std::printf(
        "LLaMA vocabulary, %s: loaded in %.0f ms; %zu paragraphs, %zu bytes -> %zu tokens in %.3f s: %.0f "
        "tokens/s\n",
        tokenizer->kind().c_str(), load_seconds * 1e3, paragraphs.size(), characters, tokens, seconds,
        tokens / seconds);
    EXPECT_LT(load_seconds, 5.0) << file;
    EXPECT_LT(seconds, 10.0) << file;
    EXPECT_GT(tokens, characters / 8) << file;
  }
}

}  // namespace
}  // namespace qforge::tok
