// The `tocsin` admin CLI: parses the command line, calls the collector's HTTPS API through
// ApiClient and prints tables or JSON. It never opens the collector's database.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "collector/cli/api_client.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/curl.hpp"

namespace fs = std::filesystem;
using tocsin::collector::ApiClient;
using tocsin::collector::ApiError;
using nlohmann::json;

namespace {

constexpr int kExitApiError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitAuditBroken = 3;  // `audit verify`: the log is not intact

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct GlobalOptions {
  std::string server = "https://127.0.0.1:7444";
  std::string token_file;
  std::string ca;
  int timeout_s = 15;
};

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

ApiClient make_client(const GlobalOptions& g) {
  if (g.token_file.empty())
    throw UsageError("no API token: pass --token-file or set TOCSIN_TOKEN_FILE");
  std::string token;
  try {
    token = trim(tocsin::common::read_file(g.token_file, 4096));
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot read token file: " + std::string(e.what()));
  }
  if (token.empty()) throw std::runtime_error("token file " + g.token_file + " is empty");
  fs::path ca = g.ca.empty() ? fs::path(g.token_file).parent_path() / "ca.pem" : fs::path(g.ca);
  std::error_code ec;
  if (!fs::is_regular_file(ca, ec))
    throw std::runtime_error("collector CA certificate " + ca.string() +
                             " not found (pass --ca with the collector's ca.pem)");
  return ApiClient(g.server, token, ca, g.timeout_s * 1000L);
}

std::string url_encode(const std::string& s) {
  return tocsin::common::curl::percent_encode(s);
}

// Agents and SIEMs control some of these strings: never let them send escape sequences
// (C0 controls, DEL, and the UTF-8-encoded C1 range U+0080..U+009F) to the terminal.
std::string sanitize(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(s[i + 1]) <= 0x9f) {
      out += '?';
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::size_t display_width(const std::string& s) {
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xc0) != 0x80; }));
}

std::string text(const json& obj, const std::string& key) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return "-";
  const json& v = obj[key];
  std::string s = sanitize(v.is_string() ? v.get<std::string>() : v.dump());
  return s.empty() ? "-" : s;
}

void print_table(const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(headers.size());
  for (std::size_t i = 0; i < headers.size(); ++i) width[i] = display_width(headers[i]);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], display_width(r[i]));
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - display_width(cells[i]) + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(headers);
  for (const auto& r : rows) line(r);
}

const json& list_field(const json& answer, const std::string& key) {
  if (!answer.is_object() || !answer.contains(key) || !answer[key].is_array())
    throw std::runtime_error("the server's answer has no '" + key + "' list");
  return answer[key];
}

std::string format_ms(double ms) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%+.1f", ms);
  return buf;
}

std::string clock_text(const json& a) {
  const json& err = a.value("clock_error_ms", json());
  if (!err.is_number()) return "not synchronised";
  double offset = a.value("clock_offset_ms", 0.0);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s ms ± %.1f ms", format_ms(offset).c_str(), err.get<double>());
  return buf;
}

