// Windows only (included by the *_windows.cpp files): Win32 error text, and what a refusal
// means for a verdict.
#pragma once

#include <windows.h>

#include <cerrno>
#include <string>

namespace tocsin::agent::win32 {

// Not in every SDK's headers (mingw-w64 lacks them); values from winerror.h.
constexpr DWORD kErrorVirusInfected =
    225;  // "the file contains a virus or potentially unwanted software"
constexpr DWORD kErrorVirusDeleted = 226;  // "... and was deleted"
constexpr DWORD kErrorNoSaferUiByPolicy = 786;

inline std::string message(DWORD code) {
  char* text = nullptr;
  DWORD n = ::FormatMessageA(
      FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
      nullptr, code, 0, reinterpret_cast<char*>(&text), 0, nullptr);
  std::string s = n && text ? std::string(text, n) : "unknown error";
  if (text) ::LocalFree(text);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '.'))
    s.pop_back();
  return s + " (Win32 error " + std::to_string(code) + ")";
}

// EACCES: something refused (permissions, a policy, an anti-malware scanner such as
// Defender); ENOENT: not there; others map to their errno or EIO.
inline int to_errno(DWORD code) {
  switch (code) {
    case ERROR_SUCCESS:
      return 0;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
      return ENOENT;
    case ERROR_FILE_EXISTS:
    case ERROR_ALREADY_EXISTS:
      return EEXIST;
    case ERROR_ACCESS_DENIED:
    case kErrorVirusInfected:
    case kErrorVirusDeleted:
    case ERROR_ACCESS_DISABLED_BY_POLICY:
    case kErrorNoSaferUiByPolicy:
      return EACCES;
    case ERROR_DISK_FULL:
    case ERROR_HANDLE_DISK_FULL:
      return ENOSPC;
    default:
      return EIO;
  }
}

}  // namespace tocsin::agent::win32
