// Incidents: what failed, how bad it is, who handles it and whether it is handled in time.
//
// Inputs become `Signal`s through pure functions (a stored result, a detection event, a
// security event, an agent's silence, a time-to-alert far above its baseline). The engine
// deduplicates them by key (test + agent + target for the facets of a failing test, else kind
// + test + agent) into incidents with a lifecycle
// (open → acknowledged → resolved / closed; resolved reopens on recurrence, closed is final),
// SLA timers per severity, auto-close of untriaged low-priority incidents and a timeline of
// every change. Accepted risks and silences record failures without reopening or notifying.
// Every change is also appended to a gap-free event log (Table::incident_events)
// in the same synced write as the incident, so notifiers page through it and never miss one.
//
// One mutex guards the engine; the clock is injected so tests drive timers without waiting.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "collector/audit/audit.hpp"
#include "collector/incidents/silences.hpp"
#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"
#include "common/config.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

enum class Severity { informational = 0, low, medium, high, critical };
enum class IncidentState { open, acknowledged, resolved, closed };
enum class IncidentKind {
  prevention_failed,
  detection_missed,
  detection_late,
  health_failed,
  agent_silent,
  security_event,
  latency_regression,
};
inline constexpr std::array kAllIncidentKinds{
    IncidentKind::prevention_failed, IncidentKind::detection_missed, IncidentKind::detection_late,
    IncidentKind::health_failed,     IncidentKind::agent_silent,     IncidentKind::security_event,
    IncidentKind::latency_regression};

std::string severity_name(Severity s);
std::optional<Severity> parse_severity(const std::string& s);
std::string incident_state_name(IncidentState s);
std::optional<IncidentState> parse_incident_state(const std::string& s);
std::string kind_name(IncidentKind k);
std::optional<IncidentKind> parse_kind(const std::string& s);

// A human action that cannot be done (unknown id, closed incident, empty text, ...). The
// message names what was wrong; the API answers it as a 4xx.
struct IncidentError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct SlaTarget {
  std::chrono::milliseconds acknowledge{0};  // 0: no timer
  std::chrono::milliseconds resolve{0};
};

// Config-like policy; defaults as documented in docs/INCIDENTS.md.
struct IncidentPolicy {
  std::map<IncidentKind, Severity> severity;  // kinds not listed: critical
  std::array<SlaTarget, 5> sla;               // by Severity
  std::chrono::milliseconds auto_close_after = std::chrono::hours(72);
  // An agent not heard from for this long is `agent_silent` (0: never). The collector does
  // not know each agent's schedule, so this is one bound for all of them.
  std::chrono::milliseconds agent_silent_after = std::chrono::hours(1);
  double baseline_factor = 3.0;  // a sample above factor × median is a regression
  std::chrono::milliseconds baseline_window = std::chrono::hours(24 * 7);
  std::size_t baseline_min_samples = 5;
  std::size_t baseline_max_samples = 200;  // per test, newest kept

  IncidentPolicy();
  Severity severity_of(IncidentKind k) const;
  const SlaTarget& sla_for(Severity s) const { return sla[static_cast<std::size_t>(s)]; }
  // The `incidents:` section: severity: {kind: sev}, sla: {sev: {acknowledge, resolve}},
  // auto_close_after, agent_silent_after, baseline: {factor, window, min_samples}. Missing
  // keys keep defaults.
  static IncidentPolicy load(const common::ConfigNode& node);
};

// The facets of one test failing on one agent and target: prevention failed, no alert, a late
// alert. They share one incident (one run can fail all three; three criticals for one fault
// is noise), which records the facets failing now and takes the worst one's severity.
bool is_test_facet(IncidentKind k);

// Dedup key, fields separated by '|' (which no id in Tocsin contains): for a test facet
// "test|<test>|<agent>[|<target>]", so the facets share it; for the other kinds
// "<kind>|<test>|<agent>[|<target>]". A test that reaches several targets (tcp_connect) gives
// one result and run per target: the target is part of the key, so one target passing never
// clears another's failure. The target must not hold a per-run value (see target_without_marker).
std::string dedup_key(IncidentKind kind, const std::string& test_id, const std::string& agent_id,
                      const std::string& target = "");