void print_json(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

// "24h" reads as a window, "2026-01-01T00:00:00Z" as a point in time.
std::string since_text(const std::string& since) {
  return sanitize(since) + (since.find('T') == std::string::npos ? " ago" : "");
}

int cmd_token_create(const ApiClient& api, const std::string& ttl) {
  json body = {{"ttl", ttl}};
  json r = api.post("/api/v1/enroll-tokens", body);
  std::cout << "Single-use enrollment token, valid until " << text(r, "expires_at") << ":\n"
            << text(r, "token") << "\n";
  return 0;
}

int cmd_api_token_create(const ApiClient& api, const std::string& name, const std::string& role) {
  json body = {{"name", name}, {"role", role}};
  json r = api.post("/api/v1/api-tokens", body);
  std::cout << "API token '" << text(r, "name") << "' with role " << text(r, "role")
            << " (shown only now; store it like a password):\n"
            << text(r, "token") << "\n";
  return 0;
}

int cmd_agents(const ApiClient& api, bool as_json) {
  const json answer = api.get("/api/v1/agents");
  const json& agents = list_field(answer, "agents");
  if (as_json) return print_json(agents), 0;
  if (agents.empty()) return std::cout << "No agents enrolled.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& a : agents)
    rows.push_back({text(a, "agent_id") + (a.value("revoked", false) ? " (revoked)" : ""),
                    text(a, "hostname"), text(a, "os"), text(a, "results"), text(a, "last_seen"),
                    clock_text(a)});
  print_table({"AGENT", "HOSTNAME", "OS", "RESULTS", "LAST SEEN", "CLOCK OFFSET"}, rows);
  return 0;
}

struct ResultsQuery {
  std::string agent;
  std::string since = "24h";
  int limit = 1000;
  bool as_json = false;
};

int cmd_results(const ApiClient& api, const ResultsQuery& q) {
  std::string path =
      "/api/v1/results?since=" + url_encode(q.since) + "&limit=" + std::to_string(q.limit);
  if (!q.agent.empty()) path += "&agent=" + url_encode(q.agent);
  const json answer = api.get(path);
  const json& results = list_field(answer, "results");
  if (q.as_json) return print_json(results), 0;
  if (results.empty()) return std::cout << "No results since " << since_text(q.since) << ".\n", 0;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> problems;
  for (const auto& r : results) {
    bool ok = r.value("verified", false);
    rows.push_back({text(r, "received_at"), text(r, "agent_id"), text(r, "seq"), text(r, "test_id"),
                    text(r, "target"), text(r, "verdict"), text(r, "reason"),
                    ok ? "verified" : "INVALID"});
    if (!ok)
      problems.push_back(text(r, "agent_id") + " seq " + text(r, "seq") + ": " +
                         text(r, "verify_error"));
  }
  print_table({"RECEIVED", "AGENT", "SEQ", "TEST", "TARGET", "VERDICT", "REASON", "SIGNATURE"},
              rows);
  if (!problems.empty()) {
    std::cout << "\n" << problems.size() << " result(s) failed verification:\n";
    for (const auto& p : problems) std::cout << "  INVALID " << p << "\n";
  }
  return 0;
}

int cmd_security_events(const ApiClient& api, const std::string& since, int limit, bool as_json) {
  const json answer = api.get("/api/v1/security-events?since=" + url_encode(since) +
                              "&limit=" + std::to_string(limit));
  const json& events = list_field(answer, "events");
  if (as_json) return print_json(events), 0;
  if (events.empty())
    return std::cout << "No security events since " << since_text(since) << ".\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : events)
    rows.push_back({text(e, "time"), text(e, "kind"), text(e, "agent_id"), text(e, "remote"),
                    text(e, "detail")});
  print_table({"TIME", "KIND", "AGENT", "REMOTE", "DETAIL"}, rows);
  return 0;
}

std::string ms_text(const json& v) {
  if (!v.is_number()) return "-";
  char buf[64];
  double ms = v.get<double>();
  if (std::abs(ms) >= 10000)
    std::snprintf(buf, sizeof buf, "%.1f s", ms / 1000);
  else if (std::abs(ms) < 1)
    std::snprintf(buf, sizeof buf, "%.3f ms", ms);  // loopback clock bounds are microseconds
  else
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  return buf;
}

std::string latency_text(const json& r) {
  const json& tta = r.value("time_to_alert_ms", json());
  if (!tta.is_number()) return "-";
  std::string s = ms_text(tta) + " ± " + ms_text(r.value("error_bound_ms", json()));
  if (r.value("clock_anomaly", false)) s += " CLOCK ANOMALY";
  return s;
}

struct RunsQuery {
  std::string since = "1h", state, agent, test;
  int limit = 1000;
  bool as_json = false;
};

int cmd_runs(const ApiClient& api, const RunsQuery& q) {
  std::string path =
      "/api/v1/runs?since=" + url_encode(q.since) + "&limit=" + std::to_string(q.limit);
  if (!q.state.empty()) path += "&state=" + url_encode(q.state);
  if (!q.agent.empty()) path += "&agent=" + url_encode(q.agent);
  if (!q.test.empty()) path += "&test=" + url_encode(q.test);
  const json answer = api.get(path);
  const json& runs = list_field(answer, "runs");
  if (q.as_json) return print_json(runs), 0;
  if (runs.empty())
    return std::cout << "No runs" << (q.state.empty() ? "" : " in state " + sanitize(q.state))
                     << " since " << since_text(q.since) << ".\n",
           0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : runs) {
    std::string state = text(r, "state");
    if (r.value("overdue", false) && state == "pending") state += " (overdue)";
    const json& alert = r.value("alert", json());
    rows.push_back({text(r, "action_time"), text(r, "test_id"), text(r, "hostname"),
                    text(r, "marker"), text(r, "verdict"), state, latency_text(r),
                    alert.is_object() ? text(alert, "source") : "-",
                    alert.is_object() ? text(alert, "match_reason") : "-"});
  }
  print_table({"ACTION (CORRECTED)", "TEST", "HOST", "MARKER", "PREVENTION", "DETECTION",
               "TIME TO ALERT", "SOURCE", "MATCH"},
              rows);
  return 0;
}

