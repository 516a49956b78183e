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
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "collector/runs/correlator_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
using detail::runs::borrow_offset;
using detail::runs::decode_alert_record;
using detail::runs::encode_alert_record;
using detail::runs::encode_event;
using detail::runs::fuzzy_keys;
using detail::runs::open_run_from_value;
using detail::runs::open_run_value;
using detail::runs::orphan_key;

namespace {

constexpr std::size_t kMaxMarkersPerAlert = 8;
constexpr std::size_t kMaxOrphans = 200000;  // alerts waiting for a run that may never come
constexpr auto kOrphanTtl = std::chrono::hours(24);
constexpr auto kTick = std::chrono::milliseconds(100);
constexpr std::size_t kLatencySamples = 100000;
constexpr double kExactConfidence = 1.0;
constexpr double kFuzzyConfidence = 0.6;
constexpr double kFuzzyRuleConfidence = 0.7;  // also names a detection the test expects

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
  };
  struct Flight {  // one commit in progress
    std::vector<std::string> run_markers;
    std::vector<std::string> alert_keys;
    std::vector<DetectionEvent> events;
    std::vector<std::int64_t> arrivals;  // of the alerts in this flight
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
  std::unordered_set<std::string> adopted_;  // pending runs found in the store before ingest
                                             // told us about them
  std::unordered_map<std::string, std::pair<Run, int>> inflight_;  // marker -> (run, writes)
  std::unordered_map<std::string, int> inflight_alerts_;
  // Alerts that named a marker whose run is not here yet, by their key; and the keys waiting
  // for each marker (an alert may name several). The key is kept as computed on arrival: the
  // stored copy of the text is truncated, so it could not be recomputed after a restart.
  struct Orphan {
    std::vector<std::string> markers;
    Alert alert;
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

  Impl(Store& store, CorrelationConfig cfg) : store_(store), cfg_(std::move(cfg)) {}

  std::int64_t ns(std::chrono::milliseconds d) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  // ---- loading -------------------------------------------------------------------------

  void load() {
    store_.scan(Table::runs_open, "", [&](std::string_view k, std::string_view v) {
      auto r = open_run_from_value(k, v);
      if (!r) r = get_run(store_, std::string(k));  // unreadable summary: the full record
      if (r) track(*r);
      return true;
    });
    store_.scan(Table::orphan_alerts, "", [&](std::string_view k, std::string_view) {
      auto nul = k.find('\0');
      if (nul == std::string_view::npos) return true;
      std::string key(k.substr(nul + 1));
      if (orphan_alerts_.count(key)) return true;  // already loaded under another marker
      if (auto v = store_.get(Table::alerts, key)) {
        auto rec = decode_alert_record(*v);
        if (!rec) return true;
        auto& [a, markers] = *rec;
        if (markers.empty()) markers = find_markers(a.text);
        add_orphan(key, std::move(markers), std::move(a));
      }
      return true;
    });
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
    p.deadline_ns = r.overdue ? r.sla_deadline_ns() + ns(cfg_.grace) : r.sla_deadline_ns();
    for (auto& k : fuzzy_keys(r.hostname, r.technique, r.detections)) {
      auto& set = fuzzy_[k];
      auto [it, inserted] = set.insert({r.action_ns, r.marker});
      if (inserted) p.fuzzy.push_back({std::move(k), &set, it});  // a repeated key: once
    }
    deadlines_.emplace(p.deadline_ns, r.marker);
    pending_[r.marker] = std::move(p);
    pending_count_ = pending_.size();
  }

  void untrack(const std::string& marker) {
    auto it = pending_.find(marker);
    if (it == pending_.end()) return;
    for (const auto& ref : it->second.fuzzy) {
      ref.set->erase(ref.it);
      if (ref.set->empty()) fuzzy_.erase(ref.key);
    }
    pending_.erase(it);
    pending_count_ = pending_.size();
  }

  bool add_orphan(const std::string& key, std::vector<std::string> markers, Alert a) {
    if (orphan_count_ >= kMaxOrphans) {
      // The cap only bites under a flood of alerts whose runs never come (UDP syslog needs no
      // token); the alert itself is stored either way.
      spdlog::warn("correlator: {} alerts already wait for their run; not waiting for {}",
                   orphan_count_, markers.empty() ? std::string("-") : markers[0]);
      return false;
    }
    for (const auto& m : markers) orphans_by_marker_[m].push_back(key);
    orphan_alerts_[key] = Orphan{std::move(markers), std::move(a)};
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

  // Alerts that waited for `marker` now match its run, oldest first (the first alert decides).
  void drain_orphans(const std::string& marker, WriteSet& ws, Flight& f) {
    auto bm = orphans_by_marker_.find(marker);
    if (bm == orphans_by_marker_.end()) return;
    std::vector<std::pair<std::string, Alert>> waiting;
    for (const auto& key : bm->second)
      if (auto it = orphan_alerts_.find(key); it != orphan_alerts_.end())
        waiting.emplace_back(key, it->second.alert);
    std::sort(waiting.begin(), waiting.end(), [](const auto& x, const auto& y) {
      return x.second.arrival_ns < y.second.arrival_ns;
    });
    for (auto& [key, a] : waiting) {
      forget_orphan(key, ws);  // one alert, one run, even if it named several markers
      auto run = lookup(marker);
      if (!run) continue;
      auto reason = "exact marker " + marker + " (alert arrived before the run)";
      apply(*run, a, key, reason, kExactConfidence, ws, f);
      ws.put(Table::alerts, key, encode_alert_record(a, {marker}, marker, reason, kExactConfidence));
      count(a.source, [](SourceCounters& c) { ++c.matched; });
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

  // The current record of a run: ours in flight, else the store's.
  std::optional<Run> lookup(const std::string& marker) {
    if (auto it = inflight_.find(marker); it != inflight_.end()) return it->second.first;
    auto r = get_run(store_, marker);
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
    DetectionEvent e{next_event_seq_++, now,   r.marker, r.agent_id, r.test_id, state_name(r.state),
                     state_name(to),    detail,     r.target};
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
    if (!r.clock_synced) recorrect(r, a.arrival_ns);
    r.alert_key = key;
    r.alert_source = a.source;
    r.alert_rule = a.rule;
    r.match_reason = reason;
    r.confidence = confidence;
    r.event_ns = a.event_ns;
    r.ingest_ns = a.ingest_ns;
    r.created_ns = a.created_ns;
    r.arrival_ns = a.arrival_ns;
    r.time_to_alert_ns = a.arrival_ns - r.action_ns;
    r.clock_anomaly = r.time_to_alert_ns < 0;
    if (r.state == DetectionState::not_expected) return stage(r, ws, f);  // no SLA to judge
    bool in_time = r.time_to_alert_ns <= r.alert_within_ns;
    auto to = in_time ? DetectionState::alerted : DetectionState::late;
    auto detail = fmt::format("alert from {} after {} (± {}){}; {}", a.source,
                              fmt_seconds(r.time_to_alert_ns), fmt_seconds(r.action_error_ns),
                              r.clock_anomaly ? ", negative: clock anomaly" : "", reason);
    change_state(r, to, now, detail, ws, f);
    stage(r, ws, f);
  }

  // A run made before its agent's first clock exchange: the agent has probably synchronised
  // since, and an offset from then (plus drift) beats the one guessed when the run arrived.
  void recorrect(Run& r, std::int64_t now) {
    auto agent = store_.get_agent(r.agent_id);
    if (!agent || agent->clock_error_ns < 0) return;
    borrow_offset(r, *agent, now, cfg_);
    r.action_ns = r.agent_started_ns + r.clock_offset_ns;
  }

  struct Candidate {
    std::string marker;
    std::string reason;
    double confidence = 0;
  };

  std::optional<Candidate> fuzzy_match(const Alert& a) {
    std::int64_t t = a.event_ns ? a.event_ns : a.created_ns ? a.created_ns : a.arrival_ns;
    std::optional<Candidate> best;
    std::int64_t best_gap = 0;
    for (const auto& key : fuzzy_keys(a.host, a.technique, {a.rule})) {
      auto it = fuzzy_.find(key);
      if (it == fuzzy_.end()) continue;
      bool by_rule = key.find(std::string(1, '\0') + "r:") != std::string::npos;
      for (const auto& [action, marker] : it->second) {
        auto& p = pending_.at(marker);
        auto err = std::max<std::int64_t>(0, p.action_error_ns);
        // The alert cannot precede the action by more than the clock error, and must come
        // within the window after it.
        if (t < action - err || t > action + ns(cfg_.fuzzy_window) + err) continue;
        auto gap = std::llabs(t - action);
        if (best && gap >= best_gap) continue;
        best_gap = gap;
        best = Candidate{marker,
                         fmt::format("same host '{}' and {} '{}', alert {} after the action",
                                     a.host, by_rule ? "expected detection" : "technique",
                                     by_rule ? a.rule : a.technique, fmt_seconds(t - action)),
                         by_rule ? kFuzzyRuleConfidence : kFuzzyConfidence};
      }
    }
    return best;
  }

  bool is_duplicate(const std::string& key) {
    return inflight_alerts_.count(key) || store_.get(Table::alerts, key).has_value();
  }

  void process_alert(Alert& a, WriteSet& ws, Flight& f) {
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
    if (markers.size() > kMaxMarkersPerAlert) markers.resize(kMaxMarkersPerAlert);
    for (const auto& m : markers) {
      auto run = lookup(m);
      if (!run) continue;
      if (orphans_by_marker_.count(m)) {
        drain_orphans(m, ws, f);  // alerts that arrived earlier for this run decide first
        run = lookup(m);          // as they left it
      }
      auto reason = "exact marker " + m;
      apply(*run, a, key, reason, kExactConfidence, ws, f);
      ws.put(Table::alerts, key, encode_alert_record(a, markers, m, reason, kExactConfidence));
      matched(a, f);
      return;
    }
    if (!markers.empty()) {
      // The run's result is not here yet (a buffering agent): wait for it.
      if (add_orphan(key, markers, a))
        for (const auto& m : markers) ws.put(Table::orphan_alerts, orphan_key(m, key), "");
      ws.put(Table::alerts, key,
             encode_alert_record(a, markers, "", "waiting for run " + markers[0], 0));
      count(a.source, [](SourceCounters& c) { ++c.orphaned; });
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
    for (auto& r : runs) {
      // An adopted run is tracked already (and may be decided); its waiting alerts were
      // drained when it was adopted, but draining again is harmless.
      bool adopted = adopted_.erase(r.marker) > 0;
      if (!adopted && r.state == DetectionState::pending && !pending_.count(r.marker)) track(r);
      drain_orphans(r.marker, ws, f);
    }
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
      if (!run->overdue) {
        run->overdue = true;
        record_event(
            {next_event_seq_++, now, run->marker, run->agent_id, run->test_id, "pending", "overdue",
             fmt::format("no alert within {}; searching until the grace deadline",
                         fmt_seconds(run->alert_within_ns)),
             run->target},
            ws, f);
        p->second.deadline_ns = run->sla_deadline_ns() + ns(cfg_.grace);
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
