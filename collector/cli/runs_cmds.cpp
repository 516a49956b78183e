// `tocsin` detection commands: probe runs, alert latency per group, alert sources.
#include <cstdio>
#include <iostream>
#include <memory>

#include "collector/cli/output.hpp"

namespace tocsin::collector::cli {

namespace {

// What the clock says about a run's time to alert: an anomaly (negative time to alert), a run
// decided without ever learning its agent's offset, a stepped agent clock, an unsynchronised
// one, or the error bound.
std::string run_clock_text(const json& r) {
  if (r.value("clock_anomaly", false)) return "ANOMALY";
  if (r.value("clock_unresolved", false)) return "UNRESOLVED";
  if (r.value("clock_stepped", false)) return "STEPPED";
  if (!r.value("clock_synced", true)) return "UNSYNCED";
  return bound_text(r.value("error_bound_ms", json()));
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
                    text(r, "marker"), text(r, "verdict"), state,
                    ms_text(r.value("time_to_alert_ms", json())), run_clock_text(r),
                    alert.is_object() ? text(alert, "source") : "-",
                    alert.is_object() ? text(alert, "match_reason") : "-"});
  }
  print_table({"ACTION (CORRECTED)", "TEST", "HOST", "MARKER", "PREVENTION", "DETECTION",
               "TIME TO ALERT", "CLOCK", "SOURCE", "MATCH"},
              rows);
  return 0;
}

std::string pct_text(const json& p, const char* key) {
  return p.is_object() ? ms_text(p.value(key, json())) : "-";
}

std::string pct_cell(const json& p, const char* key) {
  return p.is_object() ? number_cell(p.value(key, json())) : "";
}

int print_latency_csv(const json& groups, const std::string& by) {
  std::vector<std::string> headers = {by,
                                      "runs",
                                      "alerted",
                                      "late",
                                      "logged",
                                      "missed",
                                      "pending",
                                      "coverage_pct",
                                      "time_to_alert_p50_ms",
                                      "time_to_alert_p95_ms",
                                      "time_to_alert_max_ms",
                                      "max_error_ms",
                                      "pipeline_lag_p50_ms",
                                      "rule_latency_p50_ms",
                                      "delivery_lag_p50_ms",
                                      "clock_anomalies"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : groups) {
    const json tta = g.value("time_to_alert", json());
    std::vector<std::string> row{g.value("group", json()).is_string() ? sanitize(g["group"]) : ""};
    for (const char* k : {"runs", "alerted", "late", "logged", "missed", "pending", "coverage_pct"})
      row.push_back(number_cell(g.value(k, json())));
    for (const char* k : {"p50_ms", "p95_ms", "max_ms"}) row.push_back(pct_cell(tta, k));
    row.push_back(number_cell(g.value("max_error_ms", json())));
    for (const char* k : {"pipeline_lag", "rule_latency", "delivery_lag"})
      row.push_back(pct_cell(g.value(k, json()), "p50_ms"));
    row.push_back(number_cell(g.value("clock_anomalies", json())));
    rows.push_back(std::move(row));
  }
  print_csv(headers, rows);
  return 0;
}

int cmd_latency(const ApiClient& api, const std::string& since, const std::string& by,
                const std::string& format) {
  const json answer =
      api.get("/api/v1/latency?since=" + url_encode(since) + "&by=" + url_encode(by));
  const json& groups = list_field(answer, "groups");
  if (format == "json") return print_json(answer), 0;
  if (format == "csv") return print_latency_csv(groups, by);
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
                                      "CLOCK ANOMALIES",
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
                    bound_text(g.value("max_error_ms", json())), text(g, "clock_anomalies"),
                    pct_text(g.value("pipeline_lag", json()), "p50_ms"),
                    pct_text(g.value("rule_latency", json()), "p50_ms"),
                    pct_text(g.value("delivery_lag", json()), "p50_ms")});
  }
  if (groups.empty())
    return std::cout << "No runs that expect an alert since " << since_text(since) << ".\n", 0;
  print_table(headers, rows);
  std::cout << "\nTime to alert = arrival at the collector - the action on the agent, corrected "
               "by the agent's measured clock offset; ± is the largest error bound. Runs with a "
               "clock anomaly are counted but left out of the percentiles.\n";
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

}  // namespace

void add_runs_commands(CLI::App& app, Commands& out) {
  auto* runs = app.add_subcommand(
      "runs",
      "Probe runs with their prevention verdict, detection state and time to alert (viewer)");
  auto q = std::make_shared<RunsQuery>();
  runs->add_option("--since", q->since,
                   "Runs whose action is at most this old: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();
  runs->add_option("--state", q->state, "Only runs in this detection state")
      ->check(CLI::IsMember({"pending", "alerted", "late", "logged", "missed", "not_expected"}));
  runs->add_option("--agent", q->agent, "Only runs of this agent id");
  runs->add_option("--test", q->test, "Only runs of this test id");
  runs->add_option("--limit", q->limit, "At most this many runs, oldest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  runs->add_flag("--json", q->as_json, "Print the JSON array (all five timestamps) instead");
  out.push_back({runs, [q](const ApiClient& api) { return cmd_runs(api, *q); }});

  auto* latency = app.add_subcommand(
      "latency", "Alert coverage and time-to-alert per test, technique, host or source (viewer)");
  struct Lat {
    std::string since = "7d", by = "test", format = "table";
  };
  auto lat = std::make_shared<Lat>();
  latency
      ->add_option("--since", lat->since, "How far back: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();
  latency->add_option("--by", lat->by, "Group by test, technique, host or source")
      ->check(CLI::IsMember({"test", "technique", "host", "source"}))
      ->capture_default_str();
  latency
      ->add_option("--format", lat->format,
                   "table, json or csv (numbers in ms, unit in the header)")
      ->check(CLI::IsMember({"table", "json", "csv"}))
      ->capture_default_str();
  out.push_back({latency, [lat](const ApiClient& api) {
                   return cmd_latency(api, lat->since, lat->by, lat->format);
                 }});

  auto* sources = app.add_subcommand(
      "alert-sources", "Alert sources with accepted, matched and rejected counts (viewer)");
  auto sources_json = std::make_shared<bool>(false);
  sources->add_flag("--json", *sources_json, "Print JSON instead of a table");
  out.push_back({sources, [sources_json](const ApiClient& api) {
                   return cmd_alert_sources(api, *sources_json);
                 }});
}

}  // namespace tocsin::collector::cli
