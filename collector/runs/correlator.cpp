// The correlator's engine: one thread owns the pending runs, matches alerts, times runs out.
#include "collector/runs/correlator.hpp"

#include <pthread.h>

#include <spdlog/spdlog.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "collector/runs/correlator_detail.hpp"
#include "common/clock.hpp"
#include "common/text.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
using detail::runs::decode_alert_record;
using detail::runs::encode_alert_record;
using detail::runs::encode_event;
using detail::runs::fuzzy_confidence;
using detail::runs::fuzzy_keys;
using detail::runs::FuzzyKind;
using detail::runs::offset_applies;
using detail::runs::open_run_from_value;
using detail::runs::open_run_value;
using detail::runs::orphan_key;
using detail::runs::resolve_offset;

namespace {

constexpr std::size_t kMaxAlertAddresses = 4;
constexpr std::size_t kMaxOrphans = 200000;  // alerts waiting for a run that may never come
constexpr auto kOrphanTtl = std::chrono::hours(24);
constexpr auto kTick = std::chrono::milliseconds(100);
constexpr std::size_t kLatencySamples = 100000;
constexpr double kExactConfidence = 1.0;

std::string fmt_seconds(std::int64_t ns) {
  return fmt::format("{:.3f} s", ns / 1e9);
}

}  // namespace

struct Correlator::Impl {
  // What the correlator keeps of a pending run: enough to find it and to time it out. The
  // full record lives in the store (or in `inflight_` while a write of it is in flight).
  // Pending runs by host+technique (and host+expected rule), in action order.
  using FuzzySet = std::set<std::pair<std::int64_t, std::string>>;
  struct FuzzyRef {  // where a pending run sits in fuzzy_, so untracking it compares nothing
    std::string key;
    FuzzySet* set;  // fuzzy_'s nodes stay put when it rehashes
    FuzzySet::iterator it;
  };
  struct PendingRun {
    std::int64_t action_ns = 0;
    std::int64_t action_error_ns = 0;
    std::int64_t deadline_ns = 0;  // next deadline: the SLA, then the grace end
    std::vector<FuzzyRef> fuzzy;
    std::string agent_id;
    std::uint64_t seq = 0;
    bool held = false;  // made before its agent's first clock exchange: the hold deadline only
    std::string clock_frame;  // for a held run: which results may resolve it
    std::uint64_t clock_steps = 0;
  };
  struct Flight {  // one commit in progress
    std::vector<std::string> run_markers;
    std::vector<std::string> alert_keys;
    std::vector<DetectionEvent> events;
    std::vector<std::int64_t> arrivals;       // of the alerts in this flight
    std::function<void(SubmitOutcome)> done;  // once durable, on the committer thread
    std::function<void()> finished;           // after the bookkeeping, on this thread
    SubmitOutcome outcome;
  };

  Store& store_;
  CorrelationConfig cfg_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  asio::steady_timer tick_{io_};
  std::thread thread_;
  bool started_ = false;
  bool stopping_ = false;  // correlator thread only

  std::unordered_map<std::string, PendingRun> pending_;
  std::multimap<std::int64_t, std::string> deadlines_;  // stale entries are skipped on pop
  std::unordered_map<std::string, FuzzySet> fuzzy_;
  // Held runs (clock not yet known) by agent, so the agent's first synchronised result can
  // re-correct them.
  std::unordered_map<std::string, std::set<std::string>> held_;
  // Canonical network address of each agent's latest session (host hint), cached per agent.
  std::unordered_map<std::string, std::string> agent_address_;
  std::unordered_set<std::string> adopted_;  // pending runs found in the store before ingest
                                             // told us about them
  std::unordered_map<std::string, std::pair<Run, int>> inflight_;  // marker -> (run, writes)
  std::unordered_map<std::string, int> inflight_alerts_;
  // Alerts that named a marker whose run is not here yet, by their key; and the keys waiting
  // for each marker (an alert may name several). The key is kept as computed on arrival: the
  // stored copy of the text is truncated, so it could not be recomputed after a restart.
  struct Orphan {
    std::vector<std::string> markers;  // still waiting for these runs
    std::vector<std::string> all_markers;  // every marker it named (its stored record's list)
    std::vector<std::string> unreadable;   // of those, runs that could not be read (not kept
                                           // across a restart)
    Alert alert;
    bool matched = false;  // already matched another run (counted once per alert)
  };
  std::unordered_map<std::string, Orphan> orphan_alerts_;
  std::unordered_map<std::string, std::vector<std::string>> orphans_by_marker_;
  std::size_t orphan_count_ = 0;
  std::int64_t next_orphan_sweep_ns_ = 0;
  std::uint64_t next_event_seq_ = 1;
  std::atomic<std::size_t> pending_count_{0};
  std::vector<std::function<void(const DetectionEvent&)>> listeners_;

