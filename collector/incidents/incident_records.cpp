// Incident vocabulary: names, policy (the `incidents:` config), SLA timer sums, stored/JSON forms.
#include "collector/incidents/incidents.hpp"

#include <algorithm>

#include "collector/incidents/incidents_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

using nlohmann::json;
using detail::incidents::dump;

namespace {

constexpr int kIncidentFormat = 1;

json timer_json(const SlaTimer& t) {
  return {{"target_ns", t.target_ns},
          {"started_ns", t.started_ns},
          {"stopped_ns", t.stopped_ns},
          {"paused_total_ns", t.paused_total_ns},
          {"paused_since_ns", t.paused_since_ns},
          {"breached_ns", t.breached_ns}};
}

SlaTimer timer_from(const json& j) {
  SlaTimer t;
  if (!j.is_object()) return t;
  t.target_ns = j.value("target_ns", std::int64_t{0});
  t.started_ns = j.value("started_ns", std::int64_t{0});
  t.stopped_ns = j.value("stopped_ns", std::int64_t{0});
  t.paused_total_ns = j.value("paused_total_ns", std::int64_t{0});
  t.paused_since_ns = j.value("paused_since_ns", std::int64_t{0});
  t.breached_ns = j.value("breached_ns", std::int64_t{0});
  return t;
}

}  // namespace

// ---- names --------------------------------------------------------------------------------

namespace {
const std::array<const char*, 5> kSeverityNames{"informational", "low", "medium", "high",
                                                "critical"};
const std::array<const char*, 4> kStateNames{"open", "acknowledged", "resolved", "closed"};
const std::array<const char*, 7> kKindNames{
    "prevention_failed", "detection_missed", "detection_late",    "health_failed",
    "agent_silent",      "security_event",   "latency_regression"};
template <class E, std::size_t N>
std::optional<E> parse_name(const std::array<const char*, N>& names, const std::string& s) {
  for (std::size_t i = 0; i < N; ++i)
    if (s == names[i]) return static_cast<E>(i);
  return std::nullopt;
}
}  // namespace

std::string severity_name(Severity s) {
  return kSeverityNames.at(static_cast<std::size_t>(s));
}
std::optional<Severity> parse_severity(const std::string& s) {
  if (s == "info") return Severity::informational;
  return parse_name<Severity>(kSeverityNames, s);
}
std::string incident_state_name(IncidentState s) {
  return kStateNames.at(static_cast<std::size_t>(s));
}
std::optional<IncidentState> parse_incident_state(const std::string& s) {
  return parse_name<IncidentState>(kStateNames, s);
}
std::string kind_name(IncidentKind k) {
  return kKindNames.at(static_cast<std::size_t>(k));
}
std::optional<IncidentKind> parse_kind(const std::string& s) {
  return parse_name<IncidentKind>(kKindNames, s);
}

bool is_test_facet(IncidentKind k) {
  return k == IncidentKind::prevention_failed || k == IncidentKind::detection_missed ||
         k == IncidentKind::detection_late;
}

std::string legacy_dedup_key(IncidentKind kind, const std::string& test_id,
                             const std::string& agent_id, const std::string& target) {
  return kind_name(kind) + "|" + test_id + "|" + agent_id + (target.empty() ? "" : "|" + target);
}

std::string dedup_key(IncidentKind kind, const std::string& test_id, const std::string& agent_id,
                      const std::string& target) {
  if (!is_test_facet(kind)) return legacy_dedup_key(kind, test_id, agent_id, target);
  return "test|" + test_id + "|" + agent_id + (target.empty() ? "" : "|" + target);
}

std::string target_without_marker(const std::string& target, const std::string& marker) {
  if (marker.empty()) return target;
  std::string out;
  for (std::size_t pos = 0;;) {
    auto hit = target.find(marker, pos);
    if (hit == std::string::npos) return out + target.substr(pos);
    out += target.substr(pos, hit - pos) + "{marker}";
    pos = hit + marker.size();
  }
}

// ---- policy -------------------------------------------------------------------------------

IncidentPolicy::IncidentPolicy() {
  using namespace std::chrono;
  severity = {{IncidentKind::prevention_failed, Severity::critical},
              {IncidentKind::detection_missed, Severity::critical},
              {IncidentKind::detection_late, Severity::critical},
              {IncidentKind::health_failed, Severity::high},
              {IncidentKind::agent_silent, Severity::high},
              {IncidentKind::security_event, Severity::high},
              {IncidentKind::latency_regression, Severity::medium}};
  sla[static_cast<std::size_t>(Severity::critical)] = {minutes(15), hours(4)};
  sla[static_cast<std::size_t>(Severity::high)] = {hours(1), hours(24)};
  sla[static_cast<std::size_t>(Severity::medium)] = {hours(4), hours(72)};
}

