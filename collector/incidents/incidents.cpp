// The incident engine: lifecycle, facets, human actions, SLA breaches, auto-close, event log.
#include "collector/incidents/incidents.hpp"

#include <algorithm>
#include <limits>
#include <set>

#include <spdlog/spdlog.h>
#include <pthread.h>

#include "collector/incidents/engine_txn.hpp"
#include "collector/incidents/incidents_detail.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"

namespace tocsin::collector {

using nlohmann::json;
using detail::incidents::dump;
using detail::incidents::id_key;
using detail::incidents::kCursorPrefix;
using detail::incidents::kEventFormat;
using detail::incidents::kMaxOwner;
using detail::incidents::kMaxText;
using detail::incidents::kSeenSecurityPrefix;
using detail::incidents::kSystem;
using detail::incidents::ms_to_ns;
using detail::incidents::on_agent;

namespace {

// The auto-close note speaks in hours ("72h"), as triage rotas do.
std::string hours_words(std::chrono::milliseconds d) {
  if (d.count() > 0 && d.count() % 3'600'000 == 0)
    return std::to_string(d.count() / 3'600'000) + "h";
  return common::format_duration(d);
}

std::string trimmed(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

SlaTimer start_timer(std::chrono::milliseconds target, std::int64_t now) {
  SlaTimer t;
  if (target.count() <= 0) return t;
  t.target_ns = ms_to_ns(target);
  t.started_ns = now;
  return t;
}

void stop_timer(SlaTimer& t, std::int64_t now) {
  if (!t.running()) return;
  if (t.paused_since_ns) t.paused_total_ns += now - t.paused_since_ns;
  t.paused_since_ns = 0;
  t.stopped_ns = now;
}

void pause_timer(SlaTimer& t, std::int64_t now) {
  if (t.running() && !t.paused_since_ns) t.paused_since_ns = now;
}

void resume_timer(SlaTimer& t, std::int64_t now) {
  if (!t.running() || !t.paused_since_ns) return;
  t.paused_total_ns += now - t.paused_since_ns;
  t.paused_since_ns = 0;
}

// A new severity's target for a timer still running (elapsed time counts from the opening, so
// a raise can be overdue at once and breach on the next tick); a stopped one stays as it was.
void retarget_timer(SlaTimer& t, std::chrono::milliseconds target, std::int64_t now) {
  if (t.stopped_ns) return;
  if (target.count() <= 0) {
    t.target_ns = 0;  // no timer at this severity; started_ns stays for a later raise
    return;
  }
  if (!t.started_ns) t.started_ns = now;
  t.target_ns = ms_to_ns(target);
}

std::string id_list(const std::vector<std::uint64_t>& ids) {
  std::string out;
  for (auto id : ids) out += (out.empty() ? "#" : ", #") + std::to_string(id);
  return out;
}

}  // namespace

// ---- event log ----------------------------------------------------------------------------

std::vector<IncidentEvent> list_incident_events(const Store& store, std::uint64_t from_seq,
                                                std::size_t limit) {
  std::vector<IncidentEvent> out;
  store.scan(Table::incident_events, id_key(from_seq), [&](std::string_view k, std::string_view v) {
    if (out.size() >= limit) return false;
    json j = json::parse(v, nullptr, false);
    if (k.size() != 8 || !j.is_object() || j.value("v", 0) != kEventFormat)
      throw StoreError("corrupt incident event");
    out.push_back({get_be64(k.data()), j.value("time_ns", std::int64_t{0}),
                   j.value("incident_id", std::uint64_t{0}), j.value("what", ""),
                   parse_severity(j.value("severity", "")).value_or(Severity::critical),
                   j.value("actor", ""), j.value("detail", "")});
    return true;
  });
  return out;
}

// ---- engine -------------------------------------------------------------------------------

IncidentEngine::~IncidentEngine() = default;

IncidentEngine::IncidentEngine(Store& store, IncidentPolicy policy, Clock now)
    : store_(store),
      policy_(std::move(policy)),
      now_(now ? std::move(now) : Clock(common::now_ns)),
      baseline_(policy_) {
  if (auto last = store_.last_key(Table::incidents); last && last->size() == 8)
    next_id_ = get_be64(last->data()) + 1;
  if (auto last = store_.last_key(Table::incident_events); last && last->size() == 8)
    next_seq_ = get_be64(last->data()) + 1;
  // Active incidents are few (closed and resolved ones dominate over time); a full scan at
  // start keeps the record format free of a second index.
  store_.scan(Table::incidents, "", [&](std::string_view, std::string_view v) {
    auto i = decode_incident(std::string(v));
    if (i.active()) active_.emplace(i.id, std::move(i));
    return true;
  });
  load_silences();
  rebuild_baseline();
}

void IncidentEngine::rebuild_baseline() {
  auto now = now_();
  auto since = now - ms_to_ns(policy_.baseline_window);
  auto runs =
      list_runs(store_, since, std::numeric_limits<std::int64_t>::max(), 100'000, [](const Run& r) {
        return (r.state == DetectionState::alerted || r.state == DetectionState::late) &&
               !r.clock_anomaly;
      });
  for (const auto& r : runs)
    baseline_.observe(r.test_id, r.agent_id, r.marker, r.action_ns, r.time_to_alert_ns);
}

Incident IncidentEngine::load(std::uint64_t id) const {
  if (auto it = active_.find(id); it != active_.end()) return it->second;
  auto v = store_.get(Table::incidents, id_key(id));
  if (!v) throw IncidentError("no incident #" + std::to_string(id));
  return decode_incident(*v);
}

void IncidentEngine::commit(Txn& t) {
  for (const auto& [id, i] : t.changed) t.ws.put(Table::incidents, id_key(id), encode_incident(i));
  for (const auto& [k, id] : t.keys) {
    if (id)
      t.ws.put(Table::incident_keys, k, id_key(*id));
    else
      t.ws.erase(Table::incident_keys, k);
  }
  for (const auto& [name, v] : t.cursors)
    t.ws.put(Table::incident_keys, kCursorPrefix + name, id_key(v));
  for (const auto& [id, sil] : t.silences)
    t.ws.put(Table::incident_keys, detail::incidents::kSilencePrefix + id_key(id),
             encode_silence(sil));
  if (t.ws.empty()) return;
  // Throws StoreError; nothing in memory changed yet.
  if (audit_)
    audit_->commit(std::move(t.ws), t.audit);
  else
    store_.commit(std::move(t.ws));
  next_id_ = t.next_id;
  next_seq_ = t.next_seq;
  if (t.next_silence_id) next_silence_id_ = t.next_silence_id;
  for (auto& [id, sil] : t.silences) {
    if (sil.active(t.now))
      silences_[id] = std::move(sil);
    else
      silences_.erase(id);
  }
  for (auto& [id, i] : t.changed) {
    if (i.active())
      active_[id] = std::move(i);
    else
      active_.erase(id);
  }
}

std::optional<Incident> IncidentEngine::apply(const Signal& s) {
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto r = apply_locked(s, t);
  commit(t);
  return r;
}

std::map<std::string, std::string> IncidentEngine::signal_labels(const Signal& s) {
  auto labels = s.labels;
  if (!s.agent_id.empty()) {
    auto host = hostnames_.find(s.agent_id);
    if (host == hostnames_.end()) {
      auto a = store_.get_agent(s.agent_id);
      host = hostnames_.emplace(s.agent_id, a ? a->hostname : "").first;
    }
    if (!host->second.empty()) labels["hostname"] = host->second;
  }
  return labels;
}

std::optional<std::uint64_t> IncidentEngine::migrate_legacy(const Signal& s, Txn& t) {
  // Before facets were merged one run could hold an incident per facet ("prevention_failed|t|a"
  // and "detection_missed|t|a"): all of them fold into one under the merged key, or the others
  // would never be looked up again (breaching, escalating, never resolving).
  auto own = kind_name(s.kind);
  if (s.legacy_key.rfind(own, 0) != 0) return std::nullopt;
  auto rest = s.legacy_key.substr(own.size());
  std::vector<std::pair<std::string, Incident>> found;
  for (auto k : {IncidentKind::prevention_failed, IncidentKind::detection_missed,
                 IncidentKind::detection_late}) {
    auto key = kind_name(k) + rest;
    std::optional<std::uint64_t> id;
    if (auto it = t.keys.find(key); it != t.keys.end())
      id = it->second;
    else if (auto v = store_.get(Table::incident_keys, key); v && v->size() == 8)
      id = get_be64(v->data());
    if (!id) continue;
    t.keys[key] = std::nullopt;  // the old keys go, whatever became of their incidents
    auto i = t.changed.count(*id) ? t.changed[*id] : load(*id);
    if (i.state != IncidentState::closed) found.emplace_back(key, std::move(i));
  }
  if (found.empty()) return std::nullopt;
  // The survivor: an active one if any, else the oldest.
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    if (a.second.active() != b.second.active()) return a.second.active();
    return a.second.id < b.second.id;
  });
  Incident keep = found.front().second;
  for (std::size_t n = 1; n < found.size(); ++n) {
    auto& other = found[n].second;
    if (other.id == keep.id) continue;
    if (other.active()) {
      for (const auto& f : other.facets)
        if (std::find(keep.facets.begin(), keep.facets.end(), f) == keep.facets.end())
          keep.facets.push_back(f);
      keep.severity = std::max(keep.severity, other.severity);
      if (keep.active() && other.kind < keep.kind) {  // the principal facet names it
        keep.kind = other.kind;
        keep.title = other.title;
      }
    }
    keep.occurrences += other.occurrences;
    keep.last_failure_ns = std::max(keep.last_failure_ns, other.last_failure_ns);
    keep.last_failure_agent_ns = std::max(keep.last_failure_agent_ns, other.last_failure_agent_ns);
    keep.timeline.push_back({t.now, kSystem, "merged",
                             "#" + std::to_string(other.id) + " (" + kind_name(other.kind) + ")"});
    auto why = "merged into #" + std::to_string(keep.id);
    other.state = IncidentState::closed;
    other.closed_ns = t.now;
    other.resolution = why;
    other.facets.clear();
    other.pause_reason.clear();
    stop_timer(other.ack_sla, t.now);
    stop_timer(other.resolve_sla, t.now);
    t.record(other, kSystem, "closed", why);
  }
  detail::incidents::thin_timeline(keep.timeline);
  keep.key = s.key;
  t.keys[s.key] = keep.id;
  t.changed[keep.id] = keep;
  return keep.id;
}

