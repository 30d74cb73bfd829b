#include "framework/common/atomic_file.h"

#include "framework/common/error.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace qforge {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  std::filesystem::path p(path_);
  temp_path_ = (p.parent_path() / fmt::format(".{}.tmp.{}", p.filename().string(), ::getpid())).string();
}

AtomicFile::~AtomicFile() {
  if (!committed_) std::remove(temp_path_.c_str());
}

void AtomicFile::commit() {
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0)
    throw Error(fmt::format("cannot rename '{}' to '{}': {}", temp_path_, path_, std::strerror(errno)));
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ignored;
  if (!parent.empty()) std::filesystem::create_directories(parent, ignored);
  AtomicFile file(path);
  {
    std::ofstream out(file.temp_path(), std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("cannot write '{}': {}", file.temp_path(), std::strerror(errno)));
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) throw Error(fmt::format("writing '{}' failed: {}", file.temp_path(), std::strerror(errno)));
  }
  file.commit();
}

}  // namespace qforge
