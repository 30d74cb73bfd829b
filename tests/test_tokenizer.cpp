// Tokenizers: SentencePiece against public facts, our llama2.c BPE against Google's SentencePiece and against a
// literal transcription of run.c's encode(), round trips, byte fallback, bad files, speed.
#include "framework/common/error.h"
#include "framework/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
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

// ---- our llama2.c BPE against Google's SentencePiece --------------------------------------------------------

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

TEST(Llama2c, LlamaVocabularyAgreesWithSentencePiece) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  auto sentencepiece = load_tokenizer(kLlamaModel.string());
  auto llama2c = load_tokenizer(kLlamaBin.string());
  ASSERT_EQ(llama2c->kind(), "llama2c");
  ASSERT_EQ(llama2c->vocab_size(), sentencepiece->vocab_size());

  for (const std::string& sentence : kSentences) {
    const auto expected = sentencepiece->encode(sentence, true, true);
    EXPECT_EQ(llama2c->encode(sentence, true, true), expected) << "'" << sentence << "'";
    EXPECT_EQ(llama2c->decode(expected), sentencepiece->decode(expected)) << "'" << sentence << "'";
    EXPECT_EQ(llama2c->decode(expected), sentence);
  }

  auto paragraphs = read_paragraphs(kTinyStories);
  ASSERT_GE(paragraphs.size(), 200u);
  paragraphs.resize(200);
  int agree = 0;
  for (const std::string& paragraph : paragraphs) {
    const auto expected = sentencepiece->encode(paragraph, true, false);
    const auto ids = llama2c->encode(paragraph, true, false);
    agree += ids == expected;
    EXPECT_EQ(ids, expected) << "'" << paragraph << "'";
    EXPECT_EQ(llama2c->decode(ids), paragraph);
  }
  std::printf("llama2.c BPE and SentencePiece agree on %d of %zu TinyStories paragraphs\n", agree, paragraphs.size());
  EXPECT_EQ(agree, 200);
}

// A long paragraph (several thousand characters) in one call: the same ids as SentencePiece, quickly.
TEST(Llama2c, LongTextAgreesWithSentencePiece) {
  SKIP_WITHOUT(kLlamaModel);
  SKIP_WITHOUT(kLlamaBin);
  SKIP_WITHOUT(kTinyStories);
  auto sentencepiece = load_tokenizer(kLlamaModel.string());
  auto llama2c = load_tokenizer(kLlamaBin.string());
  const std::string text = read_text(kTinyStories).substr(0, 20000);
  const auto start = std::chrono::steady_clock::now();
  const auto ids = llama2c->encode(text, true, true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%zu characters -> %zu tokens in %.1f ms\n", text.size(), ids.size(), seconds * 1e3);
  EXPECT_TRUE(ids == sentencepiece->encode(text, true, true)) << "the ids of the long text differ";
  EXPECT_TRUE(llama2c->decode(ids) == text) << "the long text does not round-trip";
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

class TokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qforge_tokenizer_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // The qforge::Error message of loading `path`, or "" when it loads.
  static std::string load_error(const std::string& path) {
    try {
      load_tokenizer(path);
      return "";
    } catch (const Error& e) {
      return e.what();
    }
  }

  fs::path dir_;
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
  for (std::size_t size : {model.size() / 2, std::size_t{100}, std::size_t{3}}) {
    const std::string half = write("half.model", model.substr(0, size));
    const std::string message = load_error(half);
    EXPECT_EQ(message.rfind(half + ": ", 0), 0u) << size << ": " << message;
  }
}

// ---- speed --------------------------------------------------------------------------------------------------------

TEST(Llama2c, EncodesTinyStoriesQuickly) {
  SKIP_WITHOUT(kTok512);
  SKIP_WITHOUT(kTinyStories);
  auto tokenizer = load_tokenizer(kTok512.string());
  const auto paragraphs = read_paragraphs(kTinyStories);
  std::size_t tokens = 0, characters = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string& paragraph : paragraphs) {
    tokens += tokenizer->encode(paragraph, true, false).size();
    characters += paragraph.size();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("tok512: %zu paragraphs, %zu bytes -> %zu tokens in %.3f s: %.0f tokens/s\n", paragraphs.size(),
              characters, tokens, seconds, tokens / seconds);
  EXPECT_GT(tokens, characters / 8);  // tok512's pieces are at most 7 bytes long
}

}  // namespace
}  // namespace qforge::tok
