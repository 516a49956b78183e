// The agent's sd_notify replacement: datagrams to $NOTIFY_SOCKET (a path or an abstract name)
// and the watchdog interval systemd asks for.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "agent/platform/systemd_notify.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::agent;

namespace {

// Sets an environment variable for one scope, restoring what was there.
class EnvVar {
 public:
  EnvVar(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~EnvVar() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A datagram socket standing in for systemd: bound to `name` (a path, or '@' for abstract).
class FakeSystemd {
 public:
  explicit FakeSystemd(const std::string& name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    REQUIRE(name.size() < sizeof addr.sun_path);
    std::memcpy(addr.sun_path, name.data(), name.size());
    if (name.front() == '@') addr.sun_path[0] = '\0';
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0);
  }
  ~FakeSystemd() { ::close(fd_); }
  std::string receive() {  // the datagram notify() already sent: never blocks
    char buf[512];
    auto n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    return n < 0 ? std::string("(nothing)") : std::string(buf, static_cast<std::size_t>(n));
  }

 private:
  int fd_ = -1;
};

}  // namespace

TEST_CASE("notify sends the state as one datagram to the NOTIFY_SOCKET path") {
  tocsin::test::TempDir tmp("notify");
  auto path = (tmp / "notify").string();
  FakeSystemd systemd(path);
  EnvVar env("NOTIFY_SOCKET", path);
  CHECK(systemd::notify("READY=1\nSTATUS=running 5 tests"));
  CHECK(systemd.receive() == "READY=1\nSTATUS=running 5 tests");
}

TEST_CASE("notify reaches an abstract socket named with a leading @") {
  auto name = "@tocsin-notify-" + tocsin::common::random_id(10);
  FakeSystemd systemd(name);
  EnvVar env("NOTIFY_SOCKET", name);
  CHECK(systemd::notify("WATCHDOG=1"));
  CHECK(systemd.receive() == "WATCHDOG=1");
}

TEST_CASE("notify outside systemd, or to a socket that is gone, is false and harmless") {
  {
    EnvVar env("NOTIFY_SOCKET", std::nullopt);
    CHECK_FALSE(systemd::notify("READY=1"));
  }
  {
    EnvVar env("NOTIFY_SOCKET", "relative/path");
    CHECK_FALSE(systemd::notify("READY=1"));
  }
  tocsin::test::TempDir tmp("notify");
  EnvVar env("NOTIFY_SOCKET", (tmp / "nobody-listens").string());
  CHECK_FALSE(systemd::notify("READY=1"));
}

TEST_CASE("the watchdog interval comes from WATCHDOG_USEC when WATCHDOG_PID is unset or ours") {
  using std::chrono::microseconds;
  EnvVar usec("WATCHDOG_USEC", "30000000");
  {
    EnvVar pid("WATCHDOG_PID", std::nullopt);
    CHECK(systemd::watchdog_interval() == microseconds(30'000'000));
  }
  {
    EnvVar pid("WATCHDOG_PID", std::to_string(::getpid()));
    CHECK(systemd::watchdog_interval() == microseconds(30'000'000));
  }
  {
    EnvVar pid("WATCHDOG_PID", std::to_string(::getpid() + 1));  // meant for another process
    CHECK(systemd::watchdog_interval() == microseconds(0));
  }
  EnvVar bad("WATCHDOG_USEC", "30s");
  CHECK(systemd::watchdog_interval() == microseconds(0));
}
