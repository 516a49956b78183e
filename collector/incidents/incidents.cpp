// The incident engine: lifecycle, human actions, SLA breaches, auto-close, event log; its feed.
#include "collector/incidents/incidents.hpp"

#include <algorithm>
#include <limits>

#include <spdlog/spdlog.h>
#include <pthread.h>

#include "collector/incidents/incidents_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

using nlohmann::json;
using detail::incidents::dump;
using detail::incidents::ms_to_ns;
using detail::incidents::on_agent;

namespace {

constexpr int kEventFormat = 1;
constexpr std::size_t kMaxText = 4096;  // notes, reasons
constexpr std::size_t kMaxOwner = 128;
// Cursors share Table::incident_keys with the dedup keys; a dedup key starts with a kind name,
// never with this byte.
const std::string kCursorPrefix = std::string(1, '\x01') + "cursor/";
const std::string kSystem = "system";

std::string id_key(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}

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

// Keeps the record bounded for an incident that recurs for weeks: the oldest occurrences go
// first (their count stays in `occurrences`); lifecycle entries stay as long as possible.
void thin_timeline(std::vector<TimelineEntry>& tl) {
  while (tl.size() > kMaxTimeline) {
    auto it = std::find_if(tl.begin() + 1, tl.end(),
                           [](const TimelineEntry& e) { return e.what == "occurrence"; });
    tl.erase(it != tl.end() ? it : tl.begin() + 1);
  }
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

// One unit of work: every incident it changes and every event it appends go into one
// WriteSet; the engine's counters and cache change only after that write is durable.
struct IncidentEngine::Txn {
  Txn(std::int64_t n, std::uint64_t id, std::uint64_t seq) : now(n), next_id(id), next_seq(seq) {}
  WriteSet ws;
  std::int64_t now = 0;
  std::uint64_t next_id = 0, next_seq = 0;
  std::map<std::uint64_t, Incident> changed;
  std::map<std::string, std::optional<std::uint64_t>> keys;  // overlay on incident_keys
  std::map<std::string, std::uint64_t> cursors;
  std::vector<AuditRecord> audit;  // committed with ws when the engine has an audit log

  Incident& record(Incident& i, const std::string& actor, const std::string& what,
                   const std::string& detail) {
    i.updated_ns = now;
    i.timeline.push_back({now, actor, what, detail});
    thin_timeline(i.timeline);
    std::uint64_t seq = next_seq++;
    if (what != "occurrence")  // not a state change; one per failing run
      audit.push_back({actor,
                       "incident_" + what,
                       "incident #" + std::to_string(i.id),
                       {{"incident_id", i.id},
                        {"event_seq", seq},
                        {"severity", severity_name(i.severity)},
                        {"detail", detail}}});
    ws.put(Table::incident_events, id_key(seq),
           dump({{"v", kEventFormat},
                 {"time_ns", now},
                 {"incident_id", i.id},
                 {"what", what},
                 {"severity", severity_name(i.severity)},
                 {"actor", actor},
                 {"detail", detail}}));
    changed[i.id] = i;
    return changed[i.id];
  }
};

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
  if (t.ws.empty()) return;
  // Throws StoreError; nothing in memory changed yet.
  if (audit_)
    audit_->commit(std::move(t.ws), t.audit);
  else
    store_.commit(std::move(t.ws));
  next_id_ = t.next_id;
  next_seq_ = t.next_seq;
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

std::optional<Incident> IncidentEngine::apply_locked(const Signal& s, Txn& t) {
  std::optional<std::uint64_t> id;
  if (auto it = t.keys.find(s.key); it != t.keys.end())
    id = it->second;
  else if (auto v = store_.get(Table::incident_keys, s.key); v && v->size() == 8)
    id = get_be64(v->data());
  std::optional<Incident> cur;
  if (id) cur = t.changed.count(*id) ? t.changed[*id] : load(*id);
  if (cur && cur->state == IncidentState::closed) cur.reset();  // closed is final

  if (s.clears) {
    if (!cur || !cur->active()) return std::nullopt;
    auto& i = *cur;
    i.state = IncidentState::resolved;
    i.resolved_ns = t.now;
    i.resolution = s.detail.empty() ? "the condition cleared" : s.detail;
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    return t.record(i, kSystem, "auto_resolved", i.resolution);
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
    i.marker = s.marker;
    i.occurrences = 1;
    i.opened_ns = t.now;
    i.last_failure_ns = s.time_ns;
    i.last_failure_agent_ns = s.agent_started_ns;
    restart_timers(i);
    t.keys[s.key] = i.id;
    return t.record(i, kSystem, "opened", s.detail);
  }
  auto& i = *cur;
  ++i.occurrences;
  i.last_failure_ns = std::max(i.last_failure_ns, s.time_ns);
  i.last_failure_agent_ns = std::max(i.last_failure_agent_ns, s.agent_started_ns);
  if (!s.marker.empty()) i.marker = s.marker;
  if (i.active()) return t.record(i, kSystem, "occurrence", s.detail);
  // Resolved and seen again: the same incident, reopened for a fresh triage.
  i.state = IncidentState::open;
  i.severity = s.severity;
  i.reopened_ns = t.now;
  ++i.reopen_count;
  i.touched = false;
  i.acknowledged_ns = i.resolved_ns = 0;
  i.resolution.clear();
  restart_timers(i);
  return t.record(i, kSystem, "reopened", "recurred" + (s.detail.empty() ? "" : ": " + s.detail));
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
    i.pause_reason.clear();
    stop_timer(i.ack_sla, t.now);
    stop_timer(i.resolve_sla, t.now);
    i = t.record(i, actor, "resolved", why);
  });
}

