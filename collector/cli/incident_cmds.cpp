// `tocsin` incident commands: the list, one incident and the human actions on one or many,
// and the notifications sent about them.
#include <cstdlib>
#include <iostream>
#include <memory>
#include <tuple>

#include "collector/cli/output.hpp"
#include "common/clock.hpp"

namespace tocsin::collector::cli {

namespace {

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

// A JSON list of strings or numbers as "a, b"; "-" when absent or empty.
std::string list_text(const json& i, const char* key, const char* prefix = "") {
  const json& v = i.value(key, json());
  if (!v.is_array() || v.empty()) return "-";
  std::string out;
  for (const auto& x : v)
    out += (out.empty() ? "" : ", ") + std::string(prefix) +
           sanitize(x.is_string() ? x.get<std::string>() : x.dump());
  return out;
}

struct IncidentsQuery {
  std::string state, severity, agent, test, kind, since = "30d";
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
  for (const auto& [key, value] : {std::pair{"state", &q.state},
                                   {"severity", &q.severity},
                                   {"agent", &q.agent},
                                   {"test", &q.test},
                                   {"kind", &q.kind}})
    if (!value->empty()) path += std::string("&") + key + "=" + url_encode(*value);
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
  if (i.contains("facets")) std::cout << "  failing:     " << list_text(i, "facets") << "\n";
  if (i.contains("silenced_by"))
    std::cout << "  silenced by: " << list_text(i, "silenced_by", "silence ") << "\n";
  if (!i.value("resolution", "").empty())
    std::cout << "  resolution:  " << text(i, "resolution") << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : i.value("timeline", json::array())) {
    auto t = e.value("t", std::int64_t{0});
    rows.push_back({common::format_time(t), text(e, "actor"), text(e, "what"), text(e, "detail")});
  }
  std::cout << "\n";
  print_table({"WHEN", "WHO", "WHAT", "DETAIL"}, rows);
}

int cmd_notifications(const ApiClient& api, const std::string& state, int limit, bool as_json) {
  std::string path = "/api/v1/notifications?limit=" + std::to_string(limit);
  if (!state.empty()) path += "&state=" + url_encode(state);
  const json answer = api.get(path);
  const json& list = list_field(answer, "notifications");
  if (as_json) return print_json(list), 0;
  if (list.empty()) return std::cout << "No notifications.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : list) {
    std::string about = text(d, "kind") == "incident"
                            ? "#" + text(d, "incident_id") + " " + text(d, "event")
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

// One verb on one or more incidents: `args` are the ids, then the text when the verb takes one.
struct IncidentAction {
  std::string verb, body_key;  // body_key: "text", "owner", "reason" or "" (no text)
  std::vector<std::string> args;
  bool as_json = false;
};

json act_on(const ApiClient& api, const IncidentAction& a, std::uint64_t id,
            const std::string& arg) {
  auto base = "/api/v1/incidents/" + std::to_string(id);
  if (a.verb == "show") return api.get(base);
  json body = a.body_key.empty() ? json::object() : json{{a.body_key, arg}};
  return api.post(base + "/" + a.verb, body);
}

// The ids and the text of an action; a UsageError naming the first bad id.
std::pair<std::vector<std::uint64_t>, std::string> split_args(const IncidentAction& a) {
  std::vector<std::string> id_args = a.args;
  std::string arg;
  if (!a.body_key.empty()) {
    if (id_args.size() < 2)
      throw UsageError("incident " + a.verb + " needs one or more incident ids and then the " +
                       a.body_key);
    arg = id_args.back();
    id_args.pop_back();
    // `incident close 12 13` would otherwise close #12 for good with the reason "13".
    if (!arg.empty() && arg.find_first_not_of("0123456789") == std::string::npos)
      throw UsageError("incident " + a.verb + ": the last word '" + arg +
                       "' looks like an incident id, but it is taken as the " + a.body_key +
                       "; give the " + a.body_key + " last, in quotes");
  }
  std::vector<std::uint64_t> ids;
  for (const auto& t : id_args) ids.push_back(parse_id("incident id", t));
  return {std::move(ids), std::move(arg)};
}

int cmd_incident(const ApiClient& api, const IncidentAction& a) {
  auto [ids, arg] = split_args(a);
  if (ids.size() == 1) {  // one incident: its whole card, and errors as for any command
    json i = act_on(api, a, ids[0], arg);
    if (a.as_json) return print_json(i), 0;
    print_incident(i);
    return 0;
  }
  int failed = 0;
  json all = json::array();
  for (auto id : ids) {
    try {
      json i = act_on(api, a, id, arg);
      if (a.as_json) {
        all.push_back(i);
      } else if (a.verb == "show") {
        print_incident(i);
        std::cout << "\n";
      } else {
        std::cout << "#" << id << ": " << a.verb << " done, now " << text(i, "state") << "\n";
      }
    } catch (const ApiError& e) {
      ++failed;
      std::string why = std::string(e.what()) +
                        (e.status ? " (HTTP " + std::to_string(e.status) + ")" : std::string());
      if (a.as_json)
        all.push_back({{"id", id}, {"error", why}});
      else
        std::cout << "#" << id << ": FAILED: " << sanitize(why) << "\n";
    }
  }
  if (a.as_json) print_json(all);
  if (failed) std::cerr << "tocsin: " << failed << " of " << ids.size() << " incident(s) failed\n";
  return failed ? kExitApiError : 0;
}

}  // namespace

void add_incident_commands(CLI::App& app, Commands& out) {
  auto* incidents = app.add_subcommand("incidents", "List incidents with their SLA state (viewer)");
  auto iq = std::make_shared<IncidentsQuery>();
  incidents->add_option("--state", iq->state, "Only incidents in this state")
      ->check(CLI::IsMember({"open", "acknowledged", "resolved", "closed"}));
  incidents->add_option("--severity", iq->severity, "Only incidents of this severity")
      ->check(CLI::IsMember({"informational", "low", "medium", "high", "critical"}));
  incidents->add_option("--agent", iq->agent, "Only incidents about this agent id");
  incidents->add_option("--test", iq->test, "Only incidents about this test id");
  incidents->add_option("--kind", iq->kind,
                        "Only incidents of this kind (prevention_failed, detection_missed, ...)");
  incidents->add_option("--limit", iq->limit, "At most this many, newest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  incidents->add_flag("--closed-untouched", iq->closed_untouched,
                      "Count incidents auto-closed without anyone touching them, by kind");
  incidents
      ->add_option("--since", iq->since,
                   "With --closed-untouched: how far back (30d) or an RFC 3339 UTC time")
      ->capture_default_str();
  incidents->add_flag("--json", iq->as_json, "Print JSON instead of a table");
  out.push_back({incidents, [iq](const ApiClient& api) { return cmd_incidents(api, *iq); }});

  auto* notifications = app.add_subcommand(
      "notifications", "Messages sent to the notification channels and their fate (viewer)");
  struct Nq {
    std::string state;
    int limit = 100;
    bool as_json = false;
  };
  auto nq = std::make_shared<Nq>();
  notifications->add_option("--state", nq->state, "Only pending, sent or failed messages")
      ->check(CLI::IsMember({"pending", "sent", "failed"}));
  notifications->add_option("--limit", nq->limit, "At most this many, newest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  notifications->add_flag("--json", nq->as_json, "Print JSON instead of a table");
  out.push_back({notifications, [nq](const ApiClient& api) {
                   return cmd_notifications(api, nq->state, nq->limit, nq->as_json);
                 }});

  auto* incident = app.add_subcommand(
      "incident",
      "Show incidents, or acknowledge, note, assign, resolve, close, pause or resume them "
      "(operator); each verb takes one or more ids");
  incident->require_subcommand(1);
  for (auto [verb, help, body_key] :
       {std::tuple{"show", "Show incidents and their timelines (viewer): N...", ""},
        {"ack", "Acknowledge incidents (stops the acknowledge timer): N...", ""},
        {"note", "Add a note (counts as triage): N... TEXT", "text"},
        {"assign", "Make someone the owner: N... USER", "owner"},
        {"resolve", "Resolve with a reason (reopens if the failure recurs): N... REASON", "reason"},
        {"close", "Close for good with a reason (never reopens): N... REASON", "reason"},
        {"pause", "Pause the SLA timers with a reason (e.g. waiting on a vendor): N... REASON",
         "reason"},
        {"resume", "Resume paused SLA timers: N...", ""}}) {
    auto* sub = incident->add_subcommand(verb, help);
    auto a = std::make_shared<IncidentAction>();
    a->verb = verb;
    a->body_key = body_key;
    sub->add_option("ARGS", a->args,
                    *body_key ? std::string("Incident numbers, then the ") + body_key
                              : std::string("Incident numbers"))
        ->required();
    sub->add_flag("--json", a->as_json, "Print JSON");
    // Bad ids are usage errors, found before any token or server is needed.
    sub->parse_complete_callback([a] {
      try {
        split_args(*a);
      } catch (const UsageError& e) {
        throw CLI::ValidationError(e.what());
      }
    });
    out.push_back({sub, [a](const ApiClient& api) { return cmd_incident(api, *a); }});
  }
}

}  // namespace tocsin::collector::cli
