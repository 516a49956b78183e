// The collector's HTTPS JSON API (Boost.Beast) used by the `tocsin` CLI; role-checked.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <cstdint>
#include <memory>

#include "collector/alerts/alert_sources.hpp"
#include "collector/audit/audit.hpp"
#include "collector/commands/commands.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/ingest/registry.hpp"
#include "collector/notify/notify.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"
#include "common/net.hpp"

namespace tocsin::collector {

// Alert intake on the same HTTPS listener: /hooks/<source> and the Splunk HEC endpoint.
// Both must be set for alert endpoints to exist; they must outlive the server.
struct ApiAlerting {
  const std::vector<AlertSourceConfig>* sources = nullptr;
  Correlator* correlator = nullptr;
  IncidentEngine* incidents = nullptr;  // null: the incidents endpoints answer 503
  Notifier* notifier = nullptr;         // null: /api/v1/notifications answers 503
  AuditLog* audit = nullptr;            // null: the audit endpoints answer 503
  CommandEngine* commands = nullptr;    // null: the command endpoints answer 503
};

class ApiServer {
 public:
  // Binds immediately (port 0 picks a free port); throws std::system_error if it cannot.
  // Connections are accepted on `io`. With `threads` == 0 they are served there too; otherwise
  // on `threads` threads of the server's own, each running one io_context, and every connection
  // stays on one of them (round robin), so a connection's handlers never run concurrently.
  ApiServer(boost::asio::io_context& io, boost::asio::ssl::context& tls,
            const common::HostPort& listen, Store& store, Registry& registry,
            ApiAlerting alerting = {}, std::size_t threads = 0);
  ~ApiServer();  // stop() and wait()
  std::uint16_t port() const;
  void start();  // spawns the accept loop on io (and starts the serving threads)
  void stop();   // stops accepting; open connections finish their current request
  // Blocks until every connection served on the server's own threads has ended, then joins
  // them. After stop(): idle connections are closed, busy ones end after their answer.
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
