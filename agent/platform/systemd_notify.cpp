#include "agent/platform/systemd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tocsin::agent::systemd {

namespace {

// A decimal number filling all of `s`, else nothing.
bool parse_u64(std::string_view s, std::uint64_t& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

bool notify(std::string_view state) {
  const char* env = std::getenv("NOTIFY_SOCKET");
  std::string_view path = env ? env : "";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() < 2 || path.size() >= sizeof addr.sun_path ||
      (path.front() != '/' && path.front() != '@'))
    return false;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path.front() == '@') addr.sun_path[0] = '\0';  // the abstract namespace
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  auto sent = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                       reinterpret_cast<const sockaddr*>(&addr), len);
  ::close(fd);
  return sent == static_cast<ssize_t>(state.size());
}

std::chrono::microseconds watchdog_interval() {
  const char* usec = std::getenv("WATCHDOG_USEC");
  std::uint64_t value = 0;
  if (!usec || !parse_u64(usec, value) || value == 0) return {};
  if (const char* pid = std::getenv("WATCHDOG_PID")) {
    std::uint64_t owner = 0;
    if (!parse_u64(pid, owner) || owner != static_cast<std::uint64_t>(::getpid())) return {};
  }
  return std::chrono::microseconds(value);
}

}  // namespace tocsin::agent::systemd
