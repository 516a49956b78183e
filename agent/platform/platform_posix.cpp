#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

#include "agent/platform/platform.hpp"
#include "agent/platform/systemd_notify.hpp"

namespace tocsin::agent::platform {

std::filesystem::path default_config_file() {
  return "/etc/tocsin/agent.yaml";
}
std::filesystem::path default_state_dir() {
  return "/var/lib/tocsin-agent";
}
std::filesystem::path default_kill_switch() {
  return "/etc/tocsin/disabled";
}

std::string hostname() {
  char h[256] = {0};
  gethostname(h, sizeof h - 1);
  return h;
}

std::string os_description() {
  struct utsname u {};
  if (uname(&u) != 0) return "unknown";
  return std::string(u.sysname) + " " + u.release + " " + u.machine;
}

namespace {
FileStatus status_of(int err) {
  return {err, err ? std::strerror(err) : ""};
}
}  // namespace

FileStatus create_new_file(const std::filesystem::path& p, const std::string& content) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return status_of(errno);
  ssize_t n = ::write(fd, content.data(), content.size());
  int err = n == static_cast<ssize_t>(content.size()) ? 0 : (n < 0 ? errno : EIO);
  if (::close(fd) != 0 && err == 0) err = errno;
  return status_of(err);
}

FileStatus read_file_head(const std::filesystem::path& p, std::string& out, std::size_t max) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return status_of(errno);
  out.assign(max, '\0');
  ssize_t n = ::read(fd, out.data(), out.size());
  int err = errno;
  ::close(fd);
  if (n < 0) {
    out.clear();
    auto s = status_of(err);
    s.opened = true;
    return s;
  }
  out.resize(static_cast<std::size_t>(n));
  return {};
}

FileStatus remove_file(const std::filesystem::path& p) {
  return status_of(::unlink(p.c_str()) == 0 ? 0 : errno);
}

bool exists_no_follow(const std::filesystem::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

struct ServiceHost::Impl {
  explicit Impl(boost::asio::io_context& io) : watchdog(io), signals(io, SIGINT, SIGTERM) {}
  boost::asio::steady_timer watchdog;
  std::chrono::microseconds watchdog_interval{0};
  boost::asio::signal_set signals;

  // From the event loop: if it hangs, the pings stop and systemd restarts the agent.
  void ping() {
    systemd::notify("WATCHDOG=1");
    watchdog.expires_after(watchdog_interval / 2);
    watchdog.async_wait([this](boost::system::error_code ec) {
      if (!ec) ping();
    });
  }
};

ServiceHost::ServiceHost(boost::asio::io_context& io) : impl_(std::make_unique<Impl>(io)) {}
ServiceHost::~ServiceHost() = default;

void ServiceHost::on_stop(std::function<void(const std::string&)> handler) {
  impl_->signals.async_wait([handler = std::move(handler)](boost::system::error_code ec, int sig) {
    if (!ec) handler(sig == SIGTERM ? "received SIGTERM" : "received SIGINT");
  });
}

void ServiceHost::ready(const std::string& status) {
  systemd::notify("READY=1\nSTATUS=" + status);
  impl_->watchdog_interval = systemd::watchdog_interval();
  if (impl_->watchdog_interval.count() > 0) impl_->ping();
}

void ServiceHost::stopping() {
  impl_->watchdog.cancel();
  systemd::notify("STOPPING=1");
  impl_->signals.cancel();
}

int run_as_service(const std::string&, const std::function<int()>& body) {
  return body();
}

std::filesystem::path service_log_file() {
  return {};
}

void set_service_recovery(const std::string&) {
  throw std::runtime_error(
      "nothing to configure: systemd restarts the agent (Restart=on-failure "
      "in tocsin-agent.service)");
}

}  // namespace tocsin::agent::platform
