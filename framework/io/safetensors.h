// Hugging Face safetensors checkpoints: memory-mapped reading of single files and sharded model directories,
// with sliced reads so that a tensor-parallel rank copies only its part of each weight, and atomic writing.
//
// The format: an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}}
// with offsets relative to the byte after the header, then the data.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qforge::io {

inline constexpr const char* kSafetensorsFile = "model.safetensors";
inline constexpr const char* kSafetensorsIndexFile = "model.safetensors.index.json";

struct TensorInfo {
  std::string name;
  torch::ScalarType dtype;  // F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;
  int64_t offset = 0;  // byte offset of the data from the start of the file
  int64_t nbytes = 0;
  std::string file;  // path of the file holding it
};

// The safetensors name of a dtype ("F32", "BF16", ...). Throws qforge::Error for a dtype the format lacks.
std::string safetensors_dtype_name(torch::ScalarType dtype);

// One memory-mapped .safetensors file. The constructor validates the whole header: an 8-byte little-endian
// header length that fits in the file, valid JSON, every entry's dtype known, shape x element size == the
// data_offsets span, offsets inside the data area and not overlapping. Any problem throws qforge::Error with
// one sentence naming the file (and the tensor) and what was expected.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();  // munmap
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws naming the file and the tensor when absent.
  const TensorInfo& info(const std::string& name) const;
  // Copies elements [start, start + length) along `dim` (length -1: to the end; dim may be negative) of tensor
  // `name`, converted to `dtype`, into a new contiguous tensor. Copies in chunks and drops the mapped pages
  // of each chunk once copied (madvise MADV_DONTNEED), so that resident memory holds only what was copied.
  torch::Tensor read(const std::string& name, torch::ScalarType dtype, int64_t dim = 0, int64_t start = 0,
                     int64_t length = -1) const;
  // The same slice, out.size(dim) long, written straight into `out` (contiguous, any dtype; every other dim
  // equal to the tensor's): a parameter loads with no intermediate copy.
  void read_into(const std::string& name, torch::Tensor out, int64_t dim = 0, int64_t start = 0) const;

 private:
  void parse_header();
  void check_no_overlap() const;
  void copy_slice(const TensorInfo& tensor, int64_t dim, int64_t start, torch::Tensor& out) const;

  std::string path_;
  int64_t file_size_ = 0;
  int64_t data_start_ = 0;  // 8 + header length
  const uint8_t* mapping_ = nullptr;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A model directory: `model.safetensors`, or `model.safetensors.index.json` (with "weight_map": name -> file)
// plus its shard files; when both are present the single file wins, as in Hugging Face Transformers. Errors
// name the directory, the index and the tensor.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  ~Checkpoint();

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  torch::Tensor read(const std::string& name, torch::ScalarType dtype, int64_t dim = 0, int64_t start = 0,
                     int64_t length = -1) const;
  void read_into(const std::string& name, torch::Tensor out, int64_t dim = 0, int64_t start = 0) const;

 private:
  void open_index(const std::string& index_path);
  const SafetensorsFile& file_of(const std::string& name) const;

  std::string dir_;
  std::string index_;  // the index file's path; empty for a single-file checkpoint
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

// Bytes of the source file copied per step by read() before its pages are dropped; returns the previous
// value. Tests lower it so that small tensors take the multi-chunk path.
int64_t set_read_chunk_bytes(int64_t bytes);

// How many values of `t` are NaN or infinite (0 for integer tensors). Counted a slice at a time, so that the
// check adds a few MB to a loading peak, not several times the tensor.
int64_t count_nonfinite(const torch::Tensor& t);

}  // namespace qforge::io