std::optional<Incident> IncidentEngine::apply_locked(const Signal& s, Txn& t) {
  auto lookup = [&](const std::string& key) -> std::optional<std::uint64_t> {
    if (auto it = t.keys.find(key); it != t.keys.end()) return it->second;
    if (auto v = store_.get(Table::incident_keys, key); v && v->size() == 8)
      return get_be64(v->data());
    return std::nullopt;
  };
  auto id = lookup(s.key);
  if (!id && !s.legacy_key.empty() && s.legacy_key != s.key) id = migrate_legacy(s, t);
  std::optional<Incident> cur;
  if (id) cur = t.changed.count(*id) ? t.changed[*id] : load(*id);
  if (cur && cur->state == IncidentState::closed) cur.reset();  // closed is final

  if (s.clears) {
    if (!cur || !cur->active()) return std::nullopt;
    auto& i = *cur;
    auto facet = kind_name(s.kind);
    if (is_test_facet(s.kind)) {
      auto it = std::find(i.facets.begin(), i.facets.end(), facet);
      if (it == i.facets.end()) return std::nullopt;  // that facet was not failing
      i.facets.erase(it);
      if (!i.facets.empty()) {
        auto worst = Severity::informational;
        auto principal = IncidentKind::detection_late;
        for (const auto& f : i.facets)
          if (auto k = parse_kind(f)) {
            worst = std::max(worst, policy_.severity_of(*k));
            principal = std::min(principal, *k);
          }
        // Never below what a human or the watchdog escalated it to.
        if (i.escalated_to) worst = std::max(worst, *i.escalated_to);
        if (worst != i.severity) {
          i.severity = worst;
          retarget_timer(i.ack_sla, policy_.sla_for(worst).acknowledge, t.now);
          retarget_timer(i.resolve_sla, policy_.sla_for(worst).resolve, t.now);
        }
        i.kind = principal;
        return t.record(i, kSystem, "facet_cleared", facet + ": " + s.detail);
      }
    }
    i.facets.clear();
    i.state = IncidentState::resolved;
    i.resolved_ns = t.now;
    i.resolution = s.detail.empty() ? "the condition cleared" : s.detail;
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    return t.record(i, kSystem, "auto_resolved", i.resolution);
  }
  auto facet = kind_name(s.kind);
  auto detail = is_test_facet(s.kind) ? facet + ": " + s.detail : s.detail;
  auto labels = signal_labels(s);
  auto note_failure = [&](Incident& i) {
    ++i.occurrences;
    i.last_failure_ns = std::max(i.last_failure_ns, s.time_ns);
    i.last_failure_agent_ns = std::max(i.last_failure_agent_ns, s.agent_started_ns);
    if (!s.marker.empty()) i.marker = s.marker;
    if (!s.target.empty()) i.target = s.target;
    i.labels = labels;
  };
  // A silenced failure is recorded (on the silences, and on its incident if there is one)
  // but opens, reopens and notifies nothing.
  if (auto by = silence_signal(s, labels, t); !by.empty()) {
    if (!cur) return std::nullopt;
    note_failure(*cur);
    return t.record(*cur, kSystem, "silenced", "silenced by " + id_list(by) + ": " + detail);
  }
  auto restart_timers = [&](Incident& i) {
    const auto& target = policy_.sla_for(i.severity);
    i.ack_sla = start_timer(target.acknowledge, t.now);
    i.resolve_sla = start_timer(target.resolve, t.now);
  };
  if (!cur) {
    Incident i;
    i.id = t.next_id++;
    i.key = s.key;
    i.kind = s.kind;
    i.severity = s.severity;
    i.title =
        s.title.empty() ? kind_name(s.kind) + " " + s.test_id + on_agent(s.agent_id) : s.title;
    i.test_id = s.test_id;
    i.agent_id = s.agent_id;
    i.facets = {facet};
    i.opened_ns = t.now;
    note_failure(i);
    restart_timers(i);
    t.keys[s.key] = i.id;
    return t.record(i, kSystem, "opened", detail);
  }
  auto& i = *cur;
  note_failure(i);
  if (i.accepted_risk && i.state == IncidentState::resolved)
    return t.record(i, kSystem, "suppressed", "accepted risk: " + detail);
  if (i.active()) {
    auto before = i.severity;
    if (std::find(i.facets.begin(), i.facets.end(), facet) == i.facets.end()) {
      i.facets.push_back(facet);
      i.severity = std::max(i.severity, s.severity);  // the worst facet
      // The kind (and title) is the principal facet failing, in enum order (not prevented,
      // then no alert, then late), whichever the feed happened to see first.
      if (is_test_facet(s.kind) && s.kind < i.kind) {
        i.kind = s.kind;
        if (!s.title.empty()) i.title = s.title;
      }
    }
    auto& r = t.record(i, kSystem, "occurrence", detail);
    if (r.severity == before) return r;
    // Worse than it was paged as: the timers move to the new severity's targets (from the
    // opening, as if it had been this bad all along) and "escalated" pages again.
    retarget_timer(r.ack_sla, policy_.sla_for(r.severity).acknowledge, t.now);
    retarget_timer(r.resolve_sla, policy_.sla_for(r.severity).resolve, t.now);
    Incident raised = r;
    return t.record(raised, kSystem, "escalated",
                    facet + " failing too (severity " + severity_name(before) + " -> " +
                        severity_name(raised.severity) + ")");
  }
  // Resolved and seen again: the same incident, reopened for a fresh triage.
  i.state = IncidentState::open;
  i.kind = s.kind;
  i.severity = s.severity;
  i.escalated_to.reset();  // a fresh triage
  i.facets = {facet};
  i.reopened_ns = t.now;
  ++i.reopen_count;
  i.touched = false;
  i.acknowledged_ns = i.resolved_ns = 0;
  i.resolution.clear();
  restart_timers(i);
  return t.record(i, kSystem, "reopened", "recurred" + (detail.empty() ? "" : ": " + detail));
}

