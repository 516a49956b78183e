// The Microsoft Teams channel: incidents and approval requests as Adaptive Cards.
#include "collector/notify/detail.hpp"

namespace tocsin::collector::detail::notify {
using json = nlohmann::json;

json teams_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  json fact_set = json::array();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) fact_set.push_back({{"title", k}, {"value", v}});
  std::string sev = str(inc, "severity");
  json card = {
      {"$schema", "http://adaptivecards.io/schemas/adaptive-card.json"},
      {"type", "AdaptiveCard"},
      {"version", "1.4"},
      {"body", json::array({
                   {{"type", "TextBlock"}, {"size", "Large"}, {"weight", "Bolder"}, {"wrap", true},
                    {"color", sev == "critical" || sev == "high" ? "Attention" : "Warning"},
                    {"text", event_title(str(ev, "notify"), str(ev, "what")) + " " + incident_headline(inc)}},
                   {{"type", "TextBlock"}, {"wrap", true},
                    {"text", str(ev, "what") + " by " + str(ev, "actor") + " at " + human_time(num(ev, "time_ns")) +
                                 (str(ev, "detail").empty() ? "" : ": " + one_line(str(ev, "detail"), 1000))}},
                   {{"type", "FactSet"}, {"facts", fact_set}},
               })},
  };
  std::string link = incident_link(cfg, num(inc, "id"));
  if (!link.empty())
    card["actions"] = json::array({{{"type", "Action.OpenUrl"}, {"title", "Open in Tocsin"}, {"url", link}}});
  return {{"type", "message"},
          {"attachments", json::array({{{"contentType", "application/vnd.microsoft.card.adaptive"},
                                        {"contentUrl", nullptr},
                                        {"content", card}}})}};
}

json approval_teams_body(const json& snap) {
  const json& cmd = snap.at("command");
  json facts = json::array();
  for (const auto& [k, v] : approval_facts(cmd)) facts.push_back({{"title", k}, {"value", v}});
  json card = {{"$schema", "http://adaptivecards.io/schemas/adaptive-card.json"},
               {"type", "AdaptiveCard"},
               {"version", "1.4"},
               {"body", json::array({{{"type", "TextBlock"}, {"size", "Large"}, {"weight", "Bolder"},
                                      {"wrap", true}, {"text", approval_headline(cmd)}},
                                     {{"type", "FactSet"}, {"facts", facts}},
                                     {{"type", "TextBlock"}, {"wrap", true},
                                      {"text", "Approve with: tocsin approve " +
                                                   std::to_string(num(cmd, "id"))}}})}};
  return {{"type", "message"},
          {"attachments", json::array({{{"contentType", "application/vnd.microsoft.card.adaptive"},
                                        {"contentUrl", nullptr},
                                        {"content", card}}})}};
}

}  // namespace tocsin::collector::detail::notify
