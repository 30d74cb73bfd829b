// The synthetic token corpus of LLM-QAT data-free generation: per-writer append-only journals that survive
// `kill -9` of any rank, the final HDF5 file they are joined into, and its reader for training.
//
// Journal (*.qfcj), all integers little-endian:
//   header: "QFCJ" | u32 version (2) | u32 n | n bytes of identity JSON | u32 CRC-32 of the preceding bytes
//   record: i64 index | i32 length | length x i32 tokens | [M x i32 top-K ids | M x f32 top-K log-probs]
//           | u32 CRC-32 of the preceding record bytes
//   where the bracketed part is present only when identity.topk = K > 0, with M = (length - 1) * K.
// A journal is created under a temporary name and linked to its final name only once its header is durable, so a
// crash can never leave a journal with a torn header: a header that is cut short or fails its CRC is damage, and
// reading it is an Error naming the file. A crash can tear only the tail: the first record that is cut short or
// fails its checks (CRC, index, length) ends the journal — it and any bytes after it are dropped, logged as a
// warning and counted in JournalContents::torn_records; their samples are simply generated again.
//
// Final file (HDF5): datasets "tokens" [N, seq_len] (uint8/uint16/uint32, the narrowest that holds vocab_size;
// 0 past each length), "lengths" [N] int32, "complete" [N] uint8; chunked by samples and deflate-compressed.
// Root attributes: num_samples, seq_len, vocab_size (int64), and one variable-length UTF-8 string attribute per
// key of CorpusIdentity::attributes holding that value's JSON text.
// With identity.topk = K > 0 (the teacher's top-K of each next-token distribution, for distillation without the
// teacher) also "topk_ids" [N, seq_len, K] (the tokens' type) and "topk_logprobs" [N, seq_len, K] float32, chunked
// and compressed like "tokens": row t holds the top-K of the distribution predicting token t+1, largest first;
// position length-1 and every position past it hold id 0 and log-prob -inf. Root attribute topk (int64) always.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qforge::io {

struct CorpusSample {
  int64_t index = 0;            // 0 .. num_samples-1
  std::vector<int32_t> tokens;  // 1 .. seq_len tokens (shorter when generation stopped at EOS)
  // With identity.topk = K > 0: the teacher's top-K ids and log-probs of the distribution predicting token t+1,
  // for t = 0 .. length-2, position-major ([(length-1) * K], largest first). Empty when K = 0.
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_logprobs;
};

// A sample's stored top-K (CorpusSample::topk_ids / topk_logprobs).
struct CorpusTopK {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
};

// What a corpus is: every key must match for a resumed run to append to existing journals.
struct CorpusIdentity {
  int64_t num_samples = 0;
  int64_t seq_len = 0;
  int64_t vocab_size = 0;
  int64_t topk = 0;  // top-K teacher log-probs stored per position (0: none)
  nlohmann::json attributes = nlohmann::json::object();  // teacher config, weight checksum, tokenizer, sampling...

  // {"num_samples", "seq_len", "vocab_size", "topk", "attributes"}.
  nlohmann::json to_json() const;
  // Throws qforge::Error naming `where` unless the sizes are positive, vocab_size fits uint32, 0 <= topk <=
  // vocab_size and attributes is an object whose keys are not num_samples / seq_len / vocab_size / topk.
  void validate(const std::string& where) const;
};

// The first key at which `found` differs from `expected` ("seq_len", "attributes.teacher.checksum"), or "" when
// they are equal.
std::string first_difference(const CorpusIdentity& expected, const CorpusIdentity& found);

// CRC-32 (IEEE 802.3, as zlib's crc32) of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

// Append-only journal of one writer (see the format above).
class CorpusJournalWriter {
 public:
  // Creates `path` (its directory must exist) with a durable header; throws if it already exists.
  CorpusJournalWriter(const std::string& path, const CorpusIdentity& identity);
  ~CorpusJournalWriter();  // closes without fsync: call flush() for durability
  CorpusJournalWriter(const CorpusJournalWriter&) = delete;
  CorpusJournalWriter& operator=(const CorpusJournalWriter&) = delete;

  const std::string& path() const { return path_; }
  // Writes one whole record. Throws naming the file for an index outside 0..num_samples-1, a length outside
  // 1..seq_len, a token or top-K id outside 0..vocab_size-1, top-K vectors not of (length-1) * topk values, or a
  // failed write.
  void append(const CorpusSample& sample);
  // Makes everything appended so far durable (fflush + fsync).
  void flush();
  // After a failed append() or flush() the journal is closed and every later call throws: the failed record may
  // be half written, and nothing may follow a torn record.

