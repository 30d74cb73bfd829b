// The corpus identity and the journals (format in corpus.h); the HDF5 file and its reader are in corpus_file.cpp.
#include "framework/io/corpus.h"

#include "framework/common/error.h"
#include "framework/io/corpus_detail.h"
#include "framework/log/log.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

namespace qforge::io {
namespace detail {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string parent_dir(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// Makes a rename or link inside `dir` durable. Best effort: some file systems refuse fsync on a directory.
void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  const bool ok = fd >= 0 && ::fsync(fd) == 0;
  const int error = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) throw Error(fmt::format("cannot fsync '{}': {}", path, std::strerror(error)));
}

CorpusIdentity identity_from_json(const json& j, const std::string& where) {
  CorpusIdentity identity;
  const bool ok = j.is_object() && j.contains("attributes");
  for (const char* key : kRequiredIntegerKeys)
    if (!ok || !j.contains(key) || !j.at(key).is_number_integer())
      throw Error(
          fmt::format("{} holds no corpus identity: integer '{}' and object 'attributes' are expected", where, key));
  identity.num_samples = j.at("num_samples").get<int64_t>();
  identity.seq_len = j.at("seq_len").get<int64_t>();
  identity.vocab_size = j.at("vocab_size").get<int64_t>();
  if (j.contains("topk")) {
    if (!j.at("topk").is_number_integer()) throw Error(fmt::format("{}: 'topk' is not an integer", where));
    identity.topk = j.at("topk").get<int64_t>();
  }
  identity.attributes = j.at("attributes");
  return identity;
}

}  // namespace detail

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using detail::fsync_directory;
using detail::identity_from_json;
using detail::kIntegerKeys;
using detail::parent_dir;

constexpr char kJournalMagic[4] = {'Q', 'F', 'C', 'J'};
constexpr uint32_t kJournalVersion = 2;            // 2: records may carry top-K ids and log-probs
constexpr size_t kHeaderFixedBytes = 12;           // magic, version, identity length
constexpr size_t kRecordFixedBytes = 12;           // index, length
constexpr uint32_t kMaxIdentityBytes = 64u << 20;  // a sanity bound on the header's JSON

// ---- bytes ---------------------------------------------------------------------------------------------------

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  return table;
}

void put_u32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