std::string pct_text(const json& p, const char* key) {
  return p.is_object() ? ms_text(p.value(key, json())) : "-";
}

int cmd_latency(const ApiClient& api, const std::string& since, const std::string& by,
                const std::string& format) {
  const json answer =
      api.get("/api/v1/latency?since=" + url_encode(since) + "&by=" + url_encode(by));
  const json& groups = list_field(answer, "groups");
  if (format == "json") return print_json(answer), 0;
  std::vector<std::string> headers = {by == "source"      ? "SOURCE"
                                      : by == "host"      ? "HOST"
                                      : by == "technique" ? "TECHNIQUE"
                                                          : "TEST",
                                      "RUNS",
                                      "ALERTED",
                                      "LATE",
                                      "LOGGED",
                                      "MISSED",
                                      "PENDING",
                                      "COVERAGE",
                                      "TTA P50",
                                      "TTA P95",
                                      "TTA MAX",
                                      "± MAX",
                                      "PIPELINE P50",
                                      "RULE P50",
                                      "DELIVERY P50"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : groups) {
    char cov[32];
    std::snprintf(cov, sizeof cov, "%.1f%%", g.value("coverage_pct", 0.0));
    const json tta = g.value("time_to_alert", json());
    rows.push_back({text(g, "group"), text(g, "runs"), text(g, "alerted"), text(g, "late"),
                    text(g, "logged"), text(g, "missed"), text(g, "pending"), cov,
                    pct_text(tta, "p50_ms"), pct_text(tta, "p95_ms"), pct_text(tta, "max_ms"),
                    ms_text(g.value("max_error_ms", json())),
                    pct_text(g.value("pipeline_lag", json()), "p50_ms"),
                    pct_text(g.value("rule_latency", json()), "p50_ms"),
                    pct_text(g.value("delivery_lag", json()), "p50_ms")});
  }
  if (format == "csv") {
    auto csv = [](const std::string& c) {
      if (c.find_first_of(",\"\n") == std::string::npos) return c;
      std::string out = "\"";
      for (char ch : c) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
      return out + "\"";
    };
    for (std::size_t i = 0; i < headers.size(); ++i) std::cout << (i ? "," : "") << csv(headers[i]);
    std::cout << "\n";
    for (const auto& r : rows) {
      for (std::size_t i = 0; i < r.size(); ++i) std::cout << (i ? "," : "") << csv(r[i]);
      std::cout << "\n";
    }
    return 0;
  }
  if (groups.empty())
    return std::cout << "No runs that expect an alert since " << since_text(since) << ".\n", 0;
  print_table(headers, rows);
  std::cout << "\nTime to alert = arrival at the collector - the action on the agent, corrected "
               "by the agent's measured clock offset; ± is the largest error bound.\n";
  return 0;
}

int cmd_alert_sources(const ApiClient& api, bool as_json) {
  const json answer = api.get("/api/v1/alert-sources");
  const json& sources = list_field(answer, "sources");
  if (as_json) return print_json(answer), 0;
  if (sources.empty()) return std::cout << "No alert sources configured.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : sources) {
    std::string rejected;
    if (s.contains("rejected") && s["rejected"].is_object())
      for (const auto& [reason, n] : s["rejected"].items())
        rejected += (rejected.empty() ? "" : " ") + sanitize(reason) + "=" + n.dump();
    rows.push_back({text(s, "name"), text(s, "type"), text(s, "accepted"), text(s, "matched"),
                    text(s, "duplicates"), text(s, "waiting_for_run"),
                    rejected.empty() ? "-" : rejected, text(s, "last_alert")});
  }
  print_table(
      {"SOURCE", "TYPE", "ACCEPTED", "MATCHED", "DUPLICATES", "WAITING", "REJECTED", "LAST ALERT"},
      rows);
  std::cout << "\nPending runs (waiting for an alert): " << text(answer, "pending_runs") << "\n";
  return 0;
}

std::string check_https(const std::string& url) {
  return url.rfind("https://", 0) == 0
             ? std::string()
             : "must be an https:// URL (the token is never sent in clear)";
}

