#include <algorithm>
#include <string_view>

#include "common/text.hpp"

namespace tocsin::common {

std::string quote_hostile(std::string_view s, std::size_t max) {
  std::string out;
  out.reserve(std::min(s.size(), max) + 3);
  for (char c : s.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > max) out += "...";
  return out;
}

std::string csv_cell(std::string s) {
  auto is_number = [](std::string_view v) {
    if (!v.empty() && (v.front() == '-' || v.front() == '+')) v.remove_prefix(1);
    auto dot = v.find('.');
    auto digits = [](std::string_view d) {
      return !d.empty() && d.find_first_not_of("0123456789") == std::string_view::npos;
    };
    return dot == std::string_view::npos
               ? digits(v)
               : digits(v.substr(0, dot)) && digits(v.substr(dot + 1));
  };
  if (!s.empty() && std::string_view("=+-@\t\r").find(s.front()) != std::string_view::npos &&
      !is_number(s))
    s.insert(s.begin(), '\'');
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace tocsin::common
