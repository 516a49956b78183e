// The one door every alert source uses to hand alerts to the correlator.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "collector/alerts/alert.hpp"

namespace tocsin::collector {

struct SubmitOutcome {
  std::size_t accepted = 0;    // new alerts stored
  std::size_t duplicates = 0;  // already seen (same alert_key): idempotent, nothing changed
  std::size_t matched = 0;     // of the accepted, how many matched a run
  std::string error;           // non-empty: nothing of this submission was stored
};

class AlertSink {
 public:
  virtual ~AlertSink() = default;
  // Thread-safe. `done` runs on the sink's own thread once the alerts are durably stored (or
  // with `error` set); callers post back to their own executor before touching their state.
  virtual void submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) = 0;
  // Thread-safe. Input from `source` that was refused (bad token, oversized, malformed):
  // counted per source and reason, and logged (rate-limited).
  virtual void rejected(const std::string& source, const std::string& reason,
                        const std::string& detail) = 0;
};

}  // namespace tocsin::collector