// ---- incidents ------------------------------------------------------------------------------

std::string span_text(std::int64_t ns) {
  auto m = std::abs(ns) / 60'000'000'000LL;
  if (m >= 60) return std::to_string(m / 60) + "h" + (m % 60 ? std::to_string(m % 60) + "m" : "");
  return std::to_string(m) + "m";
}

// "12m left", "OVERDUE by 5m", "done", "paused, 12m left", "-" (no timer at this severity).
std::string sla_text(const json& t) {
  if (!t.is_object() || !t.value("remaining_ns", json()).is_number_integer()) return "-";
  auto rem = t["remaining_ns"].get<std::int64_t>();
  std::string s = rem < 0 ? "OVERDUE by " + span_text(rem) : span_text(rem) + " left";
  if (!t.value("running", false)) return t.value("breached_ns", 0LL) ? "done (breached)" : "done";
  return t.value("paused", false) ? "paused, " + s : s;
}

struct IncidentsQuery {
  std::string state, severity, since = "30d";
  int limit = 1000;
  bool closed_untouched = false;
  bool as_json = false;
};

int cmd_incidents(const ApiClient& api, const IncidentsQuery& q) {
  if (q.closed_untouched) {
    json r = api.get("/api/v1/incidents/closed-untouched?since=" + url_encode(q.since));
    if (q.as_json) return print_json(r), 0;
    std::cout << text(r, "total") << " incident(s) auto-closed untouched since " << text(r, "since")
              << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& [kind, n] : r.value("by_kind", json::object()).items())
      rows.push_back({sanitize(kind), n.dump()});
    if (!rows.empty()) print_table({"KIND", "COUNT"}, rows);
    return 0;
  }
  std::string path = "/api/v1/incidents?limit=" + std::to_string(q.limit);
  if (!q.state.empty()) path += "&state=" + url_encode(q.state);
  if (!q.severity.empty()) path += "&severity=" + url_encode(q.severity);
  const json answer = api.get(path);
  const json& list = list_field(answer, "incidents");
  if (q.as_json) return print_json(list), 0;
  if (list.empty()) return std::cout << "No incidents.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& i : list)
    rows.push_back({"#" + text(i, "id"), text(i, "severity"), text(i, "state"), text(i, "title"),
                    text(i, "occurrences"), text(i, "owner"), text(i, "opened"),
                    sla_text(i.value("ack_sla", json())),
                    sla_text(i.value("resolve_sla", json()))});
  print_table(
      {"ID", "SEVERITY", "STATE", "TITLE", "SEEN", "OWNER", "OPENED", "ACK SLA", "RESOLVE SLA"},
      rows);
  return 0;
}

void print_incident(const json& i) {
  std::cout << "Incident #" << text(i, "id") << ": " << text(i, "title") << "\n"
            << "  severity:    " << text(i, "severity") << "   state: " << text(i, "state")
            << (i.value("pause_reason", "").empty()
                    ? ""
                    : "   SLA paused: " + sanitize(i.value("pause_reason", "")))
            << "\n"
            << "  kind:        " << text(i, "kind") << "   test: " << text(i, "test_id")
            << "   agent: " << text(i, "agent_id") << "   marker: " << text(i, "marker") << "\n"
            << "  owner:       " << text(i, "owner") << "   occurrences: " << text(i, "occurrences")
            << "\n"
            << "  opened:      " << text(i, "opened") << "   updated: " << text(i, "updated")
            << "\n"
            << "  acknowledge: " << sla_text(i.value("ack_sla", json()))
            << "   resolve: " << sla_text(i.value("resolve_sla", json())) << "\n";
  if (!i.value("resolution", "").empty())
    std::cout << "  resolution:  " << text(i, "resolution") << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : i.value("timeline", json::array())) {
    auto t = e.value("t", std::int64_t{0});
    rows.push_back(
        {tocsin::common::format_time(t), text(e, "actor"), text(e, "what"), text(e, "detail")});
  }
  std::cout << "\n";
  print_table({"WHEN", "WHO", "WHAT", "DETAIL"}, rows);
}

// ---- notifications --------------------------------------------------------------------------

