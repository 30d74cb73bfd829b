// The synthetic corpus of data-free generation: journals (round trip, duplicates, every torn tail, identity
// checks), the final HDF5 file against an independent h5py reader, bad and incomplete files, top-K values out of
// range, the reader's epoch order and vocabulary check, and journals from 2 MPI ranks joined into one file.
#include "framework/common/error.h"
#include "framework/dist/runtime.h"
#include "framework/io/corpus.h"

#include <gtest/gtest.h>

#include "tests/test_support.h"
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

namespace qforge::io {
namespace {

using test::CommandResult;
using test::quoted;
using test::run_command;
using test::slurp;
using test::write_bytes;
using test::files_in;

namespace fs = std::filesystem;
using json = nlohmann::json;
using Samples = std::map<int64_t, std::vector<int32_t>>;

const char* const kPython = "/usr/bin/python3";
const fs::path kReferenceScript = fs::path(__FILE__).parent_path() / "reference" / "read_corpus.py";

CorpusIdentity make_identity(int64_t num_samples, int64_t seq_len, int64_t vocab_size, int seed = 1234,
                             const std::string& checksum = "sha256:0f3a", int64_t topk = 0) {
  CorpusIdentity identity;
  identity.topk = topk;
  identity.num_samples = num_samples;
  identity.seq_len = seq_len;
  identity.vocab_size = vocab_size;
  identity.attributes = {{"teacher", {{"name", "llama-7b"}, {"checksum", checksum}, {"layers", 32}}},
                         {"tokenizer", "tokenizer.model"},
                         {"sampling", {{"temperature", 1.0}, {"top_k", 0}, {"first_token", "top-p 0.9"}}},
                         {"seed", seed},
                         {"qforge_version", "0.1.0"}};
  return identity;
}

// Deterministic tokens of sample `index`: 1..seq_len of them, all below vocab_size, the largest id included.
std::vector<int32_t> tokens_of(int64_t index, int64_t seq_len, int64_t vocab_size) {
  const int64_t length = 1 + (index * 7) % seq_len;
  std::vector<int32_t> tokens;
  for (int64_t j = 0; j < length; ++j)
    tokens.push_back(static_cast<int32_t>(j == 1 ? vocab_size - 1 : (index * 1000003 + j * 7919) % vocab_size));
  return tokens;
}

// Deterministic top-K of sample `index` with `length` tokens: (length-1) x k ids below vocab_size (the largest
// included) and descending log-probs, some far below zero.
CorpusTopK topk_of(int64_t index, int64_t length, int64_t k, int64_t vocab_size) {
  CorpusTopK topk;
  for (int64_t t = 0; t + 1 < length; ++t)
    for (int64_t j = 0; j < k; ++j) {
      topk.ids.push_back(static_cast<int32_t>(t == 0 && j == 0 ? vocab_size - 1 : (index * 31 + t * 17 + j * 7) % vocab_size));
      topk.logprobs.push_back(-0.125f * static_cast<float>(index % 5) - 0.37f * static_cast<float>(j) -
                              static_cast<float>(t) * 1e-3f - (j == k - 1 ? 40.0f : 0.0f));
    }
  return topk;
}

CorpusSample sample_of(int64_t index, const CorpusIdentity& identity) {
  CorpusSample sample{index, tokens_of(index, identity.seq_len, identity.vocab_size), {}, {}};
  if (identity.topk > 0) {
    CorpusTopK topk = topk_of(index, static_cast<int64_t>(sample.tokens.size()), identity.topk, identity.vocab_size);
    sample.topk_ids = std::move(topk.ids);
    sample.topk_logprobs = std::move(topk.logprobs);
  }
  return sample;
}

std::map<int64_t, CorpusTopK> all_topk(const CorpusIdentity& identity) {
  std::map<int64_t, CorpusTopK> topk;
  for (int64_t i = 0; i < identity.num_samples; ++i)
    topk[i] = topk_of(i, static_cast<int64_t>(tokens_of(i, identity.seq_len, identity.vocab_size).size()),
                      identity.topk, identity.vocab_size);
  return topk;
}

bool same_topk(const CorpusTopK& a, const CorpusTopK& b) {  // bitwise: the journal and file store floats exactly
  return a.ids == b.ids && a.logprobs.size() == b.logprobs.size() &&
         (a.logprobs.empty() || std::memcmp(a.logprobs.data(), b.logprobs.data(), 4 * a.logprobs.size()) == 0);
}

bool same_topk(const std::map<int64_t, CorpusTopK>& a, const std::map<int64_t, CorpusTopK>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [index, values] : a)
    if (!b.count(index) || !same_topk(values, b.at(index))) return false;
  return true;
}

Samples all_samples(const CorpusIdentity& identity) {
  Samples samples;
  for (int64_t i = 0; i < identity.num_samples; ++i) samples[i] = tokens_of(i, identity.seq_len, identity.vocab_size);
  return samples;
}

void write_journal(const fs::path& path, const CorpusIdentity& identity, const std::vector<int64_t>& indices) {
  CorpusJournalWriter writer(path.string(), identity);
  for (int64_t index : indices) {
    writer.append(sample_of(index, identity));
    if (index % 5 == 0) writer.flush();
  }
  writer.flush();
}

using test::error_of;

int world_rank() { return dist::Runtime::current() ? dist::Runtime::current()->rank() : 0; }

class CorpusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("qforge_corpus_{}_{}_{}", ::getpid(), world_rank(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
};

// ---- journals ------------------------------------------------------------------------------------------------

TEST_F(CorpusTest, JournalsRoundTripWithIdenticalDuplicates) {
  const CorpusIdentity identity = make_identity(40, 16, 32000);
  std::vector<int64_t> first, second = {5, 6};  // 5 and 6 again, identical: a rank redid them after a restart
  for (int64_t i = 0; i < 20; ++i) first.push_back(i);
  for (int64_t i = 39; i >= 20; --i) second.push_back(i);
  write_journal(dir_ / "a.qfcj", identity, first);
  write_journal(dir_ / "b.qfcj", identity, second);
  write_bytes(dir_ / "notes.txt", "not a journal");

  const JournalContents contents = read_corpus_journals(dir_.string(), identity);
  EXPECT_EQ(contents.journals, 2);
  EXPECT_EQ(contents.torn_records, 0);
  EXPECT_EQ(contents.samples, all_samples(identity));
  std::set<size_t> lengths;
  for (const auto& [index, tokens] : contents.samples) lengths.insert(tokens.size());
  EXPECT_EQ(lengths.size(), 16u) << "samples of every length 1..seq_len";
}

TEST_F(CorpusTest, ConflictingDuplicateNamesBothJournals) {
  const CorpusIdentity identity = make_identity(10, 8, 500);
  write_journal(dir_ / "a.qfcj", identity, {0, 1, 2, 7});
  {
    CorpusJournalWriter writer((dir_ / "c.qfcj").string(), identity);
    std::vector<int32_t> other = tokens_of(7, 8, 500);
    other.back() = (other.back() + 1) % 500;
    writer.append({7, other});
    writer.flush();
  }
  const std::string message = error_of([&] { read_corpus_journals(dir_.string(), identity); });
  EXPECT_NE(message.find("sample 7"), std::string::npos) << message;
  EXPECT_NE(message.find((dir_ / "a.qfcj").string()), std::string::npos) << message;
  EXPECT_NE(message.find((dir_ / "c.qfcj").string()), std::string::npos) << message;
}

TEST_F(CorpusTest, WriterRefusesAnExistingJournalAndBadSamples) {
  const CorpusIdentity identity = make_identity(10, 8, 500);
  const fs::path path = dir_ / "a.qfcj";
  write_journal(path, identity, {1, 2});
  const std::string before = slurp(path);
  EXPECT_NE(error_of([&] { CorpusJournalWriter again(path.string(), identity); }).find(path.string()), std::string::npos);
  EXPECT_EQ(slurp(path), before) << "an existing journal is never touched";

  CorpusJournalWriter writer((dir_ / "b.qfcj").string(), identity);
  EXPECT_NE(error_of([&] { writer.append({10, {1}}); }).find("b.qfcj"), std::string::npos) << "index past the end";
  EXPECT_NE(error_of([&] { writer.append({3, {}}); }).find("b.qfcj"), std::string::npos) << "no tokens";
  EXPECT_NE(error_of([&] { writer.append({3, std::vector<int32_t>(9, 1)}); }).find("b.qfcj"), std::string::npos);
  EXPECT_NE(error_of([&] { writer.append({3, {1, 500}}); }).find("token id 500"), std::string::npos);
  EXPECT_EQ(files_in(dir_), (std::set<std::string>{"a.qfcj", "b.qfcj"})) << "no temporary left";
}

// Every truncation of a 3-record journal: the header cut short is an Error naming the file (journals are
// created whole, so only damage can tear a header); a record cut short is dropped and counted.
void expect_every_truncation_read_safely(const fs::path& dir_, int64_t topk) {
  const CorpusIdentity identity = make_identity(10, 8, 500, 1234, "sha256:0f3a", topk);
  const fs::path full = dir_ / "full.qfcj";
  std::vector<size_t> ends;  // the file size after the header and after each record
  {
    CorpusJournalWriter writer(full.string(), identity);
    writer.flush();
    ends.push_back(fs::file_size(full));
    for (int64_t index : {3, 9, 4}) {
      writer.append(sample_of(index, identity));
      writer.flush();
      ends.push_back(fs::file_size(full));
    }
  }
  const std::string bytes = slurp(full);
  ASSERT_EQ(bytes.size(), ends.back());
  fs::remove(full);
  const std::vector<int64_t> order = {3, 9, 4};
  const fs::path cut_path = dir_ / "cut.qfcj";
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    SCOPED_TRACE(fmt::format("cut at byte {} of {}", cut, bytes.size()));
    write_bytes(cut_path, bytes.substr(0, cut));
    if (cut < ends[0]) {
      EXPECT_NE(error_of([&] { read_corpus_journals(dir_.string(), identity); }).find(cut_path.string()), std::string::npos);
      continue;
    }
    const JournalContents contents = read_corpus_journals(dir_.string(), identity);
    Samples expected;
    std::map<int64_t, CorpusTopK> expected_topk;
    size_t whole = 0;
    while (whole + 1 < ends.size() && ends[whole + 1] <= cut) ++whole;
    for (size_t r = 0; r < whole; ++r) {
      const CorpusSample sample = sample_of(order[r], identity);
      expected[order[r]] = sample.tokens;
      if (topk > 0) expected_topk[order[r]] = {sample.topk_ids, sample.topk_logprobs};
    }
    EXPECT_EQ(contents.samples, expected);
    EXPECT_TRUE(same_topk(contents.topk, expected_topk));
    EXPECT_EQ(contents.torn_records, cut == ends[whole] ? 0 : 1);
    EXPECT_EQ(contents.journals, 1);
  }
}

TEST_F(CorpusTest, EveryTruncationIsReadSafely) { expect_every_truncation_read_safely(dir_, 0); }

// Records carrying top-K (K = 3) are larger; every cut of them is still dropped and counted, never misread.
TEST_F(CorpusTest, EveryTruncationIsReadSafelyWithTopK) { expect_every_truncation_read_safely(dir_, 3); }

TEST_F(CorpusTest, JournalsRoundTripTopK) {
  const CorpusIdentity identity = make_identity(40, 16, 32000, 1234, "sha256:0f3a", 3);
  std::vector<int64_t> first, second = {5, 6};
  for (int64_t i = 0; i < 20; ++i) first.push_back(i);
  for (int64_t i = 39; i >= 20; --i) second.push_back(i);
  write_journal(dir_ / "a.qfcj", identity, first);
  write_journal(dir_ / "b.qfcj", identity, second);
  const JournalContents contents = read_corpus_journals(dir_.string(), identity);
  EXPECT_EQ(contents.torn_records, 0);
  EXPECT_EQ(contents.samples, all_samples(identity));
  EXPECT_TRUE(same_topk(contents.topk, all_topk(identity)));
  EXPECT_EQ(contents.topk.at(0).ids.size(), 0u) << "a 1-token sample has no successor";
  EXPECT_EQ(contents.topk.at(2).ids.size(), 14u * 3) << "15 tokens: 14 positions x 3";

  // The writer refuses top-K of the wrong size or with ids outside the vocabulary, and top-K when topk is 0.
  CorpusJournalWriter writer((dir_ / "c.qfcj").string(), identity);
  CorpusSample short_topk = sample_of(3, identity);
  short_topk.topk_logprobs.pop_back();
  EXPECT_NE(error_of([&] { writer.append(short_topk); }).find("c.qfcj"), std::string::npos);
  CorpusSample bad_id = sample_of(3, identity);
  bad_id.topk_ids[4] = 32000;
  EXPECT_NE(error_of([&] { writer.append(bad_id); }).find("top-K id 32000"), std::string::npos);
  CorpusJournalWriter plain((dir_ / "d.qfcj").string(), make_identity(40, 16, 32000));
  EXPECT_NE(error_of([&] { plain.append(sample_of(3, identity)); }).find("d.qfcj"), std::string::npos);
}

TEST_F(CorpusTest, DamagedOrZeroFilledTailIsDropped) {
  const CorpusIdentity identity = make_identity(10, 8, 500);
  const fs::path path = dir_ / "a.qfcj";
  write_journal(path, identity, {0, 1, 2});
  const std::string bytes = slurp(path);
  Samples first_two = {{0, tokens_of(0, 8, 500)}, {1, tokens_of(1, 8, 500)}};

  std::string flipped = bytes;
  flipped[flipped.size() - 6] ^= 0x40;  // a token of the last record
  write_bytes(path, flipped);
  JournalContents contents = read_corpus_journals(dir_.string(), identity);
  EXPECT_EQ(contents.samples, first_two);
  EXPECT_EQ(contents.torn_records, 1);

  write_bytes(path, bytes + std::string(100, '\0'));  // a file extended past the last fsync, then power lost
  contents = read_corpus_journals(dir_.string(), identity);
  EXPECT_EQ(contents.samples.size(), 3u);
  EXPECT_EQ(contents.torn_records, 1);

  std::string header = bytes;
  header[20] ^= 0x01;  // inside the identity JSON: the header CRC catches it
  write_bytes(path, header);
  EXPECT_NE(error_of([&] { read_corpus_journals(dir_.string(), identity); }).find(path.string()), std::string::npos);
  write_bytes(path, "PK\x03\x04 a zip file, not a journal");
  EXPECT_NE(error_of([&] { read_corpus_journals(dir_.string(), identity); }).find("QFCJ"), std::string::npos);
}

TEST_F(CorpusTest, JournalOfAnotherCorpusNamesFileAndKey) {
  const CorpusIdentity identity = make_identity(10, 8, 500);
  const fs::path path = dir_ / "old.qfcj";
  write_journal(path, identity, {1, 2, 3});
  const std::string before = slurp(path);
  const std::vector<std::pair<CorpusIdentity, std::string>> others = {
      {make_identity(10, 8, 500, 99), "attributes.seed"},
      {make_identity(10, 16, 500), "seq_len"},
      {make_identity(10, 8, 500, 1234, "sha256:ffff"), "attributes.teacher.checksum"},
      {make_identity(11, 8, 500), "num_samples"},
      {make_identity(10, 8, 500, 1234, "sha256:0f3a", 3), "topk"}};
  for (const auto& [other, key] : others) {
    SCOPED_TRACE(key);
    EXPECT_EQ(first_difference(other, identity), key);
    // &other = other: clang 14 cannot capture a structured binding
    const std::string message = error_of([&, &other = other] { read_corpus_journals(dir_.string(), other); });
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("'" + key + "'"), std::string::npos) << message;
  }
  CorpusIdentity extra = identity;
  extra.attributes["top_p"] = 0.9;
  EXPECT_EQ(first_difference(extra, identity), "attributes.top_p");
  EXPECT_EQ(first_difference(identity, identity), "");
  EXPECT_EQ(slurp(path), before) << "a journal of another corpus is never appended to";
}