  mutable std::mutex counters_mu_;
  std::map<std::string, SourceCounters> counters_;
  std::vector<std::int64_t> store_latency_;  // arrival -> durable, the most recent samples
  std::size_t latency_next_ = 0;
  std::map<std::string, std::int64_t> last_reject_log_;
  std::map<std::string, std::int64_t> last_cap_log_;

  Impl(Store& store, CorrelationConfig cfg) : store_(store), cfg_(std::move(cfg)) {}

  std::int64_t ns(std::chrono::milliseconds d) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  // ---- loading -------------------------------------------------------------------------

  void load() {
    store_.scan(Table::runs_open, "", [&](std::string_view k, std::string_view v) {
      auto r = open_run_from_value(k, v);
      if (!r) {  // unreadable summary: the full record
        try {
          r = get_run(store_, std::string(k));
        } catch (const StoreError& e) {
          spdlog::error("correlator: run {} is unreadable ({}); it is not correlated",
                        common::quote_hostile(k, 64), e.what());
        }
      }
      if (r) track(*r);
      return true;
    });
    // An alert that named several runs waits only for those still missing: the orphan table
    // holds one key per (marker, alert).
    std::map<std::string, std::vector<std::string>> waiting;
    store_.scan(Table::orphan_alerts, "", [&](std::string_view k, std::string_view) {
      auto nul = k.find('\0');
      if (nul == std::string_view::npos) return true;
      waiting[std::string(k.substr(nul + 1))].emplace_back(k.substr(0, nul));
      return true;
    });
    for (auto& [key, markers] : waiting) {
      auto v = store_.get(Table::alerts, key);
      if (!v) continue;
      auto rec = decode_alert_record(*v);
      if (!rec) continue;
      // It matched a run already when it named one that is not waiting.
      bool matched = rec->second.size() > markers.size();
      add_orphan(key, std::move(markers), std::move(rec->second), {}, std::move(rec->first),
                 matched);
    }
    if (auto last = store_.last_key(Table::detection_events); last && last->size() == 8)
      next_event_seq_ = get_be64(last->data()) + 1;
    spdlog::info("correlator: {} pending runs, {} alerts waiting for their run", pending_.size(),
                 orphan_count_);
  }

  // ---- the pending index ---------------------------------------------------------------

  void track(const Run& r) {
    untrack(r.marker);  // tracked again (its action time may have moved): no stale entries
    PendingRun p;
    p.action_ns = r.action_ns;
    p.action_error_ns = r.action_error_ns;
    p.agent_id = r.agent_id;
    p.seq = r.seq;
    p.held = r.clock_held();
    if (p.held) {
      // Its SLA is computed from a clock that may be minutes off: only the hold deadline, on
      // the collector's clock, until resolved.
      p.deadline_ns = r.hold_deadline_ns(cfg_.grace);
      p.clock_frame = r.clock_frame;
      p.clock_steps = r.clock_steps;
      held_[r.agent_id].insert(r.marker);
    } else {
      p.deadline_ns = r.overdue ? common::saturating_add(r.sla_deadline_ns(), ns(cfg_.grace))
                                : r.sla_deadline_ns();
    }
    deadlines_.emplace(p.deadline_ns, r.marker);
    // A held run that already has its alert waits only for its clock, not for more alerts.
    if (r.alert_key.empty())
      for (auto& k : fuzzy_keys(r.hostname, {address_of(r.agent_id)}, r.technique, r.detections)) {
        auto& set = fuzzy_[k.key];
        auto [it, inserted] = set.insert({r.action_ns, r.marker});
        if (inserted) p.fuzzy.push_back({std::move(k.key), &set, it});  // a repeated key: once
      }
    pending_[r.marker] = std::move(p);
    pending_count_ = pending_.size();
  }

  // The agent's address as its latest authenticated session saw it; "" when unknown.
  const std::string& address_of(const std::string& agent_id) {
    auto it = agent_address_.find(agent_id);
    if (it == agent_address_.end()) {
      std::string addr;
      if (!agent_id.empty())
        if (auto rec = store_.get_agent(agent_id)) addr = canonical_address(rec->last_address);
      it = agent_address_.emplace(agent_id, std::move(addr)).first;
    }
    return it->second;
  }

  void untrack(const std::string& marker) {
    auto it = pending_.find(marker);
    if (it == pending_.end()) return;
    if (it->second.held) {
      auto h = held_.find(it->second.agent_id);
      if (h != held_.end() && h->second.erase(marker) && h->second.empty()) held_.erase(h);
    }
    for (const auto& ref : it->second.fuzzy) {
      ref.set->erase(ref.it);
      if (ref.set->empty()) fuzzy_.erase(ref.key);
    }
    pending_.erase(it);
    pending_count_ = pending_.size();
  }