Incident IncidentEngine::human(std::uint64_t id, const std::string& actor,
                               const std::function<void(Incident&, Txn&)>& change) {
  if (trimmed(actor).empty()) throw IncidentError("an actor is required");
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto i = load(id);
  if (i.state == IncidentState::closed)
    throw IncidentError("incident #" + std::to_string(id) + " is closed");
  change(i, t);
  commit(t);
  return i;
}

namespace {
std::string required_text(const std::string& text, const char* what, std::size_t max) {
  auto s = trimmed(text);
  std::string noun = what;
  if (s.empty()) throw IncidentError((noun == "owner" ? "an " : "a ") + noun + " is required");
  if (s.size() > max)
    throw IncidentError("the " + noun + " is longer than " + std::to_string(max) + " bytes");
  return s;
}
void require_active(const Incident& i, const char* action) {
  if (!i.active())
    throw IncidentError("cannot " + std::string(action) + " incident #" + std::to_string(i.id) +
                        ": it is " + incident_state_name(i.state));
}
}  // namespace

Incident IncidentEngine::ack(std::uint64_t id, const std::string& actor) {
  return human(id, actor, [&](Incident& i, Txn& t) {
    require_active(i, "acknowledge");
    if (i.state == IncidentState::acknowledged)
      throw IncidentError("incident #" + std::to_string(id) + " is already acknowledged");
    i.state = IncidentState::acknowledged;
    i.acknowledged_ns = t.now;
    i.touched = true;
    stop_timer(i.ack_sla, t.now);
    i = t.record(i, actor, "acknowledged", "");
  });
}

