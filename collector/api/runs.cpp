// Test runs and whether an alert followed, detection latency, detection events, alert sources.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/alert_sources.hpp"
#include "collector/api/handlers.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/runs/report.hpp"
#include "common/clock.hpp"

namespace tocsin::collector::detail::api {

namespace {

json ms_or_null(bool known, std::int64_t ns) {
  return known ? json(ns_to_ms(ns)) : json(nullptr);
}

json run_json(const Run& r) {
  bool has_alert = !r.alert_key.empty();
  json j = {{"marker", r.marker},
            {"agent_id", r.agent_id},
            {"seq", r.seq},
            {"hostname", r.hostname},
            {"test_id", r.test_id},
            {"probe", r.probe},
            {"technique", r.technique},
            {"verdict", r.verdict},
            {"reason", r.reason},
            {"target", r.target},
            {"state", state_name(r.state)},
            {"overdue", r.overdue},
            {"state_changed_at", time_or_null(r.state_changed_ns)},
            {"alert_within_ms", ms_or_null(r.alert_within_ns > 0, r.alert_within_ns)},
            {"action_time", time_or_null(r.action_ns)},
            {"action_ns", r.action_ns},
            {"agent_started_ns", r.agent_started_ns},
            {"clock_offset_ms", ns_to_ms(r.clock_offset_ns)},
            {"clock_synced", r.clock_synced},
            // Made before the agent's first exchange: re-corrected from a later offset
            // (resolved), still waiting for one (held: no decision before the hold deadline),
            // or decided at that deadline without one (unresolved: the bound is unknown).
            {"clock_resolved", r.clock_resolved},
            {"clock_held", r.clock_held()},
            {"clock_unresolved", r.clock_unresolved},
            {"clock_stepped", r.clock_stepped},
            // The agent process's frame and the steps it had seen ("" and 0 from older agents).
            {"clock_frame", r.clock_frame},
            {"clock_steps", r.clock_steps},
            {"error_bound_ms", ms_or_null(r.action_error_ns >= 0, r.action_error_ns)},
            {"action_error_ns", r.action_error_ns},
            {"received_at", time_or_null(r.received_ns)},
            {"alert_count", r.alert_count},
            {"time_to_alert_ms", ms_or_null(has_alert, r.time_to_alert_ns)},
            {"time_to_alert_ns", has_alert ? json(r.time_to_alert_ns) : json(nullptr)},
            {"clock_anomaly", r.clock_anomaly}};
  if (has_alert) {
    auto before_rule = r.ingest_ns ? r.ingest_ns : r.event_ns;
    j["alert"] = {{"source", r.alert_source},
                  {"rule", r.alert_rule},
                  {"key", r.alert_key},
                  {"match_reason", r.match_reason},
                  {"confidence", r.confidence},
                  {"siem_event_time", time_or_null(r.event_ns)},
                  {"siem_ingest_time", time_or_null(r.ingest_ns)},
                  {"alert_created_time", time_or_null(r.created_ns)},
                  {"arrival_time", time_or_null(r.arrival_ns)},
                  {"arrival_ns", r.arrival_ns}};
    // Each figure with the resolution of the SIEM timestamps it comes from: CrowdSec writes
    // whole seconds, so its rule latency is only known to within a second either way.
    auto res_ms = [](bool known, std::int64_t res) { return ms_or_null(known, res); };
    bool has_rule = r.created_ns && before_rule;
    auto rule_res =
        has_rule ? std::max(time_resolution_ns(r.created_ns), time_resolution_ns(before_rule)) : 0;
    j["pipeline_lag_ms"] = ms_or_null(r.ingest_ns != 0, r.ingest_ns - r.action_ns);
    j["pipeline_lag_resolution_ms"] = res_ms(r.ingest_ns != 0, time_resolution_ns(r.ingest_ns));
    j["rule_latency_ms"] = ms_or_null(has_rule, r.created_ns - before_rule);
    j["rule_latency_resolution_ms"] = res_ms(has_rule, rule_res);
    // Negative beyond the resolution: the SIEM's own clocks disagree (not ours to correct).
    j["rule_latency_anomaly"] = has_rule && r.created_ns - before_rule < -rule_res;
    j["delivery_lag_ms"] = ms_or_null(r.created_ns != 0, r.arrival_ns - r.created_ns);
    j["delivery_lag_resolution_ms"] = res_ms(r.created_ns != 0, time_resolution_ns(r.created_ns));
  } else {
    j["alert"] = nullptr;
  }
  j["logged"] = r.logged_key.empty() ? json(nullptr)
                                     : json{{"source", r.logged_source},
                                            {"key", r.logged_key},
                                            {"siem_event_time", time_or_null(r.logged_event_ns)},
                                            {"siem_ingest_time", time_or_null(r.logged_ingest_ns)},
                                            {"arrival_time", time_or_null(r.logged_arrival_ns)}};
  return j;
}

constexpr std::size_t kMaxReportRuns = 2'000'000;

json percentiles_json(const Percentiles& p) {
  if (p.count == 0) return nullptr;
  json j = {{"count", p.count},
            {"p50_ms", ns_to_ms(p.p50)},
            {"p95_ms", ns_to_ms(p.p95)},
            {"p99_ms", ns_to_ms(p.p99)},
            {"max_ms", ns_to_ms(p.max)}};
  if (p.resolution_ns > 0) j["resolution_ms"] = ns_to_ms(p.resolution_ns);
  return j;
}

}  // namespace

json get_runs(State& st, const Params& p) {
  std::int64_t since = since_param(p, "1h");
  std::size_t limit = limit_param(p);
  auto state_text = param(p, "state", "");
  std::optional<DetectionState> state;
  if (!state_text.empty()) {
    state = parse_state(state_text);
    if (!state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + state_text +
                          "' (use pending, alerted, late, logged, missed, not_expected)");
  }
  auto agent = param(p, "agent", "");
  auto test = param(p, "test", "");
  auto runs = list_runs(st.store, since, INT64_MAX, limit, [&](const Run& r) {
    return (!state || r.state == *state) && (agent.empty() || r.agent_id == agent) &&
           (test.empty() || r.test_id == test);
  });
  json list = json::array();
  for (const auto& r : runs) list.push_back(run_json(r));
  return {{"runs", std::move(list)}};
}

json get_latency(State& st, const Params& p) {
  std::int64_t since = since_param(p, "7d");
  auto by_text = param(p, "by", "test");
  auto by = parse_group_by(by_text);
  if (!by)
    throw HttpError(http::status::bad_request,
                    "unknown grouping '" + by_text + "' (use test, technique, host, source)");
  auto runs = list_runs(st.store, since, INT64_MAX, kMaxReportRuns);
  json rows = json::array();
  for (const auto& r : latency_report(runs, *by))
    rows.push_back({{"group", r.group},
                    {"runs", r.runs},
                    {"alerted", r.alerted},
                    {"late", r.late},
                    {"logged", r.logged},
                    {"missed", r.missed},
                    {"pending", r.pending},
                    {"coverage_pct", r.coverage_pct},
                    {"time_to_alert", percentiles_json(r.time_to_alert)},
                    {"max_error_ms", ns_to_ms(r.max_error_ns)},
                    {"clock_anomalies", r.clock_anomalies},
                    {"clock_held", r.clock_held},
                    {"clock_unresolved", r.clock_unresolved},
                    {"clock_stepped", r.clock_stepped},
                    {"pipeline_lag", percentiles_json(r.pipeline_lag)},
                    {"rule_latency", percentiles_json(r.rule_latency)},
                    {"delivery_lag", percentiles_json(r.delivery_lag)}});
  return {{"by", by_text},
          {"since", common::format_time(since)},
          {"truncated", runs.size() >= kMaxReportRuns},
          {"groups", std::move(rows)}};
}

json get_detection_events(State& st, const Params& p) {
  std::uint64_t from = 1;
  auto text = param(p, "from_seq", "1");
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
  from = std::stoull(text);
  json list = json::array();
  for (const auto& e : list_detection_events(st.store, from, limit_param(p)))
    list.push_back({{"seq", e.seq},
                    {"time", common::format_time(e.time_ns)},
                    {"marker", e.marker},
                    {"agent_id", e.agent_id},
                    {"test_id", e.test_id},
                    {"from", e.from},
                    {"to", e.to},
                    {"detail", e.detail},
                    {"target", e.target}});
  return {{"events", std::move(list)}};
}

json get_alert_sources(State& st, const Params&) {
  json list = json::array();
  std::map<std::string, SourceCounters> counters;
  if (st.alerting.correlator)
    for (auto& c : st.alerting.correlator->counters()) counters[c.source] = c;
  auto entry = [&](const std::string& name, const std::string& type) {
    auto& c = counters[name];
    json rejected = json::object();
    for (const auto& [reason, n] : c.rejected) rejected[reason] = n;
    return json{{"name", name},
                {"type", type},
                {"accepted", c.accepted},
                {"duplicates", c.duplicates},
                {"matched", c.matched},
                {"waiting_for_run", c.orphaned},
                {"markers_over_cap", c.markers_over_cap},
                {"rejected", rejected},
                {"last_rejection", c.last_rejection},
                {"last_alert", time_or_null(c.last_alert_ns)}};
  };
  if (st.alerting.sources)
    for (const auto& s : *st.alerting.sources) {
      list.push_back(entry(s.name, source_type_name(s.type)));
      counters.erase(s.name);
    }
  for (const auto& [name, c] : counters) list.push_back(entry(name, "(unconfigured)"));
  json stored = nullptr;
  if (st.alerting.correlator)
    stored = percentiles_json(percentiles(st.alerting.correlator->store_latencies()));
  return {{"sources", std::move(list)},
          {"pending_runs", st.alerting.correlator ? st.alerting.correlator->pending_runs() : 0},
          {"arrival_to_stored", stored}};
}

}  // namespace tocsin::collector::detail::api