  bool add_orphan(const std::string& key, std::vector<std::string> markers,
                  std::vector<std::string> all_markers, std::vector<std::string> unreadable,
                  Alert a, bool matched) {
    if (orphan_count_ >= kMaxOrphans) {
      // The cap only bites under a flood of alerts whose runs never come (UDP syslog needs no
      // token); the alert itself is stored either way.
      spdlog::warn("correlator: {} alerts already wait for their run; not waiting for {}",
                   orphan_count_, markers.empty() ? std::string("-") : markers[0]);
      return false;
    }
    for (const auto& m : markers) orphans_by_marker_[m].push_back(key);
    orphan_alerts_[key] =
        Orphan{std::move(markers), std::move(all_markers), std::move(unreadable), std::move(a),
               matched};
    ++orphan_count_;
    return true;
  }

  void forget_orphan(const std::string& key, WriteSet& ws) {
    auto it = orphan_alerts_.find(key);
    if (it == orphan_alerts_.end()) return;
    for (const auto& m : it->second.markers) {
      ws.erase(Table::orphan_alerts, orphan_key(m, key));
      auto bm = orphans_by_marker_.find(m);
      if (bm == orphans_by_marker_.end()) continue;
      std::erase(bm->second, key);
      if (bm->second.empty()) orphans_by_marker_.erase(bm);
    }
    orphan_alerts_.erase(it);
    --orphan_count_;
  }

  // The alert `key` no longer waits for `marker` (its run came); it still waits for the others.
  // Returns whether it had matched a run before.
  bool forget_orphan_marker(const std::string& key, const std::string& marker, WriteSet& ws) {
    auto it = orphan_alerts_.find(key);
    if (it == orphan_alerts_.end()) return false;
    bool was_matched = it->second.matched;
    ws.erase(Table::orphan_alerts, orphan_key(marker, key));
    if (auto bm = orphans_by_marker_.find(marker); bm != orphans_by_marker_.end()) {
      std::erase(bm->second, key);
      if (bm->second.empty()) orphans_by_marker_.erase(bm);
    }
    auto& ms = it->second.markers;
    std::erase(ms, marker);
    it->second.matched = true;
    if (ms.empty()) {
      orphan_alerts_.erase(it);
      --orphan_count_;
    }
    return was_matched;
  }

  // Alerts that waited for `marker` now match its run, oldest first (the first alert decides).
  // An alert naming several runs matches each of them as it arrives.
  void drain_orphans(const std::string& marker, WriteSet& ws, Flight& f) {
    auto bm = orphans_by_marker_.find(marker);
    if (bm == orphans_by_marker_.end()) return;
    std::vector<std::pair<std::string, Orphan>> waiting;
    for (const auto& key : bm->second)
      if (auto it = orphan_alerts_.find(key); it != orphan_alerts_.end())
        waiting.emplace_back(key, it->second);
    std::sort(waiting.begin(), waiting.end(), [](const auto& x, const auto& y) {
      return x.second.alert.arrival_ns < y.second.alert.arrival_ns;
    });
    for (auto& [key, o] : waiting) {
      bool counted = forget_orphan_marker(key, marker, ws);
      auto run = lookup(marker);
      if (!run) continue;
      const auto& a = o.alert;
      apply(*run, a, key, "exact marker " + marker + " (alert arrived before the run)",
            kExactConfidence, ws, f);
      // The stored record keeps every marker the alert named, and says which runs it matched
      // and which it still waits for.
      std::vector<std::string> still_waiting, hit;
      if (auto it = orphan_alerts_.find(key); it != orphan_alerts_.end())
        still_waiting = it->second.markers;
      auto in = [](const std::vector<std::string>& v, const std::string& m) {
        return std::find(v.begin(), v.end(), m) != v.end();
      };
      for (const auto& m : o.all_markers)
        if (!in(still_waiting, m) && !in(o.unreadable, m)) hit.push_back(m);
      if (!in(hit, marker)) hit.push_back(marker);
      ws.put(Table::alerts, key,
             encode_alert_record(a, o.all_markers.empty() ? hit : o.all_markers, hit[0],
                                 exact_reason(hit, still_waiting, o.unreadable),
                                 kExactConfidence));
      if (!counted) count(a.source, [](SourceCounters& c) { ++c.matched; });
    }
  }

  // Alerts whose run never came stop waiting after a day (they stay stored, unmatched).
  void sweep_orphans(std::int64_t now, WriteSet& ws) {
    if (now < next_orphan_sweep_ns_) return;
    next_orphan_sweep_ns_ = now + ns(std::chrono::minutes(1));
    std::vector<std::string> expired;
    for (const auto& [key, o] : orphan_alerts_)
      if (o.alert.arrival_ns < now - ns(kOrphanTtl)) expired.push_back(key);
    for (const auto& key : expired) forget_orphan(key, ws);
    if (!expired.empty())
      spdlog::info("correlator: {} alerts stopped waiting for runs that never came",
                   expired.size());
  }

