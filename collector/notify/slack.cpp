// The Slack channel: an incident as a Block Kit message, an approval request as one line.
#include "collector/notify/detail.hpp"

namespace tocsin::collector::detail::notify {
using json = nlohmann::json;

namespace {

// Slack mrkdwn: only &, < and > are control characters.
std::string slack_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

}  // namespace

json slack_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::string head = event_title(str(ev, "notify"), str(ev, "what")) + " " + incident_headline(inc);
  json fields = json::array();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) {
    if (fields.size() == 10) break;  // Slack's limit per section
    fields.push_back({{"type", "mrkdwn"}, {"text", "*" + k + "*\n" + slack_escape(one_line(v, 1900))}});
  }
  std::string text = slack_escape(head);
  std::string link = incident_link(cfg, num(inc, "id"));
  json blocks = json::array({
      {{"type", "header"}, {"text", {{"type", "plain_text"}, {"text", one_line(head, 150)}}}},
      {{"type", "section"},
       {"text", {{"type", "mrkdwn"},
                 {"text", slack_escape(one_line(str(ev, "what") + " by " + str(ev, "actor") +
                                                (str(ev, "detail").empty() ? "" : ": " + str(ev, "detail")),
                                                2900))}}},
       {"fields", fields}},
  });
  if (!link.empty())
    blocks.push_back({{"type", "context"},
                      {"elements", json::array({{{"type", "mrkdwn"}, {"text", "<" + link + "|Open in Tocsin>"}}})}});
  return {{"text", text}, {"blocks", blocks}};
}

json approval_slack_body(const json& snap) {
  const json& cmd = snap.at("command");
  std::string text = approval_headline(cmd) + ". Requested by " + str(cmd, "requester") + ": " +
                     one_line(str(cmd, "reason"), 500) + ". Approve with `tocsin approve " +
                     std::to_string(num(cmd, "id")) + "` (approvers also get a personal link by mail).";
  return {{"text", slack_escape(text)}};
}

}  // namespace tocsin::collector::detail::notify