void put_u64(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

uint32_t get_u32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

uint64_t get_u64(const unsigned char* p) { return uint64_t{get_u32(p)} | uint64_t{get_u32(p + 4)} << 32; }

const unsigned char* bytes_of(const std::string& s) { return reinterpret_cast<const unsigned char*>(s.data()); }

std::string shortened(const json& value) {
  std::string text = value.dump();
  return text.size() <= 80 ? text : text.substr(0, 77) + "...";
}

// ---- identity ------------------------------------------------------------------------------------------------

void first_json_difference(const json& expected, const json& found, const std::string& prefix, std::string& key) {
  if (!key.empty() || expected == found) return;
  if (!expected.is_object() || !found.is_object()) {
    key = prefix;
    return;
  }
  std::set<std::string> keys;
  for (const auto& item : expected.items()) keys.insert(item.key());
  for (const auto& item : found.items()) keys.insert(item.key());
  for (const std::string& name : keys) {
    const std::string path = prefix + "." + name;
    if (!expected.contains(name) || !found.contains(name))
      key = path;
    else
      first_json_difference(expected.at(name), found.at(name), path, key);
    if (!key.empty()) return;
  }
}

json value_at(const json& root, const std::string& dotted) {
  const json* node = &root;
  size_t start = 0;
  while (start <= dotted.size()) {
    const size_t end = std::min(dotted.find('.', start), dotted.size());
    const std::string name = dotted.substr(start, end - start);
    if (!node->is_object() || !node->contains(name)) return json("(absent)");
    node = &node->at(name);
    start = end + 1;
  }
  return *node;
}

// ---- journal -------------------------------------------------------------------------------------------------

std::string encode_header(const CorpusIdentity& identity) {
  const std::string text = identity.to_json().dump();
  std::string header(kJournalMagic, 4);
  put_u32(header, kJournalVersion);
  put_u32(header, static_cast<uint32_t>(text.size()));
  header += text;
  put_u32(header, crc32(header.data(), header.size()));
  return header;
}

std::string encode_record(const CorpusSample& sample) {
  std::string record;
  record.reserve(kRecordFixedBytes + 4 * sample.tokens.size() + 8 * sample.topk_ids.size() + 4);
  put_u64(record, static_cast<uint64_t>(sample.index));
  put_u32(record, static_cast<uint32_t>(sample.tokens.size()));
  for (int32_t token : sample.tokens) put_u32(record, static_cast<uint32_t>(token));
  for (int32_t id : sample.topk_ids) put_u32(record, static_cast<uint32_t>(id));
  for (float logprob : sample.topk_logprobs) {
    uint32_t bits = 0;
    std::memcpy(&bits, &logprob, 4);
    put_u32(record, bits);
  }
  put_u32(record, crc32(record.data(), record.size()));
  return record;
}

void write_all(std::FILE* file, const std::string& bytes, const std::string& path) {
  if (std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size())
    throw Error(fmt::format("cannot write to journal '{}': {}", path, std::strerror(errno)));
}

void flush_and_sync(std::FILE* file, const std::string& path) {
  if (std::fflush(file) != 0 || ::fsync(::fileno(file)) != 0)
    throw Error(fmt::format("cannot make journal '{}' durable (fflush + fsync): {}", path, std::strerror(errno)));
}

// Reads exactly `size` bytes; false at the end of the file.
bool read_exactly(std::FILE* file, std::string& out, size_t size) {
  out.resize(size);
  return std::fread(out.data(), 1, size, file) == size;
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

CorpusIdentity read_journal_header(std::FILE* file, const std::string& path) {
  const std::string damaged = fmt::format("journal '{}' has a damaged header", path);
  std::string fixed, text, crc;
  if (!read_exactly(file, fixed, kHeaderFixedBytes))
    throw Error(
        damaged +
        fmt::format(" (cut short within its first {} bytes; journals are created whole, so the file was damaged later)",
                    kHeaderFixedBytes));
  if (std::memcmp(fixed.data(), kJournalMagic, 4) != 0)
    throw Error(fmt::format("'{}' is not a qforge corpus journal: it does not start with \"QFCJ\"", path));
  const uint32_t version = get_u32(bytes_of(fixed) + 4);
  if (version != kJournalVersion)
    throw Error(
        fmt::format("journal '{}' has version {}, but only version {} is known", path, version, kJournalVersion));
  const uint32_t size = get_u32(bytes_of(fixed) + 8);
  if (size > kMaxIdentityBytes || !read_exactly(file, text, size) || !read_exactly(file, crc, 4))
    throw Error(damaged + " (cut short or with an impossible identity length)");
  if (get_u32(bytes_of(crc)) != crc32(text.data(), text.size(), crc32(fixed.data(), fixed.size())))
    throw Error(damaged + " (its CRC-32 does not match)");
  const json identity = json::parse(text, nullptr, false);
  if (identity.is_discarded()) throw Error(damaged + " (its identity is not valid JSON)");
  return identity_from_json(identity, fmt::format("the header of journal '{}'", path));
}

// One record into `sample`; an empty string, or why the record is cut short or fails its checks.
std::string read_record(std::FILE* file, const CorpusIdentity& identity, CorpusSample& sample) {
  std::string fixed, body;
  if (!read_exactly(file, fixed, kRecordFixedBytes)) return "cut short in its index and length";
  sample.index = static_cast<int64_t>(get_u64(bytes_of(fixed)));
  const int64_t length = static_cast<int32_t>(get_u32(bytes_of(fixed) + 8));
  if (sample.index < 0 || sample.index >= identity.num_samples || length < 1 || length > identity.seq_len)
    return fmt::format("with index {} or length {} out of range", sample.index, length);
  const int64_t m = (length - 1) * identity.topk;  // top-K values of each kind
  if (!read_exactly(file, body, static_cast<size_t>(4 * length + 8 * m + 4))) return "cut short in its tokens or top-K";
  const uint32_t expected = crc32(body.data(), body.size() - 4, crc32(fixed.data(), fixed.size()));
  if (get_u32(bytes_of(body) + body.size() - 4) != expected) return "whose CRC-32 does not match";
  const unsigned char* p = bytes_of(body);
  sample.tokens.resize(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) sample.tokens[i] = static_cast<int32_t>(get_u32(p + 4 * i));
  p += 4 * length;
  sample.topk_ids.resize(static_cast<size_t>(m));
  sample.topk_logprobs.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    sample.topk_ids[i] = static_cast<int32_t>(get_u32(p + 4 * i));
    const uint32_t bits = get_u32(p + 4 * (m + i));
    std::memcpy(&sample.topk_logprobs[i], &bits, 4);
    if (sample.topk_ids[i] < 0 || sample.topk_ids[i] >= identity.vocab_size)
      return fmt::format("with top-K id {} out of range", sample.topk_ids[i]);
  }
  return "";
}

void add_sample(JournalContents& contents, std::map<int64_t, std::string>& origin, CorpusSample& sample,
                const std::string& path, bool with_topk) {
  auto [it, inserted] = contents.samples.try_emplace(sample.index, std::move(sample.tokens));
  if (inserted) {
    origin[sample.index] = path;
    if (with_topk)  // every sample, a 1-token one (no positions) included
      contents.topk[sample.index] = CorpusTopK{std::move(sample.topk_ids), std::move(sample.topk_logprobs)};
  } else if (it->second != sample.tokens) {
    throw Error(
        fmt::format("sample {} differs between journals '{}' and '{}': generation of a sample must be "
                    "deterministic, so one of them is from another run",
                    sample.index, origin[sample.index], path));
  }
}

// Reads one journal into `contents`; returns whether its tail was dropped.
bool read_journal(const std::string& path, const CorpusIdentity& expected, JournalContents& contents,
                  std::map<int64_t, std::string>& origin) {
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(fmt::format("cannot open journal '{}': {}", path, std::strerror(errno)));
  const CorpusIdentity found = read_journal_header(file.get(), path);
  const std::string key = first_difference(expected, found);
  if (!key.empty())
    throw Error(
        fmt::format("journal '{}' belongs to another corpus: '{}' is {} there but {} now; move it out of "
                    "'{}' or run with its settings (it is never appended to)",
                    path, key, shortened(value_at(found.to_json(), key)), shortened(value_at(expected.to_json(), key)),
                    parent_dir(path)));
  const auto size = static_cast<int64_t>(fs::file_size(path));
  for (;;) {
    const int64_t offset = std::ftell(file.get());
    if (offset >= size) return false;
    CorpusSample sample;
    const std::string why = read_record(file.get(), expected, sample);
    if (!why.empty()) {
      log::warn(
          "journal '{}': dropped its last {} bytes from byte {} on (a record {}, as a crash leaves it); "
          "those samples will be generated again",
          path, size - offset, offset, why);
      return true;
    }
    add_sample(contents, origin, sample, path, expected.topk > 0);
  }
}

}  // namespace