  // The current record of a run: ours in flight, else the store's. A record that cannot be
  // decoded is logged and treated as absent (`unreadable` says which): one damaged run must
  // not stop correlation for every other.
  std::optional<Run> lookup(const std::string& marker, bool* unreadable = nullptr) {
    if (auto it = inflight_.find(marker); it != inflight_.end()) return it->second.first;
    std::optional<Run> r;
    try {
      r = get_run(store_, marker);
    } catch (const StoreError& e) {
      spdlog::error("correlator: run {} is unreadable ({}); it is not correlated",
                    common::quote_hostile(marker, 64), e.what());
      untrack(marker);
      if (unreadable) *unreadable = true;
      return std::nullopt;
    }
    if (r && r->state == DetectionState::pending && !pending_.count(marker)) {
      // The ingest stored it but its notification is still on the way.
      track(*r);
      adopted_.insert(marker);
    }
    return r;
  }

  // ---- state changes -------------------------------------------------------------------

  void change_state(Run& r, DetectionState to, std::int64_t now, const std::string& detail,
                    WriteSet& ws, Flight& f) {
    DetectionEvent e{next_event_seq_++, now,       r.marker,
                     r.agent_id,        r.test_id, state_name(r.state),
                     state_name(to),    detail,    r.target};
    if (to == DetectionState::alerted || to == DetectionState::late) {
      e.has_latency = true;
      e.action_ns = r.action_ns;
      e.time_to_alert_ns = r.time_to_alert_ns;
      e.clock_anomaly = r.clock_anomaly;
    }
    r.state = to;
    r.state_changed_ns = now;
    record_event(e, ws, f);
  }

  void record_event(const DetectionEvent& e, WriteSet& ws, Flight& f) {
    std::string k;
    put_be64(k, e.seq);
    ws.put(Table::detection_events, k, encode_event(e));
    f.events.push_back(e);
  }

  void stage(Run& r, WriteSet& ws, Flight& f) {
    if (r.state != DetectionState::pending) {
      untrack(r.marker);
      ws.erase(Table::runs_open, r.marker);
    } else {
      ws.put(Table::runs_open, r.marker, open_run_value(r));  // e.g. now overdue
    }
    ws.put(Table::runs, r.marker, encode_run(r));
    auto& slot = inflight_[r.marker];
    slot.first = r;
    ++slot.second;
    f.run_markers.push_back(r.marker);
  }

  // Applies one matched alert to its run; the first alert decides the state.
  void apply(Run& r, const Alert& a, const std::string& key, const std::string& reason,
             double confidence, WriteSet& ws, Flight& f) {
    auto now = common::now_ns();
    if (a.is_event) {
      if (!r.logged_key.empty()) return stage(r, ws, f);
      r.logged_key = key;
      r.logged_source = a.source;
      r.logged_event_ns = a.event_ns;
      r.logged_ingest_ns = a.ingest_ns;
      r.logged_arrival_ns = a.arrival_ns;
      if (r.state == DetectionState::missed)
        change_state(r, DetectionState::logged, now,
                     "event from " + a.source + " after the grace deadline", ws, f);
      return stage(r, ws, f);
    }
    ++r.alert_count;
    if (!r.alert_key.empty()) return stage(r, ws, f);  // an extra alert changes nothing
    r.alert_key = key;
    r.alert_source = a.source;
    r.alert_rule = a.rule;
    r.match_reason = reason;
    r.confidence = confidence;
    r.event_ns = a.event_ns;
    r.ingest_ns = a.ingest_ns;
    r.created_ns = a.created_ns;
    r.arrival_ns = a.arrival_ns;
    measure(r);
    if (r.state == DetectionState::not_expected) return stage(r, ws, f);  // no SLA to judge
    if (r.clock_held() && r.state == DetectionState::pending) {
      // Alerted or late depends on an action time that may be minutes off: decided when the
      // agent's offset is known (resolve_held). Out of the fuzzy index meanwhile.
      track(r);
      return stage(r, ws, f);
    }
    decide(r, now, reason, ws, f);
    stage(r, ws, f);
  }

  // Time to alert on the run's current correction. Below minus the error bound it cannot be
  // explained by the clocks' uncertainty: flagged, never clamped (an unknown bound is 0).
  static void measure(Run& r) {
    r.time_to_alert_ns = common::saturating_sub(r.arrival_ns, r.action_ns);
    r.clock_anomaly = r.time_to_alert_ns < -std::max<std::int64_t>(0, r.action_error_ns);
  }

  void decide(Run& r, std::int64_t now, const std::string& reason, WriteSet& ws, Flight& f) {
    bool in_time = r.time_to_alert_ns <= r.alert_within_ns;
    auto to = in_time ? DetectionState::alerted : DetectionState::late;
    auto detail = fmt::format(
        "alert from {} after {} (± {}){}; {}", r.alert_source, fmt_seconds(r.time_to_alert_ns),
        r.action_error_ns < 0 ? std::string("unknown") : fmt_seconds(r.action_error_ns),
        r.clock_anomaly ? ", below the error bound: clock anomaly" : "", reason);
    change_state(r, to, now, detail, ws, f);
  }

