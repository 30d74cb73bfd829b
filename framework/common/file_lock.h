// An exclusive lock on a file, held while the object lives: two jobs writing
// one output find each other. POSIX record locks (fcntl), which NFS and Lustre
// honour across nodes; released when the process ends, even by kill -9.
#pragma once

#include <string>

namespace qforge {

class FileLock {
 public:
  // Creates `path` when missing and locks it without waiting. Throws
  // qforge::Error naming `path` and `what` (the output it guards) when another
  // process holds it, with that process's id where the system reports it.
  FileLock(const std::string& path, const std::string& what);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace qforge