Incident IncidentEngine::close(std::uint64_t id, const std::string& actor,
                               const std::string& reason) {
  auto why = required_text(reason, "reason", kMaxText);
  return human(id, actor, [&](Incident& i, Txn& t) {
    i.state = IncidentState::closed;
    i.closed_ns = t.now;
    if (i.resolution.empty()) i.resolution = why;
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
    std::string detail = why;
    if (i.severity != Severity::critical)
      detail += " (severity " + severity_name(i.severity) + " -> critical)";
    i.severity = Severity::critical;
    i = t.record(i, actor, "escalated", detail);
  });
}

TickResult IncidentEngine::tick() {
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  TickResult r;
  for (const auto& [id, cached] : active_) {
    Incident i = cached;
    for (auto [timer, name] : {std::pair{&i.ack_sla, "acknowledge"}, {&i.resolve_sla, "resolve"}}) {
      if (!timer->running() || timer->paused_since_ns || timer->breached_ns) continue;
      if (timer->elapsed_ns(t.now) < timer->target_ns) continue;
      timer->breached_ns = t.now;
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

void IncidentEngine::process_security_events(const std::vector<SecurityEvent>& events) {
  if (events.empty()) return;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto newest = cursor("security_events");  // never moves back for a late-landing event
  for (const auto& e : events) {
    apply_locked(signal_from_security_event(e, policy_), t);
    newest = std::max(newest, static_cast<std::uint64_t>(std::max<std::int64_t>(0, e.time_ns + 1)));
  }
  t.cursors["security_events"] = newest;
  commit(t);
}

void IncidentEngine::watch_silence(const std::vector<AgentRecord>& agents) {
  if (policy_.agent_silent_after.count() <= 0) return;
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  for (const auto& a : agents) {
    if (a.last_seen_ns <= 0) continue;  // enrolled, never connected: nothing to miss yet
    auto s = agent_silence_signal(a.agent_id, t.now, a.last_seen_ns, policy_.agent_silent_after,
                                  policy_);
    std::optional<Incident> cur;
    if (auto v = store_.get(Table::incident_keys, s.key); v && v->size() == 8)
      cur = load(get_be64(v->data()));
    bool active = cur && cur->active();
    if (s.clears == active) apply_locked(s, t);  // open once while silent; resolve once heard
  }
  commit(t);
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
    if ((!f.state || i.state == *f.state) && (!f.severity || i.severity == *f.severity))
      out.push_back(std::move(i));
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

// ---- feed ---------------------------------------------------------------------------------

namespace {
constexpr std::size_t kFeedBatch = 1000;
}

IncidentFeed::IncidentFeed(IncidentEngine& engine, Store& store, std::chrono::milliseconds period)
    : engine_(engine), store_(store), period_(period) {}

IncidentFeed::~IncidentFeed() {
  stop();
}

void IncidentFeed::start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "incident-feed");
    loop();
  });
}

