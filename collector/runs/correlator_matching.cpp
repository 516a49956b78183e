// Pure matching rules: a result's run with its clock corrected, fuzzy-match keys, their limits.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "collector/runs/correlator_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

namespace {

constexpr std::int64_t kMaxAlertWithinNs = 30LL * 24 * 3600 * 1'000'000'000;
constexpr std::size_t kMaxClockFrameBytes = 64;

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

namespace {

void append_part(std::string& key, std::string_view part) {
  auto n = static_cast<std::uint32_t>(part.size());
  for (int shift = 24; shift >= 0; shift -= 8)
    key.push_back(static_cast<char>((n >> shift) & 0xff));
  key.append(part);
}

FuzzyKey make_key(FuzzyKind kind, std::string_view who, std::string_view what) {
  FuzzyKey k{kind, std::string(1, static_cast<char>(kind))};
  append_part(k.key, who);
  append_part(k.key, what);
  return k;
}

}  // namespace

double fuzzy_confidence(FuzzyKind k) {
  switch (k) {
    case FuzzyKind::host_rule:
      return 0.7;  // names a detection the test expects
    case FuzzyKind::host_technique:
      return 0.6;
    case FuzzyKind::address_rule:
      return 0.5;  // an address can be shared (NAT, proxies) or reassigned: less than a host
    case FuzzyKind::address_technique:
      return 0.4;
  }
  return 0;
}

std::vector<FuzzyKey> fuzzy_keys(const std::string& host, const std::vector<std::string>& addresses,
                                 const std::string& technique,
                                 const std::vector<std::string>& rules) {
  std::vector<FuzzyKey> keys;
  auto add = [&](FuzzyKind by_tech, FuzzyKind by_rule, const std::string& who) {
    if (who.empty()) return;
    if (!technique.empty()) keys.push_back(make_key(by_tech, who, technique));
    for (const auto& r : rules)
      if (!r.empty()) keys.push_back(make_key(by_rule, who, lower(r)));
  };
  add(FuzzyKind::host_technique, FuzzyKind::host_rule, short_host(host));
  for (const auto& a : addresses) add(FuzzyKind::address_technique, FuzzyKind::address_rule, a);
  return keys;
}

// Every time and bound here is agent-supplied: saturating, so hostile values clamp instead of
// overflowing (and a saturated bound is as good as unknown).
void borrow_offset(Run& r, const AgentRecord& agent, std::int64_t at_ns,
                   const CorrelationConfig& cfg) {
  if (agent.clock_error_ns < 0) {
    r.clock_offset_ns = 0;
    r.action_error_ns = -1;
    return;
  }
  auto gap = common::abs_ns(common::saturating_sub(at_ns, r.agent_started_ns));
  r.clock_offset_ns = agent.clock_offset_ns;
  r.action_error_ns = common::saturating_add(agent.clock_error_ns,
                                             common::drift_allowance_ns(gap, cfg.clock_drift_ppm));
}

bool resolve_offset(Run& r, std::int64_t offset_ns, std::int64_t error_ns,
                    std::int64_t measured_agent_ns, const CorrelationConfig& cfg) {
  if (error_ns < 0) return false;
  auto gap = common::abs_ns(common::saturating_sub(measured_agent_ns, r.agent_started_ns));
  r.clock_offset_ns = offset_ns;
  r.action_error_ns =
      common::saturating_add(error_ns, common::drift_allowance_ns(gap, cfg.clock_drift_ppm));
  r.action_ns = common::saturating_add(r.agent_started_ns, r.clock_offset_ns);
  r.clock_resolved = true;
  return true;
}

bool offset_applies(const std::string& held_frame, std::uint64_t held_steps,
                    std::uint64_t held_seq, const Run& synced) {
  if (!synced.clock_synced || synced.clock_stepped || synced.action_error_ns < 0) return false;
  if (synced.seq <= held_seq) return false;
  // An older agent names no frame: one process is assumed, as it always was.
  if (held_frame.empty()) return true;
  return synced.clock_frame == held_frame && synced.clock_steps == held_steps;
}

}  // namespace detail::runs

std::int64_t Run::sla_deadline_ns() const {
  return common::saturating_add(action_ns, alert_within_ns);
}

std::int64_t Run::hold_deadline_ns(std::chrono::milliseconds grace) const {
  auto g = std::chrono::duration_cast<std::chrono::nanoseconds>(grace).count();
  return common::saturating_add(common::saturating_add(received_ns, alert_within_ns), g);
}

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
  if (r.detections.size() > kMaxRunDetections) r.detections.resize(kMaxRunDetections);
  // Agent-supplied: capped so deadlines can neither overflow nor keep a run pending forever.
  r.alert_within_ns = std::clamp<std::int64_t>(body.alert_within_ns, 0, kMaxAlertWithinNs);
  r.agent_started_ns = body.started_ns;
  if (body.clock_error_ns >= 0) {
    r.clock_offset_ns = body.clock_offset_ns;
    r.action_error_ns = body.clock_error_ns;
  } else {
    // Stamped before the agent's first clock exchange: borrow its latest offset (perhaps from
    // another process), with the drift the time in between allows; with none known, say so
    // instead of guessing. Held until a later synchronised result of the same frame resolves
    // it, or until its hold deadline.
    r.clock_synced = false;
    detail::runs::borrow_offset(r, agent, received_ns, cfg);
  }
  r.action_ns = common::saturating_add(r.agent_started_ns, r.clock_offset_ns);
  r.clock_stepped = body.clock_stepped;
  // A frame id is 16 hex digits; a longer one (hostile) is cut, which can only fail to match.
  r.clock_frame = body.clock_frame.substr(0, kMaxClockFrameBytes);
  r.clock_steps = body.clock_steps;
  r.received_ns = received_ns;
  r.state_changed_ns = received_ns;
  // Only an action that happened can be detected: an unreachable target, a missing
  // interpreter or a probe that did not apply leaves nothing for a SIEM to see.
  bool acted = r.verdict == "prevented" || r.verdict == "not_prevented";
  r.state = r.alert_within_ns > 0 && acted ? DetectionState::pending : DetectionState::not_expected;
  return r;
}

}  // namespace tocsin::collector
