// A syslog alert source: UDP, TCP and TLS listeners of one `type: syslog` source, on their own
// thread, handing parsed alerts to the AlertSink.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

#include "collector/alerts/alert_sink.hpp"
#include "collector/alerts/alert_sources.hpp"

namespace tocsin::collector {

class SyslogListener {
 public:
  // Open TCP and TLS connections together; one more is refused (counted as rejected).
  static constexpr std::size_t kMaxConnections = 256;

  // Binds every configured address now (port 0 picks a free port) so a taken port fails at
  // start: throws std::system_error naming the source and the address. TLS uses the source's
  // tls_cert/tls_key, else the defaults (the collector's server certificate); a certificate
  // that cannot be loaded throws std::runtime_error naming the file.
  SyslogListener(const AlertSourceConfig& cfg, AlertSink& sink,
                 const std::filesystem::path& default_cert,
                 const std::filesystem::path& default_key);
  // Stops and joins. Submissions still with the sink complete there; their answers are dropped.
  ~SyslogListener();
  SyslogListener(const SyslogListener&) = delete;
  SyslogListener& operator=(const SyslogListener&) = delete;

  void start();  // starts the thread that serves every address
  // Prompt: stops the thread without waiting for peers, closes sockets. Not restartable.
  void stop();

  std::uint16_t udp_port() const;  // 0 if not configured
  std::uint16_t tcp_port() const;
  std::uint16_t tls_port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
