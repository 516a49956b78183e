// collector.yaml: where the collector keeps its state, where it listens, its limits.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "collector/alerts/alert_sources.hpp"
#include "collector/commands/commands.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/incidents/watchdog.hpp"
#include "collector/notify/notify.hpp"
#include "collector/runs/correlator.hpp"
#include "common/net.hpp"

namespace tocsin::collector {

using namespace std::chrono_literals;

struct CollectorConfig {
  std::filesystem::path data_dir;
  common::HostPort agent_listen{"0.0.0.0", 7443};
  common::HostPort api_listen{"127.0.0.1", 7444};
  std::size_t api_threads = 2;  // threads serving API and webhook connections (1..64)
  std::filesystem::path ca_cert, ca_key, server_cert, server_key;  // default: under data_dir
  std::string log_level = "info";
  // Bounds on what a peer can make us wait for.
  std::chrono::milliseconds handshake_timeout = 10s;
  std::chrono::milliseconds frame_timeout = 10s;   // a started frame must finish within this
  std::chrono::milliseconds idle_timeout = 5min;   // no frame at all for this long: close
  std::chrono::milliseconds max_token_ttl = 7 * 24h;
  std::chrono::hours agent_cert_validity = 2 * 365 * 24h;
  std::size_t max_connections = 50000;
  CorrelationConfig correlation;
  IncidentPolicy incidents;  // `incidents:` severities per kind, SLA per severity, auto-close
  NotifyConfig notify;       // `notify:` channels, routes, retries, status mails
  CommandPolicy commands;    // `commands:` approvals required, request and command lifetimes
  WatchPolicy watch;         // `watch:` restart a watched service when its health check fails
  std::vector<AlertSourceConfig> alert_sources;

  std::filesystem::path db_dir() const { return data_dir / "db"; }
  static CollectorConfig load(const std::filesystem::path& file);
  std::string to_yaml() const;
};

}  // namespace tocsin::collector
