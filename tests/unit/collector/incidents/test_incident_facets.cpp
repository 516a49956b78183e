// Incidents a SOC can live with (issue 18): the facets of one failing test share one incident,
// web probe markers stay out of the dedup key, accepted risk sticks, silences record but open
// and notify nothing, and the list filters by agent, test and kind. A real RocksDB store and an
// injected clock; nothing sleeps.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "collector/audit/audit.hpp"
#include "collector/incidents/incidents.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using tocsin::test::TempDir;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kHour = 3600 * kSec;
constexpr std::int64_t kStart = 1'800'000'000LL * kSec;

struct Fixture {
  TempDir dir{"incident-facets"};
  std::unique_ptr<Store> store = Store::open(dir / "db");
  std::int64_t now = kStart;
  std::unique_ptr<AuditLog> audit = std::make_unique<AuditLog>(
      *store, tocsin::common::Ed25519Key::generate(), [this] { return now; });
  std::unique_ptr<IncidentEngine> engine = make();

  std::unique_ptr<IncidentEngine> make() {
    auto e = std::make_unique<IncidentEngine>(*store, IncidentPolicy{}, [this] { return now; });
    e->set_audit(audit.get());
    return e;
  }
  std::vector<IncidentEvent> events() { return list_incident_events(*store, 0, 10000); }
  std::vector<std::string> whats() {
    std::vector<std::string> out;
    for (const auto& e : events()) out.push_back(e.what);
    return out;
  }
  std::optional<Incident> result(const std::string& test, const std::string& verdict,
                                 const std::string& probe = "eicar_drop",
                                 const std::string& target = "", const std::string& marker = "tcn-m1",
                                 const std::string& agent = "agent-1") {
    tocsin::common::ResultBody b;
    b.test_id = test;
    b.probe = probe;
    b.verdict = verdict;
    b.reason = verdict == "prevented" ? "blocked" : "connected";
    b.expect_prevent = true;
    b.target = target;
    b.marker = marker;
    b.technique = "T1105";
    std::optional<Incident> last;
    for (const auto& s : signals_from_result(b, agent, now, IncidentPolicy{}))
      if (auto i = engine->apply(s)) last = i;
    return last;
  }
  std::optional<Incident> detection(const std::string& test, const std::string& to,
                                    const std::string& target = "",
                                    const std::string& marker = "tcn-m1") {
    DetectionEvent e{1, now, marker, "agent-1", test, "pending", to, "", target};
    std::optional<Incident> last;
    for (const auto& s : signals_from_detection(e, IncidentPolicy{}))
      if (auto i = engine->apply(s)) last = i;
    return last;
  }
  std::size_t audit_count(const std::string& action) {
    std::size_t n = 0;
    for (const auto& e : audit->list(1, 0, 100000))
      if (e.action == action) ++n;
    return n;
  }
};

}  // namespace

