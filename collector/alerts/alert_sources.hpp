// `alert_sources:` in collector.yaml: where alerts come from and how each source is trusted.
//
// One struct for every type keeps the config loader in one place; each type reads only the
// fields it needs and the loader refuses fields that do not belong to the type, so a
// misplaced `interval:` on a webhook is an error, not a silent no-op.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/config.hpp"
#include "common/net.hpp"

namespace tocsin::collector {

using namespace std::chrono_literals;

// Where the generic webhook finds each field: dotted paths with optional [n] indexes
// ("alert.host.name", "events[0].ts"). Empty: not mapped.
struct FieldMap {
  std::string id, host, rule, technique, severity;
  std::string event_time, ingest_time, alert_time;
};

enum class SourceType {
  generic,         // POST /hooks/<name>: JSON object or array, fields via FieldMap
  splunk_webhook,  // POST /hooks/<name>: Splunk alert action payload
  elastic,         // POST /hooks/<name>: Kibana webhook connector (JSON the rule author shaped)
  alertmanager,    // POST /hooks/<name>: Prometheus Alertmanager webhook v4
  crowdsec,        // POST /hooks/<name>: CrowdSec http notification plugin
  hec,             // POST /services/collector/event with "Authorization: Splunk <token>"
  syslog,          // UDP / TCP (octet counting or newline) / TLS listener
  elasticsearch,   // poller: _search with search_after (also OpenSearch)
  splunk_search,   // poller: /services/search/jobs/export
  sentinel,        // poller: Log Analytics query API, OAuth2 client credentials
  crowdsec_lapi,   // poller: GET /v1/alerts
};
std::string source_type_name(SourceType t);
std::optional<SourceType> parse_source_type(const std::string& s);
bool is_webhook(SourceType t);  // delivered over the collector's HTTPS listener
bool is_poller(SourceType t);

struct AlertSourceConfig {
  std::string name;  // [a-z0-9_-]+, unique; the webhook path is /hooks/<name>
  SourceType type = SourceType::generic;
  bool events = false;  // `delivers: events`: items are log events (-> "logged"), not alerts

  // Webhooks and HEC: the shared secret, from `token:` or `token_file:`. Accepted in the
  // header X-Tocsin-Token, as "Authorization: Bearer <t>" (HEC: "Splunk <t>"), or -- for
  // senders that cannot set headers -- as ?token=<t> when `allow_url_token: true`.
  std::string token;
  bool allow_url_token = false;
  std::size_t max_body = 1024 * 1024;
  FieldMap fields;  // generic (and elastic, whose body shape the rule author chooses)

  // syslog
  std::optional<common::HostPort> udp, tcp, tls;  // listen addresses; at least one
  std::filesystem::path tls_cert, tls_key;        // default: the collector's server cert
  std::size_t max_message = 64 * 1024;

  // pollers
  std::string url;    // base URL: https://es:9200, https://splunk:8089, https://lapi:8080,
                      // https://api.loganalytics.io (sentinel)
  std::string index;  // elasticsearch: index pattern ("alerts-*")
  std::string query;  // elasticsearch: query_string filter; splunk: search; sentinel: KQL
  std::string username, password;  // basic auth (elasticsearch, splunk, crowdsec_lapi machine)
  std::string api_key;             // elasticsearch "ApiKey", splunk bearer, crowdsec X-Api-Key
  std::string tenant_id, client_id, client_secret, workspace_id;  // sentinel
  std::string token_url;           // sentinel: OAuth2 token endpoint (default: Azure AD's)
  std::filesystem::path ca_file;   // pin a CA for the poller's TLS; empty: system store
  std::string time_field = "@timestamp";  // elasticsearch sort/range field
  std::chrono::milliseconds interval = 30s;
  std::chrono::milliseconds lookback = 10min;  // windows overlap by this (max ingestion lag)
  std::chrono::milliseconds timeout = 30s;     // per HTTP request
  std::size_t page_size = 500;
  std::size_t max_pages = 100;  // per poll; the rest waits for the next poll
};

// Loads and validates the `alert_sources` list (missing: none). Secrets from `*_file` keys
// are read here so a missing file fails at start, with file:line.
std::vector<AlertSourceConfig> load_alert_sources(const common::ConfigNode& root,
                                                  const std::filesystem::path& base_dir);

}  // namespace tocsin::collector
