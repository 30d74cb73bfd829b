#include "framework/io/checkpoint_writer.h"

#include "framework/common/atomic_file.h"
#include "framework/common/error.h"
#include "framework/common/shape_text.h"
#include "framework/io/safetensors.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

namespace qforge::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian, as is this host's");

// The 8-byte little-endian length, then the JSON header padded with spaces so that the data starts 8-byte aligned.
std::string header_of(const std::vector<TensorSpec>& plan, const std::map<std::string, std::string>& metadata,
                      const std::string& path) {
  json header = json::object();
  int64_t offset = 0;
  for (const TensorSpec& t : plan) {
    header[t.name] = {{"dtype", safetensors_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw Error(fmt::format("cannot write the header of '{}': {}", path, e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string length(8, '\0');
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  return length + text;
}

void check_plan(const std::vector<TensorSpec>& plan, const std::string& where) {
  std::set<std::string> seen;
  for (const TensorSpec& t : plan) {
    const std::string what = fmt::format("cannot save tensor '{}' to '{}'", t.name, where);
    if (t.name.empty() || t.name == "__metadata__")
      throw Error(fmt::format("{}: expected a name other than \"\" and \"__metadata__\"", what));
    if (!seen.insert(t.name).second)
      throw Error(fmt::format("{}: the name is given twice; expected unique names", what));
    try {
      safetensors_dtype_name(t.dtype);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", what, e.what()));
    }
  }
}

// Groups of plan indices, one per file, filled in order.
std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorSpec>& plan, int64_t max_shard_bytes) {
  int64_t total = 0;
  for (const TensorSpec& t : plan) total += t.nbytes();
  const bool split = max_shard_bytes > 0 && total > max_shard_bytes;
  std::vector<std::vector<size_t>> shards(1);
  int64_t filled = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (split && !shards.back().empty() && filled + plan[i].nbytes() > max_shard_bytes) {
      shards.emplace_back();
      filled = 0;
    }
    shards.back().push_back(i);
    filled += plan[i].nbytes();
  }
  return shards;
}

std::string shard_name(size_t i, size_t count) {
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, count);
}

std::vector<TensorSpec> plan_of(const std::string& where,
                                const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<TensorSpec> plan;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined())
      throw Error(fmt::format("cannot save tensor '{}' to '{}': the tensor is undefined", name, where));
    plan.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  return plan;
}

}  // namespace

int64_t TensorSpec::nbytes() const {
  int64_t n = static_cast<int64_t>(c10::elementSize(dtype));
  for (int64_t s : shape) n *= s;
  return n;
}

// ---- SafetensorsFileWriter -----------------------------------------------------------------------------------

SafetensorsFileWriter::SafetensorsFileWriter(std::string path, std::vector<TensorSpec> plan,
                                             const std::map<std::string, std::string>& metadata)
    : plan_(std::move(plan)), file_(std::make_unique<AtomicFile>(std::move(path))) {
  check_plan(plan_, file_->path());
  const std::string header = header_of(plan_, metadata, file_->path());
  out_ = std::fopen(file_->temp_path().c_str(), "wb");
  if (!out_) throw Error(fmt::format("cannot write '{}': {}", file_->temp_path(), std::strerror(errno)));
  if (std::fwrite(header.data(), 1, header.size(), out_) != header.size())
    throw Error(fmt::format("writing '{}' failed: {}", file_->temp_path(), std::strerror(errno)));
  bytes_ = static_cast<int64_t>(header.size());
}

SafetensorsFileWriter::~SafetensorsFileWriter() {
  if (out_) std::fclose(out_);  // the AtomicFile then removes the temporary
}

const std::string& SafetensorsFileWriter::path() const { return file_->path(); }

void SafetensorsFileWriter::write(const std::string& name, const torch::Tensor& tensor) {
  if (next_ >= plan_.size() || plan_[next_].name != name)
    throw Error(fmt::format("'{}': tensor '{}' written out of order; expected '{}'", path(), name,
                            next_ < plan_.size() ? plan_[next_].name : std::string("no more tensors")));
  const TensorSpec& spec = plan_[next_];
  if (!tensor.defined() || !tensor.device().is_cpu() || tensor.scalar_type() != spec.dtype ||
      tensor.sizes().vec() != spec.shape)
    throw Error(fmt::format("cannot save tensor '{}' to '{}': it is {}; expected a CPU {} {}", name, path(),
                            tensor.defined() ? fmt::format("{} {} on {}", c10::toString(tensor.scalar_type()),
                                                           shape_text(tensor.sizes()), tensor.device().str())
                                             : std::string("undefined"),
                            c10::toString(spec.dtype), shape_text(spec.shape)));
  const torch::Tensor data = tensor.contiguous();
  const auto size = static_cast<size_t>(spec.nbytes());
  if (size > 0 && std::fwrite(data.data_ptr(), 1, size, out_) != size)
    throw Error(fmt::format("writing '{}' failed: {}", file_->temp_path(), std::strerror(errno)));
  bytes_ += spec.nbytes();
  ++next_;
}

