// What opens or clears an incident: pure input -> Signal functions and the time-to-alert baseline.
#include "collector/incidents/incidents.hpp"

#include <algorithm>
#include <cmath>

#include "collector/incidents/incidents_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

using detail::incidents::ms_to_ns;
using detail::incidents::on_agent;

namespace {

// "7-day" for whole days, else the config spelling ("12h").
std::string window_words(std::chrono::milliseconds w) {
  if (w.count() > 0 && w.count() % 86'400'000 == 0)
    return std::to_string(w.count() / 86'400'000) + "-day";
  return common::format_duration(w);
}

// `raw_target` may hold the run's marker (web probes put it in the URL): the key and the
// incident get the target without it, so runs of one test share one incident.
Signal make_signal(IncidentKind kind, const std::string& test, const std::string& agent,
                   const IncidentPolicy& policy, const std::string& raw_target = "",
                   const std::string& marker = "") {
  Signal s;
  s.kind = kind;
  s.target = target_without_marker(raw_target, marker);
  s.key = dedup_key(kind, test, agent, s.target);
  if (is_test_facet(kind)) s.legacy_key = legacy_dedup_key(kind, test, agent, raw_target);
  s.severity = policy.severity_of(kind);
  s.test_id = test;
  s.agent_id = agent;
  if (!s.target.empty()) s.labels["target"] = s.target;
  return s;
}

}  // namespace

// ---- signals ------------------------------------------------------------------------------

std::vector<Signal> signals_from_result(const common::ResultBody& body, const std::string& agent_id,
                                        std::int64_t time_ns, const IncidentPolicy& policy) {
  std::vector<Signal> out;
  if (body.kind != "probe") return out;
  auto add = [&](IncidentKind kind, bool clears, std::string title, std::string detail) {
    auto s = make_signal(kind, body.test_id, agent_id, policy, body.target, body.marker);
    s.marker = body.marker;
    s.labels["probe"] = body.probe;
    if (!body.technique.empty()) s.labels["technique"] = body.technique;
    s.time_ns = time_ns;
    s.agent_started_ns = body.started_ns;
    s.clears = clears;
    s.title = std::move(title);
    s.detail = std::move(detail);
    out.push_back(std::move(s));
  };
  std::string marker = body.marker.empty() ? "" : " (marker " + body.marker + ")";
  auto target = target_without_marker(body.target, body.marker);
  if (body.probe == "http_check") {
    if (body.verdict == "unhealthy")
      add(IncidentKind::health_failed, false,
          "health check " + body.test_id + " failing" + on_agent(agent_id),
          "unhealthy: " + body.reason + (target.empty() ? "" : " at " + target) + marker);
    else if (body.verdict == "healthy")
      add(IncidentKind::health_failed, true, "", "a later health check passed" + marker);
    return out;
  }
  if (!body.expect_prevent) return out;
  if (body.verdict == "not_prevented")
    add(IncidentKind::prevention_failed, false,
        body.test_id + " was not prevented" + (target.empty() ? "" : " (" + target + ")") +
            on_agent(agent_id),
        "not_prevented: " + body.reason + (target.empty() ? "" : " at " + target) + marker);
  else if (body.verdict == "prevented")
    add(IncidentKind::prevention_failed, true, "", "a later run was prevented" + marker);
  return out;
}

std::vector<Signal> signals_from_detection(const DetectionEvent& e, const IncidentPolicy& policy) {
  std::vector<Signal> out;
  auto add = [&](IncidentKind kind, bool clears, std::string title, std::string detail) {
    auto s = make_signal(kind, e.test_id, e.agent_id, policy, e.target, e.marker);
    s.marker = e.marker;
    s.time_ns = e.time_ns;
    s.clears = clears;
    s.title = std::move(title);
    s.detail = std::move(detail);
    out.push_back(std::move(s));
  };
  std::string marker = " (marker " + e.marker + ")";
  std::string what = e.detail.empty() ? "" : ": " + e.detail;
  auto target = target_without_marker(e.target, e.marker);
  if (e.to == "missed") {
    add(IncidentKind::detection_missed, false,
        "no alert for " + e.test_id + (target.empty() ? "" : " (" + target + ")") +
            on_agent(e.agent_id),
        "missed" + what + marker);
  } else if (e.to == "logged") {
    add(IncidentKind::detection_missed, false, "no alert for " + e.test_id + on_agent(e.agent_id),
        "the SIEM logged the activity but raised no alert" + what + marker);
  } else if (e.to == "late") {
    // The failure first: were "missed" its only facet, clearing it first would resolve the
    // incident (a "resolved" page) and the late facet would reopen it a moment later.
    add(IncidentKind::detection_late, false,
        "alert for " + e.test_id + on_agent(e.agent_id) + " arrived after its SLA",
        "late" + what + marker);
    add(IncidentKind::detection_missed, true, "", "an alert arrived, late" + marker);
  } else if (e.to == "alerted") {
    add(IncidentKind::detection_missed, true, "", "a later run was alerted in time" + marker);
    add(IncidentKind::detection_late, true, "", "a later run was alerted in time" + marker);
  }
  return out;
}