Incident IncidentEngine::note(std::uint64_t id, const std::string& actor, const std::string& text) {
  auto body = required_text(text, "note", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    i.touched = true;
    i = t.record(i, actor, "noted", body);
  });
}

Incident IncidentEngine::assign(std::uint64_t id, const std::string& actor,
                                const std::string& owner) {
  auto who = required_text(owner, "owner", kMaxOwner);
  return human(id, actor, [&](Incident& i, Txn& t) {
    auto before = i.owner;
    i.owner = who;
    i = t.record(i, actor, "assigned", before.empty() ? who : who + " (was " + before + ")");
  });
}

Incident IncidentEngine::resolve(std::uint64_t id, const std::string& actor,
                                 const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    require_active(i, "resolve");
    i.state = IncidentState::resolved;
    i.resolved_ns = t.now;
    i.resolution = why;
    i.touched = true;
    i.facets.clear();  // nothing is failing as far as anyone knows (and ?kind= agrees)
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    i = t.record(i, actor, "resolved", why);
  });
}

Incident IncidentEngine::accept_risk(std::uint64_t id, const std::string& actor,
                                     const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    if (i.accepted_risk && i.state == IncidentState::resolved)
      throw IncidentError("incident #" + std::to_string(id) + " is already an accepted risk");
    if (!i.active() && i.state != IncidentState::resolved)
      throw IncidentError("cannot accept the risk of incident #" + std::to_string(id) +
                          ": it is " + incident_state_name(i.state));
    i.state = IncidentState::resolved;
    if (!i.resolved_ns) i.resolved_ns = t.now;
    i.resolution = "accepted risk: " + why;
    i.accepted_risk = true;
    i.facets.clear();
    i.touched = true;
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    i = t.record(i, actor, "risk_accepted", why);
  });
}

