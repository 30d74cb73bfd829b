// Outputs appear complete or not at all: they are written under a temporary name in the same directory and
// renamed over the final name by commit(). An AtomicFile destroyed before commit() removes its temporary.
#pragma once

#include <string>

namespace qforge {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& path() const { return path_; }
  // Where to write: "<dir>/.<name>.tmp.<pid>".
  const std::string& temp_path() const { return temp_path_; }
  // Renames the temporary over `path`. Throws qforge::Error when the rename fails.
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  bool committed_ = false;
};

// Writes `contents` to `path` through an AtomicFile; creates missing parent directories.
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace qforge
