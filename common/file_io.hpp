// Durable file I/O on descriptors (the outbox, atomic writes): the few calls that differ between
// POSIX and Windows, with POSIX semantics and errno-style errors on both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace tocsin::common::file_io {

enum class Mode {
  read,             // existing file, read only
  read_write,       // existing file
  append,           // created if missing, every write goes to the end
  create_truncate,  // created if missing, emptied if present
};

constexpr auto kOwnerOnly =
    std::filesystem::perms::owner_read | std::filesystem::perms::owner_write;

// A descriptor, or -1 with errno set. `perms` are the mode bits of a created file on POSIX
// (applied exactly, whatever the umask); on Windows a file inherits its directory's ACL.
int open(const std::filesystem::path& p, Mode mode, std::filesystem::perms perms = kOwnerOnly);
int close(int fd);
// Like POSIX pread/write: bytes transferred, or -1 with errno set.
std::int64_t pread(int fd, void* buf, std::size_t n, std::uint64_t offset);
std::int64_t write(int fd, const void* buf, std::size_t n);
// 0, or -1 with errno set.
int sync_data(int fd);  // the data (and the size) is on stable storage
int sync(int fd);       // data and metadata
int truncate(int fd, std::uint64_t size);
int size(int fd, std::uint64_t& out);
// Makes a rename or a new directory entry durable where the platform needs it (POSIX: fsync
// of the directory); best effort.
void sync_dir(const std::filesystem::path& dir);
// Renames `from` over `to` atomically (Windows: replacing an existing `to`). Throws
// std::filesystem::filesystem_error.
void replace(const std::filesystem::path& from, const std::filesystem::path& to);

// Creates `dir` (and its parents) if needed and makes it private: POSIX mode 0700; Windows a
// protected ACL that only SYSTEM and Administrators may use, inherited by what is created in
// it (keys, outbox). Throws std::filesystem::filesystem_error.
void make_private_dir(const std::filesystem::path& dir);
// Creates `dir` if needed for configuration that users may read but only SYSTEM and
// Administrators may change (Windows: a protected ACL; a plain ProgramData folder would let
// any user drop the kill switch). POSIX: create_directories only; packaging sets modes.
void make_config_dir(const std::filesystem::path& dir);

}  // namespace tocsin::common::file_io