TEST(CorpusCrc, MatchesZlib) {
  EXPECT_EQ(crc32("123456789", 9), 0xCBF43926u);  // the standard check value of CRC-32/ISO-HDLC
  EXPECT_EQ(crc32("", 0), 0u);
  EXPECT_EQ(crc32("6789", 4, crc32("12345", 5)), 0xCBF43926u);
}

// ---- the final file ------------------------------------------------------------------------------------------


// Empty when the reference can run, else why not.
std::string python_unavailable() {
  if (::access(kPython, X_OK) != 0) return fmt::format("{} is not installed", kPython);
  if (run_command(fmt::format("{} -c 'import h5py, numpy'", kPython)).status != 0)
    return fmt::format("{} has no h5py or numpy", kPython);
  return "";
}

uint32_t checksum_of(const std::vector<int32_t>& tokens) {
  std::string bytes;
  for (int32_t token : tokens)
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((static_cast<uint32_t>(token) >> (8 * i)) & 0xFF));
  return crc32(bytes.data(), bytes.size());
}

void expect_reader_matches(const CorpusReader& reader, const CorpusIdentity& identity, const Samples& samples) {
  EXPECT_EQ(reader.num_samples(), identity.num_samples);
  EXPECT_EQ(reader.seq_len(), identity.seq_len);
  EXPECT_EQ(reader.vocab_size(), identity.vocab_size);
  EXPECT_EQ(reader.attributes(), identity.attributes);
  EXPECT_EQ(first_difference(identity, reader.identity()), "");
  std::vector<int64_t> indices;
  for (int64_t i = identity.num_samples - 1; i >= 0; i -= 3) indices.push_back(i);  // any order, any subset
  indices.push_back(0);
  auto [tokens, lengths] = reader.batch(indices);
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{static_cast<int64_t>(indices.size()), identity.seq_len}));
  ASSERT_EQ(tokens.scalar_type(), torch::kLong);
  ASSERT_EQ(lengths.scalar_type(), torch::kLong);
  for (size_t b = 0; b < indices.size(); ++b) {
    const std::vector<int32_t>& expected = samples.at(indices[b]);
    std::vector<int32_t> padded(expected);
    padded.resize(static_cast<size_t>(identity.seq_len), 0);
    EXPECT_TRUE(torch::equal(tokens[b], torch::tensor(padded, torch::kInt).to(torch::kLong))) << "sample " << indices[b];
    EXPECT_EQ(lengths[b].item<int64_t>(), static_cast<int64_t>(expected.size()));
  }
  EXPECT_EQ(reader.max_token_id(), identity.vocab_size - 1);
}

