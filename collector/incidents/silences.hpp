// Silences, in the manner of Alertmanager: matchers, an end time and a reason; a failure they
// match is recorded (counted on the silence, on the incident's timeline) but opens and
// notifies nothing. The engine keeps them (IncidentEngine::add_silence, ...); this is their
// vocabulary, stored form and matching.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace tocsin::collector {

inline constexpr std::size_t kMaxActiveSilences = 1000;
inline constexpr std::size_t kMaxSilenceLabels = 16;
inline constexpr std::size_t kMaxSilenceId = 128;      // test, agent, kind, label name
inline constexpr std::size_t kMaxSilenceValue = 512;   // a label value (a target URL)
inline constexpr std::size_t kMaxSilenceReason = 4096;
// How far ahead `until` may be: a silence forgotten for years hides failures for years.
inline constexpr std::int64_t kMaxSilenceAheadNs = 90LL * 86'400'000'000'000;
// Ended silences (expired or past until) are kept this long for the record, then erased.
inline constexpr std::int64_t kSilenceRetentionNs = 30LL * 86'400'000'000'000;
// The labels a signal or incident has for a silence to match ("K=V").
inline constexpr std::array<const char*, 6> kSilenceLabelNames{
    "probe", "technique", "target", "hostname", "kind", "severity"};

// A silence matches when every matcher given equals the signal's value (empty: any). A
// security_event (forged signature, forked chain) is matched only by a silence that names that
// kind: silencing an agent must not hide its tampering.
struct SilenceMatchers {
  std::string test_id, agent_id, kind;
  std::map<std::string, std::string> labels;
  bool empty() const { return test_id.empty() && agent_id.empty() && kind.empty() && labels.empty(); }
  bool matches(const std::string& test, const std::string& agent, const std::string& kind_name,
               const std::map<std::string, std::string>& signal_labels) const;
};

// What POST /api/v1/silences asks for, unvalidated: until is an RFC 3339 time or a duration
// from now ("2h", "7d").
struct SilenceRequest {
  SilenceMatchers matchers;
  std::string until, reason;
};

struct Silence {
  std::uint64_t id = 0;
  SilenceMatchers matchers;
  std::string reason, created_by, expired_by;
  std::int64_t created_ns = 0, until_ns = 0, expired_ns = 0;  // expired_ns: ended by a human
  std::uint64_t silenced_signals = 0;
  bool active(std::int64_t now_ns) const { return expired_ns == 0 && now_ns < until_ns; }
};

// Validates and builds (id and counters unset); throws IncidentError naming the bad field
// ("test", "agent", "kind", "labels", "until", "reason").
Silence make_silence(const SilenceRequest& r, const std::string& actor, std::int64_t now_ns);

std::string encode_silence(const Silence& s);  // JSON, "v": 1
Silence decode_silence(const std::string& s);  // throws StoreError
// The API's form: id as a string, times RFC 3339, state active or expired.
nlohmann::json silence_json(const Silence& s, std::int64_t now_ns);

}  // namespace tocsin::collector
