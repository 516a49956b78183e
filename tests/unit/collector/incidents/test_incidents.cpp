// The incident engine against a real RocksDB store: dedup, reopen, auto-resolve, lifecycle and
// its validation, SLA timers with pauses and breaches, auto-close, the latency baseline, the
// signal functions and the event log. Time comes from an injected clock; nothing sleeps.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "collector/incidents/incidents.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::test::TempDir;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kMin = 60 * kSec;
constexpr std::int64_t kHour = 60 * kMin;
constexpr std::int64_t kStart = 1'800'000'000LL * kSec;

// A store in a temporary directory and an engine over it with a clock the test moves.
struct Fixture {
  TempDir dir{"incidents"};
  std::unique_ptr<Store> store = Store::open(dir / "db");
  std::int64_t now = kStart;
  IncidentPolicy policy;
  std::unique_ptr<IncidentEngine> engine = make();

  std::unique_ptr<IncidentEngine> make() {
    return std::make_unique<IncidentEngine>(*store, policy, [this] { return now; });
  }
  void reopen_store() {
    engine.reset();
    store.reset();
    store = Store::open(dir / "db");
    engine = make();
  }
  std::vector<IncidentEvent> events() { return list_incident_events(*store, 0, 10000); }
};

Signal failing(IncidentKind kind = IncidentKind::prevention_failed,
               const std::string& test = "eicar-drop-tmp", const std::string& agent = "agent-1",
               Severity sev = Severity::critical) {
  Signal s;
  s.kind = kind;
  s.key = dedup_key(kind, test, agent);
  s.severity = sev;
  s.title = test + " failed on " + agent;
  s.test_id = test;
  s.agent_id = agent;
  s.marker = "tcn-abc";
  s.detail = "not_prevented: written";
  return s;
}

Signal cleared(Signal s, const std::string& why) {
  s.clears = true;
  s.detail = why;
  return s;
}

std::vector<std::string> whats(const std::vector<IncidentEvent>& ev) {
  std::vector<std::string> out;
  for (const auto& e : ev) out.push_back(e.what);
  return out;
}

}  // namespace

TEST_CASE("a repeated signal adds an occurrence to the open incident instead of a new one") {
  Fixture f;
  auto a = f.engine->apply(failing());
  REQUIRE(a);
  CHECK(a->id == 1);
  CHECK(a->state == IncidentState::open);
  CHECK(a->occurrences == 1);
  f.now += kMin;
  auto b = f.engine->apply(failing());
  REQUIRE(b);
  CHECK(b->id == 1);
  CHECK(b->occurrences == 2);
  CHECK(b->timeline.back().what == "occurrence");

  SUBCASE("another agent or kind is another incident") {
    CHECK(f.engine->apply(failing(IncidentKind::prevention_failed, "eicar-drop-tmp", "agent-2"))
              ->id == 2);
    CHECK(f.engine->apply(failing(IncidentKind::health_failed))->id == 3);
    // Another facet of the same test is not: it joins the incident (test_incident_facets.cpp).
    CHECK(f.engine->apply(failing(IncidentKind::detection_missed))->id == 1);
  }
  SUBCASE("an acknowledged incident still collects occurrences") {
    f.engine->ack(1, "alice");
    auto c = f.engine->apply(failing());
    CHECK(c->id == 1);
    CHECK(c->state == IncidentState::acknowledged);
    CHECK(c->occurrences == 3);
  }
}

TEST_CASE("a resolved incident that recurs reopens with a note, a closed one opens a new incident") {
  Fixture f;
  f.engine->apply(failing());
  f.engine->ack(1, "alice");
  f.engine->resolve(1, "alice", "AV signatures updated");
  f.now += kHour;
  auto r = f.engine->apply(failing());
  REQUIRE(r);
  CHECK(r->id == 1);
  CHECK(r->state == IncidentState::open);
  CHECK(r->reopen_count == 1);
  CHECK(r->reopened_ns == f.now);
  CHECK_FALSE(r->touched);  // the recurrence needs its own triage
  CHECK(r->resolution.empty());
  CHECK(r->timeline.back().what == "reopened");
  CHECK(r->timeline.back().detail.rfind("recurred", 0) == 0);
  CHECK(r->ack_sla.running());  // fresh timers

  f.engine->close(1, "alice", "test retired");
  auto n = f.engine->apply(failing());
  CHECK(n->id == 2);
  CHECK(f.engine->get(1)->state == IncidentState::closed);
}