TEST_CASE("one failing run is one incident whose timeline shows each facet, at the worst severity") {
  Fixture f;
  IncidentPolicy p;
  p.severity[IncidentKind::detection_late] = Severity::high;
  f.engine = std::make_unique<IncidentEngine>(*f.store, p, [&f] { return f.now; });
  auto apply_all = [&](const std::vector<Signal>& sigs) {
    std::optional<Incident> last;
    for (const auto& s : sigs)
      if (auto i = f.engine->apply(s)) last = i;
    return last;
  };
  tocsin::common::ResultBody b;
  b.test_id = "eicar";
  b.probe = "eicar_drop";
  b.verdict = "not_prevented";
  b.expect_prevent = true;
  b.marker = "tcn-m1";
  auto i = apply_all(signals_from_result(b, "agent-1", f.now, p));
  REQUIRE(i);
  CHECK(i->facets == std::vector<std::string>{"prevention_failed"});
  DetectionEvent missed{1, f.now, "tcn-m1", "agent-1", "eicar", "pending", "missed", "", ""};
  i = apply_all(signals_from_detection(missed, p));
  CHECK(i->id == 1);
  CHECK(i->facets == std::vector<std::string>{"prevention_failed", "detection_missed"});
  DetectionEvent late{2, f.now, "tcn-m1", "agent-1", "eicar", "missed", "late", "", ""};
  i = apply_all(signals_from_detection(late, p));
  // The late alert clears "missed" and adds "late": still the one incident.
  CHECK(f.engine->list({}, 10).size() == 1);
  i = f.engine->get(1);
  CHECK(i->facets == std::vector<std::string>{"prevention_failed", "detection_late"});
  CHECK(i->severity == Severity::critical);  // the worst facet
  CHECK(i->state == IncidentState::open);
  std::vector<std::string> details;
  for (const auto& e : i->timeline) details.push_back(e.what + " " + e.detail.substr(0, e.detail.find(':')));
  CHECK(details == std::vector<std::string>{"opened prevention_failed", "occurrence detection_missed",
                                            "occurrence detection_late",
                                            "facet_cleared detection_missed"});
  // The next run is prevented: only the late-alert facet is left, at its own severity.
  b.verdict = "prevented";
  apply_all(signals_from_result(b, "agent-1", f.now, p));
  i = f.engine->get(1);
  CHECK(i->state == IncidentState::open);
  CHECK(i->facets == std::vector<std::string>{"detection_late"});
  CHECK(i->severity == Severity::high);
  CHECK(i->kind == IncidentKind::detection_late);  // the principal facet still failing
  // Alerted in time: every facet is good, so it resolves.
  DetectionEvent alerted{3, f.now, "tcn-m2", "agent-1", "eicar", "pending", "alerted", "", ""};
  apply_all(signals_from_detection(alerted, p));
  i = f.engine->get(1);
  CHECK(i->state == IncidentState::resolved);
  CHECK(i->facets.empty());
  int opened = 0;
  for (const auto& e : f.events()) opened += e.what == "opened" || e.what == "reopened";
  CHECK(opened == 1);  // one notification-worthy opening, not three

  // The feed may see the missed alert before the result: the kind and title follow the
  // principal facet (not prevented) whatever the order.
  DetectionEvent first{4, f.now, "tcn-m3", "agent-1", "dns", "pending", "missed", "", ""};
  auto d = apply_all(signals_from_detection(first, p));
  CHECK(d->kind == IncidentKind::detection_missed);
  b.test_id = "dns";
  b.verdict = "not_prevented";
  d = apply_all(signals_from_result(b, "agent-1", f.now, p));
  CHECK(d->kind == IncidentKind::prevention_failed);
  CHECK(d->title == "dns was not prevented on agent-1");
  CHECK(d->facets == std::vector<std::string>{"detection_missed", "prevention_failed"});
}

TEST_CASE("web probe runs share one incident whatever their marker, and a pass resolves it") {
  for (std::string probe : {"http_beacon", "web_download"}) {
    CAPTURE(probe);
    Fixture f;
    // The URLs the probes really build: http_beacon appends the marker as a path segment,
    // web_download substitutes {marker} in the configured URL.
    auto url = [&](const std::string& marker) {
      return probe == "http_beacon" ? "https://c2.example.test/beacon/" + marker
                                    : "https://dl.example.test/files/" + marker + "/eicar.com?m=" + marker;
    };
    auto a = f.result("web-1", "not_prevented", probe, url("tcn-0a1b2c3d4e"), "tcn-0a1b2c3d4e");
    auto b = f.result("web-1", "not_prevented", probe, url("tcn-9f8e7d6c5b"), "tcn-9f8e7d6c5b");
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->id == b->id);
    CHECK(b->occurrences == 2);
    CHECK(b->key.find("tcn-") == std::string::npos);
    CHECK(b->target == url("{marker}"));
    auto d = f.detection("web-1", "missed", url("tcn-0a1b2c3d4e"), "tcn-0a1b2c3d4e");
    CHECK(d->id == a->id);
    f.result("web-1", "prevented", probe, url("tcn-5555aaaa00"), "tcn-5555aaaa00");
    CHECK(f.engine->get(a->id)->facets == std::vector<std::string>{"detection_missed"});
    f.detection("web-1", "alerted", url("tcn-5555aaaa00"), "tcn-5555aaaa00");
    CHECK(f.engine->get(a->id)->state == IncidentState::resolved);
    CHECK(f.engine->list({}, 10).size() == 1);
  }
  CHECK(target_without_marker("https://x.test/a/tcn-1/b", "tcn-1") == "https://x.test/a/{marker}/b");
  CHECK(target_without_marker("10.0.0.1:445", "") == "10.0.0.1:445");
}