TEST_F(CorpusTest, FileRoundTripAgainstH5py) {
  const std::string why = python_unavailable();
  for (auto [vocab, dtype] : std::vector<std::pair<int64_t, std::string>>{{32000, "uint16"}, {200, "uint8"}, {256, "uint8"}, {70000, "uint32"}}) {
    SCOPED_TRACE(fmt::format("vocab {}", vocab));
    const CorpusIdentity identity = make_identity(150, 24, vocab);  // 3 chunks of 64 rows, the last partial
    const Samples samples = all_samples(identity);
    const fs::path path = dir_ / fmt::format("corpus_{}.h5", vocab);
    write_corpus_file(path.string(), identity, samples);
    expect_reader_matches(CorpusReader(path.string()), identity, samples);
    if (!why.empty()) continue;

    const CommandResult result = run_command(fmt::format("{} {} {}", kPython, quoted(kReferenceScript), quoted(path)));
    ASSERT_EQ(result.status, 0) << result.output;
    const json reference = json::parse(result.output);
    const json& tokens = reference.at("datasets").at("tokens");
    EXPECT_EQ(tokens.at("dtype"), dtype);
    EXPECT_EQ(tokens.at("shape"), json({150, 24}));
    EXPECT_EQ(tokens.at("chunks"), json({64, 24}));
    EXPECT_EQ(tokens.at("compression"), "gzip");
    EXPECT_EQ(reference.at("datasets").at("lengths").at("dtype"), "int32");
    EXPECT_EQ(reference.at("datasets").at("complete").at("dtype"), "uint8");
    for (const auto& name : {"lengths", "complete"})
      EXPECT_EQ(reference.at("datasets").at(name).at("compression"), "gzip") << name;

    const json& attributes = reference.at("attributes");
    EXPECT_EQ(attributes.size(), 4 + identity.attributes.size());
    EXPECT_EQ(attributes.at("topk"), 0);
    EXPECT_FALSE(reference.at("datasets").contains("topk_ids"));
    EXPECT_EQ(attributes.at("num_samples"), 150);
    EXPECT_EQ(attributes.at("seq_len"), 24);
    EXPECT_EQ(attributes.at("vocab_size"), vocab);
    for (const auto& item : identity.attributes.items())
      EXPECT_EQ(json::parse(attributes.at(item.key()).get<std::string>()), item.value()) << item.key();

    const json& rows = reference.at("samples");
    ASSERT_EQ(rows.size(), samples.size());
    for (const auto& [index, expected] : samples) {
      const json& row = rows.at(static_cast<size_t>(index));
      EXPECT_EQ(row.at("index"), index);
      EXPECT_EQ(row.at("length"), expected.size()) << index;
      EXPECT_EQ(row.at("complete"), 1) << index;
      EXPECT_EQ(row.at("checksum"), checksum_of(expected)) << index;
      EXPECT_EQ(row.at("padding_nonzero"), 0) << index;
    }
  }
  EXPECT_EQ(files_in(dir_).size(), 4u) << "no temporaries left";
  if (!why.empty()) GTEST_SKIP() << "C++ round trip checked; the h5py reference skipped: " << why;
}

