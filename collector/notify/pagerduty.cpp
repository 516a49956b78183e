// The PagerDuty channel: Events API v2 trigger, acknowledge and resolve under one dedup key.
#include "collector/notify/detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

std::string pagerduty_dedup_key(const NotifyConfig& cfg, std::uint64_t incident_id) {
  return "tocsin-" + cfg.collector_name + "-" + std::to_string(incident_id);
}

namespace detail::notify {
using json = nlohmann::json;

namespace {

std::string pd_severity(const std::string& s) {
  if (s == "critical") return "critical";
  if (s == "high") return "error";
  if (s == "medium") return "warning";
  return "info";
}

}  // namespace

json pagerduty_body(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::uint64_t id = static_cast<std::uint64_t>(num(inc, "id"));
  std::string notify = str(ev, "notify");
  std::string action = notify == "resolved" ? "resolve" : notify == "acknowledged" ? "acknowledge" : "trigger";
  json body = {{"routing_key", ch.routing_key},
               {"event_action", action},
               {"dedup_key", pagerduty_dedup_key(cfg, id)}};
  if (action != "trigger") return body;
  json details = json::object();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) details[k] = v;
  details["event"] = str(ev, "what") + (str(ev, "detail").empty() ? "" : ": " + str(ev, "detail"));
  body["payload"] = {{"summary", one_line(incident_headline(inc), 1024)},
                     {"source", str(inc, "agent_id").empty() ? cfg.collector_name : str(inc, "agent_id")},
                     {"severity", pd_severity(str(inc, "severity"))},
                     {"timestamp", common::format_time(num(ev, "time_ns"))},
                     {"component", str(inc, "test_id")},
                     {"group", cfg.collector_name},
                     {"class", str(inc, "kind")},
                     {"custom_details", details}};
  body["client"] = "Tocsin";
  std::string link = incident_link(cfg, id);
  if (!link.empty()) {
    body["client_url"] = link;
    body["links"] = json::array({{{"href", link}, {"text", "Incident #" + std::to_string(id)}}});
  }
  return body;
}

}  // namespace detail::notify
}  // namespace tocsin::collector