TEST_CASE("incidents stored under the old per-kind keys still load and are found again") {
  Fixture f;
  // An incident as the engine stored it before facets: old key, no facets field.
  Incident old;
  old.id = 1;
  old.key = legacy_dedup_key(IncidentKind::prevention_failed, "eicar", "agent-1");
  old.kind = IncidentKind::prevention_failed;
  old.state = IncidentState::open;
  old.title = "eicar was not prevented on agent-1";
  old.test_id = "eicar";
  old.agent_id = "agent-1";
  old.occurrences = 1;
  auto stored = nlohmann::json::parse(encode_incident(old));
  stored.erase("facets");
  stored.erase("accepted_risk");
  stored.erase("labels");
  stored.erase("target");
  WriteSet ws;
  std::string k;
  put_be64(k, 1);
  ws.put(Table::incidents, k, stored.dump());
  ws.put(Table::incident_keys, old.key, k);
  f.store->commit(std::move(ws));
  f.engine = f.make();
  auto loaded = f.engine->get(1);
  REQUIRE(loaded);
  CHECK(loaded->facets == std::vector<std::string>{"prevention_failed"});
  auto i = f.result("eicar", "not_prevented");
  CHECK(i->id == 1);  // the same incident, now under the merged key
  CHECK(i->occurrences == 2);
  CHECK(i->key == dedup_key(IncidentKind::prevention_failed, "eicar", "agent-1"));
  f.result("eicar", "prevented");
  CHECK(f.engine->get(1)->state == IncidentState::resolved);
}

TEST_CASE("an accepted risk sticks: later failures are recorded, reopen nothing, notify nothing") {
  Fixture f;
  auto i = f.result("smb", "not_prevented");
  f.engine->accept_risk(i->id, "alice", "legacy file server, replacement planned");
  auto before = f.events().size();
  f.now += kHour;
  auto again = f.result("smb", "not_prevented");
  REQUIRE(again);
  CHECK(again->id == i->id);
  CHECK(again->state == IncidentState::resolved);
  CHECK(again->accepted_risk);
  CHECK(again->occurrences == 2);
  CHECK(again->timeline.back().what == "suppressed");
  auto after = f.events();
  REQUIRE(after.size() == before + 1);
  CHECK(after.back().what == "suppressed");  // no opened/reopened/occurrence for a notifier
  CHECK(f.audit_count("incident_risk_accepted") == 1);
  // Still an accepted risk after a restart.
  f.engine = f.make();
  CHECK(f.result("smb", "not_prevented")->state == IncidentState::resolved);
  // Until a human reopens it: then failures count again.
  auto r = f.engine->reopen(i->id, "bob", "the replacement slipped; track it");
  CHECK(r.state == IncidentState::open);
  CHECK_FALSE(r.accepted_risk);
  CHECK(f.result("smb", "not_prevented")->timeline.back().what == "occurrence");
  CHECK_THROWS_AS(f.engine->reopen(i->id, "bob", "again"), IncidentError);  // it is open
  CHECK_THROWS_AS(f.engine->accept_risk(i->id, "bob", " "), IncidentError);
}