// The key a test facet had before facets were merged ("<kind>|..."): an incident stored under
// it is found again by its first signal with the new key.
std::string legacy_dedup_key(IncidentKind kind, const std::string& test_id,
                             const std::string& agent_id, const std::string& target = "");
// Web probes put the run's marker in the URL (the target): every occurrence of the marker is
// replaced by "{marker}", so runs of one test share a key and a pass clears a failure.
std::string target_without_marker(const std::string& target, const std::string& marker);

// The most time a security event can become visible after a later-stamped one: the feed
// re-reads this far before its cursor, and the engine remembers (durably) what it processed
// in that window so a re-read or a restart processes nothing twice.
inline constexpr std::int64_t kSecurityReadMarginNs = 60'000'000'000;

// Something observed that opens (or adds to) an incident, or — with `clears` — that the
// condition behind one is gone (a later run passed, the late alert arrived).
struct Signal {
  IncidentKind kind = IncidentKind::prevention_failed;
  std::string key;  // dedup_key(kind, test_id, agent_id, target)
  Severity severity = Severity::critical;
  std::string title;  // plain words
  std::string test_id, agent_id, marker;
  std::string target;  // for results and detections: the run's target ("" for one-target tests)
  std::string detail;
  std::int64_t time_ns = 0;
  std::int64_t agent_started_ns = 0;  // from a result: when the run began, agent clock (raw)
  bool clears = false;
  // What silences match against: probe, technique, target, kind, severity where known (the
  // engine adds hostname from the agent record).
  std::map<std::string, std::string> labels;
  std::string legacy_key;  // a test facet's pre-merge key (see legacy_dedup_key)
};

// ---- pure input → signal functions ------------------------------------------------------

// A probe result: expect_prevent with not_prevented opens prevention_failed, prevented clears
// it; an http_check `unhealthy` opens health_failed, `healthy` clears it. Anything else
// (inconclusive, error, ...) says nothing either way.
std::vector<Signal> signals_from_result(const common::ResultBody& body, const std::string& agent_id,
                                        std::int64_t time_ns, const IncidentPolicy& policy);
// A detection state change: missed (or logged: the SIEM saw it but raised no alert) opens
// detection_missed; late opens detection_late and then clears detection_missed (that order, so
// an incident failing only as "missed" does not resolve and reopen); alerted clears both.
std::vector<Signal> signals_from_detection(const DetectionEvent& e, const IncidentPolicy& policy);
// Tampering, forged signatures, replays...: one incident per event kind and agent.
Signal signal_from_security_event(const SecurityEvent& e, const IncidentPolicy& policy);
// Silent for longer than allowed opens agent_silent; heard from in time clears it.
Signal agent_silence_signal(const std::string& agent_id, std::int64_t now_ns,
                            std::int64_t last_seen_ns, std::chrono::milliseconds allowed_silence,
                            const IncidentPolicy& policy);

// Per test, a rolling time-to-alert baseline: the median of the newest samples inside the
// window. observe() compares a sample with the baseline before adding it: with at least
// min_samples and more than factor × median it gives a latency_regression signal, otherwise
// (with enough samples) a clear. Samples are deduplicated by marker. In memory only: the
// engine rebuilds it from stored runs at start.
class LatencyBaseline {
 public:
  explicit LatencyBaseline(const IncidentPolicy& policy) : policy_(policy) {}
  std::optional<Signal> observe(const std::string& test_id, const std::string& agent_id,
                                const std::string& marker, std::int64_t time_ns,
                                std::int64_t time_to_alert_ns);
  std::optional<std::int64_t> median(const std::string& test_id, std::int64_t now_ns) const;

 private:
  struct Sample {
    std::int64_t time_ns, value_ns;
    std::string marker;
  };
  IncidentPolicy policy_;
  // test -> oldest first; a deque, since every observation past the cap drops the oldest.
  std::map<std::string, std::deque<Sample>> samples_;
};

// ---- records -----------------------------------------------------------------------------

struct SlaTimer {
  std::int64_t target_ns = 0;        // 0: no timer at this severity
  std::int64_t started_ns = 0;       // 0: not started
  std::int64_t stopped_ns = 0;       // 0: running
  std::int64_t paused_total_ns = 0;  // completed pauses
  std::int64_t paused_since_ns = 0;  // 0: not paused now
  std::int64_t breached_ns = 0;      // 0: not breached (a breach fires once)