Incident IncidentEngine::reopen(std::uint64_t id, const std::string& actor,
                                const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    if (i.state != IncidentState::resolved)
      throw IncidentError("cannot reopen incident #" + std::to_string(id) + ": it is " +
                          incident_state_name(i.state));
    i.state = IncidentState::open;
    i.accepted_risk = false;
    // Resolved ones carry no facets; reopened, it is failing again as what it was opened for.
    if (i.facets.empty()) i.facets = {kind_name(i.kind)};
    i.reopened_ns = t.now;
    ++i.reopen_count;
    i.touched = true;  // a human chose to look at it again
    i.acknowledged_ns = i.resolved_ns = 0;
    i.resolution.clear();
    const auto& target = policy_.sla_for(i.severity);
    i.ack_sla = start_timer(target.acknowledge, t.now);
    i.resolve_sla = start_timer(target.resolve, t.now);
    i = t.record(i, actor, "reopened_by", why);
  });
}

Incident IncidentEngine::close(std::uint64_t id, const std::string& actor,
                               const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    i.state = IncidentState::closed;
    i.closed_ns = t.now;
    if (i.resolution.empty()) i.resolution = why;
    i.facets.clear();
    i.touched = true;
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    t.keys[i.key] = std::nullopt;  // a recurrence opens a new incident
    i = t.record(i, actor, "closed", why);
  });
}

