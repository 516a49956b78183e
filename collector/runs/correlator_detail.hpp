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

// What a fuzzy key says the run and the alert share besides the time: the same host (first
// DNS label) or the agent's network address (the alert's source address), and the same
// technique or an expected detection (rule) name.
enum class FuzzyKind : char {
  host_technique = 't',
  host_rule = 'r',
  address_technique = 'T',
  address_rule = 'R',
};
struct FuzzyKey {
  FuzzyKind kind;
  std::string key;  // the kind byte, then each part length-prefixed: no input can forge a kind
};
double fuzzy_confidence(FuzzyKind k);

// The keys a pending run is indexed under for fuzzy matching, and an alert looked up by.
// `addresses` are canonical IP literals (canonical_address); empty ones are skipped.
std::vector<FuzzyKey> fuzzy_keys(const std::string& host, const std::vector<std::string>& addresses,
                                 const std::string& technique,
                                 const std::vector<std::string>& rules);
// A run's clock correction from the agent's latest offset, its bound widened by the drift
// since; with no offset known, the bound is -1 (unknown).
void borrow_offset(Run& r, const AgentRecord& agent, std::int64_t at_ns,
                   const CorrelationConfig& cfg);
// Re-corrects a run made before its agent's first clock exchange from an offset the same agent
// measured later (`measured_agent_ns`, on the agent's clock): bound widened by the drift over
// the gap; marks the run resolved. Returns false (and changes nothing) for an unknown offset.
bool resolve_offset(Run& r, std::int64_t offset_ns, std::int64_t error_ns,
                    std::int64_t measured_agent_ns, const CorrelationConfig& cfg);

// Whether `synced`'s offset may re-correct the held run `held`: a synchronised, unstepped
// result of the same agent, made after it, in the same process frame with no step between
// (same clock_frame and clock_steps). A held run without a frame (an older agent) takes any.
bool offset_applies(const std::string& held_frame, std::uint64_t held_steps,
                    std::uint64_t held_seq, const Run& synced);

}  // namespace tocsin::collector::detail::runs