TEST_CASE("a clearing signal auto-resolves the incident with the reason recorded") {
  Fixture f;
  CHECK_FALSE(f.engine->apply(cleared(failing(), "nothing to clear")));  // no incident: no-op
  f.engine->apply(failing());
  f.engine->pause(1, "alice", "restart awaits approval");
  f.now += 10 * kMin;
  auto r = f.engine->apply(cleared(failing(), "a later run was prevented (marker tcn-x)"));
  REQUIRE(r);
  CHECK(r->state == IncidentState::resolved);
  CHECK(r->resolution == "a later run was prevented (marker tcn-x)");
  CHECK(r->resolved_ns == f.now);
  CHECK_FALSE(r->paused());
  CHECK_FALSE(r->ack_sla.running());
  CHECK_FALSE(r->resolve_sla.running());
  CHECK(r->timeline.back().what == "auto_resolved");
  CHECK(r->timeline.back().actor == "system");
  CHECK_FALSE(f.engine->apply(cleared(failing(), "again")));  // already resolved: no-op
}

TEST_CASE("human actions move the lifecycle, land on the timeline and are validated") {
  Fixture f;
  f.engine->apply(failing());
  f.now += kMin;
  auto i = f.engine->assign(1, "alice", "bob");
  CHECK(i.owner == "bob");
  CHECK_FALSE(i.touched);  // assigning is not triage
  i = f.engine->note(1, "bob", "  looking at the EDR policy  ");
  CHECK(i.touched);
  CHECK(i.timeline.back().detail == "looking at the EDR policy");
  i = f.engine->ack(1, "bob");
  CHECK(i.state == IncidentState::acknowledged);
  CHECK(i.acknowledged_ns == f.now);
  CHECK_FALSE(i.ack_sla.running());
  CHECK(i.resolve_sla.running());
  i = f.engine->resolve(1, "bob", "policy fixed");
  CHECK(i.state == IncidentState::resolved);
  CHECK(i.resolution == "policy fixed");
  std::vector<std::string> who;
  for (const auto& e : i.timeline) who.push_back(e.what + "/" + e.actor);
  CHECK(who == std::vector<std::string>{"opened/system", "assigned/alice", "noted/bob",
                                        "acknowledged/bob", "resolved/bob"});

  CHECK_THROWS_WITH_AS(f.engine->ack(99, "bob"), "no incident #99", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->note(1, "bob", "   "), "a note is required", IncidentError);
  CHECK_THROWS_AS(f.engine->note(1, "bob", std::string(5000, 'x')), IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->assign(1, "bob", ""), "an owner is required", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->ack(1, ""), "an actor is required", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->resolve(1, "bob", "again"),
                       "cannot resolve incident #1: it is resolved", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->ack(1, "bob"), "cannot acknowledge incident #1: it is resolved",
                       IncidentError);
  f.engine->note(1, "bob", "a note on a resolved incident is fine");
  f.engine->close(1, "bob", "done");
  CHECK_THROWS_WITH_AS(f.engine->note(1, "bob", "late"), "incident #1 is closed", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->resolve(1, "bob", "x"), "incident #1 is closed", IncidentError);

  f.engine->apply(failing(IncidentKind::health_failed));
  f.engine->ack(2, "bob");
  CHECK_THROWS_WITH_AS(f.engine->ack(2, "bob"), "incident #2 is already acknowledged",
                       IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->resume(2, "bob"), "incident #2 is not paused", IncidentError);
  CHECK_THROWS_WITH_AS(f.engine->pause(2, "bob", ""), "a reason is required", IncidentError);
}

TEST_CASE("SLA remaining time counts from the opening and excludes pauses") {
  Fixture f;
  auto i = *f.engine->apply(failing());  // critical: acknowledge 15m, resolve 4h
  CHECK(i.ack_sla.remaining_ns(f.now) == 15 * kMin);
  CHECK(i.resolve_sla.remaining_ns(f.now) == 4 * kHour);
  f.now += 5 * kMin;
  i = f.engine->pause(1, "alice", "restart awaits approval");
  CHECK(i.paused());
  f.now += 2 * kHour;  // paused: no time passes on the timers
  CHECK(f.engine->get(1)->ack_sla.remaining_ns(f.now) == 10 * kMin);
  CHECK(f.engine->tick().breaches == 0);
  i = f.engine->resume(1, "alice");
  CHECK(i.timeline.back().detail == "was paused: restart awaits approval");
  f.now += 4 * kMin;
  CHECK(f.engine->get(1)->ack_sla.remaining_ns(f.now) == 6 * kMin);
  i = f.engine->ack(1, "alice");
  f.now += kHour;
  CHECK(i.ack_sla.remaining_ns(f.now) == 6 * kMin);  // stopped at the acknowledgement
  CHECK(i.resolve_sla.remaining_ns(f.now) == 4 * kHour - 9 * kMin - kHour);

  SUBCASE("low and informational incidents have no timers") {
    auto low = *f.engine->apply(failing(IncidentKind::latency_regression, "t", "a", Severity::low));
    CHECK_FALSE(low.ack_sla.remaining_ns(f.now));
    CHECK_FALSE(low.resolve_sla.exists());
  }
}

