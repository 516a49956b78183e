// Turns the body of a webhook POST (or a Splunk HEC request) into alerts, one reader per vendor.
//
// The HTTP side (auth, size limits, status codes) lives with the listener; this module only
// sees bytes that already passed the token check and must still treat them as hostile.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/alert_sources.hpp"

namespace tocsin::collector {

// Deeper JSON is refused outright: no real alert nests this far, and depth costs stack elsewhere.
inline constexpr std::size_t kMaxJsonDepth = 64;

// Parses one request body of a webhook or HEC source (see SourceType for the shapes). Every
// alert gets `src`'s name, type and `delivers` and `arrival_ns`. Throws AlertParseError whose
// message starts with the type ("alertmanager: alerts[2].startsAt: ...") for malformed input;
// std::invalid_argument if `src` is not a webhook or HEC source.
std::vector<Alert> parse_webhook(const AlertSourceConfig& src, std::string_view body,
                                 std::int64_t arrival_ns);

// Validates a `fields:` path ("alert.host.name", "events[0].ts"). Throws std::invalid_argument
// saying what is wrong.
void check_field_path(std::string_view path);

// The value at a `fields:` path, or nullptr. A key step also matches a literal dotted key
// ("kibana.alert.rule.name" stored flat) and looks into the objects of an array (ECS
// multi-valued fields such as threat.technique). Throws std::invalid_argument for a bad path.
const nlohmann::json* json_at_path(const nlohmann::json& root, std::string_view path);

}  // namespace tocsin::collector