Incident IncidentEngine::pause(std::uint64_t id, const std::string& actor,
                               const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    require_active(i, "pause the SLA of");
    if (i.paused()) throw IncidentError("incident #" + std::to_string(id) + " is already paused");
    i.pause_reason = why;
    pause_timer(i.ack_sla, t.now);
    pause_timer(i.resolve_sla, t.now);
    i = t.record(i, actor, "paused", why);
  });
}

Incident IncidentEngine::resume(std::uint64_t id, const std::string& actor,
                                const std::string& only_if_reason_prefix) {
  return human(id, actor, [&](Incident& i, Txn& t) {
    require_active(i, "resume the SLA of");
    if (!i.paused()) throw IncidentError("incident #" + std::to_string(id) + " is not paused");
    if (i.pause_reason.rfind(only_if_reason_prefix, 0) != 0)
      throw IncidentError("incident #" + std::to_string(id) + " was paused for another reason: " +
                          i.pause_reason);
    auto why = i.pause_reason;
    i.pause_reason.clear();
    resume_timer(i.ack_sla, t.now);
    resume_timer(i.resolve_sla, t.now);
    i = t.record(i, actor, "resumed", "was paused: " + why);
  });
}

Incident IncidentEngine::escalate(std::uint64_t id, const std::string& actor,
                                  const std::string& reason,
                                  const std::map<std::string, std::uint64_t>& cursors) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    require_active(i, "escalate");
    for (const auto& [name, v] : cursors) t.cursors[name] = v;
    // Silenced: on the timeline, but no page and no raise while the silence lasts.
    if (auto by = silences_of(i, t.now); !by.empty()) {
      i = t.record(i, actor, "silenced", "escalation silenced by " + id_list(by) + ": " + why);
      return;
    }
    std::string detail = why;
    if (i.severity != Severity::critical)
      detail += " (severity " + severity_name(i.severity) + " -> critical)";
    i.severity = Severity::critical;
    i.escalated_to = Severity::critical;  // a facet clearing later must not lower it
    i = t.record(i, actor, "escalated", detail);
  });
}

TickResult IncidentEngine::tick() {
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  std::erase_if(silences_, [&](const auto& kv) { return !kv.second.active(t.now); });
  prune_silences(t);
  TickResult r;
  for (const auto& [id, cached] : active_) {
    Incident i = cached;
    for (auto [timer, name] : {std::pair{&i.ack_sla, "acknowledge"}, {&i.resolve_sla, "resolve"}}) {
      if (!timer->running() || timer->paused_since_ns || timer->breached_ns) continue;
      if (timer->elapsed_ns(t.now) < timer->target_ns) continue;
      timer->breached_ns = t.now;  // once, silenced or not: no page when the silence ends
      if (auto by = silences_of(i, t.now); !by.empty()) {
        i = t.record(i, kSystem, "silenced",
                     std::string(name) + " SLA breached, not paged: silenced by " + id_list(by));
        continue;
      }
      i = t.record(i, kSystem, "sla_breached", name);
      ++r.breaches;
    }
    auto since = std::max(i.opened_ns, i.reopened_ns);
    if (i.state == IncidentState::open && !i.touched && i.severity <= Severity::low &&
        t.now - since >= ms_to_ns(policy_.auto_close_after)) {
      auto note = "auto-closed: not triaged within " + hours_words(policy_.auto_close_after);
      i.state = IncidentState::closed;
      i.closed_ns = t.now;
      i.resolution = note;
      i.facets.clear();
      stop_timer(i.ack_sla, t.now);
      stop_timer(i.resolve_sla, t.now);
      t.keys[i.key] = std::nullopt;
      i = t.record(i, kSystem, "auto_closed", note);
      ++r.auto_closed;
    }
  }
  commit(t);
  return r;
}

