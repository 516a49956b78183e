#include "agent/probe.hpp"

#include "common/clock.hpp"
#include "common/crypto.hpp"

namespace firedrill::agent {

std::string new_marker() { return "fdr-" + common::random_id(10); }

common::ResultBody start_result(const TestSpec& test, const std::string& marker) {
  common::ResultBody b;
  b.test_id = test.id;
  b.probe = test.probe;
  b.technique = test.technique;
  b.marker = marker;
  b.expect_prevent = test.expect_prevent;
  if (test.alert_within)
    b.alert_within_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(*test.alert_within).count();
  b.detections = test.detections;
  b.started_ns = common::now_ns();
  return b;
}

void finish_result(common::ResultBody& b, const ClockState& clock) {
  b.finished_ns = common::now_ns();
  b.clock_offset_ns = clock.offset_ns;
  b.clock_error_ns = clock.error_ns;
}

}  // namespace firedrill::agent