Signal signal_from_security_event(const SecurityEvent& e, const IncidentPolicy& policy) {
  auto s = make_signal(IncidentKind::security_event, e.kind, e.agent_id, policy);
  s.time_ns = e.time_ns;
  std::string from = !e.agent_id.empty() ? "agent " + e.agent_id
                     : !e.remote.empty() ? e.remote
                                         : "an unknown peer";
  // Tampering seen on an enrolled agent's channel (forged signature, forked chain, reused
  // marker) is the policy's severity; noise from peers that never authenticated (scanners,
  // a wrong enrollment token) is low, so it is recorded and auto-closes if nobody looks.
  if (e.agent_id.empty()) s.severity = std::min(s.severity, Severity::low);
  s.title = "security event " + e.kind + " from " + from;
  s.detail = e.detail + (e.remote.empty() ? "" : " (peer " + e.remote + ")");
  return s;
}

Signal agent_silence_signal(const std::string& agent_id, std::int64_t now_ns,
                            std::int64_t last_seen_ns, std::chrono::milliseconds allowed_silence,
                            const IncidentPolicy& policy) {
  auto s = make_signal(IncidentKind::agent_silent, "", agent_id, policy);
  s.time_ns = now_ns;
  auto allowed = common::format_duration(allowed_silence);
  if (last_seen_ns > 0 && now_ns - last_seen_ns <= ms_to_ns(allowed_silence)) {
    s.clears = true;
    s.detail = "heard from again at " + common::format_time(last_seen_ns);
    return s;
  }
  s.title = "agent " + agent_id + " silent for more than " + allowed;
  s.detail = last_seen_ns > 0 ? "last seen " + common::format_time(last_seen_ns) : "never seen";
  return s;
}

// ---- baseline -----------------------------------------------------------------------------

namespace {
std::int64_t median_of(std::vector<std::int64_t> v) {
  auto n = v.size();
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(n / 2);
  std::nth_element(v.begin(), mid, v.end());  // one per alert: linear, not a sort
  if (n % 2) return *mid;
  auto below = *std::max_element(v.begin(), mid);
  return below + (*mid - below) / 2;
}
}  // namespace

std::optional<std::int64_t> LatencyBaseline::median(const std::string& test_id,
                                                    std::int64_t now_ns) const {
  auto it = samples_.find(test_id);
  if (it == samples_.end()) return std::nullopt;
  std::vector<std::int64_t> v;
  for (const auto& s : it->second)
    if (s.time_ns >= now_ns - ms_to_ns(policy_.baseline_window)) v.push_back(s.value_ns);
  if (v.size() < policy_.baseline_min_samples) return std::nullopt;
  return median_of(std::move(v));
}

std::optional<Signal> LatencyBaseline::observe(const std::string& test_id,
                                               const std::string& agent_id,
                                               const std::string& marker, std::int64_t time_ns,
                                               std::int64_t time_to_alert_ns) {
  auto& v = samples_[test_id];
  if (!marker.empty() &&
      std::any_of(v.begin(), v.end(), [&](const Sample& s) { return s.marker == marker; }))
    return std::nullopt;
  auto cutoff = time_ns - ms_to_ns(policy_.baseline_window);
  std::erase_if(v, [&](const Sample& s) { return s.time_ns < cutoff; });
  auto med = median(test_id, time_ns);
  v.push_back({time_ns, time_to_alert_ns, marker});
  if (v.size() > policy_.baseline_max_samples) v.pop_front();
  if (!med || *med <= 0) return std::nullopt;

  auto s = make_signal(IncidentKind::latency_regression, test_id, agent_id, policy_);
  s.marker = marker;
  s.time_ns = time_ns;
  auto pct =
      std::llround(100.0 * static_cast<double>(time_to_alert_ns) / static_cast<double>(*med));
  auto words = "time-to-alert for " + test_id + " is " + std::to_string(pct) + "% of its " +
               window_words(policy_.baseline_window) + " median";
  s.clears = static_cast<double>(time_to_alert_ns) <= policy_.baseline_factor * *med;
  if (s.clears)
    s.detail = "back to normal: " + words;
  else {
    s.title = words;
    s.detail = words + " (" + std::to_string(time_to_alert_ns / 1'000'000) + " ms against " +
               std::to_string(*med / 1'000'000) + " ms; marker " + marker + ")";
  }
  return s;
}

}  // namespace tocsin::collector