void IncidentEngine::process_detection_events(const std::vector<DetectionEvent>& events) {
  if (events.empty()) return;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  for (const auto& e : events) {
    for (const auto& s : signals_from_detection(e, policy_)) apply_locked(s, t);
    if (e.to == "alerted" || e.to == "late") {
      // The event carries the run's latency; events stored before it did need the run.
      std::optional<DetectionEvent> timed;
      if (e.has_latency) {
        timed = e;
      } else if (auto run = get_run(store_, e.marker)) {
        timed = e;
        timed->test_id = run->test_id;
        timed->agent_id = run->agent_id;
        timed->action_ns = run->action_ns;
        timed->time_to_alert_ns = run->time_to_alert_ns;
        timed->clock_anomaly = run->clock_anomaly;
      }
      if (timed && !timed->clock_anomaly && timed->time_to_alert_ns > 0)
        if (auto s = baseline_.observe(timed->test_id, timed->agent_id, timed->marker,
                                       timed->action_ns, timed->time_to_alert_ns))
          apply_locked(*s, t);
    }
    t.cursors["detection_events"] = e.seq + 1;
  }
  commit(t);
}

void IncidentEngine::process_results(const std::string& agent_id,
                                     const std::vector<StoredResult>& results) {
  if (results.empty()) return;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  for (const auto& r : results) {
    try {
      auto body = common::decode_body(r.record.body);
      for (const auto& s : signals_from_result(body, agent_id, r.received_ns, policy_))
        apply_locked(s, t);
    } catch (const common::ProtocolError&) {
      // A body the chain accepted but we cannot read says nothing about prevention.
    }
    t.cursors["results/" + agent_id] = r.record.seq + 1;
  }
  commit(t);
}

namespace {
// Where a processed security event is remembered: by time first, so the ones that fell out of
// the re-read window are a prefix to erase.
std::string seen_security_key(const SecurityEvent& e) {
  auto identity = std::to_string(e.time_ns) + '\0' + e.kind + '\0' + e.agent_id + '\0' +
                  e.remote + '\0' + e.detail;
  auto digest = common::sha256(identity);
  std::string k = kSeenSecurityPrefix;
  put_be64(k, time_key(e.time_ns));
  k.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return k;
}
}  // namespace

std::size_t IncidentEngine::process_security_events(const std::vector<SecurityEvent>& events) {
  if (events.empty()) return 0;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto newest = cursor("security_events");  // never moves back for a late-landing event
  std::set<std::string> batch;
  std::size_t n = 0;
  for (const auto& e : events) {
    auto seen = seen_security_key(e);
    if (!batch.insert(seen).second || store_.get(Table::incident_keys, seen)) continue;
    t.ws.put(Table::incident_keys, seen, "");
    apply_locked(signal_from_security_event(e, policy_), t);
    newest = std::max(newest, static_cast<std::uint64_t>(std::max<std::int64_t>(0, e.time_ns + 1)));
    ++n;
  }
  if (n == 0) return 0;
  t.cursors["security_events"] = newest;
  // The feed never re-reads before cursor - margin: what is older need not be remembered.
  auto horizon = time_key(static_cast<std::int64_t>(newest) - kSecurityReadMarginNs - 1);
  store_.scan(Table::incident_keys, kSeenSecurityPrefix, [&](std::string_view k, std::string_view) {
    if (k.substr(0, kSeenSecurityPrefix.size()) != kSeenSecurityPrefix ||
        k.size() < kSeenSecurityPrefix.size() + 8 ||
        get_be64(k.data() + kSeenSecurityPrefix.size()) >= horizon)
      return false;
    t.ws.erase(Table::incident_keys, std::string(k));
    return true;
  });
  commit(t);
  return n;
}

