#include "framework/common/file_lock.h"

#include "framework/common/error.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace qforge {

FileLock::FileLock(const std::string& path, const std::string& what) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(fmt::format("cannot create the lock file '{}': {}", path, std::strerror(errno)));
  struct flock lock = {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  if (::fcntl(fd_, F_SETLK, &lock) == 0) return;
  const int error = errno;
  std::string holder;
  struct flock probe = {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  if (::fcntl(fd_, F_GETLK, &probe) == 0 && probe.l_type != F_UNLCK) holder = fmt::format(" (process {})", probe.l_pid);
  ::close(fd_);
  fd_ = -1;
  if (error == EACCES || error == EAGAIN)
    throw Error(
        fmt::format("another job{} is writing {}: it holds the lock "
                    "'{}'; wait for it to end or choose "
                    "another output",
                    holder, what, path));
  throw Error(fmt::format("cannot lock '{}': {}", path, std::strerror(error)));
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace qforge
