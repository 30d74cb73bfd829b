// The corpus's HDF5 file (format in corpus.h): written from the joined journals, read for training.
#include "framework/io/corpus.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/io/corpus_detail.h"
#include "framework/system/memory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <hdf5.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>

namespace qforge::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using detail::fsync_directory;
using detail::fsync_path;
using detail::identity_from_json;
using detail::kIntegerKeys;
using detail::parent_dir;

constexpr hsize_t kRowsPerChunk = 64;      // "tokens" chunk: 64 samples x seq_len
constexpr hsize_t kValuesPerChunk = 4096;  // "lengths" / "complete" chunk
constexpr unsigned kDeflateLevel = 4;
constexpr size_t kChunkCacheBytes = 32u << 20;

// ---- HDF5 ----------------------------------------------------------------------------------------------------

// Silences HDF5's own error-stack printing while alive: failures become qforge::Error naming file and call.
class Hdf5Quiet {
 public:
  Hdf5Quiet() {
    H5Eget_auto2(H5E_DEFAULT, &function_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~Hdf5Quiet() { H5Eset_auto2(H5E_DEFAULT, function_, data_); }
  Hdf5Quiet(const Hdf5Quiet&) = delete;
  Hdf5Quiet& operator=(const Hdf5Quiet&) = delete;

 private:
  H5E_auto2_t function_ = nullptr;
  void* data_ = nullptr;
};

// Why the last HDF5 call failed, from the error stack: the system's message where a system call failed (HDF5's
// file drivers record "error message = 'No space left on device'"), else the innermost description.
std::string hdf5_reason() {
  std::string reason, system;
  std::pair<std::string*, std::string*> found(&reason, &system);
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* entry, void* data) -> herr_t {
        auto* out = static_cast<std::pair<std::string*, std::string*>*>(data);
        const std::string desc = entry->desc ? entry->desc : "";
        if (out->first->empty()) *out->first = desc;
        const std::string key = "error message = '";
        const size_t at = desc.find(key);
        if (at != std::string::npos && out->second->empty())
          *out->second = desc.substr(at + key.size(), desc.find('\'', at + key.size()) - at - key.size());
        return 0;
      },
      &found);
  return system.empty() ? reason : system;
}

[[noreturn]] void hdf5_failed(const char* call, const std::string& path) {
  const std::string reason = hdf5_reason();
  throw Error(
      fmt::format("HDF5 call {} failed on corpus file '{}'{}", call, path, reason.empty() ? "" : ": " + reason));
}

hid_t check_id(hid_t id, const char* call, const std::string& path) {
  if (id < 0) hdf5_failed(call, path);
  return id;
}

void check_status(herr_t status, const char* call, const std::string& path) {
  if (status < 0) hdf5_failed(call, path);
}

// An HDF5 identifier closed on destruction (unchecked) or by close() (checked).
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t), const char* call, const std::string& path)
      : id_(check_id(id, call, path)), close_(close) {}
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  H5Id(H5Id&& other) noexcept : id_(other.release()), close_(other.close_) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  hid_t get() const { return id_; }
  hid_t release() { return std::exchange(id_, -1); }
  void close(const char* call, const std::string& path) { check_status(close_(release()), call, path); }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

hid_t token_file_type(int64_t vocab_size) {
  if (vocab_size <= (int64_t{1} << 8)) return H5T_STD_U8LE;
  if (vocab_size <= (int64_t{1} << 16)) return H5T_STD_U16LE;
  return H5T_STD_U32LE;
}

H5Id create_dataset(hid_t file, const char* name, hid_t type, const std::vector<hsize_t>& dims,
                    const std::vector<hsize_t>& chunk, const std::string& path) {
  const int rank = static_cast<int>(dims.size());
  H5Id space(H5Screate_simple(rank, dims.data(), nullptr), H5Sclose, "H5Screate_simple", path);
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "H5Pcreate", path);
  check_status(H5Pset_chunk(dcpl.get(), rank, chunk.data()), "H5Pset_chunk", path);
  check_status(H5Pset_deflate(dcpl.get(), kDeflateLevel), "H5Pset_deflate", path);
  return H5Id(H5Dcreate2(file, name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose, "H5Dcreate2",
              path);
}

void write_int_attribute(hid_t file, const char* name, int64_t value, const std::string& path) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate", path);
  H5Id attribute(H5Acreate2(file, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, "H5Acreate2",
                 path);
  check_status(H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value), "H5Awrite", path);
  attribute.close("H5Aclose", path);
}