  // A result of `agent_id` made after its clock exchange (seq `seq`, measured offset and bound
  // at `measured_agent_ns` on the agent's clock): every held run of that agent made before it
  // in the same process frame with no step between (offset_applies) is re-corrected from that
  // offset (the frame is monotonic-based, so the offset applies, widened by the drift over the
  // gap), then decided or given its deadlines. A run of another process, or one a step
  // separates from it, waits for a result of its own frame, or for its hold deadline.
  void resolve_held(const Run& synced, WriteSet& ws, Flight& f) {
    auto h = held_.find(synced.agent_id);
    if (h == held_.end()) return;
    std::vector<std::string> markers(h->second.begin(), h->second.end());
    auto now = common::now_ns();
    for (const auto& m : markers) {
      auto p = pending_.find(m);
      if (p == pending_.end() ||
          !offset_applies(p->second.clock_frame, p->second.clock_steps, p->second.seq, synced))
        continue;
      auto run = lookup(m);
      if (!run || run->state != DetectionState::pending) {
        untrack(m);
        continue;
      }
      if (!resolve_offset(*run, synced.clock_offset_ns, synced.action_error_ns,
                          synced.agent_started_ns, cfg_))
        continue;
      if (!run->alert_key.empty()) {
        measure(*run);
        decide(*run, now, run->match_reason + "; held until the agent's clock offset was known", ws,
               f);
      } else {
        track(*run);  // now with its deadlines; ones already past fire on the next tick
      }
      stage(*run, ws, f);
    }
  }

  // No result resolved a held run by its hold deadline (the agent was decommissioned, its
  // clock stepped, or it never synchronised): it is decided on its provisional correction
  // with an unknown bound, flagged, and kept out of the percentiles.
  void give_up_hold(Run& r, std::int64_t now, WriteSet& ws, Flight& f) {
    r.clock_unresolved = true;
    r.action_error_ns = -1;
    const std::string why =
        "no later synchronised result of its agent (same process, no clock step) by the hold "
        "deadline: its clock offset is unknown";
    if (!r.alert_key.empty()) {
      measure(r);
      decide(r, now, r.match_reason + "; " + why, ws, f);
    } else {
      bool logged = !r.logged_key.empty();
      change_state(r, logged ? DetectionState::logged : DetectionState::missed, now,
                   (logged ? "the SIEM logged the activity but raised no alert; "
                           : "no alert and no event; ") +
                       why,
                   ws, f);
    }
    stage(r, ws, f);
  }

  struct Candidate {
    std::string marker;
    std::string reason;
    double confidence = 0;
  };

  // The best pending run by host (or address) and technique (or expected rule): the most
  // confident kind of key first, then the action nearest the alert.
  std::optional<Candidate> fuzzy_match(const Alert& a) {
    std::int64_t t = a.event_ns ? a.event_ns : a.created_ns ? a.created_ns : a.arrival_ns;
    // The source's times are written at some resolution; the collector's arrival time is exact.
    std::int64_t resolution = a.event_ns || a.created_ns ? time_resolution_ns(t) : 0;
    std::vector<std::string> addresses;
    for (const auto& s : a.source_addresses) {
      if (addresses.size() >= kMaxAlertAddresses) break;
      if (auto c = canonical_address(s); !c.empty()) addresses.push_back(std::move(c));
    }
    std::optional<Candidate> best;
    std::int64_t best_gap = 0;
    for (const auto& key : fuzzy_keys(a.host, addresses, a.technique, {a.rule})) {
      auto it = fuzzy_.find(key.key);
      if (it == fuzzy_.end()) continue;
      double confidence = fuzzy_confidence(key.kind);
      for (const auto& [action, marker] : it->second) {
        auto& p = pending_.at(marker);
        auto err = std::max<std::int64_t>(0, p.action_error_ns);
        // The alert cannot precede the action by more than the clock error (and the source's
        // timestamp resolution: whole seconds truncate up to 1 s early), and must come within
        // the window after it.
        using common::saturating_add;
        using common::saturating_sub;
        if (t < saturating_sub(saturating_sub(action, err), resolution) ||
            t > saturating_add(saturating_add(action, ns(cfg_.fuzzy_window)), err))
          continue;
        auto gap = common::abs_ns(saturating_sub(t, action));
        if (best &&
            (confidence < best->confidence || (confidence == best->confidence && gap >= best_gap)))
          continue;
        best_gap = gap;
        best = Candidate{marker, fuzzy_reason(a, key.kind, saturating_sub(t, action)), confidence};
      }
    }
    return best;
  }

