#include "common/clock.hpp"

#include <algorithm>
#include <chrono>
#include <cctype>
#include <climits>
#include <cstdio>
#include <ctime>
#include <stdexcept>

#if defined(__linux__)
#include <time.h>
#endif

#include "common/config.hpp"

namespace tocsin::common {

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
  // The civil calendar of <chrono> (UTC), the same on every platform (no gmtime_r on Windows).
  using namespace std::chrono;
  sys_seconds tp{seconds{secs}};
  auto day = floor<days>(tp);
  year_month_day ymd{day};
  hh_mm_ss hms{tp - day};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                static_cast<int>(hms.seconds().count()), ms);
  return buf;
}

std::int64_t parse_since(const std::string& text, std::int64_t now) {
  if (text.empty()) throw std::invalid_argument("empty time");
  if (text.find('T') == std::string::npos) {
    auto ms = parse_duration(text).count();
    if (ms > (now - INT64_MIN / 2) / 1'000'000) throw std::invalid_argument("'" + text + "' reaches back too far");
    return now - ms * 1'000'000;
  }
  // RFC 3339: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
  auto bad = [&] {
    return std::invalid_argument("'" + text + "' is neither a duration (1h) nor an RFC 3339 time");
  };
  std::tm tm{};
  int consumed = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6 || consumed != 19)
    throw bad();
  if (tm.tm_year < 1970 || tm.tm_year > 2200 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
      tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
    throw bad();
  std::size_t i = 19;
  std::int64_t frac_ns = 0;
  if (i < text.size() && text[i] == '.') {
    std::int64_t scale = 100'000'000;
    std::size_t digits = 0;
    for (++i; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i, ++digits) {
      frac_ns += (text[i] - '0') * scale;  // digits beyond nanoseconds add 0
      scale /= 10;
    }
    if (digits == 0) throw bad();
  }
  std::int64_t offset_s = 0;
  std::string zone = text.substr(i);
  if (zone == "Z" || zone == "z") {
  } else if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':' &&
             std::isdigit(static_cast<unsigned char>(zone[1])) &&
             std::isdigit(static_cast<unsigned char>(zone[2])) &&
             std::isdigit(static_cast<unsigned char>(zone[4])) &&
             std::isdigit(static_cast<unsigned char>(zone[5]))) {
    offset_s = ((zone[1] - '0') * 10 + (zone[2] - '0')) * 3600 + ((zone[4] - '0') * 10 + (zone[5] - '0')) * 60;
    if (zone[0] == '-') offset_s = -offset_s;
  } else {
    throw bad();
  }
  // Like timegm (no such call on Windows): an out-of-range day (Feb 31) runs on into March.
  using namespace std::chrono;
  auto date = sys_days{year{tm.tm_year} / month{static_cast<unsigned>(tm.tm_mon)} /
                       day{static_cast<unsigned>(tm.tm_mday)}};
  std::int64_t secs = date.time_since_epoch().count() * 86'400 + tm.tm_hour * 3600 +
                      tm.tm_min * 60 + tm.tm_sec;
  return (secs - offset_s) * 1'000'000'000 + frac_ns;
}

ClockSample clock_sample(std::int64_t t1, std::int64_t t2, std::int64_t t3, std::int64_t t4) {
  ClockSample s;
  s.offset_ns = ((t2 - t1) + (t3 - t4)) / 2;
  std::int64_t rtt = (t4 - t1) - (t3 - t2);
  s.error_ns = rtt > 0 ? rtt / 2 : 0;
  return s;
}

namespace {

std::int64_t mono_now_ns() {
#if defined(__linux__)
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
#else
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
#endif
}

}  // namespace

std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

std::int64_t saturating_sub(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) return b < 0 ? INT64_MAX : INT64_MIN;
  return r;
}

std::int64_t abs_ns(std::int64_t v) { return v == INT64_MIN ? INT64_MAX : v < 0 ? -v : v; }

ClockReading read_clocks() {
  // The wall clock between two monotonic readings, paired with their midpoint: a preemption
  // between the reads shows as a smaller false skew change.
  auto m1 = mono_now_ns();
  auto wall = now_ns();
  auto m2 = mono_now_ns();
  return {wall, m1 + (m2 - m1) / 2};
}

