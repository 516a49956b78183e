#include "collector/alerts/alert.hpp"

#include <boost/asio/ip/address.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/crypto.hpp"
#include "common/text.hpp"

namespace tocsin::collector {

using nlohmann::json;

namespace {

// Beyond this depth a subtree is written as one compact JSON value: paths stay readable and
// no recursion depends on the input.
constexpr std::size_t kMaxFlattenDepth = 64;
constexpr std::size_t kMarkerIdLen = 10;
constexpr std::string_view kMarkerPrefix = "tcn-";

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_alnum(char c) {
  return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool all_of(std::string_view s, bool (*pred)(char)) {
  return std::all_of(s.begin(), s.end(), pred);
}

// ------------------------------------------------------------------------------------------
// Markers

// An escape that ends right before `pos` ("%2f", "\n", "\u002f") separates tokens even though
// its last character is a letter or digit.
bool escape_ends_at(std::string_view text, std::size_t pos) {
  if (pos >= 3 && text[pos - 3] == '%' && is_hex(text[pos - 2]) && is_hex(text[pos - 1]))
    return true;
  if (pos >= 2 && text[pos - 2] == '\\' && std::strchr("nrtbf", text[pos - 1]) != nullptr)
    return true;
  return pos >= 6 && text[pos - 6] == '\\' && text[pos - 5] == 'u' &&
         all_of(text.substr(pos - 4, 4), is_hex);
}

bool marker_starts_token(std::string_view text, std::size_t pos) {
  if (pos == 0) return true;
  char c = text[pos - 1];
  if (!is_lower_alnum(c) && c != '_' && c != '-') return true;
  return escape_ends_at(text, pos);
}

// ------------------------------------------------------------------------------------------
// Flattening

std::string scalar_text(const json& v) {
  if (v.is_string()) return v.get_ref<const std::string&>();
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Writes `root` as compact JSON without recursion, stopping once `budget` bytes are out.
std::string compact_dump(const json& root, std::size_t budget) {
  struct Frame {
    const json* node;
    json::const_iterator it;
    bool first = true;
  };
  std::string out;
  std::vector<Frame> stack;
  auto write = [&](const json& v) {
    if (v.is_structured()) {
      out += v.is_object() ? '{' : '[';
      stack.push_back({&v, v.cbegin()});
    } else {
      out += v.dump(-1, ' ', false, json::error_handler_t::replace);
    }
  };
  write(root);
  while (!stack.empty() && out.size() <= budget) {
    Frame& f = stack.back();
    if (f.it == f.node->cend()) {
      out += f.node->is_object() ? '}' : ']';
      stack.pop_back();
      continue;
    }
    if (!f.first) out += ',';
    f.first = false;
    if (f.node->is_object())
      out += json(f.it.key()).dump(-1, ' ', false, json::error_handler_t::replace) + ':';
    const json& child = *f.it;
    ++f.it;
    write(child);  // may grow `stack`: `f` is not used afterwards
  }
  return out;
}

class Flattener {
 public:
  explicit Flattener(std::size_t cap) : cap_(cap) {}

  std::string run(const json& root) {
    visit(root, 0);
    while (!stack_.empty() && !full_) step();
    return std::move(out_);
  }

 private:
  struct Frame {
    const json* node;
    json::const_iterator it;
    std::size_t index = 0;
    std::size_t path_len = 0;
  };

  void step() {
    Frame& f = stack_.back();
    path_.resize(f.path_len);
    if (f.it == f.node->cend()) {
      stack_.pop_back();
      return;
    }
    if (f.node->is_object()) {
      if (!path_.empty()) path_ += '.';
      path_ += f.it.key();
    } else {
      path_ += '[' + std::to_string(f.index) + ']';
    }
    const json& child = *f.it;
    ++f.it;
    ++f.index;
    visit(child, stack_.size());  // may grow `stack_`: `f` is not used afterwards
  }

  void visit(const json& v, std::size_t depth) {
    if (v.is_structured() && v.empty()) {
      emit(v.is_object() ? "{}" : "[]");
    } else if (v.is_structured() && depth < kMaxFlattenDepth) {
      stack_.push_back({&v, v.cbegin(), 0, path_.size()});
    } else if (v.is_structured()) {
      emit(compact_dump(v, cap_ - out_.size()));
    } else {
      emit(scalar_text(v));
    }
  }

  void emit(std::string_view value) {
    std::size_t prefix = path_.empty() ? 0 : path_.size() + 1;
    std::size_t need = prefix + value.size() + 1;
    if (out_.size() + need <= cap_) {
      if (prefix) out_.append(path_).append(1, '=');
      out_.append(value).append(1, '\n');
      return;
    }
    full_ = true;
    std::string line = prefix ? path_ + "=" : std::string();
    line.append(value);
    std::size_t cut = clean_cut(line, cap_ - out_.size());
    if (cut > prefix) out_.append(line, 0, cut);
  }

  // Where to cut `line` to at most `room` bytes without splitting a UTF-8 sequence or a token
  // (half a marker followed by nothing would look like a whole one).
  static std::size_t clean_cut(const std::string& line, std::size_t room) {
    std::size_t cut = std::min(room, line.size());
    if (cut == line.size()) return cut;
    while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
    if (is_alnum(line[cut]))
      while (cut > 0 && is_alnum(line[cut - 1])) --cut;
    return cut;
  }

  std::size_t cap_;
  bool full_ = false;
  std::string out_;
  std::string path_;
  std::vector<Frame> stack_;
};

// ------------------------------------------------------------------------------------------
// Times

constexpr std::int64_t kNsPerSec = 1'000'000'000;
constexpr std::int64_t kMaxNs = std::numeric_limits<std::int64_t>::max();

[[noreturn]] void bad_time(const std::string& what, std::string_view text, const std::string& why) {
  throw AlertParseError(what + ": '" + common::quote_hostile(text, 64) + "' is not a time (" + why +
                        ")");
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

unsigned days_in_month(std::int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// Epoch unit from the magnitude of the integer part: ns per unit.
std::int64_t unit_ns_for(long double magnitude) {
  if (magnitude < 1e11L) return kNsPerSec;
  if (magnitude < 1e14L) return 1'000'000;
  if (magnitude < 1e17L) return 1'000;
  return 1;
}

// A cursor over the text of an ISO 8601 time; each reader fails with the reason.
class TimeReader {
 public:
  TimeReader(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  std::int64_t parse() {
    std::int64_t year = number(4, "year");
    expect('-');
    unsigned month = static_cast<unsigned>(number(2, "month"));
    expect('-');
    unsigned day = static_cast<unsigned>(number(2, "day"));
    if (year < 1970 || year > 2262) fail("year out of range");
    if (month < 1 || month > 12) fail("month out of range");
    if (day < 1 || day > days_in_month(year, month)) fail("day out of range");
    if (!accept('T') && !accept('t') && !accept(' ')) fail("expected 'T' between date and time");
    std::int64_t secs = time_of_day();
    std::int64_t frac = fraction();
    secs -= zone_offset();
    if (pos_ != s_.size()) fail("unexpected text after the time");
    __int128 ns =
        (static_cast<__int128>(days_from_civil(year, month, day)) * 86400 + secs) * kNsPerSec +
        frac;
    if (ns < 0 || ns > kMaxNs) fail("out of range");
    return static_cast<std::int64_t>(ns);
  }

 private:
  std::int64_t time_of_day() {
    std::int64_t h = number(2, "hour");
    expect(':');
    std::int64_t m = number(2, "minute");
    std::int64_t s = accept(':') ? number(2, "second") : 0;
    if (h > 23 || m > 59 || s > 60) fail("time of day out of range");  // 60: leap second
    return h * 3600 + m * 60 + s;
  }

  // Digits after the second, kept to nanoseconds; extra precision is dropped, not refused.
  std::int64_t fraction() {
    if (!accept('.') && !accept(',')) return 0;
    std::size_t start = pos_;
    std::int64_t ns = 0;
    while (pos_ < s_.size() && is_digit(s_[pos_])) {
      if (pos_ - start < 9) ns = ns * 10 + (s_[pos_] - '0');
      ++pos_;
    }
    std::size_t digits = pos_ - start;
    if (digits == 0) fail("no digits after the decimal point");
    if (digits > 18) fail("too many fractional digits");
    for (std::size_t i = digits; i < 9; ++i) ns *= 10;
    return ns;
  }

  // Seconds east of UTC. No zone at all means UTC; Go's time.String() adds " +0000 UTC".
  std::int64_t zone_offset() {
    accept(' ');
    if (pos_ == s_.size() || accept('Z') || accept('z')) return 0;
    if (rest_is_utc_name()) return 0;
    char sign = s_[pos_];
    if (sign != '+' && sign != '-') fail("bad time zone");
    ++pos_;
    std::int64_t h = number(2, "zone hours");
    bool colon = accept(':');
    bool minutes = colon || (pos_ < s_.size() && is_digit(s_[pos_]));
    std::int64_t m = minutes ? number(2, "zone minutes") : 0;
    if (h > 23 || m > 59) fail("zone offset out of range");
    skip_zone_name();
    return (sign == '-' ? -1 : 1) * (h * 3600 + m * 60);
  }

  bool rest_is_utc_name() {
    auto rest = s_.substr(pos_);
    if (rest != "UTC" && rest != "GMT") return false;
    pos_ = s_.size();
    return true;
  }

  // " UTC", " CET" after a numeric offset: informational, the offset decides.
  void skip_zone_name() {
    if (pos_ + 1 >= s_.size() || s_[pos_] != ' ') return;
    std::size_t end = pos_ + 1;
    while (end < s_.size() && s_[end] >= 'A' && s_[end] <= 'Z') ++end;
    if (end == s_.size() && end - pos_ - 1 <= 5) pos_ = end;
  }

  std::int64_t number(std::size_t digits, const char* name) {
    if (pos_ + digits > s_.size() || !all_of(s_.substr(pos_, digits), is_digit))
      fail(std::string("expected ") + std::to_string(digits) + " digits of " + name);
    std::int64_t v = 0;
    for (std::size_t i = 0; i < digits; ++i) v = v * 10 + (s_[pos_++] - '0');
    return v;
  }

  bool accept(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void expect(char c) {
    if (!accept(c)) fail(std::string("expected '") + c + "'");
  }

  [[noreturn]] void fail(const std::string& why) { bad_time(what_, s_, why); }

  std::string_view s_;
  const std::string& what_;
  std::size_t pos_ = 0;
};

// "1764324000", "1764324000.123", "1764324000123": exact integer arithmetic, no double rounding.
std::int64_t parse_epoch_text(std::string_view t, const std::string& what) {
  std::size_t dot = t.find('.');
  std::string_view whole = t.substr(0, dot);
  std::string_view frac = dot == std::string_view::npos ? std::string_view() : t.substr(dot + 1);
  if (whole.empty() || !all_of(whole, is_digit) || !all_of(frac, is_digit) ||
      (dot != std::string_view::npos && frac.empty()))
    bad_time(what, t, "not a number");
  if (whole.size() > 19 || frac.size() > 18) bad_time(what, t, "too many digits");
  unsigned __int128 w = 0, f = 0, f_scale = 1;
  for (char c : whole) w = w * 10 + static_cast<unsigned>(c - '0');
  for (char c : frac) f = f * 10 + static_cast<unsigned>(c - '0'), f_scale *= 10;
  auto unit = static_cast<unsigned __int128>(unit_ns_for(static_cast<long double>(w)));
  unsigned __int128 ns = w * unit + f * unit / f_scale;
  if (ns > static_cast<unsigned __int128>(kMaxNs)) bad_time(what, t, "out of range");
  return static_cast<std::int64_t>(ns);
}

std::int64_t parse_epoch_double(double v, const std::string& what) {
  std::string text = json(v).dump();
  if (!std::isfinite(v)) bad_time(what, text, "not a finite number");
  if (v < 0) bad_time(what, text, "before 1970");
  long double ns = static_cast<long double>(v) * unit_ns_for(v);
  if (ns >= static_cast<long double>(kMaxNs)) bad_time(what, text, "out of range");
  return static_cast<std::int64_t>(std::llround(ns));
}

std::string_view trim(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<std::string> find_markers(std::string_view text) {
  std::vector<std::string> out;
  const std::size_t len = kMarkerPrefix.size() + kMarkerIdLen;
  for (std::size_t pos = text.find(kMarkerPrefix); pos != std::string_view::npos;
       pos = text.find(kMarkerPrefix, pos + 1)) {
    if (pos + len > text.size()) break;
    if (!all_of(text.substr(pos + kMarkerPrefix.size(), kMarkerIdLen), is_lower_alnum)) continue;
    if (pos + len < text.size() && is_alnum(text[pos + len])) continue;
    if (!marker_starts_token(text, pos)) continue;
    std::string m(text.substr(pos, len));
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(std::move(m));
  }
  return out;
}

std::string flatten_json(const json& j, std::size_t cap) {
  return Flattener(cap).run(j);
}

std::int64_t parse_alert_time_text(std::string_view text, const std::string& what) {
  std::string_view t = trim(text);
  if (t.empty()) bad_time(what, text, "empty");
  if (t.size() > 64) bad_time(what, t, "too long");
  if (t.front() == '-' || t.front() == '+') bad_time(what, t, "signed epoch");
  bool numeric = std::all_of(t.begin(), t.end(), [](char c) { return is_digit(c) || c == '.'; });
  if (numeric) return parse_epoch_text(t, what);
  return TimeReader(t, what).parse();
}

std::int64_t parse_alert_time(const json& v, const std::string& what) {
  switch (v.type()) {
    case json::value_t::string:
      return parse_alert_time_text(v.get_ref<const std::string&>(), what);
    case json::value_t::number_unsigned:
      return parse_epoch_text(std::to_string(v.get<std::uint64_t>()), what);
    case json::value_t::number_integer: {
      auto i = v.get<std::int64_t>();
      if (i < 0) bad_time(what, std::to_string(i), "before 1970");
      return parse_epoch_text(std::to_string(i), what);
    }
    case json::value_t::number_float:
      return parse_epoch_double(v.get<double>(), what);
    default:
      throw AlertParseError(what + ": expected a time, got " + std::string(v.type_name()));
  }
}

std::string find_technique(std::string_view text) {
  for (std::size_t i = 0; i + 5 <= text.size(); ++i) {
    if (text[i] != 'T' && text[i] != 't') continue;
    if (i > 0 && is_alnum(text[i - 1])) continue;
    if (!all_of(text.substr(i + 1, 4), is_digit)) continue;
    std::size_t end = i + 5;
    if (end < text.size() && is_alnum(text[end])) continue;
    std::string id = "T" + std::string(text.substr(i + 1, 4));
    bool sub = end + 4 <= text.size() && text[end] == '.' &&
               all_of(text.substr(end + 1, 3), is_digit) &&
               (end + 4 == text.size() || !is_alnum(text[end + 4]));
    if (sub) id += text.substr(end, 4);
    return id;
  }
  return {};
}

std::string alert_key(const Alert& a) {
  return a.source + ":" + (a.id.empty() ? common::to_hex(common::sha256(a.text)) : a.id);
}

std::int64_t time_resolution_ns(std::int64_t ns) {
  if (ns == 0) return 0;
  for (std::int64_t unit : {1'000'000'000LL, 1'000'000LL, 1'000LL})
    if (ns % unit == 0) return unit;
  return 1;
}

std::string neutralise_controls(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return out;
}

std::string canonical_address(std::string_view s) {
  constexpr std::size_t kMaxAddressText = 64;
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  if (auto pct = s.find('%'); pct != std::string_view::npos) s = s.substr(0, pct);
  if (s.empty() || s.size() > kMaxAddressText) return {};
  boost::system::error_code ec;
  auto a = boost::asio::ip::make_address(std::string(s), ec);
  if (ec) return {};
  if (a.is_v6() && a.to_v6().is_v4_mapped())
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6()).to_string();
  return a.to_string();
}

}  // namespace tocsin::collector