TEST_CASE("an SLA breach fires exactly once per timer, also after reopening the store") {
  Fixture f;
  f.engine->apply(failing());
  f.now += 15 * kMin - 1;
  CHECK(f.engine->tick().breaches == 0);
  f.now += 1;
  CHECK(f.engine->tick().breaches == 1);
  CHECK(f.engine->tick().breaches == 0);
  CHECK(f.engine->get(1)->ack_sla.breached_ns == f.now);

  f.reopen_store();
  f.now += kMin;
  CHECK(f.engine->tick().breaches == 0);  // the acknowledge breach is on the record
  f.now += 4 * kHour;
  CHECK(f.engine->tick().breaches == 1);  // now the resolve timer
  f.reopen_store();
  CHECK(f.engine->tick().breaches == 0);

  std::vector<std::string> details;
  for (const auto& e : f.events())
    if (e.what == "sla_breached") details.push_back(e.detail);
  CHECK(details == std::vector<std::string>{"acknowledge", "resolve"});
  auto i = *f.engine->get(1);
  CHECK(i.ack_sla.remaining_ns(f.now) < 0);  // overdue shows as negative
  f.engine->ack(1, "alice");
  CHECK(f.engine->get(1)->ack_sla.breached_ns != 0);  // stays on the record
}

TEST_CASE("untouched low incidents are auto-closed, touched ones and criticals are not") {
  Fixture f;
  auto low = [&](const std::string& test, Severity sev = Severity::low) {
    return f.engine->apply(failing(IncidentKind::latency_regression, test, "a", sev))->id;
  };
  auto untouched = low("t-untouched");
  auto info = low("t-info", Severity::informational);
  auto noted = low("t-noted");
  auto acked = low("t-acked");
  auto medium = low("t-medium", Severity::medium);
  auto critical = f.engine->apply(failing())->id;
  f.engine->note(noted, "alice", "known flake");
  f.engine->ack(acked, "alice");

  f.now += 72 * kHour - 1;
  CHECK(f.engine->tick().auto_closed == 0);
  f.now += 1;
  auto r = f.engine->tick();
  CHECK(r.auto_closed == 2);
  for (auto id : {untouched, info}) {
    auto i = *f.engine->get(id);
    CHECK(i.state == IncidentState::closed);
    CHECK(i.resolution == "auto-closed: not triaged within 72h");
    CHECK(i.timeline.back().what == "auto_closed");
  }
  for (auto id : {noted, acked, medium, critical}) CHECK(f.engine->get(id)->active());
  CHECK(f.engine->tick().auto_closed == 0);

  SUBCASE("the note formats the configured duration") {
    f.policy.auto_close_after = 36h;
    f.engine = f.make();
    auto id = low("t-later");
    f.now += 36 * kHour;
    f.engine->tick();
    CHECK(f.engine->get(id)->resolution == "auto-closed: not triaged within 36h");
  }
}

TEST_CASE("closed-untouched incidents are counted by kind since a time") {
  Fixture f;
  auto sig = [](IncidentKind k, const std::string& test) {
    return failing(k, test, "a", Severity::low);
  };
  f.engine->apply(sig(IncidentKind::latency_regression, "old"));
  f.now += 100 * kHour;
  f.engine->tick();  // closes "old" at kStart + 100h
  auto since = f.now + kSec;
  f.now += kHour;
  f.engine->apply(sig(IncidentKind::latency_regression, "t1"));
  f.engine->apply(sig(IncidentKind::latency_regression, "t2"));
  f.engine->apply(sig(IncidentKind::health_failed, "h1"));
  auto touched = f.engine->apply(sig(IncidentKind::health_failed, "h2"))->id;
  f.engine->close(touched, "alice", "not ours");  // closed by a human: touched
  f.now += 72 * kHour;
  CHECK(f.engine->tick().auto_closed == 3);

  auto counts = f.engine->closed_untouched_since(since);
  CHECK(counts == std::map<IncidentKind, std::size_t>{{IncidentKind::latency_regression, 2},
                                                      {IncidentKind::health_failed, 1}});
  CHECK(f.engine->closed_untouched_since(kStart)[IncidentKind::latency_regression] == 3);
}

