// What every alert source turns its input into, and the helpers they share.
//
// Sources differ wildly (a Kibana connector's JSON, an Alertmanager group, a CEF line, an
// Elasticsearch hit); the correlator sees only `Alert`. The whole input is kept flattened in
// `text` so an exact run marker is found wherever the SIEM put it (URL, file name, command
// line, a nested field), and the named fields feed the host + technique fallback match.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tocsin::collector {

// Bad input from a source: the message names what was wrong ("alerts[2].startsAt: not a time").
struct AlertParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Alert {
  std::string source;       // the configured source name ("siem-webhook")
  std::string source_type;  // generic, splunk_webhook, elastic, alertmanager, crowdsec, hec,
                            // syslog, elasticsearch, splunk_search, sentinel, crowdsec_lapi
  std::string id;           // the source's own id/fingerprint; empty: derived from the content
  bool is_event = false;    // a logged event (the SIEM saw the activity), not an alert
  std::string host;
  std::string rule;
  std::string technique;  // ATT&CK id, e.g. T1105 (empty if the source has none)
  // Addresses the alert names as the activity's source (CrowdSec's source.ip): a host hint
  // for the fallback match when the alert has no marker. Literal IPs only, at most a few.
  std::vector<std::string> source_addresses;
  std::string severity;
  std::string text;  // the whole input flattened ("path=value" lines), capped; markers live here
  // Times on the source's clocks, ns since the epoch; 0 = the source did not say.
  std::int64_t event_ns = 0;    // when the SIEM says the activity happened
  std::int64_t ingest_ns = 0;   // when the SIEM indexed the event
  std::int64_t created_ns = 0;  // when the alert was created
  std::int64_t arrival_ns = 0;  // collector clock, set by the listener when the bytes arrived
};

inline constexpr std::size_t kMaxAlertText = 16 * 1024;
inline constexpr std::size_t kMaxAlertsPerRequest = 10000;

// Run markers in a text: "tcn-" followed by exactly 10 of [a-z0-9], not part of a longer
// token. Distinct, in order of first appearance.
std::vector<std::string> find_markers(std::string_view text);

// Flattens any JSON into "a.b[0].c=value" lines (strings unquoted), at most `cap` bytes.
std::string flatten_json(const nlohmann::json& j, std::size_t cap = kMaxAlertText);

// A time as SIEMs send it: RFC 3339 / ISO 8601 string (with offset or Z, fractional seconds),
// or epoch seconds / milliseconds / microseconds / nanoseconds as a number or numeric string
// (the unit inferred from the magnitude). Throws AlertParseError naming `what`.
std::int64_t parse_alert_time(const nlohmann::json& v, const std::string& what);
std::int64_t parse_alert_time_text(std::string_view text, const std::string& what);

// The first ATT&CK technique id (T1234 or T1234.001) in a text, or "".
std::string find_technique(std::string_view text);

// Dedup identity of an alert: source + ":" + (id or SHA-256 of the flattened text).
std::string alert_key(const Alert& a);

// The resolution a source's timestamp was written with, inferred from the value: a whole
// number of seconds has 1 s resolution, of milliseconds 1 ms, of microseconds 1 us, else 1 ns.
// 0 for 0 (the source gave no time). A difference of such times is only known to within the
// coarser resolution of the two (CrowdSec's created_at has whole seconds).
std::int64_t time_resolution_ns(std::int64_t ns);

// Control bytes (< 0x20, 0x7f) in a source-supplied name replaced by '?', so a rule or
// technique can neither forge an index key nor break a log line.
std::string neutralise_controls(std::string_view s);

// An IP literal in canonical form (IPv4-mapped IPv6 as IPv4, IPv6 compressed, no zone or
// brackets), or "" when `s` is not one.
std::string canonical_address(std::string_view s);

}  // namespace tocsin::collector
