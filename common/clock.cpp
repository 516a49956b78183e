#include "common/clock.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>

#include "common/config.hpp"

namespace firedrill::common {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string format_time(std::int64_t ns) {
  std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  int ms = static_cast<int>((ns % 1'000'000'000) / 1'000'000);
  if (ns < 0 && ns % 1'000'000'000) {
    secs -= 1;
    ms = static_cast<int>((1'000'000'000 + ns % 1'000'000'000) / 1'000'000);
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

std::int64_t parse_since(const std::string& text, std::int64_t now) {
  if (text.empty()) throw std::invalid_argument("empty time");
  if (text.find('T') == std::string::npos) return now - parse_duration(text).count() * 1'000'000;
  std::tm tm{};
  int ms = 0;
  char tail[8] = {0};
  int n = std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%7s", &tm.tm_year, &tm.tm_mon,
                      &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, tail);
  if (n < 6) throw std::invalid_argument("'" + text + "' is neither a duration nor RFC 3339 UTC");
  if (tail[0] == '.') ms = std::atoi(tail + 1);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1'000'000'000 + std::int64_t{ms} * 1'000'000;
}

ClockSample clock_sample(std::int64_t t1, std::int64_t t2, std::int64_t t3, std::int64_t t4) {
  ClockSample s;
  s.offset_ns = ((t2 - t1) + (t3 - t4)) / 2;
  std::int64_t rtt = (t4 - t1) - (t3 - t2);
  s.error_ns = rtt > 0 ? rtt / 2 : 0;
  return s;
}

}  // namespace firedrill::common
