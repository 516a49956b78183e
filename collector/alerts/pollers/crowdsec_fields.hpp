// What both CrowdSec readers (the LAPI poller and the http-plugin webhook) take from an alert
// beyond the generic fields: one definition, so the two deliveries of one alert agree.
#pragma once

#include <algorithm>
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "collector/alerts/alert.hpp"

namespace tocsin::collector::detail::crowdsec {

// An alert names one source (its `source` object); decisions repeat it. More than this is
// not a host hint but noise, and the list is hostile input.
inline constexpr std::size_t kMaxSourceAddresses = 4;

// The alert's source as literal IPs, canonical, distinct: `source.ip`, and `source.value`
// when the scope is an IP (a "Range" scope's value is a CIDR, not a host). Anything that does
// not parse as an address is dropped: it is a hint for the fallback match, never required.
inline std::vector<std::string> source_addresses(const nlohmann::json& alert) {
  std::vector<std::string> out;
  if (!alert.is_object()) return out;
  auto src = alert.find("source");
  if (src == alert.end() || !src->is_object()) return out;
  auto add = [&](const char* key) {
    auto v = src->find(key);
    if (v == src->end() || !v->is_string() || out.size() >= kMaxSourceAddresses) return;
    std::string a = canonical_address(v->get_ref<const std::string&>());
    if (!a.empty() && std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
  };
  add("ip");
  auto scope = src->find("scope");
  if (scope != src->end() && scope->is_string()) {
    std::string_view s = scope->get_ref<const std::string&>();
    if (s == "Ip" || s == "ip" || s == "IP") add("value");
  }
  return out;
}

}  // namespace tocsin::collector::detail::crowdsec