// ---- public --------------------------------------------------------------------------------------------------

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

json CorpusIdentity::to_json() const {
  return {{"num_samples", num_samples},
          {"seq_len", seq_len},
          {"vocab_size", vocab_size},
          {"topk", topk},
          {"attributes", attributes}};
}

void CorpusIdentity::validate(const std::string& where) const {
  if (num_samples < 1 || seq_len < 1 || vocab_size < 1 || vocab_size > (int64_t{1} << 32))
    throw Error(
        fmt::format("{}: corpus identity num_samples {}, seq_len {}, vocab_size {} is invalid: all must be "
                    "positive and vocab_size at most 2^32",
                    where, num_samples, seq_len, vocab_size));
  if (topk < 0 || topk > vocab_size)
    throw Error(fmt::format("{}: corpus identity topk {} is outside 0..vocab_size ({})", where, topk, vocab_size));
  if (!attributes.is_object())
    throw Error(fmt::format("{}: corpus attributes must be a JSON object, not {}", where, attributes.type_name()));
  for (const char* key : kIntegerKeys)
    if (attributes.contains(key))
      throw Error(
          fmt::format("{}: corpus attribute '{}' clashes with the identity's own integer of that name", where, key));
}

std::string first_difference(const CorpusIdentity& expected, const CorpusIdentity& found) {
  if (expected.num_samples != found.num_samples) return "num_samples";
  if (expected.seq_len != found.seq_len) return "seq_len";
  if (expected.vocab_size != found.vocab_size) return "vocab_size";
  if (expected.topk != found.topk) return "topk";
  std::string key;
  first_json_difference(expected.attributes, found.attributes, "attributes", key);
  return key;
}