TEST_CASE("the baseline watch raises a medium latency regression in plain words") {
  IncidentPolicy p;
  LatencyBaseline b(p);
  std::int64_t t = kStart;
  for (int n = 0; n < 4; ++n)
    CHECK_FALSE(
        b.observe("eicar-drop-tmp", "a", "tcn-" + std::to_string(n), t += kMin, 100'000'000));
  // Fewer than 5 samples before this one: no baseline yet.
  CHECK_FALSE(b.observe("eicar-drop-tmp", "a", "tcn-4", t += kMin, 900'000'000));
  // Baseline now: median of 100,100,100,100,900 ms = 100 ms.
  auto s = b.observe("eicar-drop-tmp", "a", "tcn-5", t += kMin, 340'000'000);
  REQUIRE(s);
  CHECK_FALSE(s->clears);
  CHECK(s->kind == IncidentKind::latency_regression);
  CHECK(s->severity == Severity::medium);
  CHECK(s->title == "time-to-alert for eicar-drop-tmp is 340% of its 7-day median");
  CHECK_FALSE(b.observe("eicar-drop-tmp", "a", "tcn-5", t += kMin, 340'000'000));  // same run
  auto ok = b.observe("eicar-drop-tmp", "a", "tcn-6", t += kMin, 150'000'000);
  REQUIRE(ok);
  CHECK(ok->clears);
  // Samples older than the window drop out of the baseline.
  CHECK_FALSE(b.observe("eicar-drop-tmp", "a", "tcn-7", t + 8 * 24 * kHour, 900'000'000));
  CHECK_FALSE(b.median("other-test", t));

  SUBCASE("the engine opens the incident from a run and rebuilds the baseline on start") {
    Fixture f;
    WriteSet ws;
    for (int n = 0; n < 5; ++n) {
      Run r;
      r.marker = "tcn-r" + std::to_string(n);
      r.agent_id = "agent-1";
      r.test_id = "eicar-drop-tmp";
      r.action_ns = kStart - kHour + n * kMin;
      r.state = DetectionState::alerted;
      r.time_to_alert_ns = 10 * kSec;
      put_run(ws, r);
    }
    f.store->commit(std::move(ws));
    f.engine = f.make();  // rebuilds from those runs
    Run slow;
    slow.marker = "tcn-slow";
    slow.agent_id = "agent-1";
    slow.test_id = "eicar-drop-tmp";
    slow.action_ns = kStart;
    slow.state = DetectionState::alerted;
    slow.time_to_alert_ns = 34 * kSec;
    auto i = f.engine->observe_latency(slow);
    REQUIRE(i);
    CHECK(i->severity == Severity::medium);
    CHECK(i->title == "time-to-alert for eicar-drop-tmp is 340% of its 7-day median");
    CHECK(i->resolve_sla.remaining_ns(f.now) == 72 * kHour);
  }
  SUBCASE("detection events carry the latency: the feed needs no run, old events still load it") {
    Fixture f;
    auto event = [](std::uint64_t seq, const std::string& marker, std::int64_t tta) {
      DetectionEvent e{seq, kStart, marker, "agent-1", "eicar-drop-tmp", "pending", "alerted",
                       "alert", "/tmp"};
      e.has_latency = true;
      e.action_ns = kStart - kHour + static_cast<std::int64_t>(seq) * kMin;
      e.time_to_alert_ns = tta;
      return e;
    };
    std::vector<DetectionEvent> events;
    for (std::uint64_t n = 1; n <= 5; ++n)
      events.push_back(event(n, "tcn-e" + std::to_string(n), 10 * kSec));
    // No run is stored for any of these: the baseline is built from the events alone.
    f.engine->process_detection_events(events);
    CHECK(f.engine->list({}, 100).empty());
    // An event from before the fields existed: the run gives the latency (34 s, 340 %).
    Run slow;
    slow.marker = "tcn-old";
    slow.agent_id = "agent-1";
    slow.test_id = "eicar-drop-tmp";
    slow.action_ns = kStart;
    slow.state = DetectionState::alerted;
    slow.time_to_alert_ns = 34 * kSec;
    WriteSet ws;
    put_run(ws, slow);
    f.store->commit(std::move(ws));
    DetectionEvent old{6, kStart, "tcn-old", "agent-1", "eicar-drop-tmp", "pending", "alerted",
                       "alert", "/tmp"};
    f.engine->process_detection_events({old});
    auto open = f.engine->list({}, 100);
    REQUIRE(open.size() == 1);
    CHECK(open[0].kind == IncidentKind::latency_regression);
    CHECK(open[0].title == "time-to-alert for eicar-drop-tmp is 340% of its 7-day median");
    // A clock anomaly in the event is not a sample.
    auto odd = event(7, "tcn-odd", 500 * kSec);
    odd.clock_anomaly = true;
    f.engine->process_detection_events({odd});
    CHECK(f.engine->list({}, 100).size() == 1);
  }
}

