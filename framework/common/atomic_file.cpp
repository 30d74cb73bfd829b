#include "framework/common/atomic_file.h"

#include "framework/common/error.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

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

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || in.bad()) throw Error(fmt::format("cannot read '{}': {}", path, std::strerror(errno)));
  return text.str();
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

AtomicDirectory::AtomicDirectory(std::string path, bool owner) : path_(std::move(path)), owner_(owner) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(path_).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "out/" names "out"
  temp_path_ = (p.parent_path() / fmt::format(".{}.partial", p.filename().string())).string();
  if (!owner_) return;
  std::error_code error;
  fs::remove_all(temp_path_, error);
  fs::create_directories(temp_path_, error);
  if (error || !fs::is_directory(temp_path_))
    throw Error(fmt::format("cannot create the output directory '{}' (for '{}'): {}", temp_path_, path_,
                            error ? error.message() : "not a directory"));
}

AtomicDirectory::~AtomicDirectory() {
  if (!owner_ || committed_) return;
  std::error_code ignored;
  std::filesystem::remove_all(temp_path_, ignored);
}

void AtomicDirectory::commit() {
  namespace fs = std::filesystem;
  if (!owner_) return;
  std::error_code error;
  if (!fs::exists(path_)) {
    fs::rename(temp_path_, path_, error);
  } else if (!fs::is_directory(path_)) {
    throw Error(fmt::format("cannot write the output directory '{}': a file of that name exists", path_));
  } else {
    for (const auto& entry : fs::directory_iterator(temp_path_)) {
      const fs::path target = fs::path(path_) / entry.path().filename();
      if (fs::is_directory(target) && !fs::is_symlink(target)) fs::remove_all(target, error);
      if (!error) fs::rename(entry.path(), target, error);
      if (error) break;
    }
    if (!error) fs::remove_all(temp_path_, error);
  }
  if (error)
    throw Error(fmt::format("cannot rename '{}' to '{}': {}", temp_path_, path_, error.message()));
  committed_ = true;
}

void check_input_file(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status) || fs::is_regular_file(status)) return;  // a missing file: the caller's open names it
  throw Error(fmt::format("{}: {}; expected {}", path,
                          fs::is_directory(status) ? "is a directory" : "is not a regular file", what));
}

}  // namespace qforge