CorpusJournalWriter::CorpusJournalWriter(const std::string& path, const CorpusIdentity& identity)
    : path_(path), identity_(identity) {
  identity.validate(fmt::format("journal '{}'", path));
  if (fs::exists(path))
    throw Error(
        fmt::format("journal '{}' already exists: journals are never appended to, give this run a new name", path));
  const fs::path p(path);
  const std::string temp =
      (fs::path(parent_dir(path)) / fmt::format(".{}.tmp.{}", p.filename().string(), ::getpid())).string();
  FilePtr file(std::fopen(temp.c_str(), "wbx"));
  if (!file) throw Error(fmt::format("cannot create journal '{}' (as '{}'): {}", path, temp, std::strerror(errno)));
  try {
    write_all(file.get(), encode_header(identity), path);
    flush_and_sync(file.get(), path);
    if (::link(temp.c_str(), path.c_str()) != 0)  // fails if `path` appeared meanwhile: never clobbers
      throw Error(fmt::format("cannot create journal '{}': {}", path, std::strerror(errno)));
  } catch (...) {
    std::remove(temp.c_str());
    throw;
  }
  ::unlink(temp.c_str());
  fsync_directory(parent_dir(path));
  file_ = file.release();
}

CorpusJournalWriter::~CorpusJournalWriter() {
  if (file_) std::fclose(file_);
}

void CorpusJournalWriter::append(const CorpusSample& sample) {
  const auto length = static_cast<int64_t>(sample.tokens.size());
  if (sample.index < 0 || sample.index >= identity_.num_samples || length < 1 || length > identity_.seq_len)
    throw Error(
        fmt::format("journal '{}': sample {} with {} tokens cannot be appended: index 0..{} and 1..{} tokens "
                    "expected",
                    path_, sample.index, length, identity_.num_samples - 1, identity_.seq_len));
  for (int32_t token : sample.tokens)
    if (token < 0 || token >= identity_.vocab_size)
      throw Error(fmt::format("journal '{}': sample {} holds token id {}, outside 0..{}", path_, sample.index, token,
                              identity_.vocab_size - 1));
  const auto m = static_cast<size_t>((length - 1) * identity_.topk);
  if (sample.topk_ids.size() != m || sample.topk_logprobs.size() != m)
    throw Error(fmt::format(
        "journal '{}': sample {} has {} top-K ids and {} log-probs, (length-1) x topk = {} x {} "
        "expected",
        path_, sample.index, sample.topk_ids.size(), sample.topk_logprobs.size(), length - 1, identity_.topk));
  for (int32_t id : sample.topk_ids)
    if (id < 0 || id >= identity_.vocab_size)
      throw Error(fmt::format("journal '{}': sample {} holds top-K id {}, outside 0..{}", path_, sample.index, id,
                              identity_.vocab_size - 1));
  check_usable();
  try {
    write_all(file_, encode_record(sample), path_);
  } catch (...) {
    close_after_failure();
    throw;
  }
}

void CorpusJournalWriter::flush() {
  check_usable();
  try {
    flush_and_sync(file_, path_);
  } catch (...) {
    close_after_failure();
    throw;
  }
}

void CorpusJournalWriter::check_usable() const {
  if (!file_)
    throw Error(
        fmt::format("journal '{}' failed to write earlier, so its tail may be torn: write to a new journal", path_));
}

// A record may be half written: nothing more may follow it, or the tear would sit mid-journal.
void CorpusJournalWriter::close_after_failure() {
  std::fclose(file_);
  file_ = nullptr;
}

JournalContents read_corpus_journals(const std::string& dir, const CorpusIdentity& identity) {
  identity.validate(fmt::format("journal directory '{}'", dir));
  if (!fs::is_directory(dir)) throw Error(fmt::format("journal directory '{}' does not exist", dir));
  std::vector<std::string> paths;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".qfcj" && entry.is_regular_file()) paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());
  JournalContents contents;
  std::map<int64_t, std::string> origin;
  for (const std::string& path : paths) {
    contents.torn_records += read_journal(path, identity, contents, origin) ? 1 : 0;
    ++contents.journals;
  }
  return contents;
}

}  // namespace qforge::io