uint32_t topk_checksum_of(const CorpusTopK& topk) {
  std::string bytes;
  for (int32_t id : topk.ids)
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((static_cast<uint32_t>(id) >> (8 * i)) & 0xFF));
  for (float logprob : topk.logprobs) {
    uint32_t bits = 0;
    std::memcpy(&bits, &logprob, 4);
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
  }
  return crc32(bytes.data(), bytes.size());
}

TEST_F(CorpusTest, FileWithTopKRoundTripAgainstH5py) {
  const std::string why = python_unavailable();
  for (auto [vocab, dtype] : std::vector<std::pair<int64_t, std::string>>{{32000, "uint16"}, {200, "uint8"}}) {
    SCOPED_TRACE(fmt::format("vocab {}", vocab));
    const CorpusIdentity identity = make_identity(150, 24, vocab, 1234, "sha256:0f3a", 3);
    const Samples samples = all_samples(identity);
    const std::map<int64_t, CorpusTopK> topk = all_topk(identity);
    const fs::path path = dir_ / fmt::format("corpus_{}.h5", vocab);
    write_corpus_file(path.string(), identity, samples, topk);
    const CorpusReader reader(path.string());
    expect_reader_matches(reader, identity, samples);
    EXPECT_EQ(reader.topk(), 3);
    const std::vector<int64_t> indices = {149, 0, 2, 77, 64, 63};
    auto [ids, logprobs] = reader.topk_batch(indices);
    ASSERT_EQ(ids.sizes(), (std::vector<int64_t>{6, 24, 3}));
    ASSERT_EQ(ids.scalar_type(), torch::kLong);
    ASSERT_EQ(logprobs.scalar_type(), torch::kFloat);
    for (size_t b = 0; b < indices.size(); ++b) {
      const CorpusTopK& expected = topk.at(indices[b]);
      const auto valid = static_cast<int64_t>(expected.ids.size()) / 3;
      const torch::Tensor expected_ids = torch::tensor(expected.ids, torch::kInt).to(torch::kLong).reshape({valid, 3});
      const torch::Tensor expected_logprobs = torch::tensor(expected.logprobs, torch::kFloat).reshape({valid, 3});
      EXPECT_TRUE(torch::equal(ids[b].slice(0, 0, valid), expected_ids)) << indices[b];
      EXPECT_TRUE(torch::equal(logprobs[b].slice(0, 0, valid), expected_logprobs)) << indices[b];
      EXPECT_EQ(ids[b].slice(0, valid).count_nonzero().item<int64_t>(), 0) << indices[b];
      EXPECT_TRUE(torch::isneginf(logprobs[b].slice(0, valid)).all().item<bool>()) << indices[b];
    }
    if (!why.empty()) continue;

    const CommandResult result = run_command(fmt::format("{} {} {}", kPython, quoted(kReferenceScript), quoted(path)));
    ASSERT_EQ(result.status, 0) << result.output;
    const json reference = json::parse(result.output);
    EXPECT_EQ(reference.at("attributes").at("topk"), 3);
    const json& datasets = reference.at("datasets");
    EXPECT_EQ(datasets.at("topk_ids").at("dtype"), dtype);
    EXPECT_EQ(datasets.at("topk_logprobs").at("dtype"), "float32");
    for (const auto& name : {"topk_ids", "topk_logprobs"}) {
      EXPECT_EQ(datasets.at(name).at("shape"), json({150, 24, 3})) << name;
      EXPECT_EQ(datasets.at(name).at("chunks"), json({64, 24, 3})) << name;
      EXPECT_EQ(datasets.at(name).at("compression"), "gzip") << name;
    }
    const json& rows = reference.at("samples");
    ASSERT_EQ(rows.size(), samples.size());
    for (const auto& [index, expected] : samples) {
      const json& row = rows.at(static_cast<size_t>(index));
      EXPECT_EQ(row.at("checksum"), checksum_of(expected)) << index;
      EXPECT_EQ(row.at("topk_checksum"), topk_checksum_of(topk.at(index))) << index;
      EXPECT_EQ(row.at("topk_padding_bad"), 0) << index;
      EXPECT_EQ(row.at("topk_unsorted"), 0) << index;
    }
  }
  // Missing or wrong-sized top-K is refused and leaves nothing; a file without top-K says so, naming itself.
  const CorpusIdentity identity = make_identity(20, 8, 500, 1234, "sha256:0f3a", 3);
  std::map<int64_t, CorpusTopK> missing = all_topk(identity);
  missing.erase(7);
  const fs::path bad = dir_ / "bad.h5";
  EXPECT_NE(error_of([&] { write_corpus_file(bad.string(), identity, all_samples(identity), missing); }).find("sample 7"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(bad));
  const CorpusIdentity plain_identity = make_identity(20, 8, 500);
  const fs::path plain = dir_ / "plain.h5";
  write_corpus_file(plain.string(), plain_identity, all_samples(plain_identity));
  const CorpusReader reader(plain.string());
  EXPECT_EQ(reader.topk(), 0);
  EXPECT_NE(error_of([&] { reader.topk_batch({0}); }).find(plain.string()), std::string::npos);
  if (!why.empty()) GTEST_SKIP() << "C++ round trip checked; the h5py reference skipped: " << why;
}

TEST_F(CorpusTest, IncompleteSamplesLeaveNoFile) {
  const CorpusIdentity identity = make_identity(20, 8, 500);
  const fs::path path = dir_ / "corpus.h5";
  Samples missing = all_samples(identity);
  missing.erase(13);
  const std::string message = error_of([&] { write_corpus_file(path.string(), identity, missing); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("sample 13"), std::string::npos) << message;
  Samples extra = all_samples(identity);
  extra[20] = {1, 2};
  EXPECT_NE(error_of([&] { write_corpus_file(path.string(), identity, extra); }).find("sample 20"), std::string::npos);
  Samples too_large = all_samples(identity);
  too_large[4][0] = 500;
  EXPECT_NE(error_of([&] { write_corpus_file(path.string(), identity, too_large); }).find("token id 500"), std::string::npos);
  EXPECT_TRUE(files_in(dir_).empty()) << "neither the file nor a temporary";
  // A failure inside HDF5 (the directory does not exist) is an Error naming the file and the call, and leaves nothing.
  const fs::path nowhere = dir_ / "missing_dir" / "corpus.h5";
  const std::string hdf5_message = error_of([&] { write_corpus_file(nowhere.string(), identity, all_samples(identity)); });
  EXPECT_NE(hdf5_message.find(nowhere.string()), std::string::npos) << hdf5_message;
  EXPECT_NE(hdf5_message.find("H5Fcreate"), std::string::npos) << hdf5_message;
  EXPECT_TRUE(files_in(dir_).empty());
}

TEST_F(CorpusTest, DamagedFilesAreErrorsNamingTheFile) {
  const CorpusIdentity identity = make_identity(100, 16, 32000);
  const fs::path good = dir_ / "good.h5";
  write_corpus_file(good.string(), identity, all_samples(identity));
  const std::string bytes = slurp(good);
  const fs::path bad = dir_ / "bad.h5";
  EXPECT_NE(error_of([&] { CorpusReader reader(bad.string()); }).find(bad.string()), std::string::npos) << "missing";

  std::vector<size_t> cuts = {0, 1, 8, 100, bytes.size() - 1};
  for (size_t k = 1; k < 16; ++k) cuts.push_back(bytes.size() * k / 16);
  for (size_t cut : cuts) {
    SCOPED_TRACE(fmt::format("truncated to {} of {} bytes", cut, bytes.size()));
    write_bytes(bad, bytes.substr(0, cut));
    EXPECT_NE(error_of([&] { CorpusReader reader(bad.string()); }).find(bad.string()), std::string::npos);
  }
  std::string garbage = bytes;
  for (size_t i = 0; i < 64; ++i) garbage[i] = static_cast<char>(i * 37);
  write_bytes(bad, garbage);
  EXPECT_NE(error_of([&] { CorpusReader reader(bad.string()); }).find(bad.string()), std::string::npos) << "superblock";
  write_bytes(bad, "text, not HDF5");
  EXPECT_NE(error_of([&] { CorpusReader reader(bad.string()); }).find(bad.string()), std::string::npos) << "text";
}

TEST_F(CorpusTest, IncompleteFileIsAnError) {
  const CorpusIdentity identity = make_identity(100, 16, 32000);
  const fs::path path = dir_ / "corpus.h5";
  write_corpus_file(path.string(), identity, all_samples(identity));
  {  // mark sample 42 as never written, as an interrupted writer of another tool might leave it
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t dataset = H5Dopen2(file, "complete", H5P_DEFAULT);
    const hid_t space = H5Dget_space(dataset);
    const hsize_t start = 42, count = 1;
    ASSERT_GE(H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &count, nullptr), 0);
    const hid_t memory = H5Screate_simple(1, &count, nullptr);
    const uint8_t zero = 0;
    ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_UINT8, memory, space, H5P_DEFAULT, &zero), 0);
    H5Sclose(memory);
    H5Sclose(space);
    H5Dclose(dataset);
    ASSERT_GE(H5Fclose(file), 0);
  }
  const std::string message = error_of([&] { CorpusReader reader(path.string()); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("incomplete"), std::string::npos) << message;
  EXPECT_NE(message.find("42"), std::string::npos) << message;
}

