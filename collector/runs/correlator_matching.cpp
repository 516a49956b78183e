// Pure matching rules: a result's run with its clock corrected, fuzzy-match keys, their limits.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "collector/runs/correlator_detail.hpp"

namespace tocsin::collector {

namespace {

constexpr std::int64_t kMaxAlertWithinNs = 30LL * 24 * 3600 * 1'000'000'000;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
// Agents report "web01", SIEMs often "web01.corp.example" (or the reverse): compare the first
// label, case-insensitively.
std::string short_host(const std::string& h) {
  return lower(h.substr(0, h.find('.')));
}

}  // namespace

namespace detail::runs {

std::vector<std::string> fuzzy_keys(const std::string& host, const std::string& technique,
                                    const std::vector<std::string>& rules) {
  std::vector<std::string> keys;
  auto h = short_host(host);
  if (h.empty()) return keys;
  if (!technique.empty()) keys.push_back(h + '\0' + "t:" + technique);
  for (const auto& r : rules)
    if (!r.empty()) keys.push_back(h + '\0' + "r:" + lower(r));
  return keys;
}

void borrow_offset(Run& r, const AgentRecord& agent, std::int64_t at_ns,
                   const CorrelationConfig& cfg) {
  if (agent.clock_error_ns < 0) {
    r.clock_offset_ns = 0;
    r.action_error_ns = -1;
    return;
  }
  auto gap = at_ns - r.agent_started_ns;
  if (gap < 0) gap = -gap;
  r.clock_offset_ns = agent.clock_offset_ns;
  r.action_error_ns = agent.clock_error_ns + gap / 1'000'000 * cfg.clock_drift_ppm;
}

}  // namespace detail::runs

CorrelationConfig CorrelationConfig::load(const common::ConfigNode& node) {
  CorrelationConfig c;
  if (!node.defined()) return c;
  node.check_keys({"grace", "fuzzy_window", "clock_drift_ppm"});
  c.grace = node.duration("grace", c.grace);
  c.fuzzy_window = node.duration("fuzzy_window", c.fuzzy_window);
  c.clock_drift_ppm = node.integer("clock_drift_ppm", c.clock_drift_ppm);
  if (c.grace.count() < 0 || c.grace > std::chrono::hours(24 * 30))
    node.fail("grace", "must be between 0s and 30d");
  if (c.fuzzy_window.count() <= 0 || c.fuzzy_window > std::chrono::hours(24 * 30))
    node.fail("fuzzy_window", "must be between 1ms and 30d");
  if (c.clock_drift_ppm < 0 || c.clock_drift_ppm > 100000)
    node.fail("clock_drift_ppm", "must be between 0 and 100000");
  return c;
}

std::optional<Run> run_from_result(const common::ResultRecord& rec, const common::ResultBody& body,
                                   const AgentRecord& agent, std::int64_t received_ns,
                                   const CorrelationConfig& cfg) {
  if (body.kind != "probe" || body.marker.empty()) return std::nullopt;
  Run r;
  r.marker = body.marker;
  r.agent_id = rec.agent_id;
  r.seq = rec.seq;
  r.hostname = agent.hostname;
  r.test_id = body.test_id;
  r.probe = body.probe;
  r.technique = body.technique;
  r.verdict = body.verdict;
  r.reason = body.reason;
  r.target = body.target;
  r.detections = body.detections;
  // Agent-supplied: capped so deadlines can neither overflow nor keep a run pending forever.
  r.alert_within_ns = std::clamp<std::int64_t>(body.alert_within_ns, 0, kMaxAlertWithinNs);
  r.agent_started_ns = body.started_ns;
  if (body.clock_error_ns >= 0) {
    r.clock_offset_ns = body.clock_offset_ns;
    r.action_error_ns = body.clock_error_ns;
  } else {
    // Run before the agent's first clock exchange: borrow its latest offset, with the drift
    // the time in between allows; with none known, say so instead of guessing.
    r.clock_synced = false;
    detail::runs::borrow_offset(r, agent, received_ns, cfg);
  }
  r.action_ns = r.agent_started_ns + r.clock_offset_ns;
  r.received_ns = received_ns;
  r.state_changed_ns = received_ns;
  // Only an action that happened can be detected: an unreachable target, a missing
  // interpreter or a probe that did not apply leaves nothing for a SIEM to see.
  bool acted = r.verdict == "prevented" || r.verdict == "not_prevented";
  r.state = r.alert_within_ns > 0 && acted ? DetectionState::pending : DetectionState::not_expected;
  return r;
}

}  // namespace tocsin::collector
