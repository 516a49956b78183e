// Wall-clock time as int64 nanoseconds, its formatting, and the NTP-style offset estimate.
#pragma once

#include <cstdint>
#include <string>

namespace tocsin::common {

std::int64_t now_ns();  // system_clock since the Unix epoch
std::string format_time(std::int64_t ns);  // "2026-11-28T00:48:43.123Z"
// Parses "1h", "30m", "7d" relative to now (into the past) or an RFC 3339 UTC time.
std::int64_t parse_since(const std::string& text, std::int64_t now);

// Four-timestamp exchange: t1 agent send, t2 collector receive, t3 collector send,
// t4 agent receive. offset = collector - agent; error bound = half the network round trip.
struct ClockSample {
  std::int64_t offset_ns = 0;
  std::int64_t error_ns = 0;
};
ClockSample clock_sample(std::int64_t t1, std::int64_t t2, std::int64_t t3, std::int64_t t4);

}  // namespace tocsin::common