H5Id string_type(const std::string& path) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy", path);
  check_status(H5Tset_size(type.get(), H5T_VARIABLE), "H5Tset_size", path);
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset", path);
  return type;
}

void write_string_attribute(hid_t file, const std::string& name, const std::string& value, const std::string& path) {
  H5Id type = string_type(path);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate", path);
  H5Id attribute(H5Acreate2(file, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                 "H5Acreate2", path);
  const char* text = value.c_str();
  check_status(H5Awrite(attribute.get(), type.get(), &text), "H5Awrite", path);
  attribute.close("H5Aclose", path);
}

void write_identity(hid_t file, const CorpusIdentity& identity, const std::string& path) {
  write_int_attribute(file, "num_samples", identity.num_samples, path);
  write_int_attribute(file, "seq_len", identity.seq_len, path);
  write_int_attribute(file, "vocab_size", identity.vocab_size, path);
  write_int_attribute(file, "topk", identity.topk, path);
  for (const auto& item : identity.attributes.items())
    write_string_attribute(file, item.key(), item.value().dump(), path);
}

// Selects rows [first, first + rows) of a [N, seq_len] dataset; returns the file space.
H5Id select_rows(hid_t dataset, hsize_t first, hsize_t rows, hsize_t seq_len, const std::string& path) {
  H5Id space(H5Dget_space(dataset), H5Sclose, "H5Dget_space", path);
  const hsize_t start[2] = {first, 0}, count[2] = {rows, seq_len};
  check_status(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), "H5Sselect_hyperslab",
               path);
  return space;
}

void write_tokens(hid_t file, const CorpusIdentity& identity, const std::map<int64_t, std::vector<int32_t>>& samples,
                  const std::string& path) {
  const auto n = static_cast<hsize_t>(identity.num_samples), seq_len = static_cast<hsize_t>(identity.seq_len);
  H5Id dataset = create_dataset(file, "tokens", token_file_type(identity.vocab_size), {n, seq_len},
                                {std::min(n, kRowsPerChunk), seq_len}, path);
  std::vector<uint32_t> block;
  auto sample = samples.begin();
  for (hsize_t first = 0; first < n; first += kRowsPerChunk) {
    const hsize_t rows = std::min(kRowsPerChunk, n - first);
    block.assign(rows * seq_len, 0);
    for (hsize_t row = 0; row < rows; ++row, ++sample)
      std::copy(sample->second.begin(), sample->second.end(), block.begin() + static_cast<int64_t>(row * seq_len));
    const hsize_t dims[2] = {rows, seq_len};
    H5Id memory(H5Screate_simple(2, dims, nullptr), H5Sclose, "H5Screate_simple", path);
    H5Id space = select_rows(dataset.get(), first, rows, seq_len, path);
    check_status(H5Dwrite(dataset.get(), H5T_NATIVE_UINT32, memory.get(), space.get(), H5P_DEFAULT, block.data()),
                 "H5Dwrite(tokens)", path);
  }
  dataset.close("H5Dclose(tokens)", path);
}

