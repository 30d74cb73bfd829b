// Writing Hugging Face safetensors checkpoints one tensor at a time: the writer knows every tensor's name, dtype
// and shape up front (so each file's header is fixed before its data), then takes the tensors in that order and
// keeps none of them. A 65B model is saved by a rank holding one gathered tensor at a time, not the model.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qforge {
class AtomicFile;
}

namespace qforge::io {

struct TensorSpec {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  int64_t nbytes() const;
};

// One safetensors file at `path`, written through its temporary name: the header (from `plan`) at once, then
// each tensor as it comes. finish() closes it; commit() renames it into place.
class SafetensorsFileWriter {
 public:
  // Throws qforge::Error naming the file and the tensor for an empty, reserved or repeated name, a dtype the
  // format lacks, or a file that cannot be written.
  SafetensorsFileWriter(std::string path, std::vector<TensorSpec> plan,
                        const std::map<std::string, std::string>& metadata);
  ~SafetensorsFileWriter();
  SafetensorsFileWriter(const SafetensorsFileWriter&) = delete;
  SafetensorsFileWriter& operator=(const SafetensorsFileWriter&) = delete;

  // The plan's next tensor (a CPU tensor of the planned dtype and shape; any strides). Throws qforge::Error naming
  // the tensor when it is out of order or its dtype, shape or device differ from the plan.
  void write(const std::string& name, const torch::Tensor& tensor);
  bool done() const { return next_ == plan_.size(); }
  // Closes the temporary once every tensor is written; returns the file's bytes.
  int64_t finish();
  void commit();  // after finish(): the rename
  const std::string& path() const;

 private:
  std::vector<TensorSpec> plan_;
  std::unique_ptr<AtomicFile> file_;
  std::FILE* out_ = nullptr;
  size_t next_ = 0;
  int64_t bytes_ = 0;
};

// Writes a checkpoint in `dir`: a single model.safetensors, or, when max_shard_bytes > 0 and the total exceeds
// it, model-00001-of-0000N.safetensors ... plus model.safetensors.index.json ({"metadata": {"total_size": N},
// "weight_map": {...}}). Shards are filled in the plan's order and a new one starts when the next tensor would
// pass max_shard_bytes (a larger tensor gets a shard of its own). Every file is written under a temporary name;
// commit() renames them, shards first and the index last, and removes the file of the other layout (a stale
// model.safetensors or index); a writer destroyed before commit() leaves no file that looks complete.
// `metadata` goes into every file's "__metadata__", with "format": "pt" unless it says otherwise.
class CheckpointWriter {
 public:
  // Throws as SafetensorsFileWriter does, naming `dir`, and when the directory cannot be created.
  CheckpointWriter(std::string dir, std::vector<TensorSpec> plan, int64_t max_shard_bytes = 0,
                   std::map<std::string, std::string> metadata = {});
  ~CheckpointWriter();

  // The plan's next tensor, written through (see SafetensorsFileWriter::write).
  void write(const std::string& name, const torch::Tensor& tensor);
  // After every tensor is written: renames the files into place. Returns the bytes written (index included).
  int64_t commit();

 private:
  std::string dir_;
  std::vector<TensorSpec> plan_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::vector<size_t>> shards_;  // plan indices per file
  std::vector<std::unique_ptr<SafetensorsFileWriter>> files_;  // opened one at a time, in order
  size_t next_ = 0;
  int64_t bytes_ = 0;
};

// The whole of `tensors` (CPU; written as stored) through a CheckpointWriter.
void save_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     int64_t max_shard_bytes = 0, const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` as one safetensors file at `path` (through a temporary name, renamed when complete), with
// `metadata` as its "__metadata__"; creates missing parent directories. Returns the bytes written.
int64_t save_safetensors_file(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace qforge::io