  static std::string fuzzy_reason(const Alert& a, FuzzyKind kind, std::int64_t after) {
    bool by_rule = kind == FuzzyKind::host_rule || kind == FuzzyKind::address_rule;
    bool by_host = kind == FuzzyKind::host_technique || kind == FuzzyKind::host_rule;
    return fmt::format("same {} and {} '{}', alert {} after the action",
                       by_host ? "host '" + common::quote_hostile(a.host, 128) + "'"
                               : "source address as the agent",
                       by_rule ? "expected detection" : "technique",
                       common::quote_hostile(by_rule ? a.rule : a.technique, 128),
                       fmt_seconds(after));
  }

  bool is_duplicate(const std::string& key) {
    return inflight_alerts_.count(key) || store_.get(Table::alerts, key).has_value();
  }

  void process_alert(Alert& a, WriteSet& ws, Flight& f) {
    // Names from a source feed index keys and log lines: no control bytes.
    a.host = neutralise_controls(a.host);
    a.rule = neutralise_controls(a.rule);
    a.technique = neutralise_controls(a.technique);
    auto key = alert_key(a);
    if (is_duplicate(key)) {
      ++f.outcome.duplicates;
      count(a.source, [](SourceCounters& c) { ++c.duplicates; });
      return;
    }
    ++inflight_alerts_[key];
    f.alert_keys.push_back(key);
    f.arrivals.push_back(a.arrival_ns);
    ++f.outcome.accepted;
    count(a.source, [&](SourceCounters& c) {
      ++c.accepted;
      c.last_alert_ns = a.arrival_ns;
    });
    auto markers = find_markers(a.text);
    cap_markers(a, markers);
    // Every run whose marker the alert carries is matched by it, each with its own time to
    // alert: a scenario that needs several requests from one source raises one alert for
    // several runs.
    std::vector<std::string> hit, waiting, unreadable;
    for (const auto& m : markers) {
      bool bad = false;
      auto run = lookup(m, &bad);
      if (!run) {
        (bad ? unreadable : waiting).push_back(m);
        continue;
      }
      if (orphans_by_marker_.count(m)) {
        drain_orphans(m, ws, f);  // alerts that arrived earlier for this run decide first
        run = lookup(m);          // as they left it
        if (!run) continue;
      }
      apply(*run, a, key, "exact marker " + m, kExactConfidence, ws, f);
      hit.push_back(m);
    }
    if (!hit.empty()) matched(a, f);
    if (!waiting.empty()) {
      // Those runs' results are not here yet (a buffering agent): wait for them.
      if (add_orphan(key, waiting, markers, unreadable, a, !hit.empty()))
        for (const auto& m : waiting) ws.put(Table::orphan_alerts, orphan_key(m, key), "");
      if (hit.empty()) count(a.source, [](SourceCounters& c) { ++c.orphaned; });
    }
    if (!markers.empty()) {
      auto reason = exact_reason(hit, waiting, unreadable);
      ws.put(Table::alerts, key,
             encode_alert_record(a, markers, hit.empty() ? "" : hit[0], reason,
                                 hit.empty() ? 0 : kExactConfidence));
      return;
    }
    if (auto c = fuzzy_match(a)) {
      if (auto run = lookup(c->marker)) {
        apply(*run, a, key, c->reason, c->confidence, ws, f);
        ws.put(Table::alerts, key,
               encode_alert_record(a, markers, c->marker, c->reason, c->confidence));
        matched(a, f);
        return;
      }
    }
    ws.put(Table::alerts, key, encode_alert_record(a, markers, "", "no matching run", 0));
  }

  // Hostile input may name hundreds of markers: beyond the cap they are counted and logged
  // (at most once a second per source), not matched.
  void cap_markers(const Alert& a, std::vector<std::string>& markers) {
    if (markers.size() <= kMaxRunsPerAlert) return;
    auto excess = markers.size() - kMaxRunsPerAlert;
    markers.resize(kMaxRunsPerAlert);
    auto now = common::now_ns();
    bool log = false;
    count(a.source, [&](SourceCounters& c) { c.markers_over_cap += excess; });
    {
      std::lock_guard lk(counters_mu_);
      auto& last = last_cap_log_[a.source];
      if (now - last >= 1'000'000'000) {
        last = now;
        log = true;
      }
    }
    if (log)
      spdlog::warn(
          "alert source {}: an alert names {} more run markers than the {} matched; "
          "ignored",
          common::quote_hostile(a.source, 64), excess, kMaxRunsPerAlert);
  }

  static std::string exact_reason(const std::vector<std::string>& hit,
                                  const std::vector<std::string>& waiting,
                                  const std::vector<std::string>& unreadable) {
    auto list = [](const std::vector<std::string>& ms) {
      std::string out;
      for (const auto& m : ms) out += (out.empty() ? "" : ", ") + m;
      return out;
    };
    std::string reason;
    auto add = [&](const char* what, const std::vector<std::string>& ms) {
      if (ms.empty()) return;
      if (!reason.empty()) reason += "; ";
      reason += what + list(ms);
    };
    add("exact marker ", hit);
    add("waiting for run ", waiting);
    add("unreadable run ", unreadable);
    return reason;
  }

