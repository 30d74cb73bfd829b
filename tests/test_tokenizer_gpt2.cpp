// GPT-2 byte-level BPE: GPT-2's own vocab.json + merges.txt against the ids of OpenAI's encoder (facts in
// ../shared/README.md), the pre-tokenizer regex on whitespace, digits, contractions and Unicode, round trips on
// WikiText-2 and TinyStories, OPT's conventions (</s> = 2 as BOS and EOS, <pad>) on a vocabulary written here,
// Hugging Face tokenizer.json (both spellings of merges, added tokens) against vocab.json + merges.txt, bad files;
// and all of it against OpenAI's encoder.py algorithm in Python (tests/reference/gpt2_bpe_ids.py).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <nlohmann/json.hpp>

#include "framework/common/error.h"
#include "framework/tokenizer/gpt2_bpe.h"
#include "framework/tokenizer/tokenizer.h"
#include "tests/test_support.h"

namespace qforge::tok {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kShared = QFORGE_SHARED_DIR;
const fs::path kGpt2Dir = kShared / "models/gpt2_tokenizer";
const fs::path kGpt2Vocab = kGpt2Dir / "vocab.json";
const fs::path kWikiText = kShared / "data/wikitext-2/wiki.test.raw";
const fs::path kTinyStories = kShared / "data/tinystories/tinystories_val.txt";
const fs::path kReferenceScript = QFORGE_GPT2_BPE_REFERENCE;

constexpr int64_t kEndOfText = 50256;  // GPT-2's <|endoftext|>
constexpr std::size_t kGpt2VocabSize = 50257;
constexpr int kRandomTexts = 2000;  // random texts sent to the reference
constexpr int kThreads = 4;

#define SKIP_WITHOUT(path)                                                              \
  if (!fs::exists(path))                                                                \
  GTEST_SKIP() << (path).string()                                                       \
               << " is absent: the shared test data (../shared beside the repository) " \
                  "is not on this machine"

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string text;
  for (int64_t id : ids) text += (text.empty() ? "" : ", ") + std::to_string(id);
  return "[" + text + "]";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Spaces, newlines, digits, contractions, accents, CJK, emoji, control characters.
const std::vector<std::string> kEdgeCases = {
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    " \n \n",
    "a  b",
    "a   b   ",
    "trailing spaces   ",
    "   leading",
    "\t tab\t\tand",
    "line\r\nends\r\n",
    "12345 678,90 3.14159",
    "don't I'LL we've they'd you're it's Mary's 'quoted'",
    "café naïve Ångström façade",
    "日本語のテキスト、中文文本。",
    "emoji 👍🏽 and 🤖🚀!",
    "Ünïcödé\u00A0no-break\u3000ideographic",
    "mixed123abc!!!???",
    "\u0085next line",
    "<|endoftext|>",
    "</s> <pad>",
    "tabs\t\t\tand\u2028separators",
};

TEST(Gpt2Bpe, ReferenceIdsOfGpt2) {
  SKIP_WITHOUT(kGpt2Vocab);
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  EXPECT_EQ(tokenizer->kind(), "gpt2-bpe");
  EXPECT_EQ(tokenizer->vocab_size(), static_cast<int64_t>(kGpt2VocabSize));
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"hello world", {31373, 995}},
      {"Hello world", {15496, 995}},
      {" the", {262}},
      {"Once upon a time, there was a little girl named Lily.",
       {7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 3706, 20037, 13}},
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}},  // text, not the special token
  };
  for (const auto& [text, ids] : cases) EXPECT_EQ(tokenizer->encode(text, false, false), ids) << text;
  // The same from vocab.json itself (merges.txt beside it).
  EXPECT_EQ(load_tokenizer(kGpt2Vocab.string())->encode("hello world", false, false),
            (std::vector<int64_t>{31373, 995}));
  EXPECT_EQ(tokenizer->piece(262), "\xC4\xA0the");  // "Ġthe"
  EXPECT_EQ(tokenizer->piece(kEndOfText), "<|endoftext|>");
}

