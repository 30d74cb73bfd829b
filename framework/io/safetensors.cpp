#include "framework/io/safetensors.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

namespace qforge::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian, as is this host's");

constexpr const char* kSingleFile = kSafetensorsFile;
constexpr const char* kIndexFile = kSafetensorsIndexFile;
constexpr int64_t kHeaderLengthBytes = 8;

std::atomic<int64_t> read_chunk_bytes{8 << 20};

struct DtypeName {
  const char* name;
  torch::ScalarType dtype;
};
const DtypeName kDtypes[] = {{"F64", torch::kDouble}, {"F32", torch::kFloat}, {"F16", torch::kHalf},
                             {"BF16", torch::kBFloat16}, {"I64", torch::kLong}, {"I32", torch::kInt},
                             {"I16", torch::kShort},   {"I8", torch::kChar},  {"U8", torch::kByte},
                             {"BOOL", torch::kBool}};

std::string known_dtype_list() {
  std::string list;
  for (const DtypeName& d : kDtypes) list += (list.empty() ? "" : ", ") + std::string(d.name);
  return list;
}

std::optional<std::string> name_of_dtype(torch::ScalarType dtype) {
  for (const DtypeName& d : kDtypes)
    if (dtype == d.dtype) return std::string(d.name);
  return std::nullopt;
}

std::optional<torch::ScalarType> dtype_from_name(const std::string& name) {
  for (const DtypeName& d : kDtypes)
    if (name == d.name) return d.dtype;
  return std::nullopt;
}

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw Error(fmt::format("safetensors file '{}' {}", path, problem));
}