int64_t SafetensorsFileWriter::finish() {
  if (!done())
    throw Error(fmt::format("'{}': finished after {} of {} tensors", path(), next_, plan_.size()));
  if (out_) {
    std::FILE* file = out_;
    out_ = nullptr;
    if (std::fclose(file) != 0)
      throw Error(fmt::format("writing '{}' failed: {}", file_->temp_path(), std::strerror(errno)));
  }
  return bytes_;
}

void SafetensorsFileWriter::commit() {
  finish();
  file_->commit();
}

// ---- CheckpointWriter ----------------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string dir, std::vector<TensorSpec> plan, int64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), plan_(std::move(plan)), metadata_(std::move(metadata)) {
  check_plan(plan_, dir_);
  metadata_.emplace("format", "pt");  // Transformers checks it; kept when the caller set it
  shards_ = plan_shards(plan_, max_shard_bytes);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(fmt::format("cannot create the checkpoint directory '{}': {}", dir_, ec.message()));
  if (plan_.empty()) files_.push_back(std::make_unique<SafetensorsFileWriter>(
                         (fs::path(dir_) / kSafetensorsFile).string(), std::vector<TensorSpec>{}, metadata_));
}

CheckpointWriter::~CheckpointWriter() = default;

void CheckpointWriter::write(const std::string& name, const torch::Tensor& tensor) {
  if (files_.empty() || files_.back()->done()) {
    if (files_.size() == shards_.size())
      throw Error(fmt::format("checkpoint '{}': tensor '{}' is one more than planned", dir_, name));
    const size_t s = files_.size();
    std::vector<TensorSpec> shard;
    for (size_t i : shards_[s]) shard.push_back(plan_[i]);
    const std::string file = shards_.size() > 1 ? shard_name(s, shards_.size()) : kSafetensorsFile;
    files_.push_back(std::make_unique<SafetensorsFileWriter>((fs::path(dir_) / file).string(), shard, metadata_));
  }
  files_.back()->write(name, tensor);
  if (files_.back()->done()) bytes_ += files_.back()->finish();
  ++next_;
}

int64_t CheckpointWriter::commit() {
  if (next_ != plan_.size())
    throw Error(fmt::format("checkpoint '{}': committed after {} of {} tensors", dir_, next_, plan_.size()));
  const bool sharded = shards_.size() > 1;
  std::string index;
  if (sharded) {
    json weight_map = json::object();
    int64_t total_size = 0;
    for (size_t s = 0; s < shards_.size(); ++s)
      for (size_t i : shards_[s]) {
        weight_map[plan_[i].name] = shard_name(s, shards_.size());
        total_size += plan_[i].nbytes();
      }
    try {
      index = json{{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}}.dump(2) + "\n";
    } catch (const json::exception& e) {
      throw Error(fmt::format("cannot write the index of checkpoint '{}': {}", dir_, e.what()));
    }
  }
  if (plan_.empty()) bytes_ += files_.back()->finish();
  for (auto& file : files_) file->commit();
  if (sharded) write_file_atomically((fs::path(dir_) / kSafetensorsIndexFile).string(), index);
  std::error_code ec;
  fs::remove(fs::path(dir_) / (sharded ? kSafetensorsFile : kSafetensorsIndexFile), ec);
  return bytes_ + static_cast<int64_t>(index.size());
}

// ---- whole-tensor helpers ------------------------------------------------------------------------------------

void save_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                     int64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  CheckpointWriter writer(dir, plan_of(dir, tensors), max_shard_bytes, metadata);
  for (const auto& [name, tensor] : tensors) writer.write(name, tensor);
  writer.commit();
}

int64_t save_safetensors_file(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) throw Error(fmt::format("cannot create the directory of '{}': {}", path, ec.message()));
  SafetensorsFileWriter writer(path, plan_of(path, tensors), metadata);
  for (const auto& [name, tensor] : tensors) writer.write(name, tensor);
  const int64_t bytes = writer.finish();
  writer.commit();
  return bytes;
}

}  // namespace qforge::io