// Overwrites one value of "topk_ids" or "topk_logprobs", as a file from another tool or a damaged one may hold it.
void overwrite_topk(const fs::path& path, const char* dataset_name, hsize_t sample, hsize_t position, hid_t type,
                    const void* value) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t dataset = H5Dopen2(file, dataset_name, H5P_DEFAULT);
  const hid_t space = H5Dget_space(dataset);
  const hsize_t start[3] = {sample, position, 1}, count[3] = {1, 1, 1};
  ASSERT_GE(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr), 0);
  const hid_t memory = H5Screate_simple(3, count, nullptr);
  ASSERT_GE(H5Dwrite(dataset, type, memory, space, H5P_DEFAULT, value), 0);
  H5Sclose(memory);
  H5Sclose(space);
  H5Dclose(dataset);
  ASSERT_GE(H5Fclose(file), 0);
}

TEST_F(CorpusTest, TopKOutsideTheVocabularyOrAboveZeroIsAnErrorNamingSampleAndPosition) {
  const CorpusIdentity identity = make_identity(20, 8, 500, 1234, "sha256:0f3a", 3);
  const fs::path good = dir_ / "good.h5";
  write_corpus_file(good.string(), identity, all_samples(identity), all_topk(identity));
  const int32_t outside = 503;
  const float positive = 0.25f, nan = std::numeric_limits<float>::quiet_NaN(),
              infinite = -std::numeric_limits<float>::infinity();
  struct Case {
    const char* dataset;
    hid_t type;
    const void* value;
    const char* says;
  };
  // Sample 3 has 6 tokens: positions 0..4 predict one; sample 6 has 3 tokens: positions 0..1.
  const std::vector<Case> cases = {
      {"topk_ids", H5T_NATIVE_INT32, &outside, "top-K id 503, outside the vocabulary 0..499"},
      {"topk_logprobs", H5T_NATIVE_FLOAT, &positive, "log-probability 0.25"},
      {"topk_logprobs", H5T_NATIVE_FLOAT, &nan, "log-probability nan"},
      {"topk_logprobs", H5T_NATIVE_FLOAT, &infinite, "log-probability -inf"}};
  for (const Case& c : cases) {
    for (const auto& [sample, position] : std::vector<std::pair<hsize_t, hsize_t>>{{3, 4}, {6, 1}}) {
      SCOPED_TRACE(fmt::format("{} at sample {}, position {}", c.dataset, sample, position));
      const fs::path bad = dir_ / "bad.h5";
      fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
      overwrite_topk(bad, c.dataset, sample, position, c.type, c.value);
      const CorpusReader reader(bad.string());
      reader.topk_batch({0, 1, 2});  // the other samples read as before
      const auto index = static_cast<int64_t>(sample);  // clang 14 cannot capture a structured binding
      const std::string message = error_of([&] { reader.topk_batch({0, index}); });
      for (const std::string& expected : {bad.string(), fmt::format("sample {}, position {}", sample, position),
                                          std::string(c.says)})
        EXPECT_NE(message.find(expected), std::string::npos) << message;
    }
  }
  // Past position length-2 the file holds id 0 and -inf by design; another id there predicts nothing.
  const fs::path padded = dir_ / "padded.h5";
  fs::copy_file(good, padded);
  overwrite_topk(padded, "topk_ids", 6, 2, H5T_NATIVE_INT32, &outside);
  CorpusReader(padded.string()).topk_batch({6});
}