 private:
  void check_usable() const;
  void close_after_failure();  // after a failed write or fsync: every later call throws

  std::string path_;
  CorpusIdentity identity_;
  std::FILE* file_ = nullptr;
};

struct JournalContents {
  std::map<int64_t, std::vector<int32_t>> samples;
  std::map<int64_t, CorpusTopK> topk;  // identity.topk > 0: every sample's top-K (of the first journal holding it)
  int64_t torn_records = 0;  // journals whose tail was dropped (one per journal at most)
  int64_t journals = 0;
};

// Every journal (*.qfcj) in `dir`, in name order: the samples they hold (each index once; a duplicate must be
// identical, else an Error naming both files; only the tokens are compared: top-K log-probs from runs with
// other TP sizes may differ in the last bits, so the first journal's are kept), after checking each journal's identity against `identity` — a
// journal from another teacher or other settings is an Error naming the file and the first differing key.
// A missing `dir` is an Error.
JournalContents read_corpus_journals(const std::string& dir, const CorpusIdentity& identity);

// Writes the final corpus (format above), chunked by 64 samples and deflate-compressed. Throws unless `samples`
// holds exactly the indices 0..N-1, each with 1..seq_len tokens below vocab_size. Written under a temporary
// name in the same directory (qforge::AtomicFile: ".<name>.tmp.<pid>"), fsynced, then renamed; a failure
// leaves neither the file nor the temporary.
// With identity.topk > 0, `topk` must hold every sample's top-K of (length-1) * topk values.
void write_corpus_file(const std::string& path, const CorpusIdentity& identity,
                       const std::map<int64_t, std::vector<int32_t>>& samples,
                       const std::map<int64_t, CorpusTopK>& topk = {});

// Reads a corpus file for training. Keeps the file open; batch() reads only the requested rows.
class CorpusReader {
 public:
  // Checks the attributes, the datasets' shapes and types, every length and that every sample is complete;
  // an Error naming the file for a missing, corrupt or incomplete file.
  explicit CorpusReader(const std::string& path);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t num_samples() const { return identity_.num_samples; }
  int64_t seq_len() const { return identity_.seq_len; }
  int64_t vocab_size() const { return identity_.vocab_size; }
  int64_t topk() const { return identity_.topk; }
  const CorpusIdentity& identity() const { return identity_; }
  const nlohmann::json& attributes() const { return identity_.attributes; }
  const std::vector<int32_t>& lengths() const { return lengths_; }
  // The largest token id in the file (read through once, on the first call).
  int64_t max_token_id() const;
  // Error naming the file, the largest id and the vocabulary when an id is >= student_vocab_size.
  void check_vocabulary(int64_t student_vocab_size) const;
  // Sample indices for one DP rank for one epoch: a permutation of 0..N-1 fixed by `seed` (Fisher-Yates over
  // std::mt19937_64, the same on every platform), dealt round-robin (rank r gets positions r, r+dp_size, ...),
  // the tail that does not divide evenly dropped so that every rank gets N / dp_size indices.
  std::vector<int64_t> epoch_order(uint64_t seed, int dp_rank, int dp_size) const;
  // Tokens [batch, seq_len] (int64, 0 past each length) and lengths [batch] (int64) of the given samples.
  std::pair<torch::Tensor, torch::Tensor> batch(const std::vector<int64_t>& indices) const;
  // The teacher's top-K of the given samples: ids [batch, seq_len, K] (int64) and log-probs [batch, seq_len, K]
  // (float32; position t predicts token t+1; id 0 and -inf at length-1 and past it). An Error naming the file
  // when it stores none (topk() == 0), and naming the file, the sample and the position for an id outside
  // 0..vocab_size-1 or a log-probability that is not finite and at most 0 before position length-1.
  std::pair<torch::Tensor, torch::Tensor> topk_batch(const std::vector<int64_t>& indices) const;

 private:
  void check_topk_values(int64_t index, const int64_t* ids, const float* logprobs) const;
  void read_identity();
  void read_lengths_and_completeness();

  std::string path_;
  int64_t file_ = -1;    // hid_t of the open file
  int64_t tokens_ = -1;  // hid_t of the "tokens" dataset
  int64_t topk_ids_ = -1, topk_logprobs_ = -1;  // hid_t of "topk_ids" / "topk_logprobs" (when topk() > 0)
  CorpusIdentity identity_;
  std::vector<int32_t> lengths_;
  mutable int64_t max_token_id_ = -1;
};

}  // namespace qforge::io