TEST_CASE("results map to prevention and health signals") {
  IncidentPolicy p;
  struct Row {
    std::string probe, verdict;
    bool expect_prevent;
    std::optional<IncidentKind> kind;
    bool clears;
  };
  const std::vector<Row> rows{
      {"eicar_drop", "not_prevented", true, IncidentKind::prevention_failed, false},
      {"eicar_drop", "prevented", true, IncidentKind::prevention_failed, true},
      {"eicar_drop", "not_prevented", false, std::nullopt, false},  // not expected to block
      {"eicar_drop", "inconclusive", true, std::nullopt, false},    // a failure is not a verdict
      {"eicar_drop", "error", true, std::nullopt, false},
      {"http_check", "unhealthy", false, IncidentKind::health_failed, false},
      {"http_check", "healthy", false, IncidentKind::health_failed, true},
      {"http_check", "not_applicable", false, std::nullopt, false},
  };
  for (const auto& row : rows) {
    CAPTURE(row.probe);
    CAPTURE(row.verdict);
    tocsin::common::ResultBody b;
    b.test_id = "t1";
    b.probe = row.probe;
    b.verdict = row.verdict;
    b.reason = "written";
    b.marker = "tcn-m";
    b.expect_prevent = row.expect_prevent;
    auto sigs = signals_from_result(b, "agent-1", kStart, p);
    if (!row.kind) {
      CHECK(sigs.empty());
      continue;
    }
    REQUIRE(sigs.size() == 1);
    CHECK(sigs[0].kind == *row.kind);
    CHECK(sigs[0].clears == row.clears);
    CHECK(sigs[0].key == dedup_key(*row.kind, "t1", "agent-1"));
    CHECK(sigs[0].marker == "tcn-m");
  }
  tocsin::common::ResultBody overflow;
  overflow.kind = "outbox_overflow";
  CHECK(signals_from_result(overflow, "agent-1", kStart, p).empty());

  tocsin::common::ResultBody b;
  b.test_id = "eicar-drop-tmp";
  b.probe = "eicar_drop";
  b.verdict = "not_prevented";
  b.expect_prevent = true;
  auto s = signals_from_result(b, "web01", kStart, p);
  CHECK(s[0].severity == Severity::critical);
  CHECK(s[0].title == "eicar-drop-tmp was not prevented on web01");
}

TEST_CASE("detection events map to missed and late signals, and alerts clear them") {
  IncidentPolicy p;
  p.severity[IncidentKind::detection_late] = Severity::high;  // severity per rule
  struct Row {
    std::string to;
    std::vector<std::pair<IncidentKind, bool>> expect;  // kind, clears
  };
  const std::vector<Row> rows{
      {"missed", {{IncidentKind::detection_missed, false}}},
      {"logged", {{IncidentKind::detection_missed, false}}},
      // The failure before the clear: "missed" alone must not resolve and then reopen.
      {"late", {{IncidentKind::detection_late, false}, {IncidentKind::detection_missed, true}}},
      {"alerted", {{IncidentKind::detection_missed, true}, {IncidentKind::detection_late, true}}},
      {"overdue", {}},
      {"pending", {}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.to);
    DetectionEvent e{7, kStart, "tcn-m", "agent-1", "t1", "pending", row.to, "", ""};
    auto sigs = signals_from_detection(e, p);
    REQUIRE(sigs.size() == row.expect.size());
    for (std::size_t n = 0; n < sigs.size(); ++n) {
      CHECK(sigs[n].kind == row.expect[n].first);
      CHECK(sigs[n].clears == row.expect[n].second);
      CHECK(sigs[n].key == dedup_key(row.expect[n].first, "t1", "agent-1"));
    }
  }
  DetectionEvent late{1, kStart, "tcn-m", "agent-1", "t1", "pending", "late", "", ""};
  CHECK(signals_from_detection(late, p)[0].severity == Severity::high);
  DetectionEvent missed{1, kStart, "tcn-m", "agent-1", "t1", "pending", "missed", "", ""};
  CHECK(signals_from_detection(missed, p)[0].severity == Severity::critical);
}