void IncidentFeed::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void IncidentFeed::loop() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    lk.unlock();
    try {
      poll_once();
    } catch (const std::exception& e) {
      spdlog::error("incidents: feeding the engine failed (retrying next round): {}", e.what());
    }
    lk.lock();
    cv_.wait_for(lk, period_, [this] { return stopping_; });
  }
}

namespace {
constexpr std::int64_t kSecurityMarginNs = 60'000'000'000;  // 60 s
}  // namespace

std::size_t IncidentFeed::poll_once() {
  if (engine_.cursor("initialised") == 0) {
    std::map<std::string, std::uint64_t> c{{"initialised", 1}};
    auto last = store_.last_key(Table::detection_events);
    c["detection_events"] = last && last->size() == 8 ? get_be64(last->data()) + 1 : 1;
    for (const auto& a : store_.list_agents()) c["results/" + a.agent_id] = a.next_seq;
    c["security_events"] = static_cast<std::uint64_t>(std::max<std::int64_t>(1, engine_.now()));
    engine_.set_cursors(c);
  }
  std::size_t n = 0;
  for (;;) {
    // The baseline watch learns from every alerted or late run in there too.
    auto ev = list_detection_events(store_, engine_.cursor("detection_events"), kFeedBatch);
    engine_.process_detection_events(ev);
    n += ev.size();
    if (ev.size() < kFeedBatch) break;
  }
  for (const auto& a : store_.list_agents()) {
    for (;;) {
      auto rs = store_.list_results_by_seq(a.agent_id, engine_.cursor("results/" + a.agent_id),
                                           kFeedBatch);
      engine_.process_results(a.agent_id, rs);
      n += rs.size();
      if (rs.size() < kFeedBatch) break;
    }
  }
  // Security events are keyed by the time they were stamped, which is before their group
  // commit: one stamped earlier can become visible after a later one was read. So each poll
  // re-reads a margin before the cursor and skips the events it has already processed.
  auto cursor = static_cast<std::int64_t>(engine_.cursor("security_events"));
  auto since = std::max<std::int64_t>(1, cursor - kSecurityMarginNs);
  for (auto from = since;;) {
    auto page = store_.list_security_events(from, kFeedBatch);
    std::vector<SecurityEvent> fresh;
    for (const auto& e : page) {
      auto id = std::to_string(e.time_ns) + '\0' + e.kind + '\0' + e.agent_id + '\0' + e.remote +
                '\0' + e.detail;
      if (!seen_security_.emplace(std::move(id), e.time_ns).second) continue;
      fresh.push_back(e);
    }
    engine_.process_security_events(fresh);
    n += fresh.size();
    // A full page continues from its last time (events at that time again: already seen); a
    // page of one single nanosecond could not advance and ends the round.
    if (page.size() < kFeedBatch || page.back().time_ns == from) break;
    from = page.back().time_ns;
  }
  std::erase_if(seen_security_, [&](const auto& kv) { return kv.second < since; });
  engine_.watch_silence(store_.list_agents());
  engine_.tick();
  return n;
}

}  // namespace tocsin::collector