TEST_CASE("a silenced failure is counted and shown but opens and notifies nothing") {
  Fixture f;
  SilenceRequest r;
  r.matchers.test_id = "smb";
  r.matchers.labels = {{"probe", "tcp_connect"}};
  r.until = "2h";
  r.reason = "maintenance window";
  auto s = f.engine->add_silence(r, "alice");
  CHECK(s.id == 1);
  CHECK(s.until_ns == kStart + 2 * kHour);
  CHECK(f.audit_count("silence_created") == 1);

  CHECK_FALSE(f.result("smb", "not_prevented", "tcp_connect", "10.0.0.5:445"));
  CHECK(f.engine->list({}, 10).empty());
  CHECK(f.events().empty());
  // Another probe does not match the label: it opens.
  auto other = f.result("smb", "not_prevented", "eicar_drop");
  REQUIRE(other);
  // An open incident the silence matches collects "silenced" entries, not occurrences.
  SilenceRequest by_agent;
  by_agent.matchers.agent_id = "agent-1";
  by_agent.matchers.kind = "prevention_failed";
  by_agent.until = "1h";
  by_agent.reason = "rebuilding agent-1";
  auto s2 = f.engine->add_silence(by_agent, "alice");
  auto again = f.result("smb", "not_prevented", "eicar_drop");
  CHECK(again->timeline.back().what == "silenced");
  CHECK(f.events().back().what == "silenced");
  CHECK(f.engine->silenced_by(*again) == std::vector<std::string>{std::to_string(s2.id)});

  auto listed = f.engine->list_silences("active", 10);
  REQUIRE(listed.size() == 2);
  CHECK(listed[1].id == 1);  // newest first
  CHECK(listed[1].silenced_signals == 1);  // the tcp_connect run
  CHECK(listed[0].silenced_signals == 1);  // the eicar run (agent + kind)

  // Durable: a restart keeps the silences and their counts.
  f.engine = f.make();
  CHECK_FALSE(f.result("smb", "not_prevented", "tcp_connect", "10.0.0.5:445"));
  CHECK(f.engine->list_silences("all", 10)[1].silenced_signals == 2);
  CHECK(f.engine->list_silences("all", 10)[0].silenced_signals == 2);  // both match that run

  // Expired by a human, or past its end: failures open again.
  auto ex = f.engine->expire_silence(1, "bob");
  REQUIRE(ex);
  CHECK(ex->expired_by == "bob");
  CHECK(f.audit_count("silence_expired") == 1);
  CHECK_THROWS_AS(f.engine->expire_silence(1, "bob"), IncidentError);
  CHECK_FALSE(f.engine->expire_silence(99, "bob"));
  CHECK_FALSE(f.result("smb", "not_prevented", "tcp_connect", "10.0.0.5:445"));  // #2 still on
  f.now += kHour;  // #2 ends
  auto opened = f.result("smb", "not_prevented", "tcp_connect", "10.0.0.5:445");
  REQUIRE(opened);
  CHECK(opened->state == IncidentState::open);
  CHECK(f.engine->list_silences("active", 10).empty());
  CHECK(f.engine->list_silences("expired", 10).size() == 2);
}

TEST_CASE("silences are validated field by field and bounded") {
  Fixture f;
  auto bad = [&](SilenceRequest r, const std::string& field) {
    CAPTURE(field);
    try {
      f.engine->add_silence(r, "alice");
      FAIL("accepted a bad silence");
    } catch (const IncidentError& e) {
      CHECK(std::string(e.what()).find(field) != std::string::npos);
    }
  };
  SilenceRequest ok;
  ok.matchers.test_id = "t";
  ok.until = "2026-01-01T00:00:00Z";  // before kStart (2027)
  ok.reason = "r";
  bad(ok, "until must be in the future");
  ok.until = "soon";
  bad(ok, "until");
  ok.until = "";
  bad(ok, "until is required");
  ok.until = "7d";
  ok.reason = "  ";
  bad(ok, "reason is required");
  ok.reason = "r";
  SilenceRequest none = ok;
  none.matchers = {};
  bad(none, "at least one matcher");
  SilenceRequest kind = ok;
  kind.matchers.kind = "prevention";
  bad(kind, "kind 'prevention'");
  SilenceRequest label = ok;
  label.matchers.labels = {{"team", "x"}};
  bad(label, "labels: 'team'");
  SilenceRequest longtest = ok;
  longtest.matchers.test_id = std::string(kMaxSilenceId + 1, 'a');
  bad(longtest, "test is longer");
  SilenceRequest spaced = ok;
  spaced.matchers.agent_id = "agent 1";
  bad(spaced, "agent must be printable");
  for (std::size_t n = 0; n < kMaxActiveSilences; ++n) {
    ok.matchers.test_id = "t" + std::to_string(n);
    f.engine->add_silence(ok, "alice");
  }
  bad(ok, "1000 active silences");
  f.engine->expire_silence(1, "alice");
  CHECK_NOTHROW(f.engine->add_silence(ok, "alice"));
}

