// The wording every channel shares (times, SLA state, an incident's facts), so all say the same.
#include <cstdio>
#include <cstdlib>

#include "collector/notify/detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector::detail::notify {
using json = nlohmann::json;

namespace {

// "acknowledge: 12m left; resolve: breached 5m ago (paused)"
std::string sla_words(const json& inc) {
  std::vector<std::string> parts;
  for (const auto& [field, name] : {std::pair{"ack_sla", "acknowledge"}, {"resolve_sla", "resolve"}}) {
    const json& t = inc.value(field, json::object());
    if (!t.is_object() || t.value("target_ns", std::int64_t{0}) == 0) continue;
    std::string w = name;
    w += ": ";
    if (!t.value("running", false) && t.value("stopped_ns", std::int64_t{0}) != 0) {
      w += t.value("breached_ns", std::int64_t{0}) ? "met late" : "met";
    } else if (t["remaining_ns"].is_number()) {
      std::int64_t rem = t["remaining_ns"].get<std::int64_t>();
      w += rem >= 0 ? human_duration(rem) + " left" : "breached " + human_duration(rem) + " ago";
    } else {
      w += "not started";
    }
    if (t.value("paused", false)) w += " (paused)";
    parts.push_back(w);
  }
  if (parts.empty()) return "no SLA at this severity";
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "; ") + p;
  return out;
}

std::string note_words(const json& inc) {
  const json& n = inc.value("latest_note", json());
  if (!n.is_object()) return "none";
  return "\"" + one_line(str(n, "text"), 500) + "\" (" + str(n, "actor") + ", " +
         human_time(num(n, "time_ns")) + ")";
}

// "restart nginx.service on agent web-01"
std::string action_words(const json& cmd) {
  std::string verb = str(cmd, "kind") == "restart_service" ? "restart" : str(cmd, "kind");
  return verb + " " + str(cmd, "target") + " on agent " + str(cmd, "agent_id");
}

}  // namespace

std::string human_time(std::int64_t ns) {
  if (ns <= 0) return "-";
  std::string t = common::format_time(ns);  // 2026-11-28T00:48:43.123Z
  return t.substr(0, 10) + " " + t.substr(11, 5) + " UTC";
}

std::string human_duration(std::int64_t ns) {
  std::int64_t s = std::llabs(ns) / kNsPerSec;
  char buf[64];
  if (s >= 86400)
    std::snprintf(buf, sizeof buf, "%lldd %02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  else if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh %02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm", static_cast<long long>(s / 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

std::string event_title(const std::string& ev, const std::string& what) {
  if (what == "reopened") return "Reopened";
  if (ev == "opened") return "Opened";
  if (ev == "acknowledged") return "Acknowledged";
  if (ev == "breached") return "SLA breached";
  if (ev == "escalated") return "Escalated";
  if (ev == "resolved") return what == "closed" || what == "auto_closed" ? "Closed" : "Resolved";
  return "Updated";
}

std::string one_line(std::string s, std::size_t cap) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  if (s.size() > cap) s = s.substr(0, cap - 3) + "...";
  return s;
}

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::int64_t num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
}

std::string incident_link(const NotifyConfig& cfg, std::uint64_t id) {
  if (cfg.link_base.empty()) return "";
  return cfg.link_base + "/api/v1/incidents/" + std::to_string(id);
}

std::vector<std::pair<std::string, std::string>> facts(const json& inc, std::int64_t now_ns) {
  std::int64_t since = num(inc, "reopened_ns") ? num(inc, "reopened_ns") : num(inc, "opened_ns");
  std::string owner = str(inc, "owner");
  std::vector<std::pair<std::string, std::string>> f{
      {"Severity", str(inc, "severity")},
      {"Kind", str(inc, "kind")},
      {"State", str(inc, "state")},
      {"Test", str(inc, "test_id").empty() ? "-" : str(inc, "test_id")},
      {"Agent", str(inc, "agent_id").empty() ? "-" : str(inc, "agent_id")},
      {"Failing since", human_time(since) + " (" + human_duration(now_ns - since) + ")"},
      {"Occurrences", std::to_string(num(inc, "occurrences"))},
      {"Owner", owner.empty() ? "unassigned" : owner},
      {"SLA", sla_words(inc)},
      {"Latest note", note_words(inc)},
  };
  if (!str(inc, "marker").empty()) f.insert(f.begin() + 5, {"Marker", str(inc, "marker")});
  if (!str(inc, "resolution").empty()) f.push_back({"Resolution", str(inc, "resolution")});
  return f;
}

std::string incident_headline(const json& inc) {
  return "#" + std::to_string(num(inc, "id")) + " [" + str(inc, "severity") + "] " +
         one_line(str(inc, "title"), 200);
}

std::vector<std::pair<std::string, std::string>> approval_facts(const json& cmd) {
  std::vector<std::pair<std::string, std::string>> f{
      {"What will happen", "The agent " + str(cmd, "agent_id") + " will " +
                               (str(cmd, "kind") == "restart_service" ? "restart the service " : str(cmd, "kind") + " ") +
                               str(cmd, "target") + ", if its own allowlist permits it"},
      {"Requested by", str(cmd, "requester") + " at " + human_time(num(cmd, "requested_ns"))},
      {"Reason", one_line(str(cmd, "reason"), 1000)},
      {"Approvals", std::to_string(cmd.value("approvals", json::array()).size()) + " of " +
                        std::to_string(num(cmd, "approvals_required"))},
      {"Decide before", human_time(num(cmd, "request_expires_ns"))}};
  if (num(cmd, "incident_id")) f.push_back({"Incident", "#" + std::to_string(num(cmd, "incident_id"))});
  if (!str(cmd, "recheck_test").empty())
    f.push_back({"Then", "re-run " + str(cmd, "recheck_test") + " after " +
                             human_duration(num(cmd, "recheck_after_ns"))});
  return f;
}

std::string approval_headline(const json& cmd) {
  return "Approval needed: " + action_words(cmd) + " (" + str(cmd, "command_id") + ")";
}

}  // namespace tocsin::collector::detail::notify