  void matched(const Alert& a, Flight& f) {
    ++f.outcome.matched;
    count(a.source, [](SourceCounters& c) { ++c.matched; });
  }

  template <class F>
  void count(const std::string& source, F&& fn) {
    std::lock_guard lk(counters_mu_);
    auto& c = counters_[source];
    c.source = source;
    fn(c);
  }

  // ---- entry points (on the correlator thread) -----------------------------------------

  void on_alerts(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) {
    WriteSet ws;
    Flight f;
    f.done = std::move(done);
    for (auto& a : alerts) process_alert(a, ws, f);
    commit(std::move(ws), std::move(f));
  }

  void on_runs(std::vector<Run> runs) {
    WriteSet ws;
    Flight f;
    // The ingest may have seen a new session address for these agents.
    for (const auto& r : runs) agent_address_.erase(r.agent_id);
    // Per agent, process frame and step count: the latest result with a measured offset. A
    // stepped wall clock makes that result's offset suspect: it resolves nothing.
    std::map<std::tuple<std::string, std::string, std::uint64_t>, const Run*> newest_synced;
    for (auto& r : runs) {
      // An adopted run is tracked already (and may be decided); its waiting alerts were
      // drained when it was adopted, but draining again is harmless.
      bool adopted = adopted_.erase(r.marker) > 0;
      if (!adopted && r.state == DetectionState::pending && !pending_.count(r.marker)) track(r);
      drain_orphans(r.marker, ws, f);
      if (r.clock_synced && !r.clock_stepped && r.action_error_ns >= 0) {
        auto& n = newest_synced[{r.agent_id, r.clock_frame, r.clock_steps}];
        if (!n || n->seq < r.seq) n = &r;
      }
    }
    for (const auto& [agent, synced] : newest_synced) resolve_held(*synced, ws, f);
    if (!ws.empty()) commit(std::move(ws), std::move(f));
  }

  void on_tick() {
    auto now = common::now_ns();
    WriteSet ws;
    Flight f;
    sweep_orphans(now, ws);
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto [when, marker] = *deadlines_.begin();
      deadlines_.erase(deadlines_.begin());
      auto p = pending_.find(marker);
      if (p == pending_.end() || p->second.deadline_ns != when) continue;  // stale entry
      auto run = lookup(marker);
      if (!run || run->state != DetectionState::pending) {
        untrack(marker);
        continue;
      }
      if (run->clock_held()) {
        give_up_hold(*run, now, ws, f);
        continue;
      }
      if (!run->overdue) {
        run->overdue = true;
        record_event(
            {next_event_seq_++, now, run->marker, run->agent_id, run->test_id, "pending", "overdue",
             fmt::format("no alert within {}; searching until the grace deadline",
                         fmt_seconds(run->alert_within_ns)),
             run->target},
            ws, f);
        p->second.deadline_ns = common::saturating_add(run->sla_deadline_ns(), ns(cfg_.grace));
        deadlines_.emplace(p->second.deadline_ns, marker);
        if (p->second.deadline_ns > now) {
          stage(*run, ws, f);
          continue;
        }
      }
      bool logged = !run->logged_key.empty();
      change_state(*run, logged ? DetectionState::logged : DetectionState::missed, now,
                   logged ? "the SIEM logged the activity but raised no alert"
                          : "no alert and no event by the grace deadline",
                   ws, f);
      stage(*run, ws, f);
    }
    if (!ws.empty()) commit(std::move(ws), std::move(f));
    schedule_tick();
  }

  void schedule_tick() {
    if (stopping_) return;
    tick_.expires_after(kTick);
    tick_.async_wait([this](boost::system::error_code ec) {
      if (!ec) on_tick();
    });
  }

  void commit(WriteSet ws, Flight f) {
    auto flight = std::make_shared<Flight>(std::move(f));
    store_.commit_async(std::move(ws), [this, flight](std::string err) {
      // On the committer thread: the sender is answered as soon as its alerts are durable,
      // without waiting for this thread to be scheduled again (the bookkeeping can).
      if (err.empty()) reply(*flight);
      asio::post(io_, [this, flight, err] { finish(*flight, err); });
    });
  }

  // Thread-safe: the outcome was fixed when the flight was built.
  void reply(Flight& f) {
    if (!f.arrivals.empty()) {
      auto now = common::now_ns();
      std::lock_guard lk(counters_mu_);
      for (auto t : f.arrivals) {
        if (t == 0) continue;
        if (store_latency_.size() < kLatencySamples)
          store_latency_.push_back(now - t);
        else
          store_latency_[latency_next_++ % kLatencySamples] = now - t;
      }
    }
    if (f.done) f.done(f.outcome);
  }

  void finish(Flight& f, const std::string& err) {
    if (!err.empty()) {
      // Memory is now ahead of the disk; a restart reloads the truth from the store. The
      // sender was not answered: it will send again.
      spdlog::critical("correlator: {}; exiting so a restart recovers from the database", err);
      std::_Exit(70);
    }
    for (const auto& m : f.run_markers) {
      auto it = inflight_.find(m);
      if (it != inflight_.end() && --it->second.second == 0) inflight_.erase(it);
    }
    for (const auto& k : f.alert_keys) {
      auto it = inflight_alerts_.find(k);
      if (it != inflight_alerts_.end() && --it->second == 0) inflight_alerts_.erase(it);
    }
    for (const auto& e : f.events) {
      // Detections in time are the bulk (thousands a second under load); the log shows what
      // needs a human: misses, late alerts, overdue runs.
      spdlog::log(e.to == "alerted" ? spdlog::level::debug : spdlog::level::info,
                  "run {} ({} on {}): {} -> {}: {}", e.marker, e.test_id, e.agent_id, e.from, e.to,
                  e.detail);
      for (auto& cb : listeners_) cb(e);
    }
    if (f.finished) f.finished();
  }
};