  bool exists() const { return target_ns > 0 && started_ns > 0; }
  bool running() const { return exists() && stopped_ns == 0; }
  std::int64_t elapsed_ns(std::int64_t now_ns) const;  // pauses excluded
  // Time left until the target (negative once past); nullopt when there is no timer.
  std::optional<std::int64_t> remaining_ns(std::int64_t now_ns) const;
};

struct TimelineEntry {
  std::int64_t time_ns = 0;
  std::string actor;  // "system" for the engine, else the API caller's name
  std::string what;   // the same words as IncidentEvent::what
  std::string detail;
};

struct Incident {
  std::uint64_t id = 0;
  std::string key;
  IncidentKind kind = IncidentKind::prevention_failed;
  Severity severity = Severity::critical;
  IncidentState state = IncidentState::open;
  std::string title, test_id, agent_id, marker, owner;
  std::uint64_t occurrences = 0;
  std::uint32_t reopen_count = 0;
  std::int64_t opened_ns = 0, reopened_ns = 0, updated_ns = 0;
  std::int64_t acknowledged_ns = 0, resolved_ns = 0, closed_ns = 0;
  std::int64_t last_failure_ns = 0;  // the newest failing signal's own time (a result's arrival)
  // The newest failing run's start on the agent's own (raw) clock: compared with a command's
  // outcome time from the same agent, it tells a check run after a restart from one that was
  // in flight before it, whatever the upload delays.
  std::int64_t last_failure_agent_ns = 0;
  bool touched = false;  // a human acknowledged or noted the current opening
  // Resolved as an accepted risk: later failures are recorded on the timeline ("suppressed"),
  // reopen nothing and notify nothing until a human reopens it.
  bool accepted_risk = false;
  std::string target;                  // without the run marker
  std::vector<std::string> facets;     // kind names failing now (a test facet incident: 1-3)
  // The severity a human or the watchdog escalated to: a facet clearing never lowers it below.
  std::optional<Severity> escalated_to;
  std::map<std::string, std::string> labels;  // the newest signal's, for silences
  std::string resolution;
  std::string pause_reason;  // non-empty while the SLA timers are paused
  SlaTimer ack_sla, resolve_sla;
  std::vector<TimelineEntry> timeline;  // occurrences beyond kMaxTimeline are thinned

  bool active() const {
    return state == IncidentState::open || state == IncidentState::acknowledged;
  }
  bool paused() const { return !pause_reason.empty(); }
};
inline constexpr std::size_t kMaxTimeline = 200;

std::string encode_incident(const Incident& i);  // JSON, versioned ("v": 1)
Incident decode_incident(const std::string& s);  // throws StoreError

// One change, in the order it happened: what notifiers consume.
// what: opened, reopened, occurrence, acknowledged, noted, assigned, resolved, auto_resolved,
// closed, auto_closed, sla_breached (detail: "acknowledge" or "resolve"), paused, resumed,
// escalated, facet_cleared (one facet passes again, others still fail), suppressed (a failure
// on an accepted risk), silenced (a failure a silence matched), risk_accepted, reopened_by
// (a human reopened it). The last five notify nobody.
struct IncidentEvent {
  std::uint64_t seq = 0;  // gap-free from 1
  std::int64_t time_ns = 0;
  std::uint64_t incident_id = 0;
  std::string what;
  Severity severity = Severity::critical;
  std::string actor, detail;
};
std::vector<IncidentEvent> list_incident_events(const Store& store, std::uint64_t from_seq,
                                                std::size_t limit);

// What the API and CLI show: the record plus each SLA timer's remaining time at now_ns;
// "silenced_by" is set by the caller (IncidentEngine::silenced_by).
nlohmann::json incident_json(const Incident& i, std::int64_t now_ns, bool with_timeline);
// The labels silences match an incident against: its stored ones plus kind and severity.
std::map<std::string, std::string> incident_labels(const Incident& i);
nlohmann::json incident_event_json(const IncidentEvent& e);

struct IncidentFilter {
  std::optional<IncidentState> state;
  std::optional<Severity> severity;
  std::optional<std::string> agent_id = std::nullopt, test_id = std::nullopt;
  std::optional<IncidentKind> kind = std::nullopt;  // the incident's kind or one of its facets
  bool matches(const Incident& i) const;
};

