// Wall-clock time as int64 nanoseconds, its formatting, the NTP-style offset estimate, and the
// agent's time frame: monotonic time anchored once to the wall clock, with step detection.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
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

// One reading of the wall clock and the monotonic clock, taken together. The monotonic clock
// is CLOCK_BOOTTIME on Linux (it counts a suspend, CLOCK_MONOTONIC does not), steady_clock
// elsewhere.
struct ClockReading {
  std::int64_t wall_ns = 0;
  std::int64_t mono_ns = 0;
};
ClockReading read_clocks();

// A time frame: the wall time at its origin plus the monotonic time elapsed since. Its times
// look like wall-clock times but a wall-clock step (an admin's `date -s`, an NTP step, a VM
// restored from a snapshot) does not move them. skew() is how far the wall clock is from the
// frame; a change of it between two readings is a step (or slewing, see step_between).
struct TimeFrame {
  ClockReading origin;
  std::int64_t at(std::int64_t mono_ns) const { return origin.wall_ns + (mono_ns - origin.mono_ns); }
  std::int64_t skew(const ClockReading& r) const { return r.wall_ns - at(r.mono_ns); }
};
// The agent's one frame per process, anchored at its first use (main uses it first thing).
const TimeFrame& process_frame();
std::int64_t frame_now_ns();  // process_frame() now: the agent's clock for every stamp

// How far a frame may run off true time between two exchanges: the rate error allowed for an
// undisciplined oscillator (the collector assumes the same, correlation.clock_drift_ppm).
inline constexpr std::int64_t kClockDriftPpm = 100;
// The fastest a time daemon slews the wall clock (Linux adjtime: 500 ppm); a faster change of
// the skew is a step.
inline constexpr std::int64_t kClockSlewPpm = 500;
// Changes of the skew below this are not steps: reading two clocks is not atomic, and a
// preempted reader sees a small false change.
inline constexpr std::int64_t kClockStepMinNs = 100'000'000;

// Arithmetic on times a hostile peer may supply (a result's started_ns, its clock bound): the
// result clamps at INT64_MIN/INT64_MAX instead of overflowing.
std::int64_t saturating_add(std::int64_t a, std::int64_t b);
std::int64_t saturating_sub(std::int64_t a, std::int64_t b);
std::int64_t abs_ns(std::int64_t v);  // |v|, INT64_MAX for INT64_MIN

// elapsed x ppm, rounded up (a bound never rounds down); 0 for elapsed <= 0.
std::int64_t drift_allowance_ns(std::int64_t elapsed_ns, std::int64_t ppm = kClockDriftPpm);
// The step between two skews `elapsed_ns` of monotonic time apart, or 0 when slewing explains it.
std::int64_t step_between(std::int64_t skew_before, std::int64_t skew_after, std::int64_t elapsed_ns);

// The agent's mapping from its frame to the collector's clock: the last exchange's offset and
// bound, the monotonic time of that exchange (the bound grows from it at kClockDriftPpm), and
// the steps of the wall clock seen since. Pure: every clock reading is passed in.
class ClockMapping {
 public:
  // What a result carries: error_ns -1 before the first exchange. `steps` is the count of
  // steps seen so far: two stamps of one frame with the same count have no step between them,
  // so an offset measured for one applies to the other (the collector's held runs).
  struct Stamp {
    std::int64_t offset_ns = 0;
    std::int64_t error_ns = -1;
    bool stepped = false;
    std::uint64_t steps = 0;
  };
  ClockMapping() = default;  // never synchronised
  // A mapping given by hand (tests, a local run): its bound is taken as it is and never grows.
  static ClockMapping fixed(std::int64_t offset_ns, std::int64_t error_ns);

  // Notes a reading; returns the step it reveals against the previous reading (0: none).
  std::int64_t observe(const TimeFrame& f, const ClockReading& r);
  // An exchange answered; `at` is the reading its t4 came from.
  void synchronised(const ClockSample& s, const ClockReading& at);
  // The stamp of a result started at frame time `started_ns` and finished at reading `r`. A
  // result is `stepped` when a step was seen since the last exchange (no exchange has confirmed
  // the mapping since) or after the result started; its bound then includes the size of every
  // step seen since the earlier of the two, since each may have been the monotonic clock's
  // (time it missed) and not the wall's.
  Stamp stamp(const ClockReading& r, std::int64_t started_ns) const;

  bool synchronised() const { return error_ns_ >= 0; }
  bool resync_wanted() const { return unconfirmed_ns_ > 0; }  // a step awaits an exchange
  std::uint64_t steps() const { return steps_; }              // steps seen, ever
  std::int64_t offset_ns() const { return offset_ns_; }

 private:
  std::int64_t offset_ns_ = 0;
  std::int64_t error_ns_ = -1;
  std::optional<std::int64_t> exchange_mono_ns_;  // none: a fixed mapping, no drift allowance
  std::optional<ClockReading> last_;              // the previous reading, for step detection
  std::int64_t last_skew_ns_ = 0;
  std::int64_t unconfirmed_ns_ = 0;  // |steps| seen since the last exchange
  // The latest steps (frame time seen, |steps| seen before it), to sum the steps since a run
  // started. Bounded: a run older than the oldest kept is charged every step ever seen.
  struct StepMark {
    std::int64_t frame_ns;
    std::int64_t total_before_ns;
  };
  static constexpr std::size_t kStepMarks = 64;
  std::deque<StepMark> step_marks_;
  bool step_marks_dropped_ = false;
  std::int64_t steps_total_ns_ = 0;  // |steps| ever, saturating
  std::uint64_t steps_ = 0;
  std::int64_t steps_since(std::int64_t frame_ns) const;
};

}  // namespace tocsin::common