Severity IncidentPolicy::severity_of(IncidentKind k) const {
  auto it = severity.find(k);
  return it == severity.end() ? Severity::critical : it->second;
}

IncidentPolicy IncidentPolicy::load(const common::ConfigNode& node) {
  IncidentPolicy p;
  if (!node.defined()) return p;
  node.check_keys({"severity", "sla", "auto_close_after", "agent_silent_after", "baseline"});
  if (node.has("severity")) {
    auto sev = node["severity"];
    for (const auto& k : sev.keys()) {
      auto kind = parse_kind(k);
      if (!kind) sev.fail(k, "unknown incident kind (prevention_failed, detection_missed, ...)");
      auto s = parse_severity(sev.str(k));
      if (!s) sev.fail(k, "unknown severity (informational, low, medium, high, critical)");
      p.severity[*kind] = *s;
    }
  }
  if (node.has("sla")) {
    auto sla = node["sla"];
    for (const auto& k : sla.keys()) {
      auto s = parse_severity(k);
      if (!s) sla.fail(k, "unknown severity (informational, low, medium, high, critical)");
      auto t = sla[k];
      t.check_keys({"acknowledge", "resolve"});
      auto& target = p.sla[static_cast<std::size_t>(*s)];
      target.acknowledge = t.duration("acknowledge", target.acknowledge);
      target.resolve = t.duration("resolve", target.resolve);
    }
  }
  p.auto_close_after = node.duration("auto_close_after", p.auto_close_after);
  if (p.auto_close_after.count() <= 0) node.fail("auto_close_after", "must be positive");
  p.agent_silent_after = node.duration("agent_silent_after", p.agent_silent_after);
  if (p.agent_silent_after.count() < 0) node.fail("agent_silent_after", "must not be negative");
  if (node.has("baseline")) {
    auto b = node["baseline"];
    b.check_keys({"factor", "window", "min_samples"});
    if (b.has("factor")) {
      auto text = b.str("factor");
      try {
        std::size_t used = 0;
        p.baseline_factor = std::stod(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
      } catch (const std::exception&) {
        b.fail("factor", "'" + text + "' is not a number");
      }
      if (!(p.baseline_factor > 1.0 && p.baseline_factor < 1000.0))
        b.fail("factor", "must be above 1 (e.g. 3 for 3x the median)");
    }
    p.baseline_window = b.duration("window", p.baseline_window);
    if (p.baseline_window.count() <= 0) b.fail("window", "must be positive");
    auto n = b.integer("min_samples", static_cast<std::int64_t>(p.baseline_min_samples));
    if (n < 1 || n > 10000) b.fail("min_samples", "must be between 1 and 10000");
    p.baseline_min_samples = static_cast<std::size_t>(n);
  }
  return p;
}

// ---- records ------------------------------------------------------------------------------

std::int64_t SlaTimer::elapsed_ns(std::int64_t now_ns) const {
  if (!exists()) return 0;
  auto end = stopped_ns ? stopped_ns : now_ns;
  auto paused = paused_total_ns + (paused_since_ns ? end - paused_since_ns : 0);
  return std::max<std::int64_t>(0, end - started_ns - paused);
}

std::optional<std::int64_t> SlaTimer::remaining_ns(std::int64_t now_ns) const {
  if (!exists()) return std::nullopt;
  return target_ns - elapsed_ns(now_ns);
}

std::string encode_incident(const Incident& i) {
  json tl = json::array();
  for (const auto& e : i.timeline)
    tl.push_back({{"t", e.time_ns}, {"actor", e.actor}, {"what", e.what}, {"detail", e.detail}});
  return dump({{"v", kIncidentFormat},
               {"id", i.id},
               {"key", i.key},
               {"kind", kind_name(i.kind)},
               {"severity", severity_name(i.severity)},
               {"state", incident_state_name(i.state)},
               {"title", i.title},
               {"test_id", i.test_id},
               {"agent_id", i.agent_id},
               {"marker", i.marker},
               {"owner", i.owner},
               {"occurrences", i.occurrences},
               {"reopen_count", i.reopen_count},
               {"opened_ns", i.opened_ns},
               {"reopened_ns", i.reopened_ns},
               {"last_failure_ns", i.last_failure_ns},
               {"last_failure_agent_ns", i.last_failure_agent_ns},
               {"updated_ns", i.updated_ns},
               {"acknowledged_ns", i.acknowledged_ns},
               {"resolved_ns", i.resolved_ns},
               {"closed_ns", i.closed_ns},
               {"touched", i.touched},
               {"accepted_risk", i.accepted_risk},
               {"target", i.target},
               {"facets", i.facets},
               {"escalated_to", i.escalated_to ? json(severity_name(*i.escalated_to)) : json(nullptr)},
               {"labels", i.labels},
               {"resolution", i.resolution},
               {"pause_reason", i.pause_reason},
               {"ack_sla", timer_json(i.ack_sla)},
               {"resolve_sla", timer_json(i.resolve_sla)},
               {"timeline", std::move(tl)}});
}

Incident decode_incident(const std::string& s) {
  json j = json::parse(s, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != kIncidentFormat)
    throw StoreError("corrupt or unknown incident record");
  try {
    Incident i;
    i.id = j.at("id").get<std::uint64_t>();
    i.key = j.value("key", "");
    auto kind = parse_kind(j.value("kind", ""));
    auto sev = parse_severity(j.value("severity", ""));
    auto state = parse_incident_state(j.value("state", ""));
    if (!kind || !sev || !state) throw StoreError("incident record with unknown kind/state");
    i.kind = *kind;
    i.severity = *sev;
    i.state = *state;
    i.title = j.value("title", "");
    i.test_id = j.value("test_id", "");
    i.agent_id = j.value("agent_id", "");
    i.marker = j.value("marker", "");
    i.owner = j.value("owner", "");
    i.occurrences = j.value("occurrences", std::uint64_t{0});
    i.reopen_count = j.value("reopen_count", 0u);
    i.opened_ns = j.value("opened_ns", std::int64_t{0});
    i.reopened_ns = j.value("reopened_ns", std::int64_t{0});
    i.last_failure_ns = j.value("last_failure_ns", std::int64_t{0});
    i.last_failure_agent_ns = j.value("last_failure_agent_ns", std::int64_t{0});
    i.updated_ns = j.value("updated_ns", std::int64_t{0});
    i.acknowledged_ns = j.value("acknowledged_ns", std::int64_t{0});
    i.resolved_ns = j.value("resolved_ns", std::int64_t{0});
    i.closed_ns = j.value("closed_ns", std::int64_t{0});
    i.touched = j.value("touched", false);
    i.accepted_risk = j.value("accepted_risk", false);
    i.target = j.value("target", "");
    if (j.contains("facets"))
      i.facets = j.at("facets").get<std::vector<std::string>>();
    else if (i.active())  // stored before facets: the one kind it was opened for
      i.facets = {kind_name(i.kind)};
    if (auto e = j.find("escalated_to"); e != j.end() && e->is_string())
      i.escalated_to = parse_severity(e->get<std::string>());
    i.labels = j.value("labels", std::map<std::string, std::string>{});
    i.resolution = j.value("resolution", "");
    i.pause_reason = j.value("pause_reason", "");
    i.ack_sla = timer_from(j.value("ack_sla", json::object()));
    i.resolve_sla = timer_from(j.value("resolve_sla", json::object()));
    for (const auto& e : j.value("timeline", json::array()))
      i.timeline.push_back({e.value("t", std::int64_t{0}), e.value("actor", ""),
                            e.value("what", ""), e.value("detail", "")});
    return i;
  } catch (const json::exception& e) {
    throw StoreError(std::string("corrupt incident record: ") + e.what());
  }
}

json incident_json(const Incident& i, std::int64_t now_ns, bool with_timeline) {
  json j = json::parse(encode_incident(i));
  j.erase("v");
  j["silenced_by"] = json::array();
  if (!with_timeline) j.erase("timeline");
  for (const char* name : {"opened", "reopened", "updated", "acknowledged", "resolved", "closed"}) {
    auto ns = j.value(std::string(name) + "_ns", std::int64_t{0});
    j[name] = ns ? json(common::format_time(ns)) : json(nullptr);
  }
  for (const auto& [name, t] :
       {std::pair{"ack_sla", &i.ack_sla}, {"resolve_sla", &i.resolve_sla}}) {
    auto rem = t->remaining_ns(now_ns);
    j[name]["remaining_ns"] = rem ? json(*rem) : json(nullptr);
    j[name]["running"] = t->running();
    j[name]["paused"] = t->paused_since_ns != 0;
  }
  return j;
}

std::map<std::string, std::string> incident_labels(const Incident& i) {
  auto l = i.labels;
  if (!i.target.empty()) l["target"] = i.target;
  l["kind"] = kind_name(i.kind);
  l["severity"] = severity_name(i.severity);
  return l;
}

bool IncidentFilter::matches(const Incident& i) const {
  if (state && i.state != *state) return false;
  if (severity && i.severity != *severity) return false;
  if (agent_id && i.agent_id != *agent_id) return false;
  if (test_id && i.test_id != *test_id) return false;
  if (kind && i.kind != *kind &&
      std::find(i.facets.begin(), i.facets.end(), kind_name(*kind)) == i.facets.end())
    return false;
  return true;
}

json incident_event_json(const IncidentEvent& e) {
  return {{"seq", e.seq},
          {"time_ns", e.time_ns},
          {"incident_id", e.incident_id},
          {"what", e.what},
          {"severity", severity_name(e.severity)},
          {"actor", e.actor},
          {"detail", e.detail}};
}

}  // namespace tocsin::collector