TEST_CASE("security events and silent agents map to signals") {
  IncidentPolicy p;
  SecurityEvent e{kStart, "forged_signature", "agent-1", "10.0.0.5:4444", "bad signature"};
  auto s = signal_from_security_event(e, p);
  CHECK(s.kind == IncidentKind::security_event);
  CHECK(s.severity == Severity::high);
  CHECK(s.key == dedup_key(IncidentKind::security_event, "forged_signature", "agent-1"));
  CHECK(s.title == "security event forged_signature from agent agent-1");
  CHECK_FALSE(s.clears);
  // A peer that never authenticated (a scanner, a wrong token): recorded, but low.
  SecurityEvent noise{kStart, "enrollment_refused", "", "10.0.0.9:5555", "unknown token"};
  auto n = signal_from_security_event(noise, p);
  CHECK(n.severity == Severity::low);
  CHECK(n.title == "security event enrollment_refused from 10.0.0.9:5555");

  struct Row {
    std::int64_t last_seen;
    bool clears;
  };
  for (auto row : {Row{kStart - 10 * kMin, true}, Row{kStart - 15 * kMin, true},
                   Row{kStart - 15 * kMin - 1, false}, Row{0, false}}) {
    CAPTURE(row.last_seen);
    auto a = agent_silence_signal("agent-1", kStart, row.last_seen, 15min, p);
    CHECK(a.kind == IncidentKind::agent_silent);
    CHECK(a.clears == row.clears);
    if (!row.clears) CHECK(a.title == "agent agent-1 silent for more than 15m");
  }
}

TEST_CASE("every change appends a gap-free, ordered event in the same write as the incident") {
  Fixture f;
  f.engine->apply(failing());
  f.engine->apply(failing());
  f.engine->ack(1, "alice");
  f.engine->note(1, "alice", "on it");
  f.engine->assign(1, "alice", "bob");
  f.engine->pause(1, "bob", "approval");
  f.engine->resume(1, "bob");
  f.engine->resolve(1, "bob", "fixed");
  f.engine->apply(failing());
  f.engine->apply(cleared(failing(), "passed"));
  f.engine->close(1, "bob", "done");
  f.reopen_store();
  f.engine->apply(failing(IncidentKind::health_failed));

  auto ev = f.events();
  CHECK(whats(ev) == std::vector<std::string>{"opened", "occurrence", "acknowledged", "noted",
                                              "assigned", "paused", "resumed", "resolved",
                                              "reopened", "auto_resolved", "closed", "opened"});
  for (std::size_t n = 0; n < ev.size(); ++n) CHECK(ev[n].seq == n + 1);
  CHECK(ev.back().incident_id == 2);
  CHECK(ev[2].actor == "alice");
  CHECK(ev[0].severity == Severity::critical);
  CHECK(list_incident_events(*f.store, 5, 3).front().seq == 5);
  CHECK(list_incident_events(*f.store, 5, 3).size() == 3);
  // The incident's timeline has exactly as many entries as the log has events for it.
  auto i = *f.engine->get(1);
  CHECK(i.timeline.size() == 11);
  CHECK(i.timeline.back().time_ns == ev[10].time_ns);
}

TEST_CASE("the feeds read detection events and results and resume after a restart") {
  Fixture f;
  WriteSet ws;
  auto put_event = [&](std::uint64_t seq, const std::string& to) {
    std::string k;
    put_be64(k, seq);
    ws.put(Table::detection_events, k,
           nlohmann::json{{"time_ns", kStart},
                          {"marker", "tcn-" + std::to_string(seq)},
                          {"agent_id", "agent-1"},
                          {"test_id", "t1"},
                          {"from", "pending"},
                          {"to", to},
                          {"detail", ""}}
               .dump());
  };
  put_event(1, "missed");
  put_event(2, "missed");
  put_event(3, "alerted");
  f.store->commit(std::move(ws));
  CHECK(f.engine->cursor("detection_events") == 0);
  f.engine->process_detection_events(list_detection_events(*f.store, 1, 2));
  CHECK(f.engine->cursor("detection_events") == 3);
  CHECK(f.engine->get(1)->occurrences == 2);
  f.reopen_store();
  f.engine->process_detection_events(
      list_detection_events(*f.store, f.engine->cursor("detection_events"), 100));
  CHECK(f.engine->get(1)->state == IncidentState::resolved);
  CHECK(f.engine->cursor("detection_events") == 4);

  tocsin::common::ResultBody b;
  b.test_id = "eicar";
  b.probe = "eicar_drop";
  b.verdict = "not_prevented";
  b.expect_prevent = true;
  StoredResult r;
  r.record.agent_id = "agent-9";
  r.record.seq = 41;
  r.record.body = tocsin::common::encode_body(b);
  r.received_ns = kStart;
  f.engine->process_results("agent-9", {r});
  CHECK(f.engine->cursor("results/agent-9") == 42);
  auto open = f.engine->list({IncidentState::open, std::nullopt}, 10);
  REQUIRE(open.size() == 1);
  CHECK(open[0].kind == IncidentKind::prevention_failed);
  CHECK(open[0].title == "eicar was not prevented on agent-9");
  CHECK(f.engine->list({std::nullopt, Severity::low}, 10).empty());
  CHECK(f.engine->list({}, 10).size() == 2);

  f.engine->process_security_events({{kStart + 5, "replay", "agent-9", "", "seq 3 again"}});
  CHECK(f.engine->cursor("security_events") == static_cast<std::uint64_t>(kStart + 6));
}