uint64_t decode_little_endian(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = kHeaderLengthBytes - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Reads exactly `size` bytes at `offset`; the caller has checked that they lie inside the file.
void read_exactly(int fd, char* out, int64_t size, int64_t offset, const std::string& path) {
  while (size > 0) {
    ssize_t got = ::pread(fd, out, static_cast<size_t>(size), offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail(path, fmt::format("could not be read at byte {}: {}", offset, got < 0 ? std::strerror(errno) : "unexpected end of file"));
    out += got;
    size -= got;
    offset += got;
  }
}

// Closes the descriptor when it goes out of scope.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

// A non-negative integer that fits int64, or nullopt.
std::optional<int64_t> as_size(const json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  uint64_t v = value.get<uint64_t>();
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Parses one header entry; `data_size` is the size of the data area after the header.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry, int64_t data_start,
                       int64_t data_size) {
  const std::string tensor = fmt::format("tensor '{}'", name);
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
    fail(path, fmt::format("has a header entry for {} that is not an object with \"dtype\", \"shape\" and \"data_offsets\"", tensor));

  TensorInfo info;
  info.name = name;
  info.file = path;
  const json& dtype = entry["dtype"];
  std::optional<torch::ScalarType> known = dtype.is_string() ? dtype_from_name(dtype.get<std::string>()) : std::nullopt;
  if (!known) fail(path, fmt::format("gives {} the unknown dtype {}; expected one of {}", tensor, dtype.dump(), known_dtype_list()));
  info.dtype = *known;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail(path, fmt::format("gives {} the shape {}; expected a list of non-negative integers", tensor, shape.dump()));
  int64_t elements = 1;
  bool overflow = false;
  for (const json& extent : shape) {
    std::optional<int64_t> size = as_size(extent);
    if (!size) fail(path, fmt::format("gives {} the shape {}; expected a list of non-negative integers", tensor, shape.dump()));
    info.shape.push_back(*size);
    overflow |= __builtin_mul_overflow(elements, *size, &elements);
  }
  const int64_t element_size = static_cast<int64_t>(c10::elementSize(info.dtype));
  overflow |= __builtin_mul_overflow(elements, element_size, &info.nbytes);

  const json& offsets = entry["data_offsets"];
  std::optional<int64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_size(offsets[0]);
    end = as_size(offsets[1]);
  }
  if (!begin || !end || *begin > *end)
    fail(path, fmt::format("gives {} the data_offsets {}; expected [begin, end] with 0 <= begin <= end", tensor, offsets.dump()));
  if (overflow || info.nbytes != *end - *begin)
    fail(path, fmt::format("gives {} ({} {}) the data_offsets [{}, {}] spanning {} bytes; the shape needs {} bytes",
                           tensor, dtype.get<std::string>(), shape_string(info.shape), *begin, *end, *end - *begin,
                           overflow ? std::string("more than 2^63") : std::to_string(info.nbytes)));
  if (*end > data_size)
    fail(path, fmt::format("gives {} the data_offsets [{}, {}], past the end of its {}-byte data area; expected the file to "
                           "be at least {} bytes (is it truncated?)",
                           tensor, *begin, *end, data_size, static_cast<uint64_t>(data_start) + static_cast<uint64_t>(*end)));
  info.offset = data_start + *begin;
  return info;
}

// The pages of [begin, end) of a mapping that starts at a page boundary, widened to whole pages.
void drop_pages(const uint8_t* mapping, int64_t mapping_size, int64_t begin, int64_t end) {
  static const int64_t page = ::sysconf(_SC_PAGESIZE);
  begin = begin / page * page;
  end = std::min(mapping_size, (end + page - 1) / page * page);
  // Harmless when another read needs these pages too: the mapping is read-only, so they fault back in from the
  // page cache. A failure only costs memory, so it is not an error.
  if (end > begin) ::madvise(const_cast<uint8_t*>(mapping) + begin, static_cast<size_t>(end - begin), MADV_DONTNEED);
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  if (std::optional<std::string> name = name_of_dtype(dtype)) return *name;
  throw Error(fmt::format("dtype {} has no safetensors name; expected one of {}", c10::toString(dtype), known_dtype_list()));
}

int64_t set_read_chunk_bytes(int64_t bytes) { return read_chunk_bytes.exchange(std::max<int64_t>(1, bytes)); }

// ---------------------------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) fail(path, fmt::format("cannot be opened: {}", std::strerror(errno)));
  struct stat status {};
  if (::fstat(file.fd, &status) != 0) fail(path, fmt::format("cannot be examined: {}", std::strerror(errno)));
  if (!S_ISREG(status.st_mode)) fail(path, "is not a regular file");
  file_size_ = status.st_size;
  if (file_size_ == 0) fail(path, "is empty; expected an 8-byte header length followed by a JSON header");
  if (file_size_ < kHeaderLengthBytes)
    fail(path, fmt::format("is {} bytes long, shorter than the 8-byte header length it must start with", file_size_));

  uint8_t length_bytes[kHeaderLengthBytes];
  read_exactly(file.fd, reinterpret_cast<char*>(length_bytes), kHeaderLengthBytes, 0, path);
  const uint64_t header_length = decode_little_endian(length_bytes);
  if (header_length > static_cast<uint64_t>(file_size_ - kHeaderLengthBytes))
    fail(path, fmt::format("declares a header length of {} bytes, past the end of the {}-byte file; expected at most {}",
                           header_length, file_size_, file_size_ - kHeaderLengthBytes));
  data_start_ = kHeaderLengthBytes + static_cast<int64_t>(header_length);

  void* mapping = ::mmap(nullptr, static_cast<size_t>(file_size_), PROT_READ, MAP_SHARED, file.fd, 0);
  if (mapping == MAP_FAILED) fail(path, fmt::format("cannot be memory-mapped: {}", std::strerror(errno)));
  mapping_ = static_cast<const uint8_t*>(mapping);
  try {
    parse_header();
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(mapping_), static_cast<size_t>(file_size_));
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(const_cast<uint8_t*>(mapping_), static_cast<size_t>(file_size_));
}

void SafetensorsFile::parse_header() {
  const char* text = reinterpret_cast<const char*>(mapping_) + kHeaderLengthBytes;
  json header;
  try {
    header = json::parse(text, text + (data_start_ - kHeaderLengthBytes));
  } catch (const json::exception& e) {
    fail(path_, fmt::format("has a header that is not valid JSON ({})", e.what()));
  }
  drop_pages(mapping_, file_size_, 0, data_start_);
  if (!header.is_object()) fail(path_, fmt::format("has a JSON header of type {}; expected an object", header.type_name()));

  const int64_t data_size = file_size_ - data_start_;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path_, "has a \"__metadata__\" that is not an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail(path_, fmt::format("has the \"__metadata__\" value {} for '{}'; expected a string", value.dump(), key));
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    tensors_.emplace(name, parse_entry(path_, name, entry, data_start_, data_size));
  }
  check_no_overlap();
}

