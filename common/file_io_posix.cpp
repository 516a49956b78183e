#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/file_io.hpp"

namespace tocsin::common::file_io {

int open(const std::filesystem::path& p, Mode mode, std::filesystem::perms perms) {
  int flags = O_CLOEXEC;
  switch (mode) {
    case Mode::read:
      flags |= O_RDONLY;
      break;
    case Mode::read_write:
      flags |= O_RDWR;
      break;
    case Mode::append:
      flags |= O_WRONLY | O_CREAT | O_APPEND;
      break;
    case Mode::create_truncate:
      flags |= O_WRONLY | O_CREAT | O_TRUNC;
      break;
  }
  int fd = ::open(p.c_str(), flags, static_cast<mode_t>(perms));
  if (fd >= 0 && mode == Mode::create_truncate)
    ::fchmod(fd, static_cast<mode_t>(perms));  // umask must not widen or narrow what we asked for
  return fd;
}

int close(int fd) {
  return ::close(fd);
}

std::int64_t pread(int fd, void* buf, std::size_t n, std::uint64_t offset) {
  return ::pread(fd, buf, n, static_cast<off_t>(offset));
}

std::int64_t write(int fd, const void* buf, std::size_t n) {
  return ::write(fd, buf, n);
}

int sync_data(int fd) {
  return ::fdatasync(fd);
}
int sync(int fd) {
  return ::fsync(fd);
}
int truncate(int fd, std::uint64_t size) {
  return ::ftruncate(fd, static_cast<off_t>(size));
}

int size(int fd, std::uint64_t& out) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return -1;
  out = static_cast<std::uint64_t>(st.st_size);
  return 0;
}

void sync_dir(const std::filesystem::path& dir) {
  int d = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    ::fsync(d);
    ::close(d);
  }
}

void replace(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::rename(from, to);
}

void make_private_dir(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
}

void make_config_dir(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
}

}  // namespace tocsin::common::file_io