TEST_CASE("the policy loads from the incidents section and names bad values") {
  using tocsin::common::ConfigNode;
  auto cfg = ConfigNode::load_string(R"(
incidents:
  severity: {health_failed: critical, latency_regression: low}
  sla:
    critical: {acknowledge: 5m}
    low: {acknowledge: 1d, resolve: 7d}
  auto_close_after: 48h
  baseline: {factor: 2.5, window: 14d, min_samples: 10}
)",
                                     "collector.yaml");
  auto p = IncidentPolicy::load(cfg["incidents"]);
  CHECK(p.severity_of(IncidentKind::health_failed) == Severity::critical);
  CHECK(p.severity_of(IncidentKind::latency_regression) == Severity::low);
  CHECK(p.severity_of(IncidentKind::prevention_failed) == Severity::critical);
  CHECK(p.sla_for(Severity::critical).acknowledge == 5min);
  CHECK(p.sla_for(Severity::critical).resolve == 4h);  // kept
  CHECK(p.sla_for(Severity::low).resolve == std::chrono::hours(24 * 7));
  CHECK(p.auto_close_after == 48h);
  CHECK(p.baseline_factor == doctest::Approx(2.5));
  CHECK(p.baseline_window == std::chrono::hours(24 * 14));
  CHECK(p.baseline_min_samples == 10);

  auto defaults = IncidentPolicy::load(ConfigNode::load_string("x: 1\n", "c.yaml")["incidents"]);
  CHECK(defaults.auto_close_after == 72h);

  auto bad = [](const std::string& yaml) {
    return IncidentPolicy::load(ConfigNode::load_string(yaml, "c.yaml")["incidents"]);
  };
  CHECK_THROWS_AS(bad("incidents: {severity: {nonsense: high}}\n"), tocsin::common::ConfigError);
  CHECK_THROWS_AS(bad("incidents: {severity: {agent_silent: urgent}}\n"),
                  tocsin::common::ConfigError);
  CHECK_THROWS_AS(bad("incidents: {baseline: {factor: 0.5}}\n"), tocsin::common::ConfigError);
  CHECK_THROWS_AS(bad("incidents: {auto_close: 3d}\n"), tocsin::common::ConfigError);
}

TEST_CASE("the feed starts at the current ends, then follows every log to the engine") {
  Fixture f;
  auto detection = [&](std::uint64_t seq, const std::string& to, const std::string& test) {
    WriteSet ws;
    std::string k;
    put_be64(k, seq);
    ws.put(Table::detection_events, k,
           nlohmann::json{{"time_ns", kStart},
                          {"marker", "tcn-" + std::to_string(seq)},
                          {"agent_id", "agent-1"},
                          {"test_id", test},
                          {"from", "pending"},
                          {"to", to},
                          {"detail", ""}}
               .dump());
    f.store->commit(std::move(ws));
  };
  AgentRecord agent;
  agent.agent_id = "agent-1";
  agent.next_seq = 1;
  WriteSet ws;
  ws.put_agent(agent);
  f.store->commit(std::move(ws));
  detection(1, "missed", "before-the-engine");  // history: not replayed

  IncidentFeed feed(*f.engine, *f.store);
  CHECK(feed.poll_once() == 0);
  CHECK(f.engine->list({}, 10).empty());

  detection(2, "missed", "t-missed");
  tocsin::common::ResultBody b;
  b.test_id = "t-prevent";
  b.probe = "eicar_drop";
  b.verdict = "not_prevented";
  b.expect_prevent = true;
  StoredResult r;
  r.record.agent_id = "agent-1";
  r.record.seq = 1;
  r.record.body = tocsin::common::encode_body(b);
  r.received_ns = kStart;
  WriteSet rs;
  rs.put_result(r);
  rs.put_security_event({kStart + kSec, "forged_signature", "agent-1", "", "bad signature"});
  f.store->commit(std::move(rs));
  CHECK(feed.poll_once() == 3);
  CHECK(feed.poll_once() == 0);  // cursors moved: nothing twice
  auto all = f.engine->list({}, 10);
  std::vector<std::string> kinds;
  for (const auto& i : all) kinds.push_back(kind_name(i.kind) + ":" + i.test_id);
  CHECK(kinds == std::vector<std::string>{"security_event:forged_signature",
                                          "prevention_failed:t-prevent",
                                          "detection_missed:t-missed"});
  f.now += 15 * kMin;
  feed.poll_once();  // ticks too
  CHECK(f.engine->get(1)->ack_sla.breached_ns == f.now);
}