// "topk_ids" and "topk_logprobs" [N, seq_len, K], written 64 samples at a time.
void write_topk(hid_t file, const CorpusIdentity& identity, const std::map<int64_t, std::vector<int32_t>>& samples,
                const std::map<int64_t, CorpusTopK>& topk, const std::string& path) {
  const auto n = static_cast<hsize_t>(identity.num_samples), seq_len = static_cast<hsize_t>(identity.seq_len),
             k = static_cast<hsize_t>(identity.topk);
  const std::vector<hsize_t> dims = {n, seq_len, k}, chunk = {std::min(n, kRowsPerChunk), seq_len, k};
  H5Id ids = create_dataset(file, "topk_ids", token_file_type(identity.vocab_size), dims, chunk, path);
  H5Id logprobs = create_dataset(file, "topk_logprobs", H5T_IEEE_F32LE, dims, chunk, path);
  std::vector<uint32_t> id_block;
  std::vector<float> logprob_block;
  auto sample = samples.begin();
  for (hsize_t first = 0; first < n; first += kRowsPerChunk) {
    const hsize_t rows = std::min(kRowsPerChunk, n - first);
    id_block.assign(rows * seq_len * k, 0);
    logprob_block.assign(rows * seq_len * k, -std::numeric_limits<float>::infinity());
    for (hsize_t row = 0; row < rows; ++row, ++sample) {
      const CorpusTopK& values = topk.at(sample->first);
      const auto offset = static_cast<int64_t>(row * seq_len * k);
      std::copy(values.ids.begin(), values.ids.end(), id_block.begin() + offset);
      std::copy(values.logprobs.begin(), values.logprobs.end(), logprob_block.begin() + offset);
    }
    const hsize_t block_dims[3] = {rows, seq_len, k}, start[3] = {first, 0, 0};
    H5Id memory(H5Screate_simple(3, block_dims, nullptr), H5Sclose, "H5Screate_simple", path);
    for (H5Id* dataset : {&ids, &logprobs}) {
      H5Id space(H5Dget_space(dataset->get()), H5Sclose, "H5Dget_space", path);
      check_status(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, block_dims, nullptr),
                   "H5Sselect_hyperslab", path);
      if (dataset == &ids)
        check_status(H5Dwrite(ids.get(), H5T_NATIVE_UINT32, memory.get(), space.get(), H5P_DEFAULT, id_block.data()),
                     "H5Dwrite(topk_ids)", path);
      else
        check_status(
            H5Dwrite(logprobs.get(), H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT, logprob_block.data()),
            "H5Dwrite(topk_logprobs)", path);
    }
  }
  ids.close("H5Dclose(topk_ids)", path);
  logprobs.close("H5Dclose(topk_logprobs)", path);
}

template <typename T>
void write_vector(hid_t file, const char* name, hid_t file_type, hid_t memory_type, const std::vector<T>& values,
                  const std::string& path) {
  const auto n = static_cast<hsize_t>(values.size());
  H5Id dataset = create_dataset(file, name, file_type, {n}, {std::min(n, kValuesPerChunk)}, path);
  check_status(H5Dwrite(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), "H5Dwrite", path);
  dataset.close("H5Dclose", path);
}

void check_samples(const std::string& path, const CorpusIdentity& identity,
                   const std::map<int64_t, std::vector<int32_t>>& samples, const std::map<int64_t, CorpusTopK>& topk) {
  if (identity.topk == 0 && !topk.empty())
    throw Error(fmt::format("cannot write corpus '{}': top-K values given but identity.topk is 0", path));
  int64_t expected = 0;
  for (const auto& [index, tokens] : samples) {
    if (identity.topk > 0) {
      const auto found = topk.find(index);
      const auto m = static_cast<size_t>((static_cast<int64_t>(tokens.size()) - 1) * identity.topk);
      if (found == topk.end() || found->second.ids.size() != m || found->second.logprobs.size() != m)
        throw Error(fmt::format("cannot write corpus '{}': sample {} has no top-K of (length-1) x {} = {} values", path,
                                index, identity.topk, m));
      for (int32_t id : found->second.ids)
        if (id < 0 || id >= identity.vocab_size)
          throw Error(fmt::format("cannot write corpus '{}': sample {} holds top-K id {}, outside 0..{}", path, index,
                                  id, identity.vocab_size - 1));
    }
    if (index < 0 || index >= identity.num_samples)
      throw Error(
          fmt::format("cannot write corpus '{}': sample {} is outside 0..{}", path, index, identity.num_samples - 1));
    if (index != expected)
      throw Error(fmt::format("cannot write corpus '{}': sample {} is missing (samples 0..{} are expected)", path,
                              expected, identity.num_samples - 1));
    const auto length = static_cast<int64_t>(tokens.size());
    if (length < 1 || length > identity.seq_len)
      throw Error(fmt::format("cannot write corpus '{}': sample {} has {} tokens, 1..{} expected", path, index, length,
                              identity.seq_len));
    for (int32_t token : tokens)
      if (token < 0 || token >= identity.vocab_size)
        throw Error(fmt::format("cannot write corpus '{}': sample {} holds token id {}, outside 0..{}", path, index,
                                token, identity.vocab_size - 1));
    ++expected;
  }
  if (expected != identity.num_samples)
    throw Error(fmt::format("cannot write corpus '{}': {} samples given, exactly 0..{} expected", path, samples.size(),
                            identity.num_samples - 1));
}

herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* names) {
  static_cast<std::vector<std::string>*>(names)->push_back(name);
  return 0;
}