TEST_CASE("the incident list filters by agent, test and kind (facets included)") {
  Fixture f;
  f.result("eicar", "not_prevented", "eicar_drop", "", "tcn-1", "agent-1");
  f.result("eicar", "not_prevented", "eicar_drop", "", "tcn-2", "agent-2");
  f.result("smb", "not_prevented", "tcp_connect", "10.0.0.5:445", "tcn-3", "agent-1");
  f.detection("smb", "missed", "10.0.0.5:445", "tcn-3");
  IncidentFilter by_agent;
  by_agent.agent_id = "agent-1";
  CHECK(f.engine->list(by_agent, 10).size() == 2);
  IncidentFilter by_test;
  by_test.test_id = "eicar";
  CHECK(f.engine->list(by_test, 10).size() == 2);
  IncidentFilter by_kind;
  by_kind.kind = IncidentKind::detection_missed;
  auto missed = f.engine->list(by_kind, 10);
  REQUIRE(missed.size() == 1);
  CHECK(missed[0].test_id == "smb");
  by_kind.agent_id = "agent-2";
  CHECK(f.engine->list(by_kind, 10).empty());
}

// ---- review fixes (issue 18 section 3) ----------------------------------------------------

namespace {
std::string key_of(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}
// An incident as the engine stored it before facets: old per-kind key, no facets field.
void store_legacy(Store& store, std::uint64_t id, IncidentKind kind, std::int64_t now) {
  Incident old;
  old.id = id;
  old.key = legacy_dedup_key(kind, "eicar", "agent-1");
  old.kind = kind;
  old.severity = Severity::critical;
  old.state = IncidentState::open;
  old.title = kind_name(kind) + " eicar on agent-1";
  old.test_id = "eicar";
  old.agent_id = "agent-1";
  old.occurrences = 2;
  old.opened_ns = now;
  old.ack_sla = {15 * 60 * kSec, now, 0, 0, 0, 0};
  old.resolve_sla = {4 * kHour, now, 0, 0, 0, 0};
  auto stored = nlohmann::json::parse(encode_incident(old));
  for (const char* k : {"facets", "accepted_risk", "labels", "target", "escalated_to"}) stored.erase(k);
  WriteSet ws;
  ws.put(Table::incidents, key_of(id), stored.dump());
  ws.put(Table::incident_keys, old.key, key_of(id));
  store.commit(std::move(ws));
}
std::size_t count_what(const std::vector<IncidentEvent>& events, const std::string& what) {
  return static_cast<std::size_t>(std::count_if(
      events.begin(), events.end(), [&](const IncidentEvent& e) { return e.what == what; }));
}
}  // namespace

TEST_CASE("a late alert on a prevented run that only missed its alert neither resolves nor reopens") {
  Fixture f;
  CHECK_FALSE(f.result("eicar", "prevented"));  // prevented: nothing to open
  auto i = f.detection("eicar", "missed");
  REQUIRE(i);
  CHECK(i->facets == std::vector<std::string>{"detection_missed"});
  f.now += 60 * kSec;
  f.detection("eicar", "late");
  auto after = f.engine->get(i->id);
  CHECK(after->state == IncidentState::open);
  CHECK(after->facets == std::vector<std::string>{"detection_late"});
  CHECK(after->kind == IncidentKind::detection_late);
  CHECK(after->reopen_count == 0);
  CHECK(after->ack_sla.started_ns == kStart);  // the SLA was not restarted
  auto ev = f.events();
  CHECK(count_what(ev, "auto_resolved") == 0);  // no "resolved" page
  CHECK(count_what(ev, "reopened") == 0);       // and no second "opened" page
  CHECK(ev.back().what == "facet_cleared");
}