TEST(Gpt2Bpe, Gpt2BosAndEosAreEndOfText) {
  SKIP_WITHOUT(kGpt2Vocab);
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  EXPECT_EQ(tokenizer->bos_id(), kEndOfText);
  EXPECT_EQ(tokenizer->eos_id(), kEndOfText);
  EXPECT_EQ(tokenizer->encode("hello world", true, true), (std::vector<int64_t>{kEndOfText, 31373, 995, kEndOfText}));
  EXPECT_EQ(tokenizer->decode({kEndOfText, 31373, 995, kEndOfText}), "hello world");
  EXPECT_EQ(tokenizer->decode_next(kEndOfText, 31373), "hello");
  EXPECT_EQ(tokenizer->decode_next(31373, 995), " world");
  EXPECT_EQ(tokenizer->decode_next(995, kEndOfText), "");
  EXPECT_THROW(tokenizer->decode({static_cast<int64_t>(kGpt2VocabSize)}), Error);
  EXPECT_THROW(tokenizer->decode({-1}), Error);
  EXPECT_THROW(tokenizer->piece(static_cast<int64_t>(kGpt2VocabSize)), Error);
}

// The regex's cuts, as Python's `regex` module makes them with GPT-2's pattern (encoder.py).
TEST(Gpt2Bpe, PreTokenizerCutsAsGpt2Does) {
  using Words = std::vector<std::string>;
  // \s+(?!\S) leaves the last whitespace character of a run to the next word; a run at the end stays whole.
  EXPECT_EQ(gpt2_words("a   b"), (Words{"a", "  ", " b"}));
  EXPECT_EQ(gpt2_words("a \n\nb"), (Words{"a", " \n", "\n", "b"}));
  EXPECT_EQ(gpt2_words("end  "), (Words{"end", "  "}));
  EXPECT_EQ(gpt2_words("\n\n"), (Words{"\n\n"}));
  // Contractions are lower-case only: "'LL" is "'" and "LL".
  EXPECT_EQ(gpt2_words("don't"), (Words{"don", "'t"}));
  EXPECT_EQ(gpt2_words("I'LL"), (Words{"I", "'", "LL"}));
  EXPECT_EQ(gpt2_words("we've they'd"), (Words{"we", "'ve", " they", "'d"}));
  // Letters, digits and the rest are separate words, each with at most one space in front.
  EXPECT_EQ(gpt2_words(" 2020 was 3.14"), (Words{" 2020", " was", " 3", ".", "14"}));
  EXPECT_EQ(gpt2_words("is!? ok"), (Words{"is", "!?", " ok"}));
  EXPECT_EQ(gpt2_words("café 日本語のテキスト、中文"), (Words{"café", " 日本語のテキスト", "、", "中文"}));
  EXPECT_EQ(gpt2_words("hi 👍🏽!"), (Words{"hi", " 👍🏽!"}));
  // \s is Unicode White_Space, as in Python's `regex`: U+0085 (NEL) is whitespace (PCRE2's own \s has it not).
  EXPECT_EQ(gpt2_words("x \u0085y"), (Words{"x", " ", "\u0085", "y"}));
  EXPECT_EQ(gpt2_words("x\u00A0\u3000y"), (Words{"x", "\u00A0", "\u3000", "y"}));
}

TEST(Gpt2Bpe, RoundTripsEdgeCases) {
  SKIP_WITHOUT(kGpt2Vocab);
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  for (const std::string& text : kEdgeCases) {
    const std::vector<int64_t> ids = tokenizer->encode(text, true, false);
    EXPECT_EQ(tokenizer->decode(ids), text) << ids_text(ids);
    std::string streamed;
    for (std::size_t i = 1; i < ids.size(); ++i) streamed += tokenizer->decode_next(ids[i - 1], ids[i]);
    EXPECT_EQ(streamed, text);
  }
  // Malformed UTF-8 still round trips, byte for byte.
  const std::string malformed = "ab\xFF\xC3 c\xE2\x82";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(malformed, false, false)), malformed);
}

