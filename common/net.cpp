#include "common/net.hpp"

#include <stdexcept>

namespace tocsin::common {

std::string HostPort::to_string() const {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

HostPort parse_host_port(const std::string& text) {
  HostPort hp;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw std::invalid_argument("'" + text + "' is not [ipv6]:port");
    hp.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon)
      throw std::invalid_argument("'" + text + "' is not host:port");
    hp.host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (hp.host.empty()) throw std::invalid_argument("'" + text + "' has no host");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("'" + text + "' has no valid port");
  unsigned long p = std::stoul(port);
  if (p > 65535) throw std::invalid_argument("'" + text + "': port out of range");
  hp.port = static_cast<std::uint16_t>(p);
  return hp;
}

Watchdog::Watchdog(boost::asio::any_io_executor ex, std::function<void()> on_expiry)
    : timer_(ex), on_expiry_(std::move(on_expiry)), alive_(std::make_shared<bool>(true)) {}

Watchdog::~Watchdog() { *alive_ = false; }

void Watchdog::arm(std::chrono::steady_clock::duration d) {
  deadline_ = std::chrono::steady_clock::now() + d;
  if (waiting_ && timer_.expiry() <= deadline_) return;  // that wait ends first and re-checks
  timer_.expires_at(deadline_);  // cancels an outstanding wait: its generation is stale below
  wait();
}

void Watchdog::disarm() {
  deadline_ = std::chrono::steady_clock::time_point::max();
  if (!waiting_) return;
  waiting_ = false;
  ++generation_;
  timer_.cancel();
}

void Watchdog::wait() {
  waiting_ = true;
  // A completion of an earlier generation (cancelled, or queued when we re-armed) must not fire.
  timer_.async_wait([this, alive = alive_, gen = ++generation_](boost::system::error_code) {
    if (!*alive || gen != generation_) return;
    waiting_ = false;
    if (deadline_ == std::chrono::steady_clock::time_point::max()) return;
    if (std::chrono::steady_clock::now() < deadline_) {  // re-armed later while we waited
      timer_.expires_at(deadline_);
      wait();
      return;
    }
    fired_ = true;
    on_expiry_();
  });
}

}  // namespace tocsin::common
