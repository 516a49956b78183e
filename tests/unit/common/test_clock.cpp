// Clock offset estimation, time formatting/parsing, the agent's time frame and steps.
#include <doctest/doctest.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
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

// ---- the agent's time frame, its mapping to the collector's clock, and wall-clock steps ------
// Issue 18: a wall-clock step between two exchanges corrupted every result until the next one
// (a -300 s step turned a real 27.3 s time to alert into 327.3 s ± 0.020 ms). Every reading is
// injected here: a "host" whose monotonic clock runs true and whose wall clock is stepped.

namespace {

// The host: a true timeline (the collector's clock runs `collector_ahead` in front of it), a
// monotonic clock counting from an arbitrary origin, and a wall clock with a settable error.
struct Host {
  std::int64_t true_ns = 1'800'000'000 * kSec;
  std::int64_t mono_origin = 12'345 * kSec;
  std::int64_t wall_error = 0;
  static constexpr std::int64_t collector_ahead = 7 * kMs;
  std::int64_t start_true = 0;
  Host() { start_true = true_ns; }
  ClockReading read() const { return {true_ns + wall_error, mono_origin + (true_ns - start_true)}; }
  void advance(std::int64_t ns) { true_ns += ns; }
  std::int64_t collector_now() const { return true_ns + collector_ahead; }
};

// A four-timestamp exchange over a symmetric 1 ms round trip, as the uplink runs it: t1 and t4
// are frame times. Returns the reading t4 was taken from.
ClockReading exchange(Host& h, const TimeFrame& f, ClockMapping& m) {
  auto r1 = h.read();
  m.observe(f, r1);
  auto t1 = f.at(r1.mono_ns);
  h.advance(500'000);
  auto t2 = h.collector_now(), t3 = t2;
  h.advance(500'000);
  auto r4 = h.read();
  m.observe(f, r4);
  m.synchronised(clock_sample(t1, t2, t3, f.at(r4.mono_ns)), r4);
  return r4;
}

// A run: started and finished `ns` apart; returns (action time on the collector's clock as
// the collector computes it, the stamp, the true action time on the collector's clock).
struct Run {
  std::int64_t corrected_action_ns;
  ClockMapping::Stamp stamp;
  std::int64_t true_action_ns;
};
Run run(Host& h, const TimeFrame& f, ClockMapping& m, std::int64_t ns = 20 * kMs) {
  auto r0 = h.read();
  m.observe(f, r0);
  auto started = f.at(r0.mono_ns);
  auto true_action = h.collector_now();
  h.advance(ns);
  auto r1 = h.read();
  m.observe(f, r1);
  auto s = m.stamp(r1, started);
  return {started + s.offset_ns, s, true_action};
}

}  // namespace

TEST_CASE("a wall-clock step between exchanges leaves the agent's stamps and bounds true and is detected") {
  for (std::int64_t step : {-300 * kSec, 120 * kSec}) {
    CAPTURE(step / kSec);
    Host h;
    h.wall_error = 42 * kSec;  // the host's wall clock was wrong from the start: the exchange fixes it
    TimeFrame f{h.read()};
    ClockMapping m;
    h.advance(1 * kSec);
    exchange(h, f, m);
    h.advance(10 * kSec);
    auto before = run(h, f, m);
    CHECK_FALSE(before.stamp.stepped);
    CHECK(std::llabs(before.corrected_action_ns - before.true_action_ns) <= before.stamp.error_ns);

    h.advance(5 * kSec);
    h.wall_error += step;  // the step, between two exchanges
    h.advance(5 * kSec);
    auto during = run(h, f, m);
    CHECK(m.steps() == 1);
    CHECK(m.resync_wanted());
    CHECK(during.stamp.stepped);
    // The stamp itself is untouched by the step (the frame is monotonic) ...
    CHECK(std::llabs(during.corrected_action_ns - during.true_action_ns) <= 1 * kMs);
    // ... and the bound says the mapping is unconfirmed: it may have been the monotonic clock
    // that missed the time, so the step's size is in it.
    CHECK(during.stamp.error_ns >= std::llabs(step));

    h.advance(100 * kMs);
    exchange(h, f, m);  // the re-synchronisation the step asked for
    CHECK_FALSE(m.resync_wanted());
    h.advance(3 * kSec);
    auto after = run(h, f, m);
    CHECK_FALSE(after.stamp.stepped);
    CHECK(after.stamp.error_ns < 1 * kMs);
    CHECK(std::llabs(after.corrected_action_ns - after.true_action_ns) <= after.stamp.error_ns);
  }
}

TEST_CASE("a time to alert measured across a wall-clock step is the real one") {
  // The field report's case: action, a -300 s step, the alert 27.3 s after the action.
  Host h;
  TimeFrame f{h.read()};
  ClockMapping m;
  h.advance(2 * kSec);
  exchange(h, f, m);
  h.advance(30 * kSec);
  h.wall_error = -300 * kSec;
  h.advance(1 * kSec);
  auto r = run(h, f, m, 0);
  h.advance(27'300 * kMs);
  auto alert_arrival = h.collector_now();
  auto tta = alert_arrival - r.corrected_action_ns;
  CHECK(std::llabs(tta - 27'300 * kMs) <= 1 * kMs);
}

TEST_CASE("the bound of a stamp grows with the time since the exchange at the drift rate") {
  Host h;
  TimeFrame f{h.read()};
  ClockMapping m;
  auto at = exchange(h, f, m);
  auto base = m.stamp(at, f.at(at.mono_ns)).error_ns;
  CHECK(base == 500'000);  // half the 1 ms round trip
  h.advance(60 * kSec);
  auto r = h.read();
  CHECK(m.stamp(r, f.at(r.mono_ns)).error_ns == base + 60 * kSec / 1'000'000 * kClockDriftPpm);
  h.advance(3600 * kSec);
  r = h.read();
  CHECK(m.stamp(r, f.at(r.mono_ns)).error_ns == base + 3660 * kSec / 1'000'000 * kClockDriftPpm);
}

TEST_CASE("slewing the wall clock is not a step but a jump beyond it is") {
  CHECK(step_between(0, 0, 60 * kSec) == 0);
  // 400 ppm of slew over 1000 s (0.4 s): within 500 ppm plus the minimum.
  CHECK(step_between(5 * kSec, 5 * kSec + 400 * kMs, 1000 * kSec) == 0);
  CHECK(step_between(0, 150 * kMs, 1 * kSec) == 150 * kMs);
  CHECK(step_between(0, -150 * kMs, 1 * kSec) == -150 * kMs);
  CHECK(step_between(0, 50 * kMs, 0) == 0);  // under the minimum: noise of two reads
  CHECK(step_between(INT64_MIN, INT64_MAX, 0) != 0);  // no overflow
}

TEST_CASE("drift_allowance_ns rounds up and saturates") {
  CHECK(drift_allowance_ns(0) == 0);
  CHECK(drift_allowance_ns(-5 * kSec) == 0);
  CHECK(drift_allowance_ns(1) == 1);
  CHECK(drift_allowance_ns(10 * kSec) == 1 * kMs);
  CHECK(drift_allowance_ns(10 * kSec, 500) == 5 * kMs);
  CHECK(drift_allowance_ns(INT64_MAX, 1'000'000) > 0);
}

TEST_CASE("a step during a run marks it even when an exchange confirmed the mapping before it finished") {
  Host h;
  TimeFrame f{h.read()};
  ClockMapping m;
  exchange(h, f, m);
  h.advance(1 * kSec);
  auto r0 = h.read();
  m.observe(f, r0);
  auto started = f.at(r0.mono_ns);
  h.advance(1 * kSec);
  h.wall_error = 120 * kSec;
  exchange(h, f, m);  // sees the step at its t1, then confirms the mapping
  CHECK_FALSE(m.resync_wanted());
  h.advance(1 * kSec);
  auto r1 = h.read();
  m.observe(f, r1);
  auto s = m.stamp(r1, started);
  CHECK(s.stepped);
  CHECK(s.error_ns >= 120 * kSec);
  // A run that starts after that exchange is clean again.
  auto later = run(h, f, m);
  CHECK_FALSE(later.stamp.stepped);
}

TEST_CASE("results before the first exchange carry error -1 and a step still marks them") {
  Host h;
  TimeFrame f{h.read()};
  ClockMapping m;
  auto a = run(h, f, m);
  CHECK(a.stamp.error_ns == -1);
  CHECK(a.stamp.offset_ns == 0);
  CHECK_FALSE(a.stamp.stepped);
  h.wall_error = -300 * kSec;
  auto b = run(h, f, m);
  CHECK(b.stamp.error_ns == -1);
  CHECK(b.stamp.stepped);
}

TEST_CASE("a fixed mapping keeps its bound as given") {
  auto m = ClockMapping::fixed(1500, 20);
  Host h;
  h.advance(3600 * kSec);
  auto s = m.stamp(h.read(), 0);
  CHECK(s.offset_ns == 1500);
  CHECK(s.error_ns == 20);
  CHECK_FALSE(s.stepped);
}

TEST_CASE("the process frame is the wall clock at its origin plus monotonic time since") {
  const auto& f = process_frame();
  CHECK(f.at(f.origin.mono_ns) == f.origin.wall_ns);
  CHECK(f.at(f.origin.mono_ns + 5 * kSec) == f.origin.wall_ns + 5 * kSec);
  auto a = frame_now_ns(), b = frame_now_ns();
  CHECK(b >= a);  // monotonic, whatever the wall clock does
  CHECK(a >= f.origin.wall_ns);
}

TEST_CASE("a run that saw a step, an exchange and another step carries both in its bound") {
  Host h;
  TimeFrame f{h.read()};
  ClockMapping m;
  exchange(h, f, m);
  h.advance(1 * kSec);
  auto r0 = h.read();
  m.observe(f, r0);
  auto started = f.at(r0.mono_ns);
  h.advance(1 * kSec);
  h.wall_error = 120 * kSec;  // S1
  exchange(h, f, m);          // sees S1 at its t1, then confirms the mapping
  h.advance(1 * kSec);
  h.wall_error = 120 * kSec - 30 * kSec;  // S2: -30 s
  h.advance(1 * kSec);
  auto r1 = h.read();
  m.observe(f, r1);
  CHECK(m.steps() == 2);
  auto s = m.stamp(r1, started);
  CHECK(s.stepped);
  CHECK(s.steps == 2);
  // Before, only the last step (30 s) was added: the first may have been the monotonic clock's.
  CHECK(s.error_ns >= 150 * kSec);
  // A run started after both carries only the one no exchange has confirmed.
  h.advance(1 * kSec);
  auto later = run(h, f, m);
  CHECK(later.stamp.stepped);
  CHECK(later.stamp.error_ns >= 30 * kSec);
  CHECK(later.stamp.error_ns < 31 * kSec);
}

TEST_CASE("the saturating helpers clamp instead of overflowing") {
  CHECK(saturating_add(INT64_MAX, 1) == INT64_MAX);
  CHECK(saturating_add(INT64_MIN, -1) == INT64_MIN);
  CHECK(saturating_add(3, 4) == 7);
  CHECK(saturating_sub(INT64_MIN, 1) == INT64_MIN);
  CHECK(saturating_sub(INT64_MAX, -1) == INT64_MAX);
  CHECK(saturating_sub(0, INT64_MIN) == INT64_MAX);
  CHECK(abs_ns(INT64_MIN) == INT64_MAX);
  CHECK(abs_ns(-5) == 5);
}