// ---- reader --------------------------------------------------------------------------------------------------

TEST_F(CorpusTest, EpochOrderDealsAPermutation) {
  const CorpusIdentity identity = make_identity(103, 4, 200);
  const fs::path path = dir_ / "corpus.h5";
  write_corpus_file(path.string(), identity, all_samples(identity));
  const CorpusReader reader(path.string());
  const std::vector<int64_t> whole = reader.epoch_order(7, 0, 1);
  EXPECT_EQ(std::set<int64_t>(whole.begin(), whole.end()).size(), 103u);
  EXPECT_EQ(*std::max_element(whole.begin(), whole.end()), 102);
  std::vector<int64_t> identity_order(103);
  std::iota(identity_order.begin(), identity_order.end(), 0);
  EXPECT_NE(whole, identity_order) << "shuffled";
  EXPECT_EQ(reader.epoch_order(7, 0, 1), whole) << "same seed, same order";
  EXPECT_NE(reader.epoch_order(8, 0, 1), whole) << "another seed, another order";
  for (int dp : {2, 4, 5, 103}) {
    SCOPED_TRACE(fmt::format("dp {}", dp));
    std::set<int64_t> seen;
    for (int r = 0; r < dp; ++r) {
      const std::vector<int64_t> mine = reader.epoch_order(7, r, dp);
      ASSERT_EQ(mine.size(), static_cast<size_t>(103 / dp)) << "rank " << r;
      for (size_t k = 0; k < mine.size(); ++k) EXPECT_EQ(mine[k], whole[k * dp + r]) << "round-robin, rank " << r;
      seen.insert(mine.begin(), mine.end());
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(103 / dp * dp)) << "each index once, only the tail dropped";
  }
  EXPECT_NE(error_of([&] { reader.epoch_order(7, 2, 2); }).find(path.string()), std::string::npos);
  EXPECT_NE(error_of([&] { reader.epoch_order(7, 0, 104); }).find(path.string()), std::string::npos);
  EXPECT_NE(error_of([&] { reader.batch({103}); }).find(path.string()), std::string::npos);
}

