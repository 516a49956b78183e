// Correlation: which SIEM alert belongs to which probe run, and how long it took to arrive.
//
// A run is created (pending) when its result is stored; alerts arrive from the sources in any
// order, also before the run's result (an alert pipeline can beat a buffering agent), so an
// alert with an unknown marker is kept as an orphan and matched when the run appears. Exact
// marker first; else same host and technique (or an expected detection name) inside a window
// widened by the agent's clock error, with a lower confidence. Every state change is appended
// to a durable, ordered event log that the incident engine consumes.
//
// One thread owns all correlation state (pending runs in memory, their deadlines, the
// host/technique index); everything else talks to it by posting. Writes go through the
// store's group commit, and callers hear back only after the write is durable.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collector/alerts/alert_sink.hpp"
#include "collector/store/store.hpp"
#include "common/config.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

using namespace std::chrono_literals;

enum class DetectionState { pending, alerted, late, logged, missed, not_expected };
std::string state_name(DetectionState s);
std::optional<DetectionState> parse_state(const std::string& s);

struct CorrelationConfig {
  std::chrono::milliseconds grace = 1h;            // keep searching this long after the SLA
  std::chrono::milliseconds fuzzy_window = 10min;  // host+technique match: alert within this
                                                   // after the action (plus the clock error)
  // How fast an agent's clock may drift from the collector's: bounds the error of an offset
  // borrowed from another moment (a run made before the agent's first clock exchange).
  std::int64_t clock_drift_ppm = 100;
  static CorrelationConfig load(const common::ConfigNode& node);  // `correlation:` section
};

struct Run {
  std::string marker;  // the key: unique per run
  std::string agent_id;
  std::uint64_t seq = 0;
  std::string hostname, test_id, probe, technique, verdict, reason, target;
  std::vector<std::string> detections;  // rule names the test expects to fire
  std::int64_t alert_within_ns = 0;     // 0: the test expects no alert
  std::int64_t agent_started_ns = 0;    // the agent's frame time, uncorrected
  std::int64_t clock_offset_ns = 0;     // applied correction (collector - agent)
  std::int64_t action_ns = 0;           // started, on the collector's clock
  std::int64_t action_error_ns = 0;     // bound of that correction; -1: unknown
  bool clock_synced = true;             // false: the agent had no clock sample yet
  // For a run made before the agent's first exchange: its correction was redone from an
  // offset in a later synchronised result of the same agent (same frame, no step between).
  // Until then its deadlines are held, at most until hold_deadline_ns().
  bool clock_resolved = false;
  // No such result came by the hold deadline: decided on its provisional correction with an
  // unknown bound, and left out of the latency percentiles.
  bool clock_unresolved = false;
  bool clock_stepped = false;    // the host's wall clock stepped since that exchange
  std::string clock_frame;       // the agent process's frame ("": an older agent)
  std::uint64_t clock_steps = 0; // steps the agent had seen when it stamped the result
  std::int64_t received_ns = 0;  // result stored at the collector

  DetectionState state = DetectionState::pending;
  bool overdue = false;  // the SLA passed without an alert (still searching until grace)
  std::int64_t state_changed_ns = 0;

  // The first matching alert (the one that decides alerted/late).
  std::string alert_key, alert_source, alert_rule, match_reason;
  double confidence = 0;
  std::int64_t event_ns = 0, ingest_ns = 0, created_ns = 0, arrival_ns = 0;
  std::int64_t time_to_alert_ns = 0;  // arrival - action; valid when alerted or late
  bool clock_anomaly = false;         // time_to_alert < 0: flagged, never clamped
  std::uint32_t alert_count = 0;      // every matched alert, duplicates excluded
  // The first matching *event* (delivers: events): the SIEM logged it.
  std::string logged_key, logged_source;
  std::int64_t logged_event_ns = 0, logged_ingest_ns = 0, logged_arrival_ns = 0;