int64_t read_int_attribute(hid_t attribute, const std::string& name, const std::string& path) {
  H5Id type(H5Aget_type(attribute), H5Tclose, "H5Aget_type", path);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw Error(fmt::format("corpus file '{}': attribute '{}' is not an integer", path, name));
  int64_t value = 0;
  check_status(H5Aread(attribute, H5T_NATIVE_INT64, &value), "H5Aread", path);
  return value;
}

json read_json_attribute(hid_t attribute, const std::string& name, const std::string& path) {
  H5Id file_type(H5Aget_type(attribute), H5Tclose, "H5Aget_type", path);
  const htri_t variable = H5Tis_variable_str(file_type.get());
  if (H5Tget_class(file_type.get()) != H5T_STRING || variable <= 0)
    throw Error(fmt::format("corpus file '{}': attribute '{}' is not a variable-length string", path, name));
  H5Id type = string_type(path);
  char* text = nullptr;
  check_status(H5Aread(attribute, type.get(), &text), "H5Aread", path);
  const json value = json::parse(text ? text : "", nullptr, false);
  H5free_memory(text);
  if (value.is_discarded())
    throw Error(fmt::format("corpus file '{}': attribute '{}' does not hold JSON text", path, name));
  return value;
}

// The dataset's extent, checked against `dims`.
void check_extent(hid_t dataset, const char* name, const std::vector<hsize_t>& dims, const std::string& path) {
  H5Id space(H5Dget_space(dataset), H5Sclose, "H5Dget_space", path);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  check_status(rank, "H5Sget_simple_extent_ndims", path);
  std::vector<hsize_t> found(static_cast<size_t>(rank), 0);
  if (rank > 0)
    check_status(H5Sget_simple_extent_dims(space.get(), found.data(), nullptr), "H5Sget_simple_extent_dims", path);
  if (found != dims)
    throw Error(fmt::format("corpus file '{}': dataset '{}' has shape [{}], [{}] expected", path, name,
                            fmt::join(found, ", "), fmt::join(dims, ", ")));
}

void check_token_type(hid_t dataset, const std::string& path) {
  H5Id type(H5Dget_type(dataset), H5Tclose, "H5Dget_type", path);
  const size_t size = H5Tget_size(type.get());
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_sign(type.get()) != H5T_SGN_NONE || size == 0 || size > 4)
    throw Error(
        fmt::format("corpus file '{}': dataset 'tokens' is not of an unsigned integer type of 1, 2 or 4 bytes", path));
}

template <typename T>
std::vector<T> read_vector(hid_t file, const char* name, hid_t memory_type, int64_t n, const std::string& path) {
  H5Id dataset(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose, fmt::format("H5Dopen2({})", name).c_str(), path);
  check_extent(dataset.get(), name, {static_cast<hsize_t>(n)}, path);
  std::vector<T> values(static_cast<size_t>(n));
  check_status(H5Dread(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
               fmt::format("H5Dread({})", name).c_str(), path);
  return values;
}

uint64_t bounded(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound: below it, x % bound would be biased
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % bound;
  }
}

}  // namespace

namespace {

// An upper bound of the corpus file's size: every dataset uncompressed (deflate grows incompressible data by well
// under 1%), plus room for HDF5's metadata.
uint64_t largest_corpus_bytes(const CorpusIdentity& identity) {
  const uint64_t token_bytes = H5Tget_size(token_file_type(identity.vocab_size));
  const auto n = static_cast<uint64_t>(identity.num_samples), positions = n * identity.seq_len;
  const uint64_t data = positions * token_bytes + n * 5 + positions * identity.topk * (token_bytes + 4);
  return data + data / 50 + (uint64_t{1} << 20);
}

// Reserves `bytes` for `temp` (beyond its end, which stays where HDF5 puts it), so that a file system too full for
// the corpus fails here, with one clear error, and never inside HDF5: libhdf5 1.10 leaves a file whose flush failed
// half closed, and crashes closing it again in MPI_Finalize. Where fallocate is not supported, free space is
// compared instead.
void reserve_space(const std::string& temp, const std::string& path, uint64_t bytes) {
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("cannot open '{}' to reserve space: {}", temp, std::strerror(errno)));
  const int failed = ::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(bytes)) == 0 ? 0 : errno;
  ::close(fd);
  uint64_t available = bytes;
  if (failed == EOPNOTSUPP || failed == ENOSYS) {
    struct statvfs fs_info = {};
    if (::statvfs(parent_dir(temp).c_str(), &fs_info) == 0)
      available = static_cast<uint64_t>(fs_info.f_bavail) * fs_info.f_frsize;
  } else if (failed != 0) {
    throw Error(fmt::format("corpus file '{}': cannot reserve the {} it may take: {}", path,
                            sys::bytes_text(static_cast<int64_t>(bytes)), std::strerror(failed)));
  }
  if (available < bytes)
    throw Error(fmt::format("corpus file '{}': it may take {}, but only {} are free", path,
                            sys::bytes_text(static_cast<int64_t>(bytes)),
                            sys::bytes_text(static_cast<int64_t>(available))));
}

