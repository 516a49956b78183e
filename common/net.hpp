// Endpoint strings ("host:port", "[::1]:7443") and a watchdog that bounds socket waits.
#pragma once

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace tocsin::common {

struct HostPort {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};
HostPort parse_host_port(const std::string& text);  // throws std::invalid_argument

// Asio 1.18 has no per-operation timeout: this timer runs `on_expiry` (which closes the
// socket) unless it is re-armed or cancelled first. Re-arm before each bounded wait.
// Re-arming with a deadline no earlier than the one the timer waits for only moves the deadline:
// the wait that is outstanding re-checks it when it ends. A busy connection re-arms twice per
// request, and cancelling and restarting the timer each time cost a completion handler, two
// timer-queue updates and often a timerfd_settime (measured on the API's alert path).
class Watchdog {
 public:
  Watchdog(boost::asio::any_io_executor ex, std::function<void()> on_expiry);
  ~Watchdog();
  void arm(std::chrono::steady_clock::duration d);
  void disarm();  // cancels the wait, so nothing is left to keep an io_context running
  bool fired() const { return fired_; }

 private:
  void wait();
  boost::asio::steady_timer timer_;
  std::function<void()> on_expiry_;
  std::shared_ptr<bool> alive_;
  bool fired_ = false;
  bool waiting_ = false;  // an async_wait of the current generation is outstanding
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
  std::uint64_t generation_ = 0;
};

}  // namespace tocsin::common