Correlator::Correlator(Store& store, CorrelationConfig cfg)
    : impl_(std::make_unique<Impl>(store, std::move(cfg))) {}

Correlator::~Correlator() {
  stop();
}

void Correlator::start() {
  if (impl_->started_) return;
  impl_->load();
  impl_->started_ = true;
  impl_->schedule_tick();
  // A crash between the ingest's commit and its notification leaves alerts waiting for runs
  // that exist: match them now.
  asio::post(impl_->io_, [this] {
    std::vector<std::string> ready;
    for (const auto& [marker, keys] : impl_->orphans_by_marker_)
      if (impl_->store_.get(Table::runs, marker)) ready.push_back(marker);
    WriteSet ws;
    Impl::Flight f;
    for (const auto& m : ready) impl_->drain_orphans(m, ws, f);
    if (!ws.empty()) impl_->commit(std::move(ws), std::move(f));
  });
  impl_->thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "correlator");
    try {
      impl_->io_.run();
    } catch (const std::exception& e) {
      // Memory may now disagree with the store; a restart reloads the truth from it.
      spdlog::critical("correlator failed: {}; exiting so a restart recovers", e.what());
      std::_Exit(70);
    }
  });
}

void Correlator::stop() {
  if (!impl_->started_ || !impl_->thread_.joinable()) return;
  drain();
  asio::post(impl_->io_, [this] {
    impl_->stopping_ = true;
    impl_->tick_.cancel();
    impl_->work_.reset();
  });
  impl_->thread_.join();
}

void Correlator::submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) {
  asio::post(impl_->io_, [this, a = std::move(alerts), d = std::move(done)]() mutable {
    impl_->on_alerts(std::move(a), std::move(d));
  });
}

void Correlator::rejected(const std::string& source, const std::string& reason,
                          const std::string& detail) {
  auto now = common::now_ns();
  bool log = false;
  {
    std::lock_guard lk(impl_->counters_mu_);
    auto& c = impl_->counters_[source];
    c.source = source;
    ++c.rejected[reason];
    c.last_rejection = reason + ": " + detail;
    auto& last = impl_->last_reject_log_[source];
    if (now - last >= 1'000'000'000) {  // at most one line per source per second
      last = now;
      log = true;
    }
  }
  if (log) spdlog::warn("alert source {}: rejected input ({}): {}", source, reason, detail);
}

void Correlator::runs_stored(std::vector<Run> runs) {
  asio::post(impl_->io_, [this, r = std::move(runs)]() mutable { impl_->on_runs(std::move(r)); });
}

void Correlator::on_event(std::function<void(const DetectionEvent&)> cb) {
  impl_->listeners_.push_back(std::move(cb));
}

std::vector<SourceCounters> Correlator::counters() const {
  std::lock_guard lk(impl_->counters_mu_);
  std::vector<SourceCounters> out;
  for (const auto& [name, c] : impl_->counters_) out.push_back(c);
  return out;
}

std::size_t Correlator::pending_runs() const {
  return impl_->pending_count_;
}

std::vector<std::int64_t> Correlator::store_latencies() const {
  std::lock_guard lk(impl_->counters_mu_);
  return impl_->store_latency_;
}

void Correlator::drain() {
  if (!impl_->started_) return;
  if (std::this_thread::get_id() == impl_->thread_.get_id()) return;
  std::promise<void> done;
  auto fut = done.get_future();
  asio::post(impl_->io_, [this, &done] {
    Impl::Flight f;
    f.finished = [&done] { done.set_value(); };  // every earlier flight is finished too
    impl_->commit(WriteSet{}, std::move(f));
  });
  fut.wait();
}

}  // namespace tocsin::collector