// Gives back what reserve_space reserved past the file's end: shrinking a file frees every block beyond its new
// end, the reserved ones included.
void release_reserve(const std::string& temp) {
  const auto size = static_cast<off_t>(fs::file_size(temp));
  if (::truncate(temp.c_str(), size + 1) != 0 || ::truncate(temp.c_str(), size) != 0)
    throw Error(fmt::format("cannot trim '{}': {}", temp, std::strerror(errno)));
}

}  // namespace

void write_corpus_file(const std::string& path, const CorpusIdentity& identity,
                       const std::map<int64_t, std::vector<int32_t>>& samples,
                       const std::map<int64_t, CorpusTopK>& topk) {
  identity.validate(fmt::format("corpus file '{}'", path));
  check_samples(path, identity, samples, topk);
  Hdf5Quiet quiet;
  AtomicFile output(path);  // removes the temporary if anything below throws
  {
    H5Id file(H5Fcreate(output.temp_path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, "H5Fcreate",
              path);
    reserve_space(output.temp_path(), path, largest_corpus_bytes(identity));
    write_identity(file.get(), identity, path);
    write_tokens(file.get(), identity, samples, path);
    if (identity.topk > 0) write_topk(file.get(), identity, samples, topk, path);
    std::vector<int32_t> lengths;
    for (const auto& [index, tokens] : samples) lengths.push_back(static_cast<int32_t>(tokens.size()));
    write_vector(file.get(), "lengths", H5T_STD_I32LE, H5T_NATIVE_INT32, lengths, path);
    write_vector(file.get(), "complete", H5T_STD_U8LE, H5T_NATIVE_UINT8, std::vector<uint8_t>(lengths.size(), 1), path);
    file.close("H5Fclose", path);
  }
  release_reserve(output.temp_path());
  fsync_path(output.temp_path());
  output.commit();
  fsync_directory(parent_dir(path));
}

CorpusReader::CorpusReader(const std::string& path) : path_(path) {
  if (!fs::is_regular_file(path)) throw Error(fmt::format("corpus file '{}' does not exist", path));
  Hdf5Quiet quiet;
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0)
    throw Error(
        fmt::format("corpus file '{}' cannot be opened as HDF5 (H5Fopen failed): it is truncated, damaged "
                    "or not a corpus file",
                    path));
  try {
    read_identity();
    H5Id access(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, "H5Pcreate", path);
    check_status(H5Pset_chunk_cache(access.get(), 521, kChunkCacheBytes, 0.75), "H5Pset_chunk_cache", path);
    tokens_ = check_id(H5Dopen2(file_, "tokens", access.get()), "H5Dopen2(tokens)", path);
    check_token_type(tokens_, path);
    check_extent(tokens_, "tokens", {static_cast<hsize_t>(num_samples()), static_cast<hsize_t>(seq_len())}, path);
    if (topk() > 0) {
      const std::vector<hsize_t> dims = {static_cast<hsize_t>(num_samples()), static_cast<hsize_t>(seq_len()),
                                         static_cast<hsize_t>(topk())};
      topk_ids_ = check_id(H5Dopen2(file_, "topk_ids", access.get()), "H5Dopen2(topk_ids)", path);
      check_extent(topk_ids_, "topk_ids", dims, path);
      topk_logprobs_ = check_id(H5Dopen2(file_, "topk_logprobs", access.get()), "H5Dopen2(topk_logprobs)", path);
      check_extent(topk_logprobs_, "topk_logprobs", dims, path);
    }
    read_lengths_and_completeness();
  } catch (...) {
    if (topk_logprobs_ >= 0) H5Dclose(topk_logprobs_);
    if (topk_ids_ >= 0) H5Dclose(topk_ids_);
    if (tokens_ >= 0) H5Dclose(tokens_);
    H5Fclose(file_);
    throw;
  }
}