int cmd_notifications(const ApiClient& api, const std::string& state, int limit, bool as_json) {
  std::string path = "/api/v1/notifications?limit=" + std::to_string(limit);
  if (!state.empty()) path += "&state=" + url_encode(state);
  const json answer = api.get(path);
  const json& list = list_field(answer, "notifications");
  if (as_json) return print_json(list), 0;
  if (list.empty()) return std::cout << "No notifications.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : list) {
    std::string about = text(d, "kind") == "incident" ? "#" + text(d, "incident_id") + " " + text(d, "event")
                                                      : text(d, "event");
    std::string when = text(d, "state") == "sent"      ? text(d, "sent")
                       : text(d, "state") == "pending" ? "next " + text(d, "next_attempt")
                                                       : "";
    rows.push_back({text(d, "id"), text(d, "channel"), about, text(d, "state"), text(d, "attempts"),
                    when, text(d, "last_error")});
  }
  print_table({"ID", "CHANNEL", "ABOUT", "STATE", "TRIES", "WHEN", "LAST ERROR"}, rows);
  return 0;
}

struct IncidentAction {
  std::uint64_t id = 0;
  std::string arg;  // note text, owner or reason
};

int cmd_incident(const ApiClient& api, const std::string& action, const IncidentAction& a) {
  auto base = "/api/v1/incidents/" + std::to_string(a.id);
  json i;
  if (action == "show")
    i = api.get(base);
  else if (action == "ack")
    i = api.post(base + "/ack", json::object());
  else if (action == "note")
    i = api.post(base + "/note", {{"text", a.arg}});
  else if (action == "assign")
    i = api.post(base + "/assign", {{"owner", a.arg}});
  else
    i = api.post(base + "/resolve", {{"reason", a.arg}});
  print_incident(i);
  return 0;
}

// ---- commands -------------------------------------------------------------------------------

struct CommandArgs {
  std::string agent, restart, reason, recheck_test, recheck_after, state, deny_reason;
  std::uint64_t id = 0;
  bool as_json = false;
};

void print_commands(const json& list) {
  if (list.empty()) {
    std::cout << "No commands.\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : list) {
    std::string approvers;
    for (const auto& a : c.value("approvals", json::array()))
      approvers += (approvers.empty() ? "" : ",") + sanitize(a.value("who", ""));
    rows.push_back({text(c, "id"), text(c, "agent_id"), text(c, "kind") + " " + text(c, "target"),
                    text(c, "state"), text(c, "requester"), approvers.empty() ? "-" : approvers,
                    text(c, "requested"), text(c, "outcome_reason")});
  }
  print_table({"ID", "AGENT", "ACTION", "STATE", "REQUESTER", "APPROVED BY", "REQUESTED", "OUTCOME"},
              rows);
}

void print_command(const json& c) {
  std::cout << "Command #" << text(c, "id") << ": " << text(c, "kind") << " " << text(c, "target")
            << " on " << text(c, "agent_id") << "\n  state: " << text(c, "state")
            << "   requested by " << text(c, "requester") << " at " << text(c, "requested")
            << "\n  reason: " << text(c, "reason") << "\n";
  if (!c.value("expires", json()).is_null())
    std::cout << "  signed command expires: " << text(c, "expires") << "\n";
  if (c.value("state", "") == "awaiting_approval")
    std::cout << "  waiting for approval until " << text(c, "request_expires") << "\n";
}

int cmd_commands(const ApiClient& api, const std::string& verb, const CommandArgs& a) {
  if (verb == "request") {
    json body = {{"agent", a.agent}, {"kind", "restart_service"}, {"target", a.restart},
                 {"reason", a.reason}};
    if (!a.recheck_test.empty()) body["recheck_test"] = a.recheck_test;
    if (!a.recheck_after.empty()) body["recheck_after"] = a.recheck_after;
    json c = api.post("/api/v1/commands", body);
    if (a.as_json) return print_json(c), 0;
    print_command(c);
    std::cout << "An approver other than you must run: tocsin approve " << text(c, "id") << "\n";
    return 0;
  }
  if (verb == "approve" || verb == "deny") {
    auto path = "/api/v1/commands/" + std::to_string(a.id) + "/" + verb;
    json c = api.post(path, verb == "deny" ? json{{"reason", a.deny_reason}} : json::object());
    if (a.as_json) return print_json(c), 0;
    print_command(c);
    return 0;
  }
  std::string path = "/api/v1/commands?limit=1000";
  std::string state = verb == "approvals" ? "awaiting_approval" : a.state;
  if (!state.empty()) path += "&state=" + url_encode(state);
  json answer = api.get(path);
  const json& list = list_field(answer, "commands");
  if (a.as_json) return print_json(list), 0;
  print_commands(list);
  return 0;
}

// ---- audit log ------------------------------------------------------------------------------