TEST(Gpt2Bpe, RoundTripsWikiTextAndTinyStories) {
  SKIP_WITHOUT(kGpt2Vocab);
  SKIP_WITHOUT(kWikiText);
  SKIP_WITHOUT(kTinyStories);
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  for (const fs::path& path : {kWikiText, kTinyStories}) {
    const std::string text = read_text(path);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int64_t> ids = tokenizer->encode(text, true, false);
    const double seconds = seconds_since(start);
    EXPECT_TRUE(tokenizer->decode(ids) == text) << path;
    std::printf("gpt2-bpe: %s, %zu bytes -> %zu tokens in %.3f s (%.0f tokens/s, first call, empty word cache)\n",
                path.filename().c_str(), text.size(), ids.size(), seconds, static_cast<double>(ids.size()) / seconds);
  }
}

std::string hex(const std::string& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string text;
  for (unsigned char c : bytes) text += {kDigits[c >> 4], kDigits[c & 15]};
  return text;
}

// The ids of `texts` from encoder.py's algorithm (tests/reference/gpt2_bpe_ids.py) and the splitter it used.
std::vector<std::vector<int64_t>> reference_ids(const std::vector<std::string>& texts, std::string& splitter) {
  const fs::path request_file = fs::temp_directory_path() / fmt::format("qforge_gpt2_request_{}.json", ::getpid());
  json request = {{"encode", json::array()}};
  for (const std::string& text : texts) request["encode"].push_back(hex(text));
  std::ofstream(request_file) << request.dump();
  const std::string command =
      fmt::format("/usr/bin/python3 '{}' '{}' '{}' < '{}'", kReferenceScript.string(), kGpt2Vocab.string(),
                  (kGpt2Dir / "merges.txt").string(), request_file.string());
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string output;
  char buffer[1 << 16];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  fs::remove(request_file);
  if (status != 0) throw std::runtime_error(fmt::format("{} failed with status {}", command, status));
  const json reply = json::parse(output);
  splitter = reply.at("splitter");
  return reply.at("encode").get<std::vector<std::vector<int64_t>>>();
}

// Texts drawn from the characters where the regex's alternatives meet: spaces and other whitespace, apostrophes,
// contraction letters, digits, punctuation, combining marks (neither letters nor digits), CJK, emoji.
std::vector<std::string> random_texts() {
  const std::vector<std::string> alphabet = {
      " ", " ", " ", "\n", "\t", "\r", "'", "'", "s", "t", "l", "L", "v", "e", "d", "m", "x", "7", "0", ".", ",",
      "!", "-", "\u00A0", "\u0085", "\u2003", "\u3000", "\u0301", "\u00E9", "\u00B2", "\u0663", "\u65E5",
      "\u3001", "\U0001F44D", "\U0001F3FD", "\u200B", "\u2028"};
  std::mt19937 random(12345);
  std::vector<std::string> texts(kRandomTexts);
  for (std::string& text : texts) {
    const std::size_t length = 1 + random() % 24;
    for (std::size_t i = 0; i < length; ++i) text += alphabet[random() % alphabet.size()];
  }
  return texts;
}

TEST(Gpt2Bpe, SameIdsAsEncoderPy) {
  SKIP_WITHOUT(kGpt2Vocab);
  SKIP_WITHOUT(kWikiText);
  SKIP_WITHOUT(kTinyStories);
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 is absent: the reference cannot run";
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  std::vector<std::string> texts = kEdgeCases;
  const std::vector<std::string> random = random_texts();
  texts.insert(texts.end(), random.begin(), random.end());
  texts.push_back(read_text(kWikiText));
  texts.push_back(read_text(kTinyStories));
  std::string splitter;
  const std::vector<std::vector<int64_t>> expected = reference_ids(texts, splitter);
  ASSERT_EQ(expected.size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int64_t> ids = tokenizer->encode(texts[i], false, false);
    if (texts[i].size() < 200)
      EXPECT_EQ(ids, expected[i]) << texts[i];
    else
      EXPECT_TRUE(ids == expected[i]) << "text " << i << ": " << ids.size() << " ids, " << expected[i].size();
  }
  std::printf("encoder.py (words by %s): the same ids for %zu texts, WikiText-2 test %zu tokens\n", splitter.c_str(),
              texts.size(), expected[texts.size() - 2].size());
}

