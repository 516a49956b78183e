#include <algorithm>

#include "common/text.hpp"

namespace tocsin::common {

std::string quote_hostile(std::string_view s, std::size_t max) {
  std::string out;
  out.reserve(std::min(s.size(), max) + 3);
  for (char c : s.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace tocsin::common
