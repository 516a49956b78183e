// Endpoint strings ("host:port", "[::1]:7443") and a watchdog that bounds socket waits.
#pragma once

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace firedrill::common {

struct HostPort {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};
HostPort parse_host_port(const std::string& text);  // throws std::invalid_argument

// Asio 1.18 has no per-operation timeout: this timer runs `on_expiry` (which closes the
// socket) unless it is re-armed or cancelled first. Re-arm before each bounded wait.
class Watchdog {
 public:
  Watchdog(boost::asio::any_io_executor ex, std::function<void()> on_expiry);
  ~Watchdog();
  void arm(std::chrono::steady_clock::duration d);
  void disarm();
  bool fired() const { return fired_; }

 private:
  void wait();
  boost::asio::steady_timer timer_;
  std::function<void()> on_expiry_;
  std::shared_ptr<bool> alive_;
  bool fired_ = false;
  std::uint64_t generation_ = 0;
};

}  // namespace firedrill::common
