#include "collector/runs/report.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "collector/alerts/alert.hpp"

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

// A resolution inferred from one value is only an upper bound: a millisecond SIEM writes a
// whole second once in a thousand values. So per source the finest resolution any of its
// values shows is its resolution (min), and a figure's is the coarsest of its sources' (max).
struct SourceResolution {
  std::int64_t created = 0, before_rule = 0, ingest = 0;  // 0: no value seen
  static void finer(std::int64_t& res, std::int64_t value) {
    if (!value) return;
    auto r = time_resolution_ns(value);
    if (res == 0 || r < res) res = r;
  }
};

struct Acc {
  LatencyRow row;
  std::vector<std::int64_t> tta, pipeline, rule, delivery;
  std::map<std::string, SourceResolution> res;  // by alert source, of the values used
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
  // The SIEM's own intervals do not depend on the agent's clock.
  auto before_rule = r.ingest_ns ? r.ingest_ns : r.event_ns;
  auto& res = a.res[r.alert_source];
  if (r.created_ns && before_rule) {
    a.rule.push_back(r.created_ns - before_rule);
    SourceResolution::finer(res.created, r.created_ns);
    SourceResolution::finer(res.before_rule, before_rule);
  }
  if (r.created_ns) {
    a.delivery.push_back(r.arrival_ns - r.created_ns);
    SourceResolution::finer(res.created, r.created_ns);
  }
  // A time measured from the action is only a measurement once the action time is known and
  // within its bound: a held, unresolved or anomalous run is counted, never averaged in.
  if (r.clock_held()) {
    ++row.clock_held;
    return;
  }
  if (r.clock_unresolved) {
    ++row.clock_unresolved;
    return;
  }
  if (r.clock_anomaly) {
    ++row.clock_anomalies;
    return;
  }
  a.tta.push_back(r.time_to_alert_ns);
  row.max_error_ns = std::max(row.max_error_ns, r.action_error_ns);
  if (r.clock_stepped) ++row.clock_stepped;
  if (r.ingest_ns) {
    a.pipeline.push_back(r.ingest_ns - r.action_ns);
    SourceResolution::finer(res.ingest, r.ingest_ns);
  }
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
    for (const auto& [source, res] : a.res) {
      auto& pl = row.pipeline_lag.resolution_ns;
      auto& rl = row.rule_latency.resolution_ns;
      auto& dl = row.delivery_lag.resolution_ns;
      pl = std::max(pl, res.ingest);
      rl = std::max({rl, res.created, res.before_rule});
      dl = std::max(dl, res.created);
    }
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace tocsin::collector
