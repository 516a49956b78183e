#include "common/clock.hpp"

#include <chrono>
#include <cctype>
#include <climits>
#include <cstdio>
#include <ctime>
#include <stdexcept>

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

}  // namespace tocsin::common