// The word cache is shared: threads encoding at once get the ids one thread gets.
TEST(Gpt2Bpe, ConcurrentEncodesAgree) {
  SKIP_WITHOUT(kGpt2Vocab);
  SKIP_WITHOUT(kTinyStories);
  const auto tokenizer = load_tokenizer(kGpt2Dir.string());
  const std::string text = read_text(kTinyStories);
  const std::vector<int64_t> alone = load_tokenizer(kGpt2Dir.string())->encode(text, true, false);
  std::vector<std::vector<int64_t>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back([&, t] { ids[t] = tokenizer->encode(text, true, false); });
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(ids[t] == alone) << "thread " << t;
}

// A tokenizer.json made of GPT-2's vocab.json and merges.txt, with <|endoftext|> as a special added token.
json gpt2_tokenizer_json() {
  json merges = json::array();
  std::ifstream in(kGpt2Dir / "merges.txt");
  std::string line;
  std::getline(in, line);  // #version
  while (std::getline(in, line))
    if (!line.empty()) merges.push_back(line);
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", kEndOfText}, {"content", "<|endoftext|>"}, {"special", true}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", ""},
            {"end_of_word_suffix", ""},
            {"vocab", json::parse(read_text(kGpt2Vocab))},
            {"merges", merges}}}};
}

class Gpt2Files : public test::ScratchFiles {};

TEST_F(Gpt2Files, TokenizerJsonOfGpt2GivesTheSameIdsOnWikiText) {
  SKIP_WITHOUT(kGpt2Vocab);
  SKIP_WITHOUT(kWikiText);
  const std::string path = write("gpt2/tokenizer.json", gpt2_tokenizer_json().dump());
  const auto from_json = load_tokenizer(fs::path(path).parent_path().string());
  const auto from_files = load_tokenizer(kGpt2Dir.string());
  const std::string text = read_text(kWikiText);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int64_t> ids = from_json->encode(text, true, false);
  const double seconds = seconds_since(start);
  std::printf("gpt2-bpe (tokenizer.json): WikiText-2 test, %zu tokens in %.3f s\n", ids.size(), seconds);
  EXPECT_TRUE(ids == from_files->encode(text, true, false));
  // Added special tokens are cut out of the text (vocab.json has no such flag: there it is text).
  EXPECT_EQ(from_json->encode("hello<|endoftext|> world", false, false),
            (std::vector<int64_t>{31373, kEndOfText, 995}));
  EXPECT_EQ(from_json->decode({31373, kEndOfText, 995}), "hello world");
  EXPECT_EQ(from_json->bos_id(), kEndOfText);
}

// An OPT-style vocabulary: fairseq's four specials first, then byte-level tokens ("\xC4\xA0" is "Ġ", a space).
const std::vector<std::string> kOptTokens = {
    "<s>", "<pad>", "</s>", "<unk>", "h",         "e",  "l",           "o",  "\xC4\xA0",      "w", "r", "d",
    "he",  "ll",    "hell", "hello", "\xC4\xA0w", "or", "\xC4\xA0wor", "ld", "\xC4\xA0world", "el"};

json opt_vocab() {
  json vocab = json::object();
  for (std::size_t id = 0; id < kOptTokens.size(); ++id) vocab[kOptTokens[id]] = id;
  return vocab;
}
const json kOptVocab = opt_vocab();
const std::vector<std::string> kOptMerges = {"h e", "l l",          "he ll", "hell o",         "\xC4\xA0 w",
                                             "o r", "\xC4\xA0w or", "l d",   "\xC4\xA0wor ld", "e l"};

std::string merges_txt(const std::vector<std::string>& merges) {
  std::string text = "#version: 0.2\n";
  for (const std::string& merge : merges) text += merge + "\n";
  return text;
}

