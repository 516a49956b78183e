#include "common/service.hpp"

#include <systemd/sd-daemon.h>

#include <boost/asio/steady_timer.hpp>

#include <functional>

namespace tocsin::common {

struct ServiceNotifier::Impl {
  explicit Impl(boost::asio::io_context& io) : timer(io) {}
  boost::asio::steady_timer timer;
  std::uint64_t watchdog_usec = 0;

  void ping() {
    sd_notify(0, "WATCHDOG=1");
    timer.expires_after(std::chrono::microseconds(watchdog_usec / 2));
    timer.async_wait([this](boost::system::error_code ec) {
      if (!ec) ping();
    });
  }
};

ServiceNotifier::ServiceNotifier(boost::asio::io_context& io) : impl_(std::make_unique<Impl>(io)) {}
ServiceNotifier::~ServiceNotifier() = default;

void ServiceNotifier::ready(const std::string& status) {
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
  // The watchdog pings come from the event loop: if it hangs, systemd restarts us.
  if (sd_watchdog_enabled(0, &impl_->watchdog_usec) > 0 && impl_->watchdog_usec > 0) impl_->ping();
}

void ServiceNotifier::status(const std::string& status) {
  sd_notifyf(0, "STATUS=%s", status.c_str());
}

void ServiceNotifier::stopping() {
  impl_->timer.cancel();
  sd_notify(0, "STOPPING=1");
}

}  // namespace tocsin::common