void IncidentEngine::watch_silence(const std::vector<AgentRecord>& agents) {
  if (policy_.agent_silent_after.count() <= 0) return;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  std::map<std::string, std::vector<std::uint64_t>> counted;
  for (const auto& a : agents) {
    if (a.last_seen_ns <= 0) continue;  // enrolled, never connected: nothing to miss yet
    auto s = agent_silence_signal(a.agent_id, t.now, a.last_seen_ns, policy_.agent_silent_after,
                                  policy_);
    if (s.clears) silent_episodes_.erase(s.key);  // heard from: the next silence is an episode
    std::optional<Incident> cur;
    if (auto v = store_.get(Table::incident_keys, s.key); v && v->size() == 8)
      cur = load(get_be64(v->data()));
    bool active = cur && cur->active();
    if (s.clears != active) continue;  // open once while silent; resolve once heard
    if (!s.clears) {
      // A silenced silent agent stays "failing" on every poll: each silence counts the
      // episode once, not one synced write per poll.
      auto labels = signal_labels(s);
      labels["severity"] = severity_name(s.severity);
      auto ids = matching_silences(s.test_id, s.agent_id, {kind_name(s.kind)}, labels, t.now);
      if (!ids.empty()) {
        auto seen = silent_episodes_.find(s.key);
        if (seen != silent_episodes_.end() && seen->second == ids) continue;
        counted[s.key] = ids;
      }
    }
    apply_locked(s, t);
  }
  commit(t);
  for (auto& [key, ids] : counted) silent_episodes_[key] = std::move(ids);
}

std::optional<Incident> IncidentEngine::observe_latency(const Run& run) {
  std::lock_guard lk(mu_);
  if (run.clock_anomaly) return std::nullopt;
  auto s =
      baseline_.observe(run.test_id, run.agent_id, run.marker, run.action_ns, run.time_to_alert_ns);
  if (!s) return std::nullopt;
  Txn t(now_(), next_id_, next_seq_);
  auto r = apply_locked(*s, t);
  commit(t);
  return r;
}

std::uint64_t IncidentEngine::cursor(const std::string& name) const {
  auto v = store_.get(Table::incident_keys, kCursorPrefix + name);
  return v && v->size() == 8 ? get_be64(v->data()) : 0;
}

void IncidentEngine::set_cursors(const std::map<std::string, std::uint64_t>& values) {
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  t.cursors = values;
  commit(t);
}

std::optional<Incident> IncidentEngine::get(std::uint64_t id) const {
  std::lock_guard lk(mu_);
  try {
    return load(id);
  } catch (const IncidentError&) {
    return std::nullopt;
  }
}

std::vector<Incident> IncidentEngine::list(const IncidentFilter& f, std::size_t limit) const {
  // Newest first by id, one point read each, stopping at `limit`: a listing of the latest
  // incidents costs the same whatever the history holds.
  std::vector<Incident> out;
  auto last = store_.last_key(Table::incidents);
  if (!last || last->size() != 8) return out;
  for (auto id = get_be64(last->data()); id >= 1 && out.size() < limit; --id) {
    auto v = store_.get(Table::incidents, id_key(id));
    if (!v) continue;
    auto i = decode_incident(*v);
    if (f.matches(i)) out.push_back(std::move(i));
  }
  return out;
}

std::vector<Incident> IncidentEngine::active() const {
  std::lock_guard lk(mu_);
  std::vector<Incident> out;
  for (const auto& [id, i] : active_) out.push_back(i);
  return out;
}

std::map<IncidentKind, std::size_t> IncidentEngine::closed_untouched_since(
    std::int64_t since_ns) const {
  std::map<IncidentKind, std::size_t> out;
  store_.scan(Table::incidents, "", [&](std::string_view, std::string_view v) {
    auto i = decode_incident(std::string(v));
    if (i.state == IncidentState::closed && !i.touched && i.closed_ns >= since_ns) ++out[i.kind];
    return true;
  });
  return out;
}

}  // namespace tocsin::collector
