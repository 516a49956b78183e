// Clock offset estimation and time formatting/parsing.
#include <doctest/doctest.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/clock.hpp"

using namespace tocsin::common;

namespace {
constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kMs = 1'000'000;
}  // namespace

TEST_CASE("clock_sample with symmetric delays gives the true offset and half the RTT as error") {
  // Collector is 1000 ns ahead; 50 ns each way; the collector spends 10 ns between t2 and t3.
  const std::int64_t offset = 1000, delay = 50, work = 10;
  std::int64_t t1 = 0, t2 = t1 + delay + offset, t3 = t2 + work, t4 = t3 - offset + delay;
  auto s = clock_sample(t1, t2, t3, t4);
  CHECK(s.offset_ns == offset);
  CHECK(s.error_ns == delay);  // RTT without the collector's work is 100 ns
}

TEST_CASE("clock_sample with an agent ahead of the collector gives a negative offset") {
  const std::int64_t offset = -5 * kSec, delay = 2 * kMs;
  std::int64_t t1 = 1'700'000'000 * kSec, t2 = t1 + delay + offset, t3 = t2,
               t4 = t3 - offset + delay;
  auto s = clock_sample(t1, t2, t3, t4);
  CHECK(s.offset_ns == offset);
  CHECK(s.error_ns == delay);
}

TEST_CASE("clock_sample with asymmetric delays stays within its error bound") {
  // Clocks agree; 80 ns out, 20 ns back: the estimate is off by 30 ns, inside the 50 ns bound.
  auto s = clock_sample(0, 80, 80, 100);
  CHECK(s.offset_ns == 30);
  CHECK(s.error_ns == 50);
  CHECK(std::abs(s.offset_ns - 0) <= s.error_ns);
}

TEST_CASE("clock_sample never reports a negative error") {
  // The collector claims it spent longer than the whole round trip (a lying or broken peer).
  auto s = clock_sample(0, 10, 500, 100);
  CHECK(s.error_ns == 0);
}

TEST_CASE("format_time renders UTC with milliseconds") {
  struct Case {
    std::int64_t ns;
    const char* want;
  } cases[] = {{0, "1970-01-01T00:00:00.000Z"},
               {1'500'000'000, "1970-01-01T00:00:01.500Z"},
               {1'700'000'000'123'456'789, "2023-11-14T22:13:20.123Z"},
               {951'782'400 * kSec, "2000-02-29T00:00:00.000Z"},
               {-1, "1969-12-31T23:59:59.999Z"},
               {-1'500'000'000, "1969-12-31T23:59:58.500Z"}};
  for (const auto& c : cases) {
    CAPTURE(c.ns);
    CHECK(format_time(c.ns) == c.want);
  }
}

TEST_CASE("parse_since subtracts a duration from now") {
  const std::int64_t now = 1'700'000'000 * kSec;
  CHECK(parse_since("1h", now) == now - 3600 * kSec);
  CHECK(parse_since("30m", now) == now - 1800 * kSec);
  CHECK(parse_since("7d", now) == now - 7 * 86400 * kSec);
  CHECK(parse_since("250ms", now) == now - 250 * kMs);
}

TEST_CASE("parse_since reads an RFC 3339 UTC time") {
  const std::int64_t now = 0;
  CHECK(parse_since("2023-11-14T22:13:20Z", now) == 1'700'000'000 * kSec);
  CHECK(parse_since("2023-11-14T22:13:20.123Z", now) == 1'700'000'000 * kSec + 123 * kMs);
  CHECK(parse_since("1970-01-01T00:00:01.500Z", now) == 1'500'000'000);
}

TEST_CASE("parse_since reads back what format_time writes") {
  for (std::int64_t ns : {std::int64_t{0}, 1'500'000'000 * std::int64_t{1},
                          1'700'000'000'123'000'000, 4'102'444'800'999'000'000}) {
    CAPTURE(ns);
    CHECK(parse_since(format_time(ns), 0) == ns);
  }
}

// Regression: the fraction was read as a whole number of milliseconds whatever its number of
// digits, so ".5" became 5 ms and ".123456" 123456 ms.
TEST_CASE("parse_since reads a fraction of a second by its digits") {
  CHECK(parse_since("1970-01-01T00:00:01.5Z", 0) == 1'500'000'000);
  CHECK(parse_since("1970-01-01T00:00:01.123456Z", 0) == 1'123'456'000);  // full precision
}

// Regression: anything after the seconds other than a fraction was ignored, so a "+02:00"
// offset was silently read as UTC (two hours off).
TEST_CASE("parse_since does not silently read a non-UTC offset as UTC") {
  bool refused_or_applied = false;
  try {
    refused_or_applied = parse_since("2023-11-14T22:13:20+02:00", 0) == 1'699'992'800 * kSec;
  } catch (const std::invalid_argument&) {
    refused_or_applied = true;
  }
  CHECK(refused_or_applied);
}

TEST_CASE("parse_since rejects text that is neither a duration nor a time") {
  for (const char* text : {"", "yesterday", "Tuesday", "2023-11-14T", "1 hour"}) {
    CAPTURE(std::string(text));
    CHECK_THROWS_AS(parse_since(text, 0), std::invalid_argument);
  }
}

TEST_CASE("now_ns is the wall clock in nanoseconds since the Unix epoch") {
  CHECK(now_ns() > 1'577'836'800 * kSec);  // after 2020-01-01
}
