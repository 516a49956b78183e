// What every probe shares: the clock state stamped on results and the probe interface.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "common/wire.hpp"

namespace firedrill::agent {

// The agent's latest clock exchange with the collector (error -1: never synchronised).
struct ClockState {
  std::int64_t offset_ns = 0;
  std::int64_t error_ns = -1;
};

// A unique, detector-visible marker for one run: "fdr-" + 10 random [a-z0-9].
std::string new_marker();

// The fields every result of a run shares: test, kind, technique, marker, expectation, and
// the start time. finish_result stamps the end time and the clock state.
common::ResultBody start_result(const TestSpec& test, const std::string& marker);
void finish_result(common::ResultBody& b, const ClockState& clock);

class Probe {
 public:
  virtual ~Probe() = default;
  // Runs one test once; returns one result per target. Never throws for outcomes on the
  // network (those are verdicts); throws only for bugs or exhausted resources.
  virtual boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                                      std::string marker) = 0;
};

}  // namespace firedrill::agent