struct TickResult {
  std::size_t breaches = 0, auto_closed = 0;
};

class IncidentEngine {
 public:
  using Clock = std::function<std::int64_t()>;
  // Loads the active incidents and the next id / event seq; rebuilds the latency baseline
  // from the runs of the last baseline window.
  IncidentEngine(Store& store, IncidentPolicy policy = {}, Clock now = {});
  ~IncidentEngine();
  IncidentEngine(const IncidentEngine&) = delete;
  IncidentEngine& operator=(const IncidentEngine&) = delete;

  // Opens, reopens, adds an occurrence to or auto-resolves; the incident touched, if any.
  std::optional<Incident> apply(const Signal& s);

  // Human actions (throw IncidentError). Each is on the timeline and in the event log.
  Incident ack(std::uint64_t id, const std::string& actor);
  Incident note(std::uint64_t id, const std::string& actor, const std::string& text);
  Incident assign(std::uint64_t id, const std::string& actor, const std::string& owner);
  Incident resolve(std::uint64_t id, const std::string& actor, const std::string& reason);
  // Resolved for good: later failures land on its timeline as "suppressed" and reopen nothing.
  Incident accept_risk(std::uint64_t id, const std::string& actor, const std::string& reason);
  // A resolved incident (accepted risk or not) back to open, by a human.
  Incident reopen(std::uint64_t id, const std::string& actor, const std::string& reason);
  Incident close(std::uint64_t id, const std::string& actor, const std::string& reason);
  // SLA timers stand still while paused (e.g. a restart waits for approval).
  Incident pause(std::uint64_t id, const std::string& actor, const std::string& reason);
  // With `only_if_reason_prefix`, only a pause whose reason starts with it is resumed (checked
  // under the engine's lock, so a human's later pause is never lifted by mistake).
  Incident resume(std::uint64_t id, const std::string& actor,
                  const std::string& only_if_reason_prefix = "");
  // Something that should have fixed it did not (the watchdog's restart, say): raised to
  // critical (its SLA timers keep running as they were) and announced as "escalated".
  // `cursors` (see set_cursors) are written in the same synced write. While a silence
  // matches the incident it is only recorded ("silenced"): no raise, no page.
  Incident escalate(std::uint64_t id, const std::string& actor, const std::string& reason,
                    const std::map<std::string, std::uint64_t>& cursors = {});

  // Fires due SLA breaches (once per timer, persisted; a silenced incident's breach is only
  // recorded), prunes long-ended silences and auto-closes untouched
  // low/informational incidents older than auto_close_after.
  TickResult tick();

  // Feeds that read the store. Each batch is one synced write together with its cursor, so
  // a restart resumes exactly after the last input processed (see cursor()).
  // Detection events also feed the latency baseline from their runs (alerted / late).
  void process_detection_events(const std::vector<DetectionEvent>& events);
  // Results of one agent in seq order; cursor "results/<agent>".
  void process_results(const std::string& agent_id, const std::vector<StoredResult>& results);
  // Security events are not numbered: the cursor "security_events" is the time after the
  // newest one processed. An event already processed (the same time, kind, agent, peer and
  // detail, remembered durably for kSecurityReadMarginNs) is skipped, so a re-read or a
  // restart raises nothing twice. Returns the events processed.
  std::size_t process_security_events(const std::vector<SecurityEvent>& events);
  // A run's time-to-alert against its test's baseline (applies the signal, if any).
  std::optional<Incident> observe_latency(const Run& run);
  // Opens agent_silent for an agent past policy.agent_silent_after (once, not per call) and
  // resolves it when the agent is heard from again.
  void watch_silence(const std::vector<AgentRecord>& agents);

  std::optional<Incident> get(std::uint64_t id) const;
  // Newest first, at most limit.
  std::vector<Incident> list(const IncidentFilter& f, std::size_t limit) const;
  // The open and acknowledged incidents (held in memory), by id.
  std::vector<Incident> active() const;
  // Incidents closed without anyone touching them at or after since_ns, by kind.
  std::map<IncidentKind, std::size_t> closed_untouched_since(std::int64_t since_ns) const;

  // Feed cursors kept in Table::incident_keys under a reserved prefix: the next detection
  // event seq ("detection_events"), an agent's next result seq ("results/<agent>"), the
  // security event time ("security_events"). 0 when never set.
  std::uint64_t cursor(const std::string& name) const;
  void set_cursors(const std::map<std::string, std::uint64_t>& values);