void SafetensorsFile::check_no_overlap() const {
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, info] : tensors_)
    if (info.nbytes > 0) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& before = *by_offset[i - 1];
    const TensorInfo& after = *by_offset[i];
    if (after.offset < before.offset + before.nbytes)
      fail(path_, fmt::format("has tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) that overlap; "
                              "expected disjoint byte ranges",
                              before.name, before.offset - data_start_, before.offset - data_start_ + before.nbytes,
                              after.name, after.offset - data_start_, after.offset - data_start_ + after.nbytes));
  }
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path_, fmt::format("has no tensor '{}' ({} tensors in the file)", name, tensors_.size()));
  return it->second;
}

torch::Tensor SafetensorsFile::read(const std::string& name, torch::ScalarType dtype, int64_t dim, int64_t start,
                                    int64_t length) const {
  const TensorInfo& tensor = info(name);
  const int64_t rank = static_cast<int64_t>(tensor.shape.size());
  const std::string what = fmt::format("tensor '{}' of shape {}", name, shape_string(tensor.shape));
  if (rank == 0) {
    if (dim != 0 || start != 0 || (length != -1 && length != 1))
      fail(path_, fmt::format("cannot slice {} (a scalar) at dim {}, start {}, length {}; expected the whole of it", what,
                              dim, start, length));
    torch::Tensor stored = torch::from_blob(const_cast<uint8_t*>(mapping_) + tensor.offset, c10::IntArrayRef(), tensor.dtype);
    torch::Tensor copy = stored.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    drop_pages(mapping_, file_size_, tensor.offset, tensor.offset + tensor.nbytes);
    return copy;
  }
  if (dim < -rank || dim >= rank)
    fail(path_, fmt::format("cannot slice {} along dim {}; expected a dim in [{}, {}]", what, dim, -rank, rank - 1));
  if (dim < 0) dim += rank;
  const int64_t extent = tensor.shape[dim];
  if (length == -1 && start >= 0 && start <= extent) length = extent - start;
  if (start < 0 || length < 0 || start > extent || length > extent - start)
    fail(path_, fmt::format("cannot read elements [{}, {}) along dim {} of {}; expected 0 <= start <= start + length <= {}",
                            start, start + length, dim, what, extent));

  std::vector<int64_t> out_shape = tensor.shape;
  out_shape[dim] = length;
  torch::Tensor out = torch::empty(out_shape, torch::TensorOptions().dtype(dtype));
  copy_slice(tensor, dim, start, out);
  return out;
}

void SafetensorsFile::read_into(const std::string& name, torch::Tensor out, int64_t dim, int64_t start) const {
  const TensorInfo& tensor = info(name);
  const int64_t rank = static_cast<int64_t>(tensor.shape.size());
  if (dim < 0) dim += rank;
  std::vector<int64_t> expected = tensor.shape;
  if (dim >= 0 && dim < rank) expected[dim] = out.dim() == rank ? out.size(dim) : -1;
  const bool fits = rank > 0 && dim >= 0 && dim < rank && out.sizes().vec() == expected && out.is_contiguous() &&
                    start >= 0 && start + out.size(dim) <= tensor.shape[dim];
  if (!fits)
    fail(path_, fmt::format("cannot read tensor '{}' of shape {} at dim {}, start {} into a tensor of shape {}{}", name,
                            shape_string(tensor.shape), dim, start, shape_string(out.sizes().vec()),
                            out.is_contiguous() ? "" : " (not contiguous)"));
  copy_slice(tensor, dim, start, out);
}

