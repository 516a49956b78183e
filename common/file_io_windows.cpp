// The CRT's descriptors (_wopen) keep the POSIX shape of the callers; what the CRT lacks
// (positioned reads, atomic replace) is built from Win32 calls.
#include <fcntl.h>
#include <io.h>
#include <sys/stat.h>
#include <windows.h>
// After windows.h:
#include <aclapi.h>
#include <sddl.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "common/file_io.hpp"

namespace tocsin::common::file_io {

int open(const std::filesystem::path& p, Mode mode, std::filesystem::perms) {
  int flags = _O_BINARY | _O_NOINHERIT;
  switch (mode) {
    case Mode::read:
      flags |= _O_RDONLY;
      break;
    case Mode::read_write:
      flags |= _O_RDWR;
      break;
    case Mode::append:
      flags |= _O_WRONLY | _O_CREAT | _O_APPEND;
      break;
    case Mode::create_truncate:
      flags |= _O_WRONLY | _O_CREAT | _O_TRUNC;
      break;
  }
  return ::_wopen(p.c_str(), flags, _S_IREAD | _S_IWRITE);
}

int close(int fd) {
  return ::_close(fd);
}

std::int64_t pread(int fd, void* buf, std::size_t n, std::uint64_t offset) {
  // ReadFile with an offset does not move a shared position: safe beside other readers.
  HANDLE h = reinterpret_cast<HANDLE>(::_get_osfhandle(fd));
  if (h == INVALID_HANDLE_VALUE) {
    errno = EBADF;
    return -1;
  }
  OVERLAPPED ov{};
  ov.Offset = static_cast<DWORD>(offset & 0xffffffffu);
  ov.OffsetHigh = static_cast<DWORD>(offset >> 32);
  DWORD got = 0;
  DWORD want = n > 0x40000000u ? 0x40000000u : static_cast<DWORD>(n);
  if (!::ReadFile(h, buf, want, &got, &ov)) {
    if (::GetLastError() == ERROR_HANDLE_EOF) return 0;
    errno = EIO;
    return -1;
  }
  return got;
}

std::int64_t write(int fd, const void* buf, std::size_t n) {
  unsigned int chunk = n > 0x40000000u ? 0x40000000u : static_cast<unsigned int>(n);
  return ::_write(fd, buf, chunk);
}

int sync_data(int fd) {
  return ::_commit(fd);
}  // FlushFileBuffers: data and size
int sync(int fd) {
  return ::_commit(fd);
}
int truncate(int fd, std::uint64_t size) {
  errno_t e = ::_chsize_s(fd, static_cast<__int64>(size));
  if (e == 0) return 0;
  errno = e;
  return -1;
}

int size(int fd, std::uint64_t& out) {
  struct _stat64 st {};
  if (::_fstat64(fd, &st) != 0) return -1;
  out = static_cast<std::uint64_t>(st.st_size);
  return 0;
}

// NTFS journals its metadata: a completed MoveFileEx with WRITE_THROUGH is durable.
void sync_dir(const std::filesystem::path&) {}

void replace(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (!::MoveFileExW(from.c_str(), to.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
    throw std::filesystem::filesystem_error(
        "rename", from, to,
        std::error_code(static_cast<int>(::GetLastError()), std::system_category()));
}

namespace {

// Replaces dir's ACL with `sddl`, protected from inheriting its parent's entries.
void set_protected_acl(const std::filesystem::path& dir, const wchar_t* sddl, const char* what) {
  PSECURITY_DESCRIPTOR sd = nullptr;
  if (!::ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, nullptr))
    throw std::filesystem::filesystem_error(
        std::string("building the ACL: ") + what, dir,
        std::error_code(static_cast<int>(::GetLastError()), std::system_category()));
  BOOL present = FALSE, defaulted = FALSE;
  PACL dacl = nullptr;
  ::GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted);
  std::wstring name = dir.wstring();
  DWORD rc = ::SetNamedSecurityInfoW(
      name.data(), SE_FILE_OBJECT, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
      nullptr, nullptr, dacl, nullptr);
  ::LocalFree(sd);
  if (rc != ERROR_SUCCESS)
    throw std::filesystem::filesystem_error(
        std::string("restricting access: ") + what, dir,
        std::error_code(static_cast<int>(rc), std::system_category()));
}

}  // namespace

void make_private_dir(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  // Full control for SYSTEM (SY) and Administrators (BA) only, inherited by files and
  // subdirectories (OICI): the key, certificate and outbox are nobody else's business.
  set_protected_acl(dir, L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", "SYSTEM and Administrators only");
}

void make_config_dir(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  // As above, plus read and execute (FRFX) for Users (BU).
  set_protected_acl(dir, L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FRFX;;;BU)",
                    "Users may only read");
}

}  // namespace tocsin::common::file_io