const TimeFrame& process_frame() {
  static const TimeFrame frame{read_clocks()};
  return frame;
}

std::int64_t frame_now_ns() {
  const auto& f = process_frame();
  return f.at(mono_now_ns());
}

std::int64_t drift_allowance_ns(std::int64_t elapsed_ns, std::int64_t ppm) {
  if (elapsed_ns <= 0 || ppm <= 0) return 0;
  // elapsed * ppm / 1e6, rounded up, without overflowing for any elapsed time.
  std::int64_t whole = elapsed_ns / 1'000'000, rest = elapsed_ns % 1'000'000;
  std::int64_t a;
  if (__builtin_mul_overflow(whole, ppm, &a)) return INT64_MAX;
  return saturating_add(a, (rest * ppm + 999'999) / 1'000'000);
}

std::int64_t step_between(std::int64_t skew_before, std::int64_t skew_after, std::int64_t elapsed_ns) {
  std::int64_t change;
  if (__builtin_sub_overflow(skew_after, skew_before, &change)) return skew_after > 0 ? INT64_MAX : INT64_MIN;
  auto allowed = saturating_add(kClockStepMinNs, drift_allowance_ns(elapsed_ns, kClockSlewPpm));
  return abs_ns(change) > allowed ? change : 0;
}

ClockMapping ClockMapping::fixed(std::int64_t offset_ns, std::int64_t error_ns) {
  ClockMapping m;
  m.offset_ns_ = offset_ns;
  m.error_ns_ = error_ns;
  return m;
}

std::int64_t ClockMapping::observe(const TimeFrame& f, const ClockReading& r) {
  auto skew = f.skew(r);
  std::int64_t step = 0;
  if (last_) {
    step = step_between(last_skew_ns_, skew, r.mono_ns - last_->mono_ns);
    if (step != 0) {
      ++steps_;
      unconfirmed_ns_ = saturating_add(unconfirmed_ns_, abs_ns(step));
      if (step_marks_.size() == kStepMarks) {
        step_marks_.pop_front();
        step_marks_dropped_ = true;
      }
      step_marks_.push_back({f.at(r.mono_ns), steps_total_ns_});
      steps_total_ns_ = saturating_add(steps_total_ns_, abs_ns(step));
    }
  }
  last_ = r;
  last_skew_ns_ = skew;
  return step;
}

void ClockMapping::synchronised(const ClockSample& s, const ClockReading& at) {
  offset_ns_ = s.offset_ns;
  error_ns_ = s.error_ns;
  exchange_mono_ns_ = at.mono_ns;
  unconfirmed_ns_ = 0;
}

std::int64_t ClockMapping::steps_since(std::int64_t frame_ns) const {
  auto it = std::find_if(step_marks_.begin(), step_marks_.end(),
                         [&](const StepMark& m) { return m.frame_ns > frame_ns; });
  if (it == step_marks_.end()) return 0;
  // The steps before the oldest mark kept are forgotten: charge them all rather than none.
  if (it == step_marks_.begin() && step_marks_dropped_) return steps_total_ns_;
  return saturating_sub(steps_total_ns_, it->total_before_ns);
}

ClockMapping::Stamp ClockMapping::stamp(const ClockReading& r, std::int64_t started_ns) const {
  Stamp s;
  s.steps = steps_;
  auto during = steps_since(started_ns);
  s.stepped = unconfirmed_ns_ > 0 || during > 0;
  if (error_ns_ < 0) return s;  // no offset known: the collector handles -1
  s.offset_ns = offset_ns_;
  s.error_ns = error_ns_;
  if (exchange_mono_ns_)
    s.error_ns = saturating_add(s.error_ns, drift_allowance_ns(r.mono_ns - *exchange_mono_ns_));
  // The start is mapped with an offset measured at the exchange: every step between the two
  // (in either order) may have moved one against the other. Both sums run to now, so the
  // larger is the sum since the earlier of the exchange and the start.
  s.error_ns = saturating_add(s.error_ns, std::max(unconfirmed_ns_, during));
  return s;
}

}  // namespace tocsin::common