CorpusReader::~CorpusReader() {
  if (topk_logprobs_ >= 0) H5Dclose(topk_logprobs_);
  if (topk_ids_ >= 0) H5Dclose(topk_ids_);
  if (tokens_ >= 0) H5Dclose(tokens_);
  if (file_ >= 0) H5Fclose(file_);
}

void CorpusReader::read_identity() {
  std::vector<std::string> names;
  check_status(H5Aiterate2(file_, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute_name, &names), "H5Aiterate2",
               path_);
  json identity = {{"attributes", json::object()}};
  for (const std::string& name : names) {
    H5Id attribute(H5Aopen(file_, name.c_str(), H5P_DEFAULT), H5Aclose, "H5Aopen", path_);
    const bool integer = std::find(std::begin(kIntegerKeys), std::end(kIntegerKeys), name) != std::end(kIntegerKeys);
    if (integer)
      identity[name] = read_int_attribute(attribute.get(), name, path_);
    else
      identity["attributes"][name] = read_json_attribute(attribute.get(), name, path_);
  }
  identity_ = identity_from_json(identity, fmt::format("corpus file '{}'", path_));
  identity_.validate(fmt::format("corpus file '{}'", path_));
}

void CorpusReader::read_lengths_and_completeness() {
  lengths_ = read_vector<int32_t>(file_, "lengths", H5T_NATIVE_INT32, num_samples(), path_);
  const auto complete = read_vector<uint8_t>(file_, "complete", H5T_NATIVE_UINT8, num_samples(), path_);
  const auto missing = std::count(complete.begin(), complete.end(), uint8_t{0});
  if (missing != 0) {
    const auto first = std::find(complete.begin(), complete.end(), uint8_t{0}) - complete.begin();
    throw Error(fmt::format("corpus file '{}' is incomplete: {} of {} samples were never written, the first is {}",
                            path_, missing, num_samples(), first));
  }
  for (size_t i = 0; i < lengths_.size(); ++i)
    if (lengths_[i] < 1 || lengths_[i] > seq_len())
      throw Error(
          fmt::format("corpus file '{}': sample {} has length {}, 1..{} expected", path_, i, lengths_[i], seq_len()));
}

int64_t CorpusReader::max_token_id() const {
  if (max_token_id_ >= 0) return max_token_id_;
  Hdf5Quiet quiet;
  const auto n = static_cast<hsize_t>(num_samples()), len = static_cast<hsize_t>(seq_len());
  std::vector<uint32_t> block;
  uint32_t largest = 0;
  for (hsize_t first = 0; first < n; first += kRowsPerChunk) {
    const hsize_t rows = std::min(kRowsPerChunk, n - first), dims[2] = {rows, len};
    block.resize(rows * len);
    H5Id memory(H5Screate_simple(2, dims, nullptr), H5Sclose, "H5Screate_simple", path_);
    H5Id space = select_rows(tokens_, first, rows, len, path_);
    check_status(H5Dread(tokens_, H5T_NATIVE_UINT32, memory.get(), space.get(), H5P_DEFAULT, block.data()),
                 "H5Dread(tokens)", path_);
    largest = std::max(largest, *std::max_element(block.begin(), block.end()));
  }
  return max_token_id_ = largest;
}

void CorpusReader::check_vocabulary(int64_t student_vocab_size) const {
  const int64_t largest = max_token_id();
  if (largest >= student_vocab_size)
    throw Error(
        fmt::format("corpus file '{}' holds token id {}, outside the student's vocabulary of {} tokens "
                    "(ids 0..{})",
                    path_, largest, student_vocab_size, student_vocab_size - 1));
}

std::vector<int64_t> CorpusReader::epoch_order(uint64_t seed, int dp_rank, int dp_size) const {
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size || num_samples() < dp_size)
    throw Error(
        fmt::format("corpus file '{}' has {} samples: cannot deal them to DP rank {} of {} (at least one "
                    "sample per rank expected)",
                    path_, num_samples(), dp_rank, dp_size));
  std::vector<int64_t> order(static_cast<size_t>(num_samples()));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::mt19937_64 rng(seed);
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[bounded(rng, i + 1)]);
  std::vector<int64_t> mine;
  const int64_t per_rank = num_samples() / dp_size;
  for (int64_t k = 0; k < per_rank; ++k) mine.push_back(order[static_cast<size_t>(k * dp_size + dp_rank)]);
  return mine;
}