TEST_F(CorpusTest, CheckVocabularyCatchesLargeIds) {
  const CorpusIdentity identity = make_identity(70, 8, 32000);
  const fs::path path = dir_ / "corpus.h5";
  write_corpus_file(path.string(), identity, all_samples(identity));
  const CorpusReader reader(path.string());
  EXPECT_EQ(reader.max_token_id(), 31999);
  reader.check_vocabulary(32000);
  reader.check_vocabulary(32001);
  const std::string message = error_of([&] { reader.check_vocabulary(31999); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("token id 31999"), std::string::npos) << message;
  EXPECT_NE(message.find("vocabulary of 31999"), std::string::npos) << message;
}

// ---- under MPI -----------------------------------------------------------------------------------------------

// Each rank journals its own samples (rank r: r, r + size, ...; and sample 0 again, identical) into one shared
// directory; rank 0 joins them into the corpus file; every rank then reads it.
TEST(CorpusMpi, RanksJournalRankZeroJoins) {
  dist::Runtime* runtime = dist::Runtime::current();
  ASSERT_NE(runtime, nullptr);
  dist::Communicator& world = runtime->world();
  torch::Tensor pid = torch::tensor({static_cast<int64_t>(::getpid())}, torch::kLong);
  world.broadcast(pid, 0);
  const fs::path dir = fs::temp_directory_path() / fmt::format("qforge_corpus_mpi_{}", pid.item<int64_t>());
  const fs::path journals = dir / "journals";
  const fs::path path = dir / "corpus.h5";
  if (world.rank() == 0) fs::create_directories(journals);
  world.barrier();

  const CorpusIdentity identity = make_identity(130, 12, 32000);
  std::vector<int64_t> mine = {0};
  for (int64_t i = world.rank(); i < identity.num_samples; i += world.size()) mine.push_back(i);
  EXPECT_NO_THROW(write_journal(journals / fmt::format("rank_{:05d}.qfcj", world.rank()), identity, mine));
  world.barrier();

  if (world.rank() == 0) {
    EXPECT_NO_THROW({
      const JournalContents contents = read_corpus_journals(journals.string(), identity);
      EXPECT_EQ(contents.journals, world.size());
      EXPECT_EQ(contents.torn_records, 0);
      EXPECT_EQ(contents.samples, all_samples(identity));
      write_corpus_file(path.string(), identity, contents.samples);
    });
  }
  world.barrier();
  EXPECT_NO_THROW({
    const CorpusReader reader(path.string());
    expect_reader_matches(reader, identity, all_samples(identity));
    reader.check_vocabulary(32000);
    const std::vector<int64_t> order = reader.epoch_order(11, world.rank(), world.size());
    EXPECT_EQ(order.size(), static_cast<size_t>(130 / world.size()));
  });
  world.barrier();
  if (world.rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace qforge::io
