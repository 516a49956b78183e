// The agent-facing TLS listener: enrollment, then signed result batches acked after a synced write.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>

#include <cstdint>
#include <memory>

#include "collector/config.hpp"
#include "collector/ingest/registry.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"

namespace tocsin::collector {

struct IngestStats {
  std::uint64_t connections = 0;        // currently open
  std::uint64_t results_stored = 0;     // since start
  std::uint64_t batches_stored = 0;
  std::uint64_t security_events = 0;
};

class IngestServer {
 public:
  // Binds immediately (port 0 picks a free port); throws std::system_error if it cannot.
  IngestServer(boost::asio::io_context& io, boost::asio::ssl::context& tls,
               const CollectorConfig& config, Store& store, Registry& registry,
               Correlator* correlator = nullptr,  // told about every stored run
               CommandEngine* commands = nullptr);  // answers command polls, told outcomes
  ~IngestServer();
  std::uint16_t port() const;
  void start();
  // Stops accepting and closes every connection; unacked batches are simply resent by agents.
  void stop();
  IngestStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