  // Silences (silences.hpp). add_silence throws IncidentError for bad input or when
  // kMaxActiveSilences are active; expire_silence: nullopt for an unknown id, IncidentError
  // when it has already ended. Both are audited (silence_created, silence_expired).
  Silence add_silence(const SilenceRequest& r, const std::string& actor);
  std::optional<Silence> expire_silence(std::uint64_t id, const std::string& actor);
  // Newest first, at most limit; state: "active", "expired" or "all".
  std::vector<Silence> list_silences(const std::string& state, std::size_t limit) const;
  // One silence by id (a point read), expired ones included.
  std::optional<Silence> get_silence(std::uint64_t id) const;
  // Ids of the active silences that match the incident (the list form takes the lock once).
  std::vector<std::string> silenced_by(const Incident& i) const;
  std::vector<std::vector<std::string>> silenced_by(const std::vector<Incident>& list) const;

  std::int64_t now() const { return now_(); }
  const IncidentPolicy& policy() const { return policy_; }
  // With an audit log, every change but a mere occurrence is also an audit entry
  // ("incident_" + what) in the same synced write. Set before use; must outlive the engine.
  void set_audit(AuditLog* audit) { audit_ = audit; }

 private:
  struct Txn;
  std::optional<Incident> apply_locked(const Signal& s, Txn& t);
  Incident human(std::uint64_t id, const std::string& actor,
                 const std::function<void(Incident&, Txn&)>& change);
  Incident load(std::uint64_t id) const;
  void commit(Txn& t);
  void rebuild_baseline();
  void load_silences();
  // The active silences matching s (counted on each, in t); empty: not silenced.
  std::vector<std::uint64_t> silence_signal(const Signal& s,
                                            const std::map<std::string, std::string>& labels,
                                            Txn& t);
  // The active silences matching a signal's test, agent, any of `kinds` and labels (which
  // must hold "kind" and "severity" slots to fill). Not counted.
  std::vector<std::uint64_t> matching_silences(const std::string& test, const std::string& agent,
                                               const std::vector<std::string>& kinds,
                                               std::map<std::string, std::string> labels,
                                               std::int64_t now) const;
  std::vector<std::uint64_t> silences_of(const Incident& i, std::int64_t now) const;
  // The signal's labels plus the agent's hostname.
  std::map<std::string, std::string> signal_labels(const Signal& s);
  // Erases silences that ended more than kSilenceRetention ago (at most once an hour).
  void prune_silences(Txn& t);
  // Signals of older per-kind keys for the same test, agent and target folded into one.
  std::optional<std::uint64_t> migrate_legacy(const Signal& s, Txn& t);

  Store& store_;
  IncidentPolicy policy_;
  Clock now_;
  mutable std::mutex mu_;
  std::uint64_t next_id_ = 1;
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, Incident> active_;  // open and acknowledged, by id
  std::map<std::uint64_t, Silence> silences_;  // active (not expired, not past until), by id
  std::uint64_t next_silence_id_ = 1;
  std::map<std::string, std::string> hostnames_;  // agent -> hostname, for silence labels
  // agent_silent keys whose silenced episode was already counted, with the silences that
  // counted it: the feed re-checks every poll, and a silence counts an episode once.
  std::map<std::string, std::vector<std::uint64_t>> silent_episodes_;
  std::int64_t pruned_ns_ = 0;  // last prune_silences
  LatencyBaseline baseline_;
  AuditLog* audit_ = nullptr;
};

// Feeds the engine from the store's durable logs on its own thread, every `period`: detection
// events, every agent's results, security events, then a tick. Polling the logs (rather than
// callbacks) means a restart resumes from the persisted cursors and misses nothing. On the very
// first start the cursors begin at the current ends: history from before the engine existed
// is not replayed (it would page about old failures).
class IncidentFeed {
 public:
  IncidentFeed(IncidentEngine& engine, Store& store,
               std::chrono::milliseconds period = std::chrono::seconds(5));
  ~IncidentFeed();
  void start();
  void stop();
  // One round (what the thread does each period); returns the inputs processed.
  std::size_t poll_once();

 private:
  void loop();
  IncidentEngine& engine_;
  Store& store_;
  std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tocsin::collector
