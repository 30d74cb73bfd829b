// What every fuzz target shares: a scratch directory of its own ("<shm>/qforge-fuzz.<pid>", removed at exit), the
// fuzz input written there as the file a reader opens, and the rule that a qforge::Error is the correct outcome of
// a bad input (any other exception escapes to libFuzzer, which reports it as a crash).
#pragma once

#include "framework/common/error.h"

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace qforge::fuzz {

class ScratchDir {
 public:
  ScratchDir() {
    const std::filesystem::path shm = "/dev/shm";
    const std::filesystem::path base =
        std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path();
    path_ = (base / ("qforge-fuzz." + std::to_string(::getpid()))).string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline const std::string& scratch_dir() {
  static const ScratchDir dir;
  return dir.path();
}

// Writes the input as `name` in the scratch directory (replacing what was there) and returns its path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) throw std::runtime_error("fuzz harness: cannot write " + path);
  return path;
}

// Runs `read`; a qforge::Error (the reader's one-line refusal) is fine, anything else escapes.
template <class Read>
void expect_clean_outcome(Read&& read) {
  try {
    read();
  } catch (const qforge::Error&) {
  }
}

}  // namespace qforge::fuzz
