// The alert-latency report: per group (test, technique, host or alert source), how many runs
// were detected in time, late or not at all, and how long detection took, split into parts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "collector/runs/correlator.hpp"

namespace tocsin::collector {

enum class GroupBy { test, technique, host, source };
std::optional<GroupBy> parse_group_by(const std::string& s);

struct Percentiles {
  std::size_t count = 0;
  std::int64_t p50 = 0, p95 = 0, p99 = 0, max = 0;  // ns; meaningful when count > 0
  // The resolution of the timestamps the values were computed from (a SIEM writing whole
  // seconds: 1 s): each value is known only to within it. Per source the finest any of its
  // values shows, then the coarsest of the sources. 0 when not from SIEM times.
  std::int64_t resolution_ns = 0;
};
Percentiles percentiles(std::vector<std::int64_t> values);  // nearest-rank

struct LatencyRow {
  std::string group;
  std::size_t runs = 0;  // runs that expected an alert (pending ones included)
  std::size_t alerted = 0, late = 0, logged = 0, missed = 0, pending = 0;
  double coverage_pct = 0;  // (alerted + late) / decided runs; decided = all but pending
  // Runs whose time to alert is below minus their error bound (clock anomalies), runs still
  // waiting for their agent's clock offset and runs whose wait expired (clock_unresolved) are
  // left out of time_to_alert and pipeline_lag.
  Percentiles time_to_alert;
  std::int64_t max_error_ns = 0;  // the largest error bound among the measured runs
  std::size_t clock_anomalies = 0;
  std::size_t clock_held = 0;     // alerted, but the agent's clock offset is not known yet
  std::size_t clock_unresolved = 0;  // alerted, but its offset never became known (hold expired)
  std::size_t clock_stepped = 0;  // measured runs whose host's wall clock had stepped
  Percentiles pipeline_lag;       // SIEM ingest - action
  Percentiles rule_latency;       // alert created - SIEM ingest (or event time)
  Percentiles delivery_lag;       // arrival at the collector - alert created
};

// Runs that expected no alert are left out; rows sorted by group name.
std::vector<LatencyRow> latency_report(const std::vector<Run>& runs, GroupBy by);

}  // namespace tocsin::collector
