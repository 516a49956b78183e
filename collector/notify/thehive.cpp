// The TheHive 5 channel: a new incident becomes an alert (created once, never updated).
#include "collector/notify/detail.hpp"

namespace tocsin::collector::detail::notify {
using json = nlohmann::json;

namespace {

int thehive_severity(const std::string& s) {
  if (s == "critical") return 4;
  if (s == "high") return 3;
  if (s == "medium") return 2;
  return 1;
}

json thehive_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  std::uint64_t id = static_cast<std::uint64_t>(num(inc, "id"));
  std::int64_t reopen = num(inc, "reopen_count");
  std::string description;
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) description += "**" + k + "**: " + v + "\n\n";
  json tags = json::array({"tocsin", "kind:" + str(inc, "kind")});
  if (!str(inc, "test_id").empty()) tags.push_back("test:" + str(inc, "test_id"));
  if (!str(inc, "agent_id").empty()) tags.push_back("agent:" + str(inc, "agent_id"));
  json body = {{"type", "tocsin-incident"},
               {"source", "Tocsin:" + cfg.collector_name},
               // TheHive keeps (type, source, sourceRef) unique: a reopened incident is a new alert.
               {"sourceRef", reopen ? std::to_string(id) + "-reopen-" + std::to_string(reopen) : std::to_string(id)},
               {"title", one_line(incident_headline(inc), 512)},
               {"description", description},
               {"severity", thehive_severity(str(inc, "severity"))},
               {"date", num(inc, "opened_ns") / kNsPerMs},
               {"tags", tags},
               {"tlp", 2},
               {"pap", 2}};
  std::string link = incident_link(cfg, id);
  if (!link.empty()) body["externalLink"] = link;
  return body;
}

}  // namespace

void thehive_message(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg,
                     HttpMessage& m) {
  m.url += "/api/v1/alert";
  m.headers.push_back("Authorization: Bearer " + ch.api_key);
  m.body = dump(thehive_body(snap, cfg));
}

}  // namespace tocsin::collector::detail::notify
