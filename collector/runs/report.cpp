#include "collector/runs/report.hpp"

#include <algorithm>
#include <cmath>
#include <map>

namespace tocsin::collector {

std::optional<GroupBy> parse_group_by(const std::string& s) {
  if (s == "test") return GroupBy::test;
  if (s == "technique") return GroupBy::technique;
  if (s == "host") return GroupBy::host;
  if (s == "source") return GroupBy::source;
  return std::nullopt;
}

Percentiles percentiles(std::vector<std::int64_t> v) {
  Percentiles p;
  p.count = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto rank = [&](double q) {
    auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
  };
  p.p50 = rank(0.50);
  p.p95 = rank(0.95);
  p.p99 = rank(0.99);
  p.max = v.back();
  return p;
}

namespace {

std::string group_of(const Run& r, GroupBy by) {
  std::string g;
  switch (by) {
    case GroupBy::test:
      g = r.test_id;
      break;
    case GroupBy::technique:
      g = r.technique;
      break;
    case GroupBy::host:
      g = r.hostname;
      break;
    case GroupBy::source:
      g = r.alert_source;
      break;
  }
  return g.empty() ? "(none)" : g;
}

struct Acc {
  LatencyRow row;
  std::vector<std::int64_t> tta, pipeline, rule, delivery;
};

void add(Acc& a, const Run& r) {
  auto& row = a.row;
  ++row.runs;
  switch (r.state) {
    case DetectionState::alerted:
      ++row.alerted;
      break;
    case DetectionState::late:
      ++row.late;
      break;
    case DetectionState::logged:
      ++row.logged;
      break;
    case DetectionState::missed:
      ++row.missed;
      break;
    default:
      ++row.pending;
      break;
  }
  if (r.alert_key.empty()) return;
  a.tta.push_back(r.time_to_alert_ns);
  row.max_error_ns = std::max(row.max_error_ns, r.action_error_ns);
  if (r.clock_anomaly) ++row.clock_anomalies;
  if (r.ingest_ns) a.pipeline.push_back(r.ingest_ns - r.action_ns);
  auto before_rule = r.ingest_ns ? r.ingest_ns : r.event_ns;
  if (r.created_ns && before_rule) a.rule.push_back(r.created_ns - before_rule);
  if (r.created_ns) a.delivery.push_back(r.arrival_ns - r.created_ns);
}

}  // namespace

std::vector<LatencyRow> latency_report(const std::vector<Run>& runs, GroupBy by) {
  std::map<std::string, Acc> groups;
  for (const auto& r : runs) {
    if (r.state == DetectionState::not_expected) continue;
    auto& a = groups[group_of(r, by)];
    a.row.group = group_of(r, by);
    add(a, r);
  }
  std::vector<LatencyRow> out;
  for (auto& [name, a] : groups) {
    auto& row = a.row;
    auto decided = row.runs - row.pending;
    row.coverage_pct =
        decided ? 100.0 * static_cast<double>(row.alerted + row.late) / static_cast<double>(decided)
                : 0.0;
    row.time_to_alert = percentiles(std::move(a.tta));
    row.pipeline_lag = percentiles(std::move(a.pipeline));
    row.rule_latency = percentiles(std::move(a.rule));
    row.delivery_lag = percentiles(std::move(a.delivery));
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace tocsin::collector