TEST_CASE("one target of a test passing does not clear another target's failure") {
  Fixture f;
  auto result = [](const std::string& target, const std::string& verdict) {
    tocsin::common::ResultBody b;
    b.test_id = "smb-blocked";
    b.probe = "tcp_connect";
    b.target = target;
    b.verdict = verdict;
    b.expect_prevent = true;
    b.marker = "tcn-" + target.substr(0, 1) + "000000000";
    return b;
  };
  // Same run, two targets: A got through, B was blocked (in that order in one batch).
  for (const auto& s : signals_from_result(result("a.example:445", "not_prevented"), "agent-1",
                                           kStart, f.policy))
    f.engine->apply(s);
  for (const auto& s :
       signals_from_result(result("b.example:445", "prevented"), "agent-1", kStart, f.policy))
    f.engine->apply(s);
  auto open = f.engine->list({}, 10);
  REQUIRE(open.size() == 1);
  CHECK(open[0].state == IncidentState::open);
  CHECK(open[0].title.find("a.example:445") != std::string::npos);
  // A later pass of target A itself resolves it.
  for (const auto& s :
       signals_from_result(result("a.example:445", "prevented"), "agent-1", kStart, f.policy))
    f.engine->apply(s);
  CHECK(f.engine->get(open[0].id)->state == IncidentState::resolved);
  // Detections too: the run of one target alerted does not clear another's missed alert.
  DetectionEvent missed{1, kStart, "tcn-a000000000", "agent-1", "smb-blocked", "pending", "missed", "",
                        "a.example:445"};
  DetectionEvent alerted{2, kStart, "tcn-b000000000", "agent-1", "smb-blocked", "pending",
                         "alerted", "", "b.example:445"};
  for (const auto& s : signals_from_detection(missed, f.policy)) f.engine->apply(s);
  for (const auto& s : signals_from_detection(alerted, f.policy)) f.engine->apply(s);
  int open_missed = 0;
  for (const auto& i : f.engine->list({}, 10))
    if (i.kind == IncidentKind::detection_missed && i.active()) ++open_missed;
  CHECK(open_missed == 1);
}

TEST_CASE("a silent agent opens one agent_silent incident, resolved when it is heard again") {
  Fixture f;
  AgentRecord a;
  a.agent_id = "agent-7";
  a.last_seen_ns = kStart;
  AgentRecord never;  // enrolled, never connected: nothing to miss
  never.agent_id = "agent-8";
  f.now = kStart + 30 * kMin;
  f.engine->watch_silence({a, never});
  CHECK(f.engine->list({}, 10).empty());
  f.now = kStart + 2 * kHour;
  f.engine->watch_silence({a, never});
  f.now += 5 * kSec;
  f.engine->watch_silence({a, never});  // still silent: no second occurrence
  auto list = f.engine->list({}, 10);
  REQUIRE(list.size() == 1);
  CHECK(list[0].kind == IncidentKind::agent_silent);
  CHECK(list[0].occurrences == 1);
  CHECK(list[0].title == "agent agent-7 silent for more than 1h");
  a.last_seen_ns = f.now;
  f.engine->watch_silence({a, never});
  CHECK(f.engine->get(list[0].id)->state == IncidentState::resolved);
  auto n = f.events().size();
  f.engine->watch_silence({a, never});  // healthy and already resolved: nothing written
  CHECK(f.events().size() == n);
}

TEST_CASE("a security event that becomes visible after a later one was read is still processed, once") {
  Fixture f;
  f.policy.agent_silent_after = std::chrono::milliseconds(0);
  f.engine = f.make();
  IncidentFeed feed(*f.engine, *f.store);
  f.now = kStart;
  CHECK(feed.poll_once() == 0);  // the cursors start at "now"
  auto put = [&](std::int64_t t, const std::string& kind) {
    WriteSet ws;
    ws.put_security_event({t, kind, "agent-1", "", "detail " + kind});
    f.store->commit(std::move(ws));
  };
  put(kStart + 20 * kSec, "replay");
  CHECK(feed.poll_once() == 1);
  // Stamped before the one above but committed after it (group commit can do that).
  put(kStart + 10 * kSec, "forged_signature");
  CHECK(feed.poll_once() == 1);
  CHECK(feed.poll_once() == 0);  // re-read within the margin, but not processed again
  std::vector<std::string> kinds;
  for (const auto& i : f.engine->list({}, 10)) kinds.push_back(i.test_id);
  CHECK(kinds == std::vector<std::string>{"forged_signature", "replay"});
  for (const auto& i : f.engine->list({}, 10)) CHECK(i.occurrences == 1);
}
