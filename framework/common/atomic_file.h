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
// The whole file at `path`; an Error naming it when it cannot be read.
std::string read_file(const std::string& path);

// A directory output (a checkpoint, a command's output.dir) that appears under its final name only when complete:
// it is written into the sibling "<parent>/.<name>.partial" (the same name on every rank, so that the ranks of a
// job write into one place) and renamed by commit(). Only the owner (one rank) creates, commits and removes it;
// a stale temporary of a failed run is removed first. When `path` already exists, commit() moves each entry of
// the temporary over the entry of that name (other entries stay). Destroyed before commit(): the temporary is
// removed, so a failed or interrupted write leaves nothing that looks finished.
class AtomicDirectory {
 public:
  AtomicDirectory(std::string path, bool owner);
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  // The owner renames the temporary to `path`. Throws qforge::Error naming both when that fails.
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  bool owner_;
  bool committed_ = false;
};

// Throws qforge::Error "<path>: is a directory; expected <what>" when `path` exists but is not a regular file
// (a stream would open a directory and fail on its first read with a message lacking the path). A missing file
// is left to the caller's open, which names it.
void check_input_file(const std::string& path, const std::string& what);

}  // namespace qforge
