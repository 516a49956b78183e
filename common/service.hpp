// Service-manager integration (agent and collector): systemd readiness and watchdog (no-ops outside systemd).
#pragma once

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

namespace tocsin::common {

class ServiceNotifier {
 public:
  explicit ServiceNotifier(boost::asio::io_context& io);
  ~ServiceNotifier();
  void ready(const std::string& status);
  void status(const std::string& status);
  void stopping();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::common