TEST_F(Gpt2Files, OptConventions) {
  write("opt/vocab.json", kOptVocab.dump());
  write("opt/merges.txt", merges_txt(kOptMerges));
  const auto tokenizer = load_tokenizer((dir_ / "opt").string());
  EXPECT_EQ(tokenizer->bos_id(), 2);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  EXPECT_EQ(tokenizer->vocab_size(), 22);
  EXPECT_EQ(tokenizer->encode("hello world", true, false), (std::vector<int64_t>{2, 15, 20}));
  EXPECT_EQ(tokenizer->encode("hello world", true, true), (std::vector<int64_t>{2, 15, 20, 2}));
  // <s>, <pad>, </s> and <unk> have no text.
  EXPECT_EQ(tokenizer->decode({2, 15, 20, 2, 1, 1, 0}), "hello world");
  EXPECT_EQ(tokenizer->decode_next(2, 1), "");
  // A byte the vocabulary lacks is <unk>.
  EXPECT_EQ(tokenizer->encode("hello zz", false, false), (std::vector<int64_t>{15, 8, 3, 3}));
  // Ranks, not positions: with "e l" first, "hello" is h el l o.
  write("ranked/vocab.json", kOptVocab.dump());
  std::vector<std::string> el_first = kOptMerges;
  std::rotate(el_first.rbegin(), el_first.rbegin() + 1, el_first.rend());
  write("ranked/merges.txt", merges_txt(el_first));
  EXPECT_EQ(load_tokenizer((dir_ / "ranked").string())->encode("hello", false, false),
            (std::vector<int64_t>{4, 21, 6, 7}));
}

// The same vocabulary and merges as tokenizer.json, merges as "A B" strings or as ["A", "B"] arrays.
json opt_tokenizer_json(bool merge_arrays) {
  json merges = json::array(), added = json::array();
  for (const std::string& merge : kOptMerges) {
    const std::size_t space = merge.find(' ');
    if (merge_arrays)
      merges.push_back({merge.substr(0, space), merge.substr(space + 1)});
    else
      merges.push_back(merge);
  }
  for (const char* special : {"<s>", "<pad>", "</s>", "<unk>"})
    added.push_back({{"id", kOptVocab[special]},
                     {"content", special},
                     {"special", true},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"single_word", false}});
  return {{"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
          {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"vocab", kOptVocab}, {"merges", merges}}}};
}

TEST_F(Gpt2Files, TokenizerJsonMatchesVocabAndMerges) {
  write("opt/vocab.json", kOptVocab.dump());
  write("opt/merges.txt", merges_txt(kOptMerges));
  const auto reference = load_tokenizer((dir_ / "opt/vocab.json").string());
  for (bool arrays : {false, true}) {
    const auto tokenizer =
        load_tokenizer(write(arrays ? "arrays.json" : "strings.json", opt_tokenizer_json(arrays).dump()));
    for (const std::string text : {"hello world", "hello  world\n", "world hello hello", "hezz", ""})
      EXPECT_EQ(tokenizer->encode(text, true, true), reference->encode(text, true, true)) << text;
    EXPECT_EQ(tokenizer->bos_id(), 2);
    // The added specials are cut out of the text, and have no text.
    EXPECT_EQ(tokenizer->encode("hello</s><pad>world", true, false), (std::vector<int64_t>{2, 15, 2, 1, 9, 17, 19}));
    EXPECT_EQ(tokenizer->decode({2, 15, 2, 1, 9, 17, 19}), "helloworld");
  }
  // lstrip/rstrip take in the spaces around an added token.
  json stripped = opt_tokenizer_json(false);
  stripped["added_tokens"].push_back({{"id", 22}, {"content", "<mask>"}, {"special", true}, {"lstrip", true}});
  const auto masked = load_tokenizer(write("mask.json", stripped.dump()));
  EXPECT_EQ(masked->encode("hello  <mask> world", false, false), (std::vector<int64_t>{15, 22, 20}));
}