TEST_CASE("upgrading folds every old per-facet incident of a run into one and closes the rest") {
  Fixture f;
  store_legacy(*f.store, 5, IncidentKind::prevention_failed, f.now);
  store_legacy(*f.store, 6, IncidentKind::detection_missed, f.now);
  f.engine = f.make();
  f.now += kSec;
  auto i = f.result("eicar", "not_prevented");
  REQUIRE(i);
  CHECK(i->id == 5);
  CHECK(i->facets == std::vector<std::string>{"prevention_failed", "detection_missed"});
  CHECK(i->occurrences == 5);  // 2 + 2 + this run
  CHECK(i->key == dedup_key(IncidentKind::prevention_failed, "eicar", "agent-1"));
  auto merged = f.engine->get(6);
  REQUIRE(merged->state == IncidentState::closed);
  CHECK(merged->resolution == "merged into #5");
  CHECK(merged->timeline.back().what == "closed");
  for (auto k : {IncidentKind::prevention_failed, IncidentKind::detection_missed})
    CHECK_FALSE(f.store->get(Table::incident_keys, legacy_dedup_key(k, "eicar", "agent-1")));
  CHECK(f.engine->active().size() == 1);
  // #6 does not breach or linger: the merged incident resolves once both facets pass.
  f.now += 5 * kHour;
  f.engine->tick();
  CHECK_FALSE(f.engine->get(6)->ack_sla.breached_ns);
  f.result("eicar", "prevented", "eicar_drop", "", "tcn-m2");
  CHECK(f.engine->get(5)->facets == std::vector<std::string>{"detection_missed"});
  f.detection("eicar", "alerted", "", "tcn-m2");
  CHECK(f.engine->get(5)->state == IncidentState::resolved);
  CHECK(f.engine->active().empty());
}

TEST_CASE("a silence keeps an open incident from paging: no SLA breach, no escalation") {
  Fixture f;
  auto i = f.result("smb", "not_prevented");
  REQUIRE(i);
  SilenceRequest r;
  r.matchers.test_id = "smb";
  r.until = "2h";
  r.reason = "maintenance window";
  auto sil = f.engine->add_silence(r, "alice");
  f.now += 20 * 60 * kSec;  // past the critical acknowledge target (15m)
  auto tick = f.engine->tick();
  CHECK(tick.breaches == 0);
  auto got = f.engine->get(i->id);
  CHECK(got->ack_sla.breached_ns == f.now);  // once: no page either when the silence ends
  CHECK(got->timeline.back().what == "silenced");
  CHECK(got->timeline.back().detail ==
        "acknowledge SLA breached, not paged: silenced by #" + std::to_string(sil.id));
  CHECK(count_what(f.events(), "sla_breached") == 0);
  auto e = f.engine->escalate(i->id, "watchdog", "restart did not help");
  CHECK(e.timeline.back().what == "silenced");
  CHECK(count_what(f.events(), "escalated") == 0);
  // Without the silence it pages as before.
  f.engine->expire_silence(sil.id, "alice");
  f.engine->escalate(i->id, "watchdog", "restart did not help");
  CHECK(count_what(f.events(), "escalated") == 1);
  f.now += 4 * kHour;
  CHECK(f.engine->tick().breaches == 1);  // the resolve timer
}

