// Pollers: pull alerts from SIEMs that cannot push (Elasticsearch/OpenSearch, Splunk search
// export, Microsoft Sentinel / Log Analytics, CrowdSec LAPI) and hand them to the AlertSink.
//
// Each poller owns one thread. Every poll asks for [last successful window end - lookback,
// now], so consecutive windows overlap by the maximum ingestion lag; the sink deduplicates by
// alert_key, which is why every alert carries the vendor's stable id. The window only moves
// forward after the sink has durably stored what the poll returned, so a failing store or a
// failing SIEM never makes the poller skip time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "collector/alerts/alert_sink.hpp"
#include "collector/alerts/alert_sources.hpp"

namespace tocsin::collector {

// A consistent snapshot of one poller's health, for the dashboard and health checks.
struct PollerStatus {
  std::int64_t last_success_ns = 0;  // end of the last poll that completed (0: none yet)
  std::int64_t last_attempt_ns = 0;  // start of the last poll attempt
  // The most recent failure ("HTTP 503 from https://es:9200/alerts-*/_search: ..."). Kept after
  // recovery so the cause stays visible; compare `failures` between snapshots to see trends.
  std::string last_error;
  std::uint64_t polls = 0;     // poll attempts finished (success or failure)
  std::uint64_t alerts = 0;    // alerts the sink accepted as new (overlap duplicates excluded)
  std::uint64_t failures = 0;  // failed polls
};

// Reasons passed to AlertSink::rejected by pollers:
//   "poll_failed" -- HTTP error, network error, rate limit, SIEM-side query error, store error
//   "malformed"   -- the SIEM answered 2xx with a body that is not the documented shape, or an
//                    alert field (a time) that could not be read; the alert is kept without it
//   "truncated"   -- CrowdSec LAPI returned exactly `limit` alerts (it has no paging)
class Poller {
 public:
  // Throws std::invalid_argument naming the field when `cfg` is not a usable poller config.
  // `sink` must outlive the poller.
  Poller(AlertSourceConfig cfg, AlertSink& sink);
  ~Poller();  // stop()
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Starts the thread; the first poll runs at once. Throws std::logic_error on a second call
  // or after stop(): a poller runs once.
  void start();
  // Prompt: wakes the thread, aborts an HTTP transfer in flight, abandons a wait for the sink,
  // and joins. Idempotent.
  void stop();
  PollerStatus status() const;  // thread-safe

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