TEST_F(Gpt2Files, BadFilesNameTheFile) {
  write("opt/vocab.json", kOptVocab.dump());
  write("opt/merges.txt", merges_txt(kOptMerges));
  auto expect_error = [&](const std::string& path, const std::string& wanted) {
    const std::string message = test::error_of([&] { load_tokenizer(path); });
    EXPECT_NE(message.find(wanted), std::string::npos) << "loading " << path << ": \"" << message << "\"";
  };
  auto in_dir = [&](const std::string& name, const std::string& vocab, const std::string& merges) {
    write(name + "/vocab.json", vocab);
    write(name + "/merges.txt", merges);
    return (dir_ / name).string();
  };
  const std::string missing = (dir_ / "missing.json").string();
  expect_error(missing, missing + ": cannot open");
  std::string bad = in_dir("malformed", "{\"a\": 1,", merges_txt({}));
  expect_error(bad, bad + "/vocab.json: not valid JSON");
  bad = in_dir("empty_vocab", "", merges_txt({}));
  expect_error(bad, bad + "/vocab.json: the file is empty");
  bad = in_dir("not_object", "[1, 2]", merges_txt({}));
  expect_error(bad, bad + "/vocab.json: expected a JSON object");
  bad = in_dir("string_id", "{\"a\": \"1\"}", merges_txt({}));
  expect_error(bad, bad + "/vocab.json: token \"a\" has id \"1\"");
  bad = in_dir("shared_id", "{\"a\": 1, \"b\": 1}", merges_txt({}));
  expect_error(bad, "id 1 is given to both");
  bad = in_dir("empty_merges", kOptVocab.dump(), "");
  expect_error(bad, bad + "/merges.txt: the file is empty");
  bad = in_dir("one_token", kOptVocab.dump(), "#version: 0.2\nh e\nhello\n");
  expect_error(bad, bad + "/merges.txt:3: expected a merge \"A B\"");
  bad = in_dir("unknown_token", kOptVocab.dump(), "#version: 0.2\nh e\nx y\n");
  expect_error(bad, bad + "/merges.txt:3: the merge \"x y\" needs the token \"x\"");
  bad = in_dir("unknown_result", kOptVocab.dump(), "#version: 0.2\nw o\n");
  expect_error(bad, bad + "/merges.txt:2: the merge \"w o\" needs the token \"wo\"");
  const std::string alone = write("alone/vocab.json", kOptVocab.dump());
  expect_error(alone, alone + ": a GPT-2 vocab.json needs merges.txt beside it");
  const std::string nothing = (dir_ / "nothing").string();
  fs::create_directories(nothing);
  expect_error(nothing, nothing + ": is a directory without a tokenizer, expected tokenizer.model");

  json tokenizer = opt_tokenizer_json(false);
  const std::string empty_json = write("empty/tokenizer.json", "");
  expect_error(empty_json, empty_json + ": the file is empty");
  tokenizer["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  std::string path = write("metaspace/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": pre_tokenizer \"Metaspace\" is not supported; expected \"ByteLevel\"");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["model"]["type"] = "WordPiece";
  path = write("wordpiece/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": model.type \"WordPiece\" is not supported");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["model"]["merges"][2] = "hello";
  path = write("bad_merge/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": model.merges[2] is \"hello\", expected");
  tokenizer["model"]["merges"][2] = "x he";
  path = write("unknown_merge/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": model.merges[2]: the merge \"x he\" needs the token \"x\"");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["added_tokens"][0]["id"] = "zero";
  path = write("bad_added/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": added_tokens[0] is");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["added_tokens"][0]["id"] = 15;
  path = write("clash/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": added token \"<s>\" has id 15, which is the vocabulary's \"hello\"");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["model"]["vocab"] = nullptr;
  path = write("no_vocab/tokenizer.json", tokenizer.dump());
  expect_error(path, "model.vocab in " + path + ": expected a JSON object");
  tokenizer = opt_tokenizer_json(false);
  tokenizer["pre_tokenizer"]["add_prefix_space"] = "yes";
  path = write("wrong_type/tokenizer.json", tokenizer.dump());
  expect_error(path, path + ": unexpected tokenizer.json contents");
}

}  // namespace
}  // namespace qforge::tok