std::pair<torch::Tensor, torch::Tensor> CorpusReader::batch(const std::vector<int64_t>& indices) const {
  const auto count = static_cast<int64_t>(indices.size());
  torch::Tensor tokens = torch::zeros({count, seq_len()}, torch::kLong);
  torch::Tensor lengths = torch::empty({count}, torch::kLong);
  Hdf5Quiet quiet;
  const auto len = static_cast<hsize_t>(seq_len());
  const hsize_t dims[2] = {1, len};
  H5Id memory(H5Screate_simple(2, dims, nullptr), H5Sclose, "H5Screate_simple", path_);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = indices[static_cast<size_t>(i)];
    if (index < 0 || index >= num_samples())
      throw Error(
          fmt::format("corpus file '{}' has samples 0..{}: sample {} was asked for", path_, num_samples() - 1, index));
    H5Id space = select_rows(tokens_, static_cast<hsize_t>(index), 1, len, path_);
    check_status(H5Dread(tokens_, H5T_NATIVE_INT64, memory.get(), space.get(), H5P_DEFAULT,
                         tokens.data_ptr<int64_t>() + i * seq_len()),
                 "H5Dread(tokens)", path_);
    lengths[i] = static_cast<int64_t>(lengths_[static_cast<size_t>(index)]);
  }
  return {tokens, lengths};
}

std::pair<torch::Tensor, torch::Tensor> CorpusReader::topk_batch(const std::vector<int64_t>& indices) const {
  if (topk() == 0)
    throw Error(
        fmt::format("corpus file '{}' stores no teacher top-K (generate it with generate.store_topk > 0)", path_));
  const auto count = static_cast<int64_t>(indices.size());
  torch::Tensor ids = torch::empty({count, seq_len(), topk()}, torch::kLong);
  torch::Tensor logprobs = torch::empty({count, seq_len(), topk()}, torch::kFloat);
  Hdf5Quiet quiet;
  const hsize_t dims[3] = {1, static_cast<hsize_t>(seq_len()), static_cast<hsize_t>(topk())};
  const int64_t row = seq_len() * topk();
  H5Id memory(H5Screate_simple(3, dims, nullptr), H5Sclose, "H5Screate_simple", path_);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = indices[static_cast<size_t>(i)];
    if (index < 0 || index >= num_samples())
      throw Error(
          fmt::format("corpus file '{}' has samples 0..{}: sample {} was asked for", path_, num_samples() - 1, index));
    const hsize_t start[3] = {static_cast<hsize_t>(index), 0, 0};
    for (const int64_t dataset : {topk_ids_, topk_logprobs_}) {
      H5Id space(H5Dget_space(dataset), H5Sclose, "H5Dget_space", path_);
      check_status(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, dims, nullptr),
                   "H5Sselect_hyperslab", path_);
      if (dataset == topk_ids_)
        check_status(H5Dread(dataset, H5T_NATIVE_INT64, memory.get(), space.get(), H5P_DEFAULT,
                             ids.data_ptr<int64_t>() + i * row),
                     "H5Dread(topk_ids)", path_);
      else
        check_status(H5Dread(dataset, H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT,
                             logprobs.data_ptr<float>() + i * row),
                     "H5Dread(topk_logprobs)", path_);
    }
    check_topk_values(index, ids.data_ptr<int64_t>() + i * row, logprobs.data_ptr<float>() + i * row);
  }
  return {ids, logprobs};
}

// The positions that predict a token (0 .. length-2) must hold ids of the vocabulary, or the loss would index
// outside the logits, and log-probabilities, finite and at most 0.
void CorpusReader::check_topk_values(int64_t index, const int64_t* ids, const float* logprobs) const {
  const int64_t values = (lengths_[static_cast<size_t>(index)] - 1) * topk();
  for (int64_t j = 0; j < values; ++j) {
    if (ids[j] < 0 || ids[j] >= vocab_size())
      throw Error(
          fmt::format("corpus file '{}': sample {}, position {} holds teacher top-K id {}, outside the "
                      "vocabulary 0..{}",
                      path_, index, j / topk(), ids[j], vocab_size() - 1));
    if (!(logprobs[j] <= 0.0f) || std::isinf(logprobs[j]))
      throw Error(
          fmt::format("corpus file '{}': sample {}, position {} holds teacher top-K log-probability {}; a "
                      "log-probability must be finite and at most 0",
                      path_, index, j / topk(), logprobs[j]));
  }
}

}  // namespace qforge::io