#include "collector/alerts/syslog.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <utility>

namespace tocsin::collector {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

constexpr std::int64_t kNsPerSec = 1'000'000'000;
constexpr std::string_view kBom = "\xEF\xBB\xBF";
constexpr std::array<std::string_view, 8> kSeverityNames = {"emerg",   "alert",  "crit", "err",
                                                            "warning", "notice", "info", "debug"};

[[noreturn]] void fail(const std::string& what) {
  throw AlertParseError(what);
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = lower(c);
  return out;
}

// The longest prefix of at most `n` bytes that does not split a UTF-8 character.
std::string_view utf8_prefix(std::string_view s, std::size_t n) {
  if (s.size() <= n) return s;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  auto b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

// Everything downstream (the store, JSON output) needs valid UTF-8; a sender's stray Latin-1
// byte must not make an alert unstorable, so each invalid byte becomes U+FFFD.
std::string valid_utf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    auto c = static_cast<unsigned char>(in[i]);
    std::size_t len = c < 0x80         ? 1
                      : (c >> 5) == 6  ? 2
                      : (c >> 4) == 14 ? 3
                      : (c >> 3) == 30 ? 4
                                       : 0;
    bool ok = len > 0 && i + len <= in.size();
    for (std::size_t k = 1; ok && k < len; ++k)
      ok = (static_cast<unsigned char>(in[i + k]) & 0xC0) == 0x80;
    if (ok && len > 1) {  // no overlong forms, surrogates or code points past U+10FFFF
      auto c1 = static_cast<unsigned char>(in[i + 1]);
      if (len == 2) ok = c >= 0xC2;
      if (len == 3) ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
      if (len == 4) ok = c <= 0xF4 && !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(in.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

// Hostile text inside an error message: bounded and without control characters.
std::string quote(std::string_view s) {
  constexpr std::size_t kMax = 64;
  auto shown = utf8_prefix(s, kMax);
  std::string out = "'";
  for (char c : shown) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (shown.size() < s.size()) out += "...";
  return valid_utf8(out + "'");  // one byte quoted from a multi-byte character is not valid
}

const std::string* find_field(const Fields& f, std::initializer_list<std::string_view> keys) {
  for (auto key : keys)
    for (const auto& [k, v] : f)
      if (k == key && !v.empty()) return &v;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Times

struct CivilTime {
  int year = -1;  // -1: not given (BSD syslog); the year closest to the arrival is taken
  int month = 0, day = 0, hour = 0, minute = 0, second = 0;
  std::int64_t nanos = 0;
  std::int64_t offset_s = 0;  // east of UTC; no zone in the text means UTC
};

std::optional<std::int64_t> days_from_civil(int y, int m, int d) {
  using namespace std::chrono;
  if (m < 1 || m > 12 || d < 1 || d > 31) return std::nullopt;
  year_month_day ymd{year{y}, month{static_cast<unsigned>(m)}, day{static_cast<unsigned>(d)}};
  if (!ymd.ok()) return std::nullopt;
  return sys_days(ymd).time_since_epoch().count();
}

int year_of(std::int64_t ns) {
  using namespace std::chrono;
  auto days = ns / (86400 * kNsPerSec) - (ns < 0 && ns % (86400 * kNsPerSec) != 0 ? 1 : 0);
  return static_cast<int>(year_month_day{sys_days{std::chrono::days{days}}}.year());
}

std::int64_t to_epoch_ns(const CivilTime& t, std::int64_t arrival_ns, const std::string& what) {
  if (t.hour > 23 || t.minute > 59 || t.second > 60) fail(what + ": time of day out of range");
  auto at = [&](int y) -> std::optional<std::int64_t> {
    auto days = days_from_civil(y, t.month, t.day);
    if (!days) return std::nullopt;
    std::int64_t secs = *days * 86400 + t.hour * 3600 + t.minute * 60 + t.second - t.offset_s;
    return secs * kNsPerSec + t.nanos;
  };
  if (t.year >= 0) {
    // int64 nanoseconds end in 2262; anything far outside this range is a sender's bug.
    if (t.year < 1900 || t.year > 2200)
      fail(what + ": year " + std::to_string(t.year) + " out of range");
    auto ns = at(t.year);
    if (!ns) fail(what + ": no such date");
    return *ns;
  }
  // No year (BSD syslog): the candidate nearest the arrival, so a Dec 31 message arriving
  // on Jan 1 lands in the old year.
  std::optional<std::int64_t> best;
  int y0 = year_of(arrival_ns);
  for (int y : {y0 - 1, y0, y0 + 1}) {
    auto ns = at(y);
    if (ns && (!best || std::llabs(*ns - arrival_ns) < std::llabs(*best - arrival_ns))) best = ns;
  }
  if (!best) fail(what + ": no such date");
  return *best;
}

class Scanner {
 public:
  explicit Scanner(std::string_view s) : s_(s) {}
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  std::size_t pos() const { return pos_; }
  bool eat(char c) {
    if (peek() != c || at_end()) return false;
    ++pos_;
    return true;
  }
  void skip_spaces() {
    while (!at_end() && s_[pos_] == ' ') ++pos_;
  }
  // min..max decimal digits; `digits` tells how many were read.
  std::optional<std::int64_t> number(std::size_t min, std::size_t max,
                                     std::size_t* digits = nullptr) {
    std::size_t n = 0;
    std::int64_t v = 0;
    while (n < max && pos_ + n < s_.size() && is_digit(s_[pos_ + n]))
      v = v * 10 + (s_[pos_ + n++] - '0');
    if (n < min) return std::nullopt;
    pos_ += n;
    if (digits) *digits = n;
    return v;
  }
  std::string_view letters() {
    auto start = pos_;
    while (!at_end() && is_alpha(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }

 private:
  std::string_view s_;
  std::size_t pos_ = 0;
};

std::optional<int> month_from_name(std::string_view word) {
  static constexpr std::array<std::string_view, 12> kNames = {
      "january", "february", "march",     "april",   "may",      "june",
      "july",    "august",   "september", "october", "november", "december"};
  for (int m = 0; m < 12; ++m) {
    auto full = kNames[m];
    if ((word.size() == 3 && iequals(word, full.substr(0, 3))) || iequals(word, full)) return m + 1;
  }
  return std::nullopt;
}

// Seconds east of UTC: "Z", "UTC", "GMT", "+01:00", "-0530", "+01", "GMT+01:00", and a few
// unambiguous abbreviations SIEM appliances print.
std::optional<std::int64_t> parse_zone(Scanner& in) {
  static constexpr std::array<std::pair<std::string_view, int>, 16> kAbbrev = {{
      {"EST", -5},
      {"EDT", -4},
      {"CST", -6},
      {"CDT", -5},
      {"MST", -7},
      {"MDT", -6},
      {"PST", -8},
      {"PDT", -7},
      {"CET", 1},
      {"CEST", 2},
      {"EET", 2},
      {"EEST", 3},
      {"WET", 0},
      {"WEST", 1},
      {"JST", 9},
      {"AEST", 10},
  }};
  auto word = in.letters();
  if (!word.empty()) {
    if (!iequals(word, "Z") && !iequals(word, "UTC") && !iequals(word, "GMT") &&
        !iequals(word, "UT")) {
      for (auto [name, hours] : kAbbrev)
        if (iequals(word, name)) return hours * 3600;
      return std::nullopt;
    }
    if (in.peek() != '+' && in.peek() != '-') return 0;
  }
  int sign = in.eat('-') ? -1 : (in.eat('+') ? 1 : 0);
  if (sign == 0) return std::nullopt;
  std::size_t digits = 0;
  auto hh = in.number(1, 4, &digits);
  if (!hh) return std::nullopt;
  std::int64_t h = *hh, m = 0;
  if (digits > 2) {  // "+0530"
    h = *hh / 100;
    m = *hh % 100;
  } else if (in.eat(':')) {
    auto mm = in.number(2, 2);
    if (!mm) return std::nullopt;
    m = *mm;
  }
  if (h > 23 || m > 59) return std::nullopt;
  return sign * (h * 3600 + m * 60);
}

struct TimeMatch {
  CivilTime t;
  std::size_t end = 0;  // bytes of the value the pattern consumed
};

// A Java SimpleDateFormat pattern (LEEF's devTimeFormat is one) matched against the start of
// `value`. A space in the pattern also takes padding ("Jan  5"). Unknown letters set `why`.
std::optional<TimeMatch> match_time_pattern(std::string_view value, std::string_view pattern,
                                            std::string& why) {
  Scanner in(value);
  CivilTime t;
  int hour12 = -1;
  bool pm = false;
  for (std::size_t p = 0; p < pattern.size();) {
    char c = pattern[p];
    if (c == '\'') {  // quoted literal; '' is a quote
      ++p;
      if (p < pattern.size() && pattern[p] == '\'') {
        if (!in.eat('\'')) return std::nullopt;
        ++p;
        continue;
      }
      for (; p < pattern.size() && pattern[p] != '\''; ++p)
        if (!in.eat(pattern[p])) return std::nullopt;
      ++p;
      continue;
    }
    if (!is_alpha(c)) {
      if (!in.eat(c)) return std::nullopt;
      if (c == ' ') in.skip_spaces();
      ++p;
      continue;
    }
    std::size_t n = 1;
    while (p + n < pattern.size() && pattern[p + n] == c) ++n;
    p += n;
    // Abutting numeric fields ("yyyyMMdd") take exactly their width.
    bool abutting = p < pattern.size() && is_alpha(pattern[p]);
    std::size_t digits = 0;
    auto num = [&](std::size_t max) {
      return abutting ? in.number(n, n, &digits) : in.number(1, std::max(n, max), &digits);
    };
    std::optional<std::int64_t> v;
    switch (c) {
      case 'y':
        if (!(v = num(4))) return std::nullopt;
        t.year = static_cast<int>(n == 2 && digits == 2 ? 2000 + *v : *v);
        break;
      case 'M':
        if (n >= 3) {
          auto m = month_from_name(in.letters());
          if (!m) return std::nullopt;
          t.month = *m;
        } else {
          if (!(v = num(2))) return std::nullopt;
          t.month = static_cast<int>(*v);
        }
        break;
      case 'd':
        if (!(v = num(2))) return std::nullopt;
        t.day = static_cast<int>(*v);
        break;
      case 'H':
      case 'k':
        if (!(v = num(2))) return std::nullopt;
        t.hour = static_cast<int>(c == 'k' && *v == 24 ? 0 : *v);
        break;
      case 'h':
      case 'K':
        if (!(v = num(2)) || *v > 12) return std::nullopt;
        hour12 = static_cast<int>(*v % 12);
        break;
      case 'm':
        if (!(v = num(2))) return std::nullopt;
        t.minute = static_cast<int>(*v);
        break;
      case 's':
        if (!(v = num(2))) return std::nullopt;
        t.second = static_cast<int>(*v);
        break;
      case 'S':
        if (!(v = num(9))) return std::nullopt;
        t.nanos = *v;
        for (auto k = digits; k < 9; ++k) t.nanos *= 10;
        break;
      case 'a': {
        auto w = in.letters();
        if (!iequals(w, "AM") && !iequals(w, "PM")) return std::nullopt;
        pm = iequals(w, "PM");
        break;
      }
      case 'E':
        if (in.letters().empty()) return std::nullopt;
        break;
      case 'z':
      case 'Z':
      case 'X': {
        auto off = parse_zone(in);
        if (!off) return std::nullopt;
        t.offset_s = *off;
        break;
      }
      default:
        why = std::string("unsupported pattern letter '") + c + "'";
        return std::nullopt;
    }
  }
  if (hour12 >= 0) t.hour = hour12 + (pm ? 12 : 0);
  return TimeMatch{t, in.pos()};
}

std::int64_t parse_with_pattern(std::string_view value, std::string_view pattern,
                                std::int64_t arrival_ns, const std::string& what) {
  std::string why;
  auto m = match_time_pattern(value, pattern, why);
  if (!why.empty()) fail(what + ": format " + quote(pattern) + ": " + why);
  if (!m || m->end != value.size())
    fail(what + ": " + quote(value) + " does not match the format " + quote(pattern));
  return to_epoch_ns(m->t, arrival_ns, what);
}

// The shapes ArcSight and QRadar print besides epoch milliseconds and ISO 8601.
constexpr std::array<std::string_view, 8> kMonthFirstFormats = {
    "MMM dd yyyy HH:mm:ss.SSS zzz", "MMM dd yyyy HH:mm:ss.SSS", "MMM dd yyyy HH:mm:ss zzz",
    "MMM dd yyyy HH:mm:ss",         "MMM dd HH:mm:ss.SSS zzz",  "MMM dd HH:mm:ss.SSS",
    "MMM dd HH:mm:ss zzz",          "MMM dd HH:mm:ss"};

// A time in a CEF/LEEF field: epoch milliseconds, "MMM dd [yyyy] HH:mm:ss[.SSS][ zone]", or
// ISO 8601.
std::int64_t parse_field_time(std::string_view value, const std::string& what,
                              std::int64_t arrival_ns) {
  value = trim(value);
  if (value.empty()) fail(what + ": empty time");
  if (!is_alpha(value[0])) return parse_alert_time_text(value, what);
  for (auto format : kMonthFirstFormats) {
    std::string why;
    auto m = match_time_pattern(value, format, why);
    if (m && m->end == value.size()) return to_epoch_ns(m->t, arrival_ns, what);
  }
  fail(what + ": " + quote(value) + " is not a time");
}

// ---------------------------------------------------------------------------------------------
// Syslog headers

struct Header {
  int pri = -1;           // -1: none
  std::string host, app;  // HOSTNAME; APP-NAME (RFC 5424) or TAG (RFC 3164)
  std::int64_t time_ns = 0;
  Fields params;         // RFC 5424 structured data
  std::string_view msg;  // what follows the header
};

int parse_pri(std::string_view s, std::size_t& pos) {
  std::size_t i = 1;  // s[0] == '<'
  while (i < s.size() && i <= 4 && is_digit(s[i])) ++i;
  auto digits = s.substr(1, i - 1);
  if (digits.size() > 3) fail("bad PRI: more than 3 digits");
  if (i >= s.size() || s[i] != '>') {
    if (digits.empty()) fail("bad PRI: '<' is not followed by a number");
    fail("bad PRI: no '>' after <" + std::string(digits));
  }
  if (digits.empty()) fail("bad PRI: empty '<>'");
  int pri = std::stoi(std::string(digits));
  if (pri > 191) fail("bad PRI: " + std::string(digits) + " is above 191");
  pos = i + 1;
  return pri;
}

std::string_view header_field(std::string_view s, std::size_t& pos, const std::string& name) {
  if (pos >= s.size()) fail("truncated RFC 5424 header: no " + name);
  auto end = std::min(s.find(' ', pos), s.size());
  if (end == pos) fail("RFC 5424 header: empty " + name);
  auto field = s.substr(pos, end - pos);
  pos = end < s.size() ? end + 1 : end;
  return field;
}

std::string nil_to_empty(std::string_view v) {
  return v == "-" ? std::string() : std::string(v);
}

void parse_sd_element(std::string_view s, std::size_t& pos, Fields& out) {
  ++pos;  // '['
  auto id_end = s.find_first_of(" ]", pos);
  if (id_end == std::string_view::npos) fail("RFC 5424 STRUCTURED-DATA: unterminated element");
  if (id_end == pos) fail("RFC 5424 STRUCTURED-DATA: empty SD-ID");
  auto id = s.substr(pos, id_end - pos);
  pos = id_end;
  while (pos < s.size() && s[pos] == ' ') {
    ++pos;
    auto eq = s.find('=', pos);
    if (eq == std::string_view::npos)
      fail("RFC 5424 STRUCTURED-DATA: unterminated element " + quote(id));
    auto name = s.substr(pos, eq - pos);
    if (name.empty() || name.find_first_of(" ]\"") != std::string_view::npos)
      fail("RFC 5424 STRUCTURED-DATA: bad PARAM-NAME " + quote(name) + " in " + quote(id));
    pos = eq + 1;
    if (pos >= s.size() || s[pos] != '"')
      fail("RFC 5424 STRUCTURED-DATA: value of " + quote(name) + " is not quoted");
    ++pos;
    std::string value;
    bool closed = false;
    while (pos < s.size() && !closed) {
      char c = s[pos++];
      if (c == '\\' && pos < s.size() && (s[pos] == '"' || s[pos] == '\\' || s[pos] == ']'))
        value += s[pos++];
      else if (c == '"')
        closed = true;
      else
        value += c;  // a backslash before anything else is kept, as RFC 5424 says
    }
    if (!closed) fail("RFC 5424 STRUCTURED-DATA: unterminated value of " + quote(name));
    out.emplace_back(std::string(name), std::move(value));
  }
  if (pos >= s.size()) fail("RFC 5424 STRUCTURED-DATA: unterminated element " + quote(id));
  if (s[pos] != ']')
    fail("RFC 5424 STRUCTURED-DATA: expected ']' in " + quote(id) + ", got " +
         quote(s.substr(pos, 1)));
  ++pos;
}

// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`, from just after "1 ".
void parse_rfc5424(std::string_view s, std::size_t pos, Header& h) {
  auto ts = header_field(s, pos, "TIMESTAMP");
  h.host = nil_to_empty(header_field(s, pos, "HOSTNAME"));
  h.app = nil_to_empty(header_field(s, pos, "APP-NAME"));
  header_field(s, pos, "PROCID");
  header_field(s, pos, "MSGID");
  if (ts != "-") h.time_ns = parse_alert_time_text(ts, "RFC 5424 TIMESTAMP");
  if (pos >= s.size()) fail("truncated RFC 5424 header: no STRUCTURED-DATA");
  if (s[pos] == '-') {
    ++pos;
  } else if (s[pos] == '[') {
    while (pos < s.size() && s[pos] == '[') parse_sd_element(s, pos, h.params);
  } else {
    fail("RFC 5424 STRUCTURED-DATA: expected '-' or '[', got " + quote(s.substr(pos, 1)));
  }
  if (pos < s.size() && s[pos] != ' ')
    fail("RFC 5424: expected a space after STRUCTURED-DATA, got " + quote(s.substr(pos, 1)));
  h.msg = pos < s.size() ? s.substr(pos + 1) : std::string_view();
}

bool starts_payload(std::string_view s) {
  return s.starts_with("CEF:") || s.starts_with("LEEF:");
}

bool looks_iso(std::string_view s) {
  return s.size() > 10 && is_digit(s[0]) && is_digit(s[1]) && is_digit(s[2]) && is_digit(s[3]) &&
         s[4] == '-' && is_digit(s[5]);
}

// A TAG ends in ':' ("sshd[42]:", "su:"); "sshd[42]" without the colon is tolerated.
bool is_tag(std::string_view tok) {
  if (tok.size() > 1 && tok.back() == ':') return true;
  auto open = tok.find('[');
  return open != std::string_view::npos && open > 0 && tok.back() == ']';
}

std::string tag_name(std::string_view tok) {
  return std::string(tok.substr(0, tok.find_first_of("[:")));
}

std::string_view next_token(std::string_view s) {
  return s.substr(0, std::min(s.find(' '), s.size()));
}

std::string_view skip_spaces(std::string_view s) {
  auto b = s.find_first_not_of(' ');
  return b == std::string_view::npos ? std::string_view() : s.substr(b);
}

// The timestamp at the start of an RFC 3164 header; returns the bytes it took, 0 if none.
std::size_t bsd_timestamp(std::string_view s, std::int64_t arrival_ns, Header& h) {
  static constexpr std::array<std::string_view, 3> kFormats = {
      "MMM dd HH:mm:ss.SSS", "MMM dd HH:mm:ss", "MMM dd yyyy HH:mm:ss"};
  if (looks_iso(s)) {  // rsyslog's RSYSLOG_ForwardFormat and friends
    auto tok = next_token(s);
    h.time_ns = parse_alert_time_text(tok, "RFC 3164 TIMESTAMP");
    return tok.size();
  }
  if (s.empty() || !is_alpha(s[0])) return 0;
  for (auto format : kFormats) {
    std::string why;
    auto m = match_time_pattern(s, format, why);
    if (m && (m->end == s.size() || s[m->end] == ' ')) {
      h.time_ns = to_epoch_ns(m->t, arrival_ns, "RFC 3164 TIMESTAMP");
      return m->end;
    }
  }
  return 0;
}

// `[<PRI>]Mmm dd hh:mm:ss HOST TAG: MSG`, tolerating a missing HOST or TAG. Text with no
// timestamp is all MSG: the header is optional for our purpose, the marker is not.
void parse_rfc3164(std::string_view s, std::int64_t arrival_ns, Header& h) {
  auto used = bsd_timestamp(s, arrival_ns, h);
  if (used == 0) {
    h.msg = s;
    return;
  }
  auto rest = skip_spaces(s.substr(used));
  for (int field = 0; field < 2 && !rest.empty() && !starts_payload(rest); ++field) {
    auto tok = next_token(rest);
    if (is_tag(tok)) {
      h.app = tag_name(tok);
      rest = tok.size() < rest.size() ? rest.substr(tok.size() + 1) : std::string_view();
      break;
    }
    if (field == 1) break;  // no TAG: the rest is the message
    h.host = std::string(tok);
    rest = skip_spaces(rest.substr(tok.size()));
  }
  h.msg = rest;
}

Header parse_header(std::string_view s, std::int64_t arrival_ns) {
  Header h;
  std::size_t pos = 0;
  if (s[0] == '<') {
    h.pri = parse_pri(s, pos);
    if (pos >= s.size()) fail("nothing after the PRI");
    // "1 " after the PRI is RFC 5424's VERSION; a BSD or ISO timestamp never looks like that.
    if (s.substr(pos).starts_with("1 ")) {
      parse_rfc5424(s, pos + 2, h);
      return h;
    }
  }
  parse_rfc3164(s.substr(pos), arrival_ns, h);
  return h;
}

// ---------------------------------------------------------------------------------------------
// CEF and LEEF payloads

struct Payload {
  std::string host, rule, severity, technique;
  std::int64_t event_ns = 0, ingest_ns = 0;
};

// '|'-separated header fields with `\|` and `\\` escaped. Returns the fields that a '|'
// terminated (at most `count`); `rest` is what follows the last of them.
std::vector<std::string> split_header(std::string_view s, std::size_t count,
                                      std::string_view& rest) {
  std::vector<std::string> fields;
  std::string cur;
  std::size_t i = 0, field_start = 0;
  while (i < s.size() && fields.size() < count) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size() && (s[i + 1] == '|' || s[i + 1] == '\\')) {
      cur += s[i + 1];
      i += 2;
    } else if (c == '|') {
      fields.push_back(std::move(cur));
      cur.clear();
      field_start = ++i;
    } else {
      cur += c;
      ++i;
    }
  }
  rest = s.substr(field_start);  // an unterminated last field stays in `rest`
  return fields;
}

bool is_key_char(char c) {
  return is_alpha(c) || is_digit(c) || c == '_' || c == '.' || c == '-';
}

std::string cef_unescape(std::string_view v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] != '\\' || i + 1 == v.size()) {
      out += v[i];
      continue;
    }
    char n = v[++i];
    if (n == 'n')
      out += '\n';
    else if (n == 'r')
      out += '\r';
    else if (n == '=' || n == '\\' || n == '|')
      out += n;
    else
      out.append({'\\', n});
  }
  return out;
}

// "k1=v1 k2=some value k3=v3": a value runs until the space before the next `key=`, so
// values keep their spaces. An escaped `\=` never starts a key ('\' is not a key character).
Fields parse_key_values(std::string_view ext, bool unescape) {
  std::vector<std::pair<std::size_t, std::size_t>> keys;  // (key start, '=' position)
  for (std::size_t i = 0; i < ext.size(); ++i) {
    if (i > 0 && ext[i - 1] != ' ') continue;
    std::size_t j = i;
    while (j < ext.size() && is_key_char(ext[j])) ++j;
    if (j > i && j < ext.size() && ext[j] == '=') keys.emplace_back(i, j);
  }
  Fields out;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    auto [start, eq] = keys[k];
    std::size_t end = k + 1 < keys.size() ? keys[k + 1].first - 1 : ext.size();
    auto value = ext.substr(eq + 1, end - eq - 1);
    value = value.substr(0, value.find_last_not_of(" \t\r\n") + 1);
    out.emplace_back(std::string(ext.substr(start, eq - start)),
                     unescape ? cef_unescape(value) : std::string(value));
  }
  return out;
}

bool is_technique_key(std::string_view key) {
  return lowercase(key).find("technique") != std::string::npos;
}

bool is_technique_label(std::string_view label) {
  auto l = lowercase(label);
  for (std::string_view word : {"technique", "mitre", "att&ck", "attack"})
    if (l.find(word) != std::string::npos) return true;
  return false;
}

// An explicitly labelled technique ("technique=T1105", "cs2Label=MITRE Technique cs2=T1105"),
// checked to be an ATT&CK id; "" if there is none.
std::string technique_from_fields(const Fields& f) {
  for (const auto& [k, v] : f)
    if (is_technique_key(k))
      if (auto t = find_technique(v); !t.empty()) return t;
  for (const auto& [k, v] : f) {
    if (!k.ends_with("Label") || !is_technique_label(v)) continue;
    if (const auto* value = find_field(f, {std::string_view(k).substr(0, k.size() - 5)}))
      if (auto t = find_technique(*value); !t.empty()) return t;
  }
  return "";
}

Payload parse_cef(std::string_view msg, std::int64_t arrival_ns) {
  std::string_view ext;
  auto h = split_header(msg.substr(4), 7, ext);  // "CEF:"
  if (h.size() < 6)
    fail("truncated CEF header: " + std::to_string(h.size() + 1) +
         " of the 7 fields Version|Device Vendor|Device Product|Device Version|"
         "Device Event Class ID|Name|Severity");
  if (h.size() == 6) {  // no extension, and no '|' after Severity
    h.emplace_back(ext);
    ext = {};
  }
  if (h[0].empty() || !is_digit(h[0][0])) fail("CEF version " + quote(h[0]) + " is not a number");
  auto f = parse_key_values(ext, true);
  Payload p;
  p.rule = !h[5].empty() ? h[5] : h[4];
  p.severity = std::string(trim(h[6]));
  if (const auto* host = find_field(f, {"dvchost", "deviceHostName", "shost", "sourceHostName",
                                        "dhost", "destinationHostName"}))
    p.host = *host;
  p.technique = technique_from_fields(f);
  // start is when the activity began; rt (deviceReceiptTime) when the device logged it;
  // art (agentReceiptTime) is when the SIEM's connector received it -- its ingest time.
  for (std::string_view key : {"start", "startTime", "rt", "deviceReceiptTime", "end", "endTime"}) {
    if (const auto* v = find_field(f, {key})) {
      p.event_ns = parse_field_time(*v, "CEF " + std::string(key), arrival_ns);
      break;
    }
  }
  for (std::string_view key : {"art", "agentReceiptTime"}) {
    if (const auto* v = find_field(f, {key})) {
      p.ingest_ns = parse_field_time(*v, "CEF " + std::string(key), arrival_ns);
      break;
    }
  }
  return p;
}

// LEEF 2.0's delimiter field: one character, or its code as "x09" / "0x5E"; empty is tab.
std::optional<std::string> leef_delimiter(std::string_view spec) {
  if (spec.empty()) return "\t";
  if (spec.size() == 1) return std::string(spec);
  auto hex = spec;
  if (hex.starts_with("0x") || hex.starts_with("0X"))
    hex.remove_prefix(2);
  else if (hex[0] == 'x' || hex[0] == 'X')
    hex.remove_prefix(1);
  if (hex.empty() || hex.size() > 4 || hex.size() == spec.size()) {
    // One multi-byte UTF-8 character ("¦") is a delimiter too.
    auto c = static_cast<unsigned char>(spec[0]);
    std::size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    return len == spec.size() ? std::optional<std::string>(spec) : std::nullopt;
  }
  unsigned code = 0;
  for (char c : hex) {
    int d = is_digit(c) ? c - '0' : (lower(c) >= 'a' && lower(c) <= 'f') ? lower(c) - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    code = code * 16 + static_cast<unsigned>(d);
  }
  if (code == 0) return std::nullopt;
  std::string out;  // UTF-8 of the code point
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
  return out;
}

Fields split_leef_attributes(std::string_view attrs, const std::string& delim) {
  // Some senders separate LEEF attributes with spaces despite the spec; CEF's rule reads them.
  if (delim == "\t" && attrs.find('\t') == std::string_view::npos)
    return parse_key_values(attrs, false);
  Fields out;
  std::size_t pos = 0;
  while (pos <= attrs.size()) {
    auto end = std::min(attrs.find(delim, pos), attrs.size());
    auto item = attrs.substr(pos, end - pos);
    auto eq = item.find('=');
    if (eq != std::string_view::npos && eq > 0)
      out.emplace_back(std::string(trim(item.substr(0, eq))),
                       std::string(trim(item.substr(eq + 1))));
    pos = end + delim.size();
  }
  return out;
}

Payload parse_leef(std::string_view msg, std::int64_t arrival_ns) {
  std::string_view rest;
  auto h =
      split_header(msg.substr(5), 5, rest);  // "LEEF:"; Version|Vendor|Product|Version|EventID|
  if (h.size() == 4 &&
      rest.find('=') == std::string_view::npos) {  // "...|EventID" and nothing else
    h.emplace_back(rest);
    rest = {};
  }
  if (h.size() < 5)
    fail("truncated LEEF header: " + std::to_string(h.size() + 1) +
         " of the 5 fields Version|Vendor|Product|Version|EventID");
  if (h[0].empty() || !is_digit(h[0][0])) fail("LEEF version " + quote(h[0]) + " is not a number");
  std::string delim = "\t";
  if (h[0][0] >= '2') {  // LEEF 2.0 may name its delimiter in one more field
    auto bar = rest.find('|');
    if (bar != std::string_view::npos && bar <= 6)
      if (auto d = leef_delimiter(rest.substr(0, bar))) {
        delim = *d;
        rest = rest.substr(bar + 1);
      }
  }
  auto f = split_leef_attributes(rest, delim);
  Payload p;
  p.rule = h[4];
  if (const auto* sev = find_field(f, {"sev", "severity"})) p.severity = *sev;
  // devName is the usual; src is an address, not a host name, so it never stands in for one.
  if (const auto* host = find_field(
          f, {"devName", "identHostName", "srcHostName", "hostname", "host", "dvchost", "shost"}))
    p.host = *host;
  p.technique = technique_from_fields(f);
  if (const auto* t = find_field(f, {"devTime"})) {
    const auto* format = find_field(f, {"devTimeFormat"});
    p.event_ns = format ? parse_with_pattern(trim(*t), *format, arrival_ns, "LEEF devTime")
                        : parse_field_time(*t, "LEEF devTime", arrival_ns);
  }
  return p;
}

std::string_view trim_trailer(std::string_view s) {
  auto end = s.find_last_not_of(std::string_view(" \t\r\n\0", 5));
  return end == std::string_view::npos ? std::string_view() : s.substr(0, end + 1);
}

std::string_view strip_bom(std::string_view s) {
  if (s.starts_with(kBom)) s.remove_prefix(kBom.size());
  return s;
}

}  // namespace