  std::int64_t sla_deadline_ns() const;  // saturating: action_ns comes from the agent
  // Its action time may be minutes off: no overdue, missed or late until it is re-corrected.
  bool clock_held() const { return !clock_synced && !clock_resolved && !clock_unresolved; }
  // The latest a held run waits for its offset: the action came before the result reached the
  // collector, so by received + SLA + grace every alert that could count has arrived.
  std::int64_t hold_deadline_ns(std::chrono::milliseconds grace) const;
};

// At most this many expected detections are kept per run (the wire allows more): each is an
// index key, and a stored run must always decode.
inline constexpr std::size_t kMaxRunDetections = 64;
// One alert matches at most this many runs; further markers in it are counted and ignored.
inline constexpr std::size_t kMaxRunsPerAlert = 16;

std::string encode_run(const Run& r);  // msgpack, versioned; JSON records still decode
Run decode_run(const std::string& s);  // throws StoreError

// The run a stored result describes, or nullopt when it is not a probe run with a marker.
// `agent` supplies the hostname and, for a result made before the first clock exchange, the
// agent's latest offset, its bound widened by the drift allowance; with no offset known at all,
// the bound is -1 (unknown). Either way the run's deadlines are held until a later synchronised
// result of the same agent (same frame, no step between) brings an offset (the correlator then
// re-corrects it), or at most until Run::hold_deadline_ns.
std::optional<Run> run_from_result(const common::ResultRecord& rec, const common::ResultBody& body,
                                   const AgentRecord& agent, std::int64_t received_ns,
                                   const CorrelationConfig& cfg);

// Staged into the same WriteSet as the result so a run exists iff its result does.
void put_run(WriteSet& ws, const Run& r);
std::optional<Run> get_run(const Store& store, const std::string& marker);
// Runs whose action lies in [since_ns, until_ns), oldest first, at most limit of those that
// `keep` accepts (all when empty): filtering while scanning makes `limit` count matches.
std::vector<Run> list_runs(const Store& store, std::int64_t since_ns, std::int64_t until_ns,
                           std::size_t limit, const std::function<bool(const Run&)>& keep = {});

struct DetectionEvent {
  std::uint64_t seq = 0;  // gap-free order of the event log
  std::int64_t time_ns = 0;
  std::string marker, agent_id, test_id;
  std::string from, to;  // state names; "overdue" marks the SLA passing without an alert
  std::string detail;
  std::string target;  // the run's target: a test with several targets has a run per target
  // To alerted or late: the run's corrected action time and time-to-alert as decided, so the
  // incident feed needs not load the run. False in events stored before these existed.
  bool has_latency = false;
  std::int64_t action_ns = 0, time_to_alert_ns = 0;
  bool clock_anomaly = false;
};
std::vector<DetectionEvent> list_detection_events(const Store& store, std::uint64_t from_seq,
                                                  std::size_t limit);

struct SourceCounters {
  std::string source;
  std::uint64_t accepted = 0, duplicates = 0, matched = 0, orphaned = 0;
  std::uint64_t markers_over_cap = 0;  // markers beyond kMaxRunsPerAlert in one alert, ignored
  std::map<std::string, std::uint64_t> rejected;  // reason -> count
  std::string last_rejection;
  std::int64_t last_alert_ns = 0;
};

class Correlator : public AlertSink {
 public:
  Correlator(Store& store, CorrelationConfig cfg);
  ~Correlator() override;
  void start();  // loads pending runs and orphans, starts the thread
  void stop();   // finishes in-flight writes, joins

  void submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) override;
  void rejected(const std::string& source, const std::string& reason,
                const std::string& detail) override;
  // The ingest stored these runs (durably). Thread-safe.
  void runs_stored(std::vector<Run> runs);
  // Called (on the correlator thread) for every state change after it is durable.
  void on_event(std::function<void(const DetectionEvent&)> cb);

  std::vector<SourceCounters> counters() const;  // thread-safe snapshot
  std::size_t pending_runs() const;              // thread-safe
  // Arrival -> durably stored, in ns, for the most recent (up to 100k) new alerts.
  std::vector<std::int64_t> store_latencies() const;
  // Blocks until everything posted before this call has been processed and written.
  void drain();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