int cmd_audit_verify(const ApiClient& api, bool as_json) {
  json r = api.get("/api/v1/audit/verify");
  if (as_json) print_json(r);
  bool ok = r.value("ok", false);
  if (!as_json && ok)
    std::cout << "audit log intact: " << text(r, "entries_checked") << " entries, head seq "
              << text(r, "head_seq") << ", key " << text(r, "key_fingerprint") << "\n";
  if (!as_json && !ok) {
    std::cout << "audit log NOT intact (" << text(r, "entries_checked") << " entries checked):\n";
    for (const auto& p : list_field(r, "problems"))
      std::cout << "  seq " << text(p, "seq") << ": " << text(p, "reason") << "\n";
    if (r.value("problems_truncated", false)) std::cout << "  (more problems not shown)\n";
  }
  return ok ? 0 : kExitAuditBroken;
}

// JSON lines for a SIEM: one entry per line, paging through the API until it runs dry.
int cmd_audit_export(const ApiClient& api, const std::string& since) {
  constexpr int kPage = 1000;
  std::uint64_t from = 1;
  for (;;) {
    json r = api.get("/api/v1/audit/export?since=" + url_encode(since) +
                     "&from_seq=" + std::to_string(from) + "&limit=" + std::to_string(kPage));
    const json& list = list_field(r, "entries");
    for (const auto& e : list)
      std::cout << e.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    auto next = r.value("next_from_seq", from);
    if (list.size() < static_cast<std::size_t>(kPage) || next <= from) break;
    from = next;
  }
  std::cout.flush();
  return std::cout ? 0 : kExitApiError;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tocsin: administer a Tocsin collector through its HTTPS API."};
  app.set_version_flag("--version", std::string(TOCSIN_VERSION));
  app.require_subcommand(1);
  app.fallthrough();  // global options are accepted after the subcommand too

  GlobalOptions g;
  app.add_option("--server", g.server, "Collector API base URL")
      ->envname("TOCSIN_SERVER")
      ->check(check_https)
      ->capture_default_str();
  app.add_option("--token-file", g.token_file,
                 "File holding the API token (e.g. <data dir>/admin.token)")
      ->envname("TOCSIN_TOKEN_FILE");
  app.add_option("--ca", g.ca,
                 "Collector CA certificate to pin (default: ca.pem beside the token file)");
  app.add_option("--timeout", g.timeout_s, "Seconds to wait for the collector's answer")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();

  auto* token = app.add_subcommand("token", "Enrollment tokens for new agents (admin)");
  token->require_subcommand(1);
  auto* token_create = token->add_subcommand(
      "create",
      "Create a single-use enrollment token; the token is printed alone on the last line");
  std::string ttl = "1h";
  token_create->add_option("--ttl", ttl, "How long the token stays valid (30m, 1h, 2d, ...)")
      ->capture_default_str();

  auto* api_token = app.add_subcommand("api-token", "API tokens for people and scripts (admin)");
  api_token->require_subcommand(1);
  auto* api_token_create = api_token->add_subcommand(
      "create", "Create an API token; the token is printed alone on the last line");
  std::string name, role;
  api_token_create->add_option("--name", name, "Who or what the token is for")->required();
  api_token_create
      ->add_option("--role", role, "What the token may do: viewer, approver, operator or admin")
      ->required()
      ->check(CLI::IsMember({"viewer", "approver", "operator", "admin"}));

  auto* agents = app.add_subcommand("agents", "List enrolled agents (viewer)");
  bool agents_json = false;
  agents->add_flag("--json", agents_json, "Print the JSON array instead of a table");

  auto* results = app.add_subcommand(
      "results", "List received results and re-verify their signatures (viewer)");
  ResultsQuery rq;
  results->add_option("--agent", rq.agent, "Only results of this agent id (default: all agents)");
  results
      ->add_option("--since", rq.since, "How far back: a duration (1h, 7d) or an RFC 3339 UTC time")
      ->capture_default_str();
  results->add_option("--limit", rq.limit, "At most this many results, oldest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  results->add_flag("--json", rq.as_json, "Print the JSON array instead of a table");

  auto* events = app.add_subcommand(
      "security-events", "List security events: forged signatures, replays, bad tokens (viewer)");
  std::string ev_since = "7d";
  int ev_limit = 1000;
  bool ev_json = false;
  events
      ->add_option("--since", ev_since, "How far back: a duration (1h, 7d) or an RFC 3339 UTC time")
      ->capture_default_str();
  events->add_option("--limit", ev_limit, "At most this many events, oldest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  events->add_flag("--json", ev_json, "Print the JSON array instead of a table");

  auto* runs = app.add_subcommand(
      "runs",
      "Probe runs with their prevention verdict, detection state and time to alert (viewer)");
  RunsQuery runq;
  runs->add_option("--since", runq.since,
                   "Runs whose action is at most this old: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();
  runs->add_option("--state", runq.state, "Only runs in this detection state")
      ->check(CLI::IsMember({"pending", "alerted", "late", "logged", "missed", "not_expected"}));
  runs->add_option("--agent", runq.agent, "Only runs of this agent id");
  runs->add_option("--test", runq.test, "Only runs of this test id");
  runs->add_option("--limit", runq.limit, "At most this many runs, oldest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  runs->add_flag("--json", runq.as_json, "Print the JSON array (all five timestamps) instead");

  auto* latency = app.add_subcommand(
      "latency", "Alert coverage and time-to-alert per test, technique, host or source (viewer)");
  std::string lat_since = "7d", lat_by = "test", lat_format = "table";
  latency->add_option("--since", lat_since, "How far back: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();
  latency->add_option("--by", lat_by, "Group by test, technique, host or source")
      ->check(CLI::IsMember({"test", "technique", "host", "source"}))
      ->capture_default_str();
  latency->add_option("--format", lat_format, "table, json or csv")
      ->check(CLI::IsMember({"table", "json", "csv"}))
      ->capture_default_str();

  auto* sources = app.add_subcommand(
      "alert-sources", "Alert sources with accepted, matched and rejected counts (viewer)");
  bool sources_json = false;
  sources->add_flag("--json", sources_json, "Print JSON instead of a table");

  auto* incidents = app.add_subcommand("incidents", "List incidents with their SLA state (viewer)");
  IncidentsQuery iq;
  incidents->add_option("--state", iq.state, "Only incidents in this state")
      ->check(CLI::IsMember({"open", "acknowledged", "resolved", "closed"}));
  incidents->add_option("--severity", iq.severity, "Only incidents of this severity")
      ->check(CLI::IsMember({"informational", "low", "medium", "high", "critical"}));
  incidents->add_option("--limit", iq.limit, "At most this many, newest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  incidents->add_flag("--closed-untouched", iq.closed_untouched,
                      "Count incidents auto-closed without anyone touching them, by kind");
  incidents
      ->add_option("--since", iq.since,
                   "With --closed-untouched: how far back (30d) or an RFC 3339 UTC time")
      ->capture_default_str();
  incidents->add_flag("--json", iq.as_json, "Print JSON instead of a table");

  auto* notifications = app.add_subcommand(
      "notifications", "Messages sent to the notification channels and their fate (viewer)");
  std::string nq_state;
  int nq_limit = 100;
  bool nq_json = false;
  notifications->add_option("--state", nq_state, "Only pending, sent or failed messages")
      ->check(CLI::IsMember({"pending", "sent", "failed"}));
  notifications->add_option("--limit", nq_limit, "At most this many, newest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  notifications->add_flag("--json", nq_json, "Print JSON instead of a table");

  auto* incident = app.add_subcommand(
      "incident", "Show one incident, or acknowledge, note, assign or resolve it (operator)");
  incident->require_subcommand(1);
  IncidentAction ia;
  std::vector<std::pair<std::string, CLI::App*>> incident_actions;
  for (auto [verb, help, arg_name] :
       {std::tuple{"show", "Show an incident and its timeline (viewer)", ""},
        {"ack", "Acknowledge an incident (stops its acknowledge timer)", ""},
        {"note", "Add a note (counts as triage)", "TEXT"},
        {"assign", "Make someone the owner", "USER"},
        {"resolve", "Resolve with a reason (it reopens if the failure recurs)", "REASON"}}) {
    auto* sub = incident->add_subcommand(verb, help);
    sub->add_option("N", ia.id, "Incident number")->required()->check(CLI::PositiveNumber);
    if (*arg_name) sub->add_option(arg_name, ia.arg, "")->required();
    incident_actions.emplace_back(verb, sub);
  }

  auto* audit = app.add_subcommand("audit", "The tamper-evident audit log (approver)");
  audit->require_subcommand(1);
  auto* audit_verify = audit->add_subcommand(
      "verify", "Check the whole audit chain; exit 0 when intact, 3 naming each problem");
  bool audit_json = false;
  audit_verify->add_flag("--json", audit_json, "Print the JSON answer instead");
  auto* audit_export =
      audit->add_subcommand("export", "Print audit entries as JSON lines (for a SIEM)");
  std::string audit_since = "7d";
  audit_export
      ->add_option("--since", audit_since, "How far back: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();

  CommandArgs ca;
  auto* command = app.add_subcommand("command", "Ask an agent to act (operator)");
  command->require_subcommand(1);
  auto* command_request = command->add_subcommand(
      "request", "Request a service restart; it runs once an approver other than you approves");
  command_request->add_option("--agent", ca.agent, "The agent's id")->required();
  command_request->add_option("--restart", ca.restart, "The service to restart (on the agent's allowlist)")
      ->required();
  command_request->add_option("--reason", ca.reason, "Why (shown to the approver, audited)");
  command_request->add_option("--recheck", ca.recheck_test, "A test the agent runs again afterwards");
  command_request->add_option("--recheck-after", ca.recheck_after, "When to run it, e.g. 180s");
  command_request->add_flag("--json", ca.as_json, "Print JSON");
  auto* commands_list = app.add_subcommand("commands", "Commands and their state (viewer)");
  commands_list->add_option("--state", ca.state, "Only this state")
      ->check(CLI::IsMember({"awaiting_approval", "approved", "delivered", "executed", "failed",
                             "refused", "denied", "expired"}));
  commands_list->add_flag("--json", ca.as_json, "Print JSON");
  auto* approvals = app.add_subcommand("approvals", "Commands waiting for approval (viewer)");
  approvals->add_flag("--json", ca.as_json, "Print JSON");
  auto* approve = app.add_subcommand("approve", "Approve a command (approver; not your own request)");
  approve->add_option("ID", ca.id, "Command number")->required()->check(CLI::PositiveNumber);
  approve->add_flag("--json", ca.as_json, "Print JSON");
  auto* deny = app.add_subcommand("deny", "Deny a command with a reason (approver)");
  deny->add_option("ID", ca.id, "Command number")->required()->check(CLI::PositiveNumber);
  deny->add_option("REASON", ca.deny_reason, "Why")->required();
  deny->add_flag("--json", ca.as_json, "Print JSON");
  std::vector<std::pair<std::string, CLI::App*>> command_verbs{
      {"request", command_request}, {"commands", commands_list}, {"approvals", approvals},
      {"approve", approve}, {"deny", deny}};

  for (auto* sub : {token_create, api_token_create, agents, results, events, runs, latency, sources,
                    incidents, incident, notifications, audit_verify, audit_export, command_request,
                    commands_list, approvals, approve, deny})
    sub->footer(
        "Global options (--server, --token-file, --ca, --timeout) may follow the "
        "subcommand; see tocsin --help.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  try {
    ApiClient api = make_client(g);
    if (*token_create) return cmd_token_create(api, ttl);
    if (*api_token_create) return cmd_api_token_create(api, name, role);
    if (*agents) return cmd_agents(api, agents_json);
    if (*results) return cmd_results(api, rq);
    if (*events) return cmd_security_events(api, ev_since, ev_limit, ev_json);
    if (*runs) return cmd_runs(api, runq);
    if (*latency) return cmd_latency(api, lat_since, lat_by, lat_format);
    if (*sources) return cmd_alert_sources(api, sources_json);
    if (*incidents) return cmd_incidents(api, iq);
    if (*notifications) return cmd_notifications(api, nq_state, nq_limit, nq_json);
    if (*audit_verify) return cmd_audit_verify(api, audit_json);
    if (*audit_export) return cmd_audit_export(api, audit_since);
    for (const auto& [verb, sub] : command_verbs)
      if (*sub) return cmd_commands(api, verb, ca);
    for (const auto& [verb, sub] : incident_actions)
      if (*sub) return cmd_incident(api, verb, ia);
    return kExitUsage;  // require_subcommand makes this unreachable
  } catch (const UsageError& e) {
    std::cerr << "tocsin: " << e.what() << "\n";
    return kExitUsage;
  } catch (const ApiError& e) {
    std::cerr << "tocsin: " << e.what();
    if (e.status != 0) std::cerr << " (HTTP " << e.status << ")";
    std::cerr << "\n";
    return kExitApiError;
  } catch (const std::exception& e) {
    std::cerr << "tocsin: " << e.what() << "\n";
    return kExitApiError;
  }
}