namespace detail {
std::vector<std::pair<std::string, std::string>> cef_extension_fields(std::string_view extension) {
  return parse_key_values(extension, true);
}
}  // namespace detail

Alert parse_syslog(std::string_view message, const AlertSourceConfig& src,
                   std::int64_t arrival_ns) {
  auto trimmed = trim_trailer(message);
  if (trimmed.empty()) fail("empty message");
  const std::string clean = valid_utf8(trimmed);
  std::string_view s = clean;
  Header h = parse_header(s, arrival_ns);

  Alert a;
  a.source = src.name;
  a.source_type = source_type_name(src.type);
  a.is_event = src.events;
  a.arrival_ns = arrival_ns;
  a.text = std::string(utf8_prefix(s, kMaxAlertText));
  a.host = h.host;
  a.rule = h.app;
  if (h.pri >= 0) a.severity = std::string(kSeverityNames[h.pri & 7]);

  Payload p;
  auto body = skip_spaces(strip_bom(h.msg));
  if (body.starts_with("CEF:"))
    p = parse_cef(body, arrival_ns);
  else if (body.starts_with("LEEF:"))
    p = parse_leef(body, arrival_ns);
  if (!p.host.empty()) a.host = p.host;
  if (!p.rule.empty()) a.rule = p.rule;
  if (!p.severity.empty()) a.severity = p.severity;
  a.technique = !p.technique.empty() ? p.technique : technique_from_fields(h.params);
  if (a.technique.empty()) a.technique = find_technique(a.text);

  // Whose clock is the header's? A source that delivers alerts is the SIEM writing its own
  // message: the header time is when it created the alert, and only the payload can say when
  // the activity happened (0 if it does not -- never the alert's time, which would hide the
  // rule latency). A source that delivers events relays the logging device's header: there
  // the header time is the event's own time, the fallback when the payload has none.
  a.ingest_ns = p.ingest_ns;
  if (src.events) {
    a.event_ns = p.event_ns != 0 ? p.event_ns : h.time_ns;
  } else {
    a.event_ns = p.event_ns;
    a.created_ns = h.time_ns;
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// SyslogFramer

SyslogFramer::SyslogFramer(std::size_t max_message)
    : max_message_(max_message), max_len_digits_(std::to_string(max_message).size()) {}

SyslogFramer::Result SyslogFramer::fail(std::string reason, std::string error) {
  broken_ = true;
  buf_.clear();
  buf_.shrink_to_fit();
  Result r;
  r.reason = std::move(reason);
  r.error = std::move(error);
  return r;
}

SyslogFramer::Result SyslogFramer::feed(std::string_view bytes) {
  if (broken_) return {};
  buf_.append(bytes);
  Result r;
  std::size_t pos = 0;
  // Bytes of a pending line already known to hold no terminator: a sender trickling a long
  // line byte by byte must not make every feed rescan it.
  std::size_t resume = std::exchange(scanned_, 0);
  constexpr std::string_view kTerminators("\n\0", 2);
  for (;;) {
    while (pos < buf_.size() && (buf_[pos] == '\n' || buf_[pos] == '\r' || buf_[pos] == '\0'))
      ++pos;
    if (pos == buf_.size()) break;
    if (is_digit(buf_[pos])) {  // RFC 6587 octet counting: "LEN SP MSG"
      std::size_t i = pos;
      while (i < buf_.size() && is_digit(buf_[i]) && i - pos <= max_len_digits_) ++i;
      auto digits = std::string_view(buf_).substr(pos, i - pos);
      if (digits.size() > max_len_digits_) {
        auto e = fail("oversized", "octet count " + quote(digits) + " exceeds the " +
                                       std::to_string(max_message_) + "-byte message limit");
        e.messages = std::move(r.messages);
        return e;
      }
      if (i == buf_.size()) break;
      if (buf_[i] != ' ' || digits[0] == '0') {
        auto e = fail("malformed", "octet count " + quote(buf_.substr(pos, i - pos + 1)) +
                                       " is not LEN SP (a digit starts an octet-counted frame)");
        e.messages = std::move(r.messages);
        return e;
      }
      auto len = std::stoull(std::string(digits));
      if (len > max_message_) {
        auto e = fail("oversized", "octet-counted frame of " + std::to_string(len) +
                                       " bytes exceeds the " + std::to_string(max_message_) +
                                       "-byte message limit");
        e.messages = std::move(r.messages);
        return e;
      }
      if (buf_.size() - (i + 1) < len) break;
      r.messages.push_back(buf_.substr(i + 1, len));
      pos = i + 1 + len;
    } else {  // non-transparent framing: up to LF (or NUL), CR before it dropped
      auto end = buf_.find_first_of(kTerminators, pos == 0 ? resume : pos);
      std::size_t len = (end == std::string::npos ? buf_.size() : end) - pos;
      if (len > max_message_) {
        auto e = fail("oversized", "line of more than " + std::to_string(max_message_) +
                                       " bytes (the message limit) without a newline");
        e.messages = std::move(r.messages);
        return e;
      }
      if (end == std::string::npos) {
        scanned_ = len;  // offsets after the erase below, which moves this line to the front
        break;
      }
      auto line = std::string_view(buf_).substr(pos, len);
      if (line.ends_with('\r')) line.remove_suffix(1);
      if (!line.empty()) r.messages.emplace_back(line);
      pos = end + 1;
    }
  }
  buf_.erase(0, pos);
  return r;
}

SyslogFramer::Result SyslogFramer::finish() {
  if (broken_) return {};
  auto start = buf_.find_first_not_of(std::string_view("\n\r\0", 3));
  if (start == std::string::npos) {
    buf_.clear();
    scanned_ = 0;
    return {};
  }
  if (is_digit(buf_[start]))
    return fail("malformed", "connection closed inside an octet-counted frame (" +
                                 std::to_string(buf_.size() - start) + " bytes buffered)");
  Result r;
  std::string_view line = std::string_view(buf_).substr(start);
  if (line.ends_with('\r')) line.remove_suffix(1);
  if (!line.empty()) r.messages.emplace_back(line);
  buf_.clear();
  scanned_ = 0;
  return r;
}

}  // namespace tocsin::collector
