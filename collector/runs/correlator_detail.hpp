// Correlator internals shared by its engine, its record formats and its matching rules.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"

namespace tocsin::collector::detail::runs {

// ---- record formats (correlator_records.cpp) -------------------------------------------------

std::string encode_alert_record(const Alert& a, const std::vector<std::string>& markers,
                                const std::string& marker, const std::string& reason,
                                double confidence);
// The stored alert and the markers it named; nullopt for a record that cannot be read.
std::optional<std::pair<Alert, std::vector<std::string>>> decode_alert_record(const std::string& v);
std::string encode_event(const DetectionEvent& e);

// What a restart needs to index a pending run again, so loading a million of them reads one
// small table instead of every full record.
std::string open_run_value(const Run& r);
std::optional<Run> open_run_from_value(std::string_view marker, std::string_view v);

std::string orphan_key(const std::string& marker, const std::string& alert_key);

// ---- matching rules (correlator_matching.cpp) ------------------------------------------------

// The keys a pending run is indexed under for fuzzy matching, and an alert looked up by.
std::vector<std::string> fuzzy_keys(const std::string& host, const std::string& technique,
                                    const std::vector<std::string>& rules);
// A run's clock correction from the agent's latest offset, its bound widened by the drift
// since; with no offset known, the bound is -1 (unknown).
void borrow_offset(Run& r, const AgentRecord& agent, std::int64_t at_ns,
                   const CorrelationConfig& cfg);

}  // namespace tocsin::collector::detail::runs