TEST_CASE("a worse facet joining raises the SLA and pages, a facet clearing never undoes an escalation") {
  Fixture f;
  IncidentPolicy p;
  p.severity[IncidentKind::detection_missed] = Severity::medium;
  f.engine = std::make_unique<IncidentEngine>(*f.store, p, [&f] { return f.now; });
  auto apply = [&](const std::vector<Signal>& sigs) {
    for (const auto& s : sigs) f.engine->apply(s);
  };
  auto detection = [&](const std::string& test, const std::string& to) {
    apply(signals_from_detection({1, f.now, "tcn-m1", "agent-1", test, "pending", to, "", ""}, p));
  };
  auto result = [&](const std::string& test, const std::string& verdict) {
    tocsin::common::ResultBody b;
    b.test_id = test;
    b.probe = "eicar_drop";
    b.verdict = verdict;
    b.expect_prevent = true;
    b.marker = "tcn-m1";
    apply(signals_from_result(b, "agent-1", f.now, p));
  };
  SUBCASE("raise") {
    detection("eicar", "missed");
    auto i = f.engine->get(1);
    CHECK(i->severity == Severity::medium);
    CHECK(i->ack_sla.target_ns == 4 * kHour);
    f.now += 20 * 60 * kSec;
    result("eicar", "not_prevented");
    i = f.engine->get(1);
    CHECK(i->severity == Severity::critical);
    CHECK(i->ack_sla.target_ns == 15 * 60 * kSec);  // the critical target, from the opening
    CHECK(i->resolve_sla.target_ns == 4 * kHour);
    CHECK(f.events().back().what == "escalated");
    CHECK(f.events().back().severity == Severity::critical);
    CHECK(f.engine->tick().breaches == 1);  // 20 minutes open: over the critical 15
    // Lowered when the critical facet passes: back to the medium targets.
    result("eicar", "prevented");
    i = f.engine->get(1);
    CHECK(i->severity == Severity::medium);
    CHECK(i->resolve_sla.target_ns == 72 * kHour);
  }
  SUBCASE("an escalation is a floor") {
    detection("eicar", "missed");
    result("eicar", "not_prevented");
    f.engine->escalate(1, "watchdog", "restart did not help");
    result("eicar", "prevented");
    auto i = f.engine->get(1);
    CHECK(i->facets == std::vector<std::string>{"detection_missed"});
    CHECK(i->severity == Severity::critical);
    f.engine = std::make_unique<IncidentEngine>(*f.store, p, [&f] { return f.now; });
    CHECK(f.engine->get(1)->escalated_to == Severity::critical);  // stored
  }
}

TEST_CASE("a human reopening an auto-resolved incident gives it its facet back, so a pass resolves it") {
  Fixture f;
  auto i = f.result("smb", "not_prevented");
  f.result("smb", "prevented");
  CHECK(f.engine->get(i->id)->facets.empty());
  auto r = f.engine->reopen(i->id, "bob", "I do not trust that pass");
  CHECK(r.facets == std::vector<std::string>{"prevention_failed"});
  f.result("smb", "prevented");
  CHECK(f.engine->get(i->id)->state == IncidentState::resolved);
}

TEST_CASE("a silenced silent agent is counted once per episode, not on every poll") {
  Fixture f;
  SilenceRequest r;
  r.matchers.agent_id = "agent-1";
  r.until = "7d";
  r.reason = "agent-1 is being rebuilt";
  f.engine->add_silence(r, "alice");
  AgentRecord a;
  a.agent_id = "agent-1";
  a.last_seen_ns = f.now;
  f.now += 2 * kHour;
  for (int poll = 0; poll < 5; ++poll, f.now += 5 * kSec) f.engine->watch_silence({a});
  CHECK(f.engine->get_silence(1)->silenced_signals == 1);
  CHECK(f.events().empty());
  a.last_seen_ns = f.now;  // heard from: the episode ends
  f.engine->watch_silence({a});
  f.now += 2 * kHour;
  for (int poll = 0; poll < 3; ++poll, f.now += 5 * kSec) f.engine->watch_silence({a});
  CHECK(f.engine->get_silence(1)->silenced_signals == 2);
  CHECK(f.engine->list({}, 10).empty());
}

