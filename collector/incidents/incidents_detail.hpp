// Helpers shared by the incident sources (engine, records, signals); not part of the interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

// Nested under `incidents`: other collector subsystems keep helpers of the same names
// (dump, ...) in `detail`, and one definition each must stay one.
namespace tocsin::collector::detail::incidents {

// Records and events hold text from agents and SIEMs: bytes that are not UTF-8 are replaced,
// never a reason to lose the write.
inline std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

inline std::int64_t ms_to_ns(std::chrono::milliseconds d) {
  return d.count() * 1'000'000;
}

// " on <agent>" for titles; nothing for collector-wide incidents.
inline std::string on_agent(const std::string& agent_id) {
  return agent_id.empty() ? std::string() : " on " + agent_id;
}

}  // namespace tocsin::collector::detail::incidents