void SafetensorsFile::copy_slice(const TensorInfo& tensor, int64_t dim, int64_t start, torch::Tensor& out) const {
  if (out.numel() == 0) return;
  const int64_t rank = static_cast<int64_t>(tensor.shape.size());
  const int64_t extent = tensor.shape[dim], length = out.size(dim);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= tensor.shape[d];
  for (int64_t d = dim + 1; d < rank; ++d) inner *= tensor.shape[d];

  torch::Tensor stored =
      torch::from_blob(const_cast<uint8_t*>(mapping_) + tensor.offset, {outer, extent, inner}, tensor.dtype);
  torch::Tensor target = out.view({outer, length, inner});
  const int64_t element_size = static_cast<int64_t>(c10::elementSize(tensor.dtype));
  const int64_t chunk_bytes = read_chunk_bytes.load();
  auto source_byte = [&](int64_t o, int64_t e) { return tensor.offset + ((o * extent + e) * inner) * element_size; };
  if (outer == 1) {
    // One contiguous run: copy it a block of rows at a time.
    const int64_t step = std::max<int64_t>(1, chunk_bytes / (inner * element_size));
    for (int64_t e = 0; e < length; e += step) {
      const int64_t n = std::min(step, length - e);
      target.narrow(1, e, n).copy_(stored.narrow(1, start + e, n));
      drop_pages(mapping_, file_size_, source_byte(0, start + e), source_byte(0, start + e + n));
    }
  } else {
    // One run per outer index; a chunk takes as many outer indices as fit, and spans their gaps as well.
    const int64_t step = std::max<int64_t>(1, chunk_bytes / (extent * inner * element_size));
    for (int64_t o = 0; o < outer; o += step) {
      const int64_t n = std::min(step, outer - o);
      target.narrow(0, o, n).copy_(stored.narrow(0, o, n).narrow(1, start, length));
      drop_pages(mapping_, file_size_, source_byte(o, start), source_byte(o + n - 1, start + length));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error(fmt::format("checkpoint directory '{}' does not exist or is not a directory", dir));
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index = fs::path(dir) / kIndexFile;
  if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    for (const auto& [name, info] : files_.back()->tensors()) where_[name] = files_.back().get();
  } else if (fs::exists(index, ec)) {
    open_index(index.string());
  } else {
    throw Error(fmt::format("checkpoint directory '{}' holds neither {} nor {}; expected a Hugging Face safetensors checkpoint",
                            dir, kSingleFile, kIndexFile));
  }
}

Checkpoint::~Checkpoint() = default;

void Checkpoint::open_index(const std::string& index_path) {
  index_ = index_path;
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw Error(fmt::format("checkpoint index '{}' cannot be opened: {}", index_path, std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  json index;
  try {
    index = json::parse(text.str());
  } catch (const json::exception& e) {
    throw Error(fmt::format("checkpoint index '{}' is not valid JSON ({})", index_path, e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(fmt::format("checkpoint index '{}' has no \"weight_map\" object; expected {{\"weight_map\": {{tensor: file}}}}",
                            index_path));

  std::map<std::string, const SafetensorsFile*> opened;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string())
      throw Error(fmt::format("checkpoint index '{}' maps tensor '{}' to {}; expected a file name", index_path, name, file.dump()));
    const std::string shard = file.get<std::string>();
    auto it = opened.find(shard);
    if (it == opened.end()) {
      const fs::path shard_path = fs::path(dir_) / shard;
      std::error_code ec;
      if (!fs::is_regular_file(shard_path, ec))
        throw Error(fmt::format("checkpoint index '{}' maps tensor '{}' to the shard file '{}', which does not exist in '{}'",
                                index_path, name, shard, dir_));
      try {
        files_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
      } catch (const Error& e) {
        throw Error(fmt::format("{} (a shard of checkpoint index '{}')", e.what(), index_path));
      }
      it = opened.emplace(shard, files_.back().get()).first;
    }
    if (!it->second->contains(name))
      throw Error(fmt::format("checkpoint index '{}' maps tensor '{}' to the shard file '{}', which has no such tensor",
                              index_path, name, it->second->path()));
    where_[name] = it->second;
  }
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : where_) names.push_back(name);
  return names;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) return *it->second;
  if (index_.empty())
    throw Error(fmt::format("checkpoint '{}' has no tensor '{}' (its {} holds {} tensors)", dir_, name, kSingleFile, where_.size()));
  throw Error(fmt::format("checkpoint '{}' has no tensor '{}' (its index '{}' lists {} tensors)", dir_, name, index_, where_.size()));
}

const TensorInfo& Checkpoint::info(const std::string& name) const { return file_of(name).info(name); }

void Checkpoint::read_into(const std::string& name, torch::Tensor out, int64_t dim, int64_t start) const {
  file_of(name).read_into(name, std::move(out), dim, start);
}

torch::Tensor Checkpoint::read(const std::string& name, torch::ScalarType dtype, int64_t dim, int64_t start,
                               int64_t length) const {
  return file_of(name).read(name, dtype, dim, start, length);
}

int64_t count_nonfinite(const torch::Tensor& t) {
  if (!t.is_floating_point()) return 0;
  constexpr int64_t kSlice = int64_t{1} << 16;
  const torch::Tensor flat = t.detach().reshape(-1);
  int64_t bad = 0;
  for (int64_t start = 0; start < flat.numel(); start += kSlice) {
    const torch::Tensor slice = flat.narrow(0, start, std::min(kSlice, flat.numel() - start));
    bad += slice.numel() - torch::isfinite(slice).sum().item<int64_t>();
  }
  return bad;
}

}  // namespace qforge::io