TEST_CASE("a silence on an agent does not hide that agent's security events unless it names the kind") {
  Fixture f;
  SilenceRequest r;
  r.matchers.agent_id = "agent-1";
  r.until = "2h";
  r.reason = "noisy agent";
  f.engine->add_silence(r, "alice");
  SecurityEvent forged{f.now, "forged_signature", "agent-1", "10.0.0.5:4444", "bad signature"};
  auto i = f.engine->apply(signal_from_security_event(forged, IncidentPolicy{}));
  REQUIRE(i);
  CHECK(i->state == IncidentState::open);
  CHECK(f.engine->silenced_by(*i).empty());
  r.matchers.kind = "security_event";
  r.reason = "pen test on agent-1";
  auto named = f.engine->add_silence(r, "alice");
  forged.time_ns += kSec;
  auto again = f.engine->apply(signal_from_security_event(forged, IncidentPolicy{}));
  CHECK(again->timeline.back().what == "silenced");
  CHECK(f.engine->silenced_by(*again) == std::vector<std::string>{std::to_string(named.id)});
}

TEST_CASE("silences: until is capped at 90 days, one is read by id, ended ones are pruned after 30 days") {
  Fixture f;
  SilenceRequest r;
  r.matchers.test_id = "t";
  r.reason = "r";
  for (std::string until : {"91d", "99999999999d", "2200-01-01T00:00:00Z"}) {
    CAPTURE(until);
    r.until = until;
    try {
      f.engine->add_silence(r, "alice");
      FAIL("accepted a silence past 90 days");
    } catch (const IncidentError& e) {
      CHECK(std::string(e.what()).rfind("until: ", 0) == 0);
    }
  }
  r.until = "90d";
  auto s = f.engine->add_silence(r, "alice");
  CHECK(s.until_ns == kStart + 90 * 24 * kHour);
  r.until = "1h";
  auto short_one = f.engine->add_silence(r, "alice");
  CHECK(f.engine->get_silence(short_one.id)->reason == "r");
  CHECK_FALSE(f.engine->get_silence(99));
  f.now += 29 * 24 * kHour;
  f.engine->tick();
  CHECK(f.engine->get_silence(short_one.id));  // ended, kept for the record
  f.now += 2 * 24 * kHour;
  f.engine->tick();
  CHECK_FALSE(f.engine->get_silence(short_one.id));  // ended over 30 days ago
  CHECK(f.engine->get_silence(s.id));                // still active
  CHECK(f.engine->list_silences("all", 10).size() == 1);
}

TEST_CASE("the first start after the upgrade does not re-raise the security events of the last minute") {
  Fixture f;
  // As the older collector left it: the cursor after its last event, no memory of it.
  auto processed = kStart - 30 * kSec;
  f.engine->set_cursors({{"initialised", 1}, {"security_events", processed + 1}});
  WriteSet ws;
  ws.put_security_event({processed, "forged_signature", "agent-1", "", "bad signature"});
  f.store->commit(std::move(ws));
  IncidentFeed feed(*f.engine, *f.store);
  CHECK(feed.poll_once() == 0);
  CHECK(f.engine->list({}, 10).empty());
  // From then on the margin is re-read: an event committed after a later one still counts.
  WriteSet later;
  later.put_security_event({kStart + 10 * kSec, "replay", "agent-1", "", "seq 3 again"});
  f.store->commit(std::move(later));
  CHECK(feed.poll_once() == 1);
  WriteSet lander;
  lander.put_security_event({kStart + 5 * kSec, "fork", "agent-1", "", "forked chain"});
  f.store->commit(std::move(lander));
  CHECK(feed.poll_once() == 1);
}

TEST_CASE("a resolved or closed incident keeps no facets, so ?kind= matches only what fails") {
  Fixture f;
  auto i = f.result("smb", "not_prevented");
  f.detection("smb", "missed");
  IncidentFilter missed;
  missed.kind = IncidentKind::detection_missed;
  CHECK(f.engine->list(missed, 10).size() == 1);
  f.engine->resolve(i->id, "bob", "fixed the firewall rule");
  CHECK(f.engine->get(i->id)->facets.empty());
  CHECK(f.engine->list(missed, 10).empty());
  auto j = f.result("dns", "not_prevented");
  f.detection("dns", "missed");
  f.engine->close(j->id, "bob", "test retired");
  CHECK(f.engine->list(missed, 10).empty());
}
