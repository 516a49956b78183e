#include "collector/config.hpp"

#include <set>
#include <sstream>
#include <string>

#include "common/config.hpp"

namespace tocsin::collector {

CollectorConfig CollectorConfig::load(const std::filesystem::path& file) {
  auto root = common::ConfigNode::load_file(file);
  root.check_keys({"data_dir", "agent_listen", "api_listen", "api_threads", "tls", "log_level", "limits",
                   "enrollment", "correlation", "incidents", "notify", "commands", "watch", "alert_sources"});
  CollectorConfig c;
  c.data_dir = root.str("data_dir", file.parent_path().string());
  if (c.data_dir.is_relative()) c.data_dir = std::filesystem::absolute(file.parent_path() / c.data_dir);
  auto endpoint = [&](const std::string& key, common::HostPort def) {
    if (!root.has(key)) return def;
    try {
      return common::parse_host_port(root.str(key));
    } catch (const std::invalid_argument& e) {
      root.fail(key, e.what());
    }
  };
  c.agent_listen = endpoint("agent_listen", c.agent_listen);
  c.api_listen = endpoint("api_listen", c.api_listen);
  auto threads = root.integer("api_threads", static_cast<std::int64_t>(c.api_threads));
  if (threads < 1 || threads > 64) root.fail("api_threads", "must be between 1 and 64");
  c.api_threads = static_cast<std::size_t>(threads);
  c.log_level = root.str("log_level", c.log_level);
  // Checked here, not first by the logger at start, so check-config catches it too.
  static const std::set<std::string> kLevels{"trace", "debug", "info",     "warn", "warning",
                                             "error", "err",   "critical", "off"};
  if (!kLevels.count(c.log_level))
    root.fail("log_level", "unknown level '" + c.log_level + "' (use trace, debug, info, warn, error)");

  auto tls = root["tls"];
  tls.check_keys({"ca_cert", "ca_key", "server_cert", "server_key"});
  auto path = [&](const std::string& key, const char* def) {
    std::filesystem::path p = tls.str(key, def);
    return p.is_relative() ? c.data_dir / p : p;
  };
  c.ca_cert = path("ca_cert", "ca.pem");
  c.ca_key = path("ca_key", "ca.key");
  c.server_cert = path("server_cert", "server.pem");
  c.server_key = path("server_key", "server.key");

  auto limits = root["limits"];
  limits.check_keys({"handshake_timeout", "frame_timeout", "idle_timeout", "max_connections"});
  c.handshake_timeout = limits.duration("handshake_timeout", c.handshake_timeout);
  c.frame_timeout = limits.duration("frame_timeout", c.frame_timeout);
  c.idle_timeout = limits.duration("idle_timeout", c.idle_timeout);
  c.max_connections = static_cast<std::size_t>(
      limits.integer("max_connections", static_cast<std::int64_t>(c.max_connections)));
  for (auto [key, d] : {std::pair{"handshake_timeout", c.handshake_timeout},
                        std::pair{"frame_timeout", c.frame_timeout},
                        std::pair{"idle_timeout", c.idle_timeout}})
    if (d.count() <= 0) limits.fail(key, "must be positive");

  auto enrollment = root["enrollment"];
  enrollment.check_keys({"max_token_ttl", "certificate_validity"});
  c.max_token_ttl = enrollment.duration("max_token_ttl", c.max_token_ttl);
  c.agent_cert_validity = std::chrono::duration_cast<std::chrono::hours>(
      enrollment.duration("certificate_validity", c.agent_cert_validity));
  if (c.agent_cert_validity.count() <= 0)
    enrollment.fail("certificate_validity", "must be at least 1h");
  c.correlation = CorrelationConfig::load(root["correlation"]);
  c.incidents = IncidentPolicy::load(root["incidents"]);
  c.notify = NotifyConfig::load(root["notify"], file.parent_path());
  c.commands = CommandPolicy::load(root["commands"]);
  c.watch = WatchPolicy::load(root["watch"]);
  c.alert_sources = load_alert_sources(root, file.parent_path());
  return c;
}

std::string CollectorConfig::to_yaml() const {
  std::ostringstream o;
  o << "# Tocsin collector configuration (written by `tocsin-collector init`).\n"
    << "data_dir: " << data_dir.string() << "\n"
    << "# Agents connect here (mutual TLS). Use 0.0.0.0 to accept agents from the network.\n"
    << "agent_listen: " << agent_listen.to_string() << "\n"
    << "# The HTTPS API used by the `tocsin` CLI (token authentication).\n"
    << "api_listen: " << api_listen.to_string() << "\n"
    << "# Threads serving API and webhook connections (each connection stays on one).\n"
    << "api_threads: " << api_threads << "\n"
    << "log_level: " << log_level << "\n"
    << "tls:\n"
    << "  ca_cert: " << ca_cert.filename().string() << "\n"
    << "  ca_key: " << ca_key.filename().string() << "\n"
    << "  server_cert: " << server_cert.filename().string() << "\n"
    << "  server_key: " << server_key.filename().string() << "\n"
    << "limits:\n"
    << "  handshake_timeout: " << common::format_duration(handshake_timeout) << "\n"
    << "  frame_timeout: " << common::format_duration(frame_timeout) << "\n"
    << "  idle_timeout: " << common::format_duration(idle_timeout) << "\n"
    << "  max_connections: " << max_connections << "\n"
    << "enrollment:\n"
    << "  max_token_ttl: " << common::format_duration(max_token_ttl) << "\n"
    << "  certificate_validity: "
    << common::format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(
           agent_cert_validity))
    << "\n"
    << "correlation:\n"
    << "  grace: " << common::format_duration(correlation.grace)
    << "          # after a test's alert_within passes, keep searching this long before 'missed'\n"
    << "  fuzzy_window: " << common::format_duration(correlation.fuzzy_window)
    << "  # an alert without the marker may match same host + technique this long after the action\n"
    << "# Incidents (docs/INCIDENTS.md lists the defaults); for example:\n"
    << "# incidents:\n"
    << "#   severity: {prevention_failed: critical, detection_missed: critical, health_failed: high}\n"
    << "#   sla: {critical: {acknowledge: 15m, resolve: 4h}, high: {acknowledge: 1h, resolve: 24h}}\n"
    << "#   auto_close_after: 72h   # low and informational incidents nobody touched\n"
    << "# Who hears about incidents (docs/NOTIFICATIONS.md); for example:\n"
    << "# notify:\n"
    << "#   channels:\n"
    << "#     - {name: soc-mail, type: email, url: \"smtp://mail.example:587\", from: tocsin@example.com,\n"
    << "#        to: [soc@example.com], username: tocsin, password_file: smtp.password}\n"
    << "#     - {name: pager, type: pagerduty, routing_key_file: pagerduty.key, severities: [critical]}\n"
    << "#   status_mail: {channel: soc-mail, every: 30m, to: [soc-manager@example.com]}\n"
    << "#   link_base: https://collector.example:7444   # approval links point here\n"
    << "#   approvals: {channel: soc-mail, approvers: [{name: anna, email: anna@example.com}]}\n"
    << "# Remote restarts (docs/COMMANDS.md): approvals needed, and the service watchdog:\n"
    << "# commands: {approvals_required: 1, approval_ttl: 1h, command_ttl: 10m}\n"
    << "# watch:\n"
    << "#   - {test: wordpress-health, target: nginx.service, recheck_after: 180s, max_restarts: 3 per 1h}\n"
    << "# Where alerts come from (see docs/ALERT-SOURCES.md). Webhooks are served on api_listen:\n"
    << "# POST https://<api_listen>/hooks/<name> with the header X-Tocsin-Token: <token>.\n"
    << "# alert_sources:\n"
    << "#   - name: siem\n"
    << "#     type: generic          # generic, splunk_webhook, elastic, alertmanager, crowdsec, hec,\n"
    << "#                            # syslog, elasticsearch, splunk_search, sentinel, crowdsec_lapi\n"
    << "#     token_file: siem.token # at least 16 characters\n"
    << "#     fields: {host: host.name, rule: rule.name, event_time: \"@timestamp\"}\n"
    << "#   - name: syslog\n"
    << "#     type: syslog\n"
    << "#     udp: 0.0.0.0:5514\n"
    << "#     tcp: 0.0.0.0:5514\n";
  return o.str();
}

}  // namespace tocsin::collector
