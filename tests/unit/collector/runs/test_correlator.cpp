// The correlator against a real RocksDB store: exact and fuzzy matches, alerts before their
// run, duplicates, SLA and grace deadlines, late reclassification, restart, the report.
#include <doctest/doctest.h>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "collector/runs/correlator_detail.hpp"
#include "collector/runs/report.hpp"
#include "common/clock.hpp"
#include "common/wire.hpp"
#include "tests/unit/collector/runs/correlator_fixture.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::common::now_ns;
using tocsin::test::TempDir;
using namespace tocsin::test;


TEST_CASE("a run is built from a result with its action time corrected by the agent's offset") {
  tocsin::common::ResultRecord rec;
  rec.agent_id = "agent-1";
  rec.seq = 7;
  tocsin::common::ResultBody body;
  body.marker = "tcn-abcdefghij";
  body.test_id = "t";
  body.verdict = "not_prevented";
  body.alert_within_ns = 60 * kSec;
  body.started_ns = 1000 * kSec;
  body.clock_offset_ns = -30 * kSec;
  body.clock_error_ns = 400'000;
  AgentRecord agent;
  agent.hostname = "web01";
  CorrelationConfig cfg;

  SUBCASE("synchronised agent") {
    auto r = run_from_result(rec, body, agent, 5, cfg);
    REQUIRE(r);
    CHECK(r->action_ns == 970 * kSec);
    CHECK(r->action_error_ns == 400'000);
    CHECK(r->clock_synced);
    CHECK(r->state == DetectionState::pending);
    CHECK(r->hostname == "web01");
  }
  SUBCASE("a run before the first clock exchange borrows the agent's latest offset, widened") {
    body.clock_error_ns = -1;
    agent.clock_offset_ns = 5 * kSec;
    agent.clock_error_ns = 1000;
    auto r = run_from_result(rec, body, agent, 1100 * kSec, cfg);
    REQUIRE(r);
    CHECK_FALSE(r->clock_synced);
    CHECK(r->action_ns == 1005 * kSec);
    CHECK(r->action_error_ns == 1000 + 100 * kSec / 1'000'000 * 100);  // 100 s at 100 ppm
  }
  SUBCASE("with no offset known at all, the bound is unknown rather than invented") {
    body.clock_error_ns = -1;
    auto r = run_from_result(rec, body, agent, 5, cfg);
    REQUIRE(r);
    CHECK_FALSE(r->clock_synced);
    CHECK(r->action_error_ns == -1);
  }
  SUBCASE("an action that did not happen expects no alert") {
    for (const char* v : {"inconclusive", "error", "not_applicable"}) {
      body.verdict = v;
      CHECK(run_from_result(rec, body, agent, 5, cfg)->state == DetectionState::not_expected);
    }
  }
  SUBCASE("no alert_within: no alert expected") {
    body.alert_within_ns = 0;
    CHECK(run_from_result(rec, body, agent, 5, cfg)->state == DetectionState::not_expected);
  }
  SUBCASE("results without a marker are not runs") {
    body.marker.clear();
    CHECK_FALSE(run_from_result(rec, body, agent, 5, cfg));
    body.marker = "tcn-abcdefghij";
    body.kind = "outbox_overflow";
    CHECK_FALSE(run_from_result(rec, body, agent, 5, cfg));
  }
}

TEST_CASE("an alert carrying the exact marker makes the run alerted, with its latency") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-aaaaaaaaaa", t0, 3600 * kSec));
  auto out = fx.submit({make_alert("url=/x/tcn-aaaaaaaaaa/eicar.com", t0 + 3 * kSec)});
  CHECK(out.accepted == 1);
  CHECK(out.matched == 1);
  auto r = fx.run("tcn-aaaaaaaaaa");
  CHECK(r.state == DetectionState::alerted);
  CHECK(r.time_to_alert_ns == 3 * kSec);
  CHECK(r.confidence == 1.0);
  CHECK(r.match_reason.find("exact marker") != std::string::npos);
  CHECK_FALSE(r.clock_anomaly);
  CHECK(fx.wait_event("tcn-aaaaaaaaaa", "alerted"));
  CHECK(fx.correlator->pending_runs() == 0);
  // The stored event carries the latency the incident feed's baseline needs.
  auto events = list_detection_events(*fx.store, 1, 100);
  REQUIRE(events.size() == 1);
  CHECK(events[0].to == "alerted");
  CHECK(events[0].has_latency);
  CHECK(events[0].time_to_alert_ns == 3 * kSec);
  CHECK(events[0].action_ns == r.action_ns);
  CHECK_FALSE(events[0].clock_anomaly);

  SUBCASE("the same alert again is a duplicate and changes nothing") {
    auto again = fx.submit({make_alert("url=/x/tcn-aaaaaaaaaa/eicar.com", t0 + 3 * kSec)});
    CHECK(again.duplicates == 1);
    CHECK(again.accepted == 0);
    CHECK(fx.run("tcn-aaaaaaaaaa").alert_count == 1);
  }
  SUBCASE("a second, different alert is counted but does not change the verdict") {
    fx.submit({make_alert("tcn-aaaaaaaaaa second rule", t0 + 9 * kSec)});
    auto r2 = fx.run("tcn-aaaaaaaaaa");
    CHECK(r2.alert_count == 2);
    CHECK(r2.time_to_alert_ns == 3 * kSec);
  }
}

TEST_CASE("an alert after the SLA makes the run late, a negative latency is a clock anomaly") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-bbbbbbbbbb", t0, 3600 * kSec));
  fx.add_run(make_run("tcn-cccccccccc", t0 + 10 * kSec, 3600 * kSec));
  fx.submit({make_alert("tcn-bbbbbbbbbb", t0 + 3700 * kSec)});
  fx.submit({make_alert("tcn-cccccccccc", t0 + 9 * kSec)});
  auto late = fx.run("tcn-bbbbbbbbbb");
  CHECK(late.state == DetectionState::late);
  auto anomaly = fx.run("tcn-cccccccccc");
  CHECK(anomaly.state == DetectionState::alerted);
  CHECK(anomaly.clock_anomaly);
  CHECK(anomaly.time_to_alert_ns == -kSec);  // flagged, not clamped
}

TEST_CASE("an alert that arrives before its run waits for it and then matches") {
  Fixture fx;
  auto t0 = now_ns();
  auto out = fx.submit({make_alert("cmd=powershell -enc tcn-dddddddddd", t0 + 2 * kSec)});
  CHECK(out.accepted == 1);
  CHECK(out.matched == 0);
  fx.add_run(make_run("tcn-dddddddddd", t0, 3600 * kSec));
  CHECK(fx.wait_event("tcn-dddddddddd", "alerted"));
  auto r = fx.run("tcn-dddddddddd");
  CHECK(r.time_to_alert_ns == 2 * kSec);
  CHECK(r.match_reason.find("before the run") != std::string::npos);

  SUBCASE("a waiting alert survives a restart") {
    fx.submit({make_alert("tcn-eeeeeeeeee", t0 + kSec)});
    fx.close();
    fx.open();
    fx.add_run(make_run("tcn-eeeeeeeeee", t0, 3600 * kSec));
    CHECK(fx.wait_event("tcn-eeeeeeeeee", "alerted"));
  }
}

TEST_CASE(
    "without a marker, same host and technique inside the window match with less confidence") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-ffffffffff", t0, 3600 * kSec));
  auto a = make_alert("AV quarantine on web01", t0 + 4 * kSec);
  a.host = "WEB01.corp.example";
  a.technique = "T1105";
  a.event_ns = t0 + kSec;

  SUBCASE("matching host and technique") {
    CHECK(fx.submit({a}).matched == 1);
    auto r = fx.run("tcn-ffffffffff");
    CHECK(r.state == DetectionState::alerted);
    CHECK(r.confidence == doctest::Approx(0.6));
    CHECK(r.match_reason.find("same host") != std::string::npos);
  }
  SUBCASE("another host does not match") {
    a.host = "db01";
    CHECK(fx.submit({a}).matched == 0);
    CHECK(fx.run("tcn-ffffffffff").state == DetectionState::pending);
  }
  SUBCASE("an alert long before the action does not match") {
    a.event_ns = t0 - 60 * kSec;
    CHECK(fx.submit({a}).matched == 0);
  }
  SUBCASE("an alert far outside the window does not match") {
    a.event_ns = t0 + 3 * 3600 * kSec;
    CHECK(fx.submit({a}).matched == 0);
  }
}

TEST_CASE(
    "no alert by the SLA: overdue, then missed at the grace deadline, a late alert reclassifies") {
  CorrelationConfig cfg;
  cfg.grace = 1s;
  Fixture fx(cfg);
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-gggggggggg", t0 - 2 * kSec, kSec / 2));  // SLA already passed
  CHECK(fx.wait_event("tcn-gggggggggg", "overdue"));
  CHECK(fx.wait_event("tcn-gggggggggg", "missed"));
  CHECK(fx.run("tcn-gggggggggg").state == DetectionState::missed);

  fx.submit({make_alert("tcn-gggggggggg", now_ns())});
  CHECK(fx.wait_event("tcn-gggggggggg", "late"));
  CHECK(fx.run("tcn-gggggggggg").state == DetectionState::late);

  auto events = list_detection_events(*fx.store, 1, 100);
  REQUIRE(events.size() == 3);
  CHECK(events[0].to == "overdue");
  CHECK(events[1].to == "missed");
  CHECK(events[2].from == "missed");
  CHECK(events[2].to == "late");
  CHECK(events[0].seq + 1 == events[1].seq);
}

TEST_CASE("an event without an alert by the grace deadline makes the run logged") {
  CorrelationConfig cfg;
  cfg.grace = 0s;
  Fixture fx(cfg);
  auto t0 = now_ns();
  auto ev = make_alert("GET /tcn-hhhhhhhhhh HTTP/1.1", t0);
  ev.is_event = true;
  fx.submit({ev});
  fx.add_run(make_run("tcn-hhhhhhhhhh", t0 - 5 * kSec, kSec));
  CHECK(fx.wait_event("tcn-hhhhhhhhhh", "logged"));
  auto r = fx.run("tcn-hhhhhhhhhh");
  CHECK(r.state == DetectionState::logged);
  CHECK_FALSE(r.logged_key.empty());
}

TEST_CASE("pending runs and their deadlines survive a restart") {
  CorrelationConfig cfg;
  cfg.grace = 0s;
  Fixture fx(cfg);
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-iiiiiiiiii", t0, 2 * kSec));
  fx.correlator->drain();
  CHECK(fx.correlator->pending_runs() == 1);
  fx.close();
  fx.open();
  CHECK(fx.correlator->pending_runs() == 1);
  CHECK(fx.wait_event("tcn-iiiiiiiiii", "missed"));
}

TEST_CASE("the latency report counts states, coverage and percentiles per group") {
  std::vector<Run> runs;
  for (int i = 0; i < 10; ++i) {
    auto r = make_run("tcn-" + std::to_string(1000000000 + i), 0, 60 * kSec);
    r.state = i < 7   ? DetectionState::alerted
              : i < 8 ? DetectionState::late
              : i < 9 ? DetectionState::missed
                      : DetectionState::pending;
    if (i < 8) {
      r.alert_key = "k" + std::to_string(i);
      r.time_to_alert_ns = (i + 1) * kSec;
      r.ingest_ns = kSec / 2;
      r.created_ns = kSec / 2 + kSec / 4;
      r.arrival_ns = r.time_to_alert_ns;
    }
    runs.push_back(r);
  }
  auto other = make_run("tcn-9999999999", 0, 0);  // expects no alert: left out
  runs.push_back(other);
  auto rows = latency_report(runs, GroupBy::test);
  REQUIRE(rows.size() == 1);
  const auto& row = rows[0];
  CHECK(row.runs == 10);
  CHECK(row.alerted == 7);
  CHECK(row.late == 1);
  CHECK(row.missed == 1);
  CHECK(row.pending == 1);
  CHECK(row.coverage_pct == doctest::Approx(100.0 * 8 / 9));
  CHECK(row.time_to_alert.count == 8);
  CHECK(row.time_to_alert.p50 == 4 * kSec);
  CHECK(row.time_to_alert.max == 8 * kSec);
  CHECK(row.pipeline_lag.p50 == kSec / 2);
  CHECK(row.rule_latency.p50 == kSec / 4);
  CHECK(percentiles({5, 1, 3}).p50 == 3);
  CHECK(percentiles({}).count == 0);
}

TEST_CASE("an alert for a run stored but not yet announced first matches the alerts that waited") {
  Fixture fx;
  auto t0 = now_ns();
  fx.submit({make_alert("early tcn-jjjjjjjjjj", t0 + kSec)});
  auto r = make_run("tcn-jjjjjjjjjj", t0, 3600 * kSec);
  WriteSet ws;  // stored by the ingest, its notification still on the way
  put_run(ws, r);
  fx.store->commit(std::move(ws));
  fx.submit({make_alert("later tcn-jjjjjjjjjj", t0 + 5 * kSec)});
  fx.correlator->runs_stored({r});  // arrives late: must not re-track or re-match
  auto got = fx.run("tcn-jjjjjjjjjj");
  CHECK(got.state == DetectionState::alerted);
  CHECK(got.time_to_alert_ns == kSec);  // the earlier alert decided
  CHECK(got.alert_count == 2);
  CHECK(fx.correlator->pending_runs() == 0);
}

TEST_CASE("a long alert that waited for its run across a restart still matches it once") {
  Fixture fx;
  auto t0 = now_ns();
  std::string text(5000, 'x');
  text += " tcn-kkkkkkkkkk";  // beyond the stored copy of the text
  fx.submit({make_alert(text, t0 + 2 * kSec)});
  fx.close();
  fx.open();
  fx.add_run(make_run("tcn-kkkkkkkkkk", t0, 3600 * kSec));
  CHECK(fx.wait_event("tcn-kkkkkkkkkk", "alerted"));
  auto r = fx.run("tcn-kkkkkkkkkk");
  CHECK(r.time_to_alert_ns == 2 * kSec);
  CHECK(r.alert_count == 1);
  CHECK(fx.store->get(Table::alerts, r.alert_key).has_value());
  std::size_t waiting = 0;
  fx.store->scan(Table::orphan_alerts, "", [&](std::string_view, std::string_view) {
    ++waiting;
    return true;
  });
  CHECK(waiting == 0);
}

TEST_CASE("an alert stored as JSON by an older version still waits for its run across a restart") {
  Fixture fx;
  fx.close();
  auto t0 = now_ns();
  {
    auto store = Store::open(fx.dir / "db");
    WriteSet ws;
    ws.put(Table::alerts, "legacy-key",
           nlohmann::json{{"source", "siem"},
                          {"source_type", "generic"},
                          {"id", ""},
                          {"is_event", false},
                          {"host", "web01"},
                          {"rule", "old rule"},
                          {"technique", ""},
                          {"severity", "high"},
                          {"text", "old tcn-llllllllll"},
                          {"event_ns", 0},
                          {"ingest_ns", 0},
                          {"created_ns", 0},
                          {"arrival_ns", t0 + 2 * kSec},
                          {"markers", nlohmann::json::array({"tcn-llllllllll"})},
                          {"marker", ""},
                          {"reason", "waiting for run tcn-llllllllll"},
                          {"confidence", 0}}
               .dump());
    ws.put(Table::orphan_alerts, std::string("tcn-llllllllll") + '\0' + "legacy-key", "");
    store->commit(std::move(ws));
  }
  fx.open();
  fx.add_run(make_run("tcn-llllllllll", t0, 3600 * kSec));
  CHECK(fx.wait_event("tcn-llllllllll", "alerted"));
  auto r = fx.run("tcn-llllllllll");
  CHECK(r.alert_key == "legacy-key");
  CHECK(r.alert_rule == "old rule");
  CHECK(r.time_to_alert_ns == 2 * kSec);
}

TEST_CASE("run records round-trip every field, JSON records of older databases still decode") {
  Run r;
  r.marker = "tcn-abcdefghij";
  r.agent_id = "agent-1";
  r.seq = 42;
  r.hostname = "web01";
  r.test_id = "eicar";
  r.probe = "eicar_drop";
  r.technique = "T1105";
  r.verdict = "prevented";
  r.reason = "removed";
  r.target = "/var/tmp";
  r.detections = {"AV quarantine", "EDR"};
  r.alert_within_ns = 900'000'000'000;
  r.agent_started_ns = 1'700'000'000'000'000'000;
  r.clock_offset_ns = -1234;
  r.action_ns = r.agent_started_ns - 1234;
  r.action_error_ns = 5678;
  r.clock_synced = false;
  r.received_ns = r.action_ns + 10;
  r.state = DetectionState::late;
  r.overdue = true;
  r.state_changed_ns = 99;
  r.alert_key = "hec:1";
  r.alert_source = "hec";
  r.alert_rule = "rule";
  r.match_reason = "marker";
  r.confidence = 0.7;
  r.event_ns = 1;
  r.ingest_ns = 2;
  r.created_ns = 3;
  r.arrival_ns = 4;
  r.time_to_alert_ns = -5;
  r.clock_anomaly = true;
  r.alert_count = 3;
  r.logged_key = "lk";
  r.logged_source = "ls";
  r.logged_event_ns = 6;
  r.logged_ingest_ns = 7;
  r.logged_arrival_ns = 8;
  auto check_same = [&](const Run& d) {
    CHECK(d.marker == r.marker);
    CHECK(d.agent_id == r.agent_id);
    CHECK(d.seq == r.seq);
    CHECK(d.hostname == r.hostname);
    CHECK(d.test_id == r.test_id);
    CHECK(d.probe == r.probe);
    CHECK(d.technique == r.technique);
    CHECK(d.verdict == r.verdict);
    CHECK(d.reason == r.reason);
    CHECK(d.target == r.target);
    CHECK(d.detections == r.detections);
    CHECK(d.alert_within_ns == r.alert_within_ns);
    CHECK(d.agent_started_ns == r.agent_started_ns);
    CHECK(d.clock_offset_ns == r.clock_offset_ns);
    CHECK(d.action_ns == r.action_ns);
    CHECK(d.action_error_ns == r.action_error_ns);
    CHECK(d.clock_synced == r.clock_synced);
    CHECK(d.received_ns == r.received_ns);
    CHECK(d.state == r.state);
    CHECK(d.overdue == r.overdue);
    CHECK(d.state_changed_ns == r.state_changed_ns);
    CHECK(d.alert_key == r.alert_key);
    CHECK(d.alert_source == r.alert_source);
    CHECK(d.alert_rule == r.alert_rule);
    CHECK(d.match_reason == r.match_reason);
    CHECK(d.confidence == doctest::Approx(r.confidence));
    CHECK(d.event_ns == r.event_ns);
    CHECK(d.ingest_ns == r.ingest_ns);
    CHECK(d.created_ns == r.created_ns);
    CHECK(d.arrival_ns == r.arrival_ns);
    CHECK(d.time_to_alert_ns == r.time_to_alert_ns);
    CHECK(d.clock_anomaly == r.clock_anomaly);
    CHECK(d.alert_count == r.alert_count);
    CHECK(d.logged_key == r.logged_key);
    CHECK(d.logged_source == r.logged_source);
    CHECK(d.logged_event_ns == r.logged_event_ns);
    CHECK(d.logged_ingest_ns == r.logged_ingest_ns);
    CHECK(d.logged_arrival_ns == r.logged_arrival_ns);
  };
  auto bytes = encode_run(r);
  CHECK(bytes.size() < 300);
  check_same(decode_run(bytes));

  // The format before msgpack: a JSON object with named fields.
  auto old = R"({"marker":"tcn-abcdefghij","agent_id":"agent-1","seq":42,"hostname":"web01",
    "test_id":"eicar","probe":"eicar_drop","technique":"T1105","verdict":"prevented",
    "reason":"removed","target":"/var/tmp","detections":["AV quarantine","EDR"],
    "alert_within_ns":900000000000,"agent_started_ns":1700000000000000000,
    "clock_offset_ns":-1234,"action_ns":1699999999999998766,"action_error_ns":5678,
    "clock_synced":false,"received_ns":1699999999999998776,"state":"late","overdue":true,
    "state_changed_ns":99,"alert_key":"hec:1","alert_source":"hec","alert_rule":"rule",
    "match_reason":"marker","confidence":0.7,"event_ns":1,"ingest_ns":2,"created_ns":3,
    "arrival_ns":4,"time_to_alert_ns":-5,"clock_anomaly":true,"alert_count":3,
    "logged_key":"lk","logged_source":"ls","logged_event_ns":6,"logged_ingest_ns":7,
    "logged_arrival_ns":8})";
  check_same(decode_run(old));

  // Damage is an error that says so, never a half-filled run.
  CHECK_THROWS_AS(decode_run(bytes.substr(0, bytes.size() / 2)), StoreError);
  CHECK_THROWS_AS(decode_run("\x93\x01\x02\x03"), StoreError);
  CHECK_THROWS_AS(decode_run("{not json"), StoreError);
  auto wrong_type = bytes;
  REQUIRE(static_cast<unsigned char>(wrong_type[4]) == 0xa0 + r.marker.size());  // fixstr
  wrong_type[4] = '\xc3';  // the marker's header replaced by `true`
  CHECK_THROWS_AS(decode_run(wrong_type), StoreError);
}

TEST_CASE("an alert carrying several runs' markers matches each run, each with its own latency") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-mmmmmmmmm1", t0, 3600 * kSec));
  fx.add_run(make_run("tcn-mmmmmmmmm2", t0 + 5 * kSec, 3600 * kSec));

  SUBCASE("both runs are here") {
    auto out = fx.submit({make_alert(
        "scenario=http-probing\nreq=/tcn-mmmmmmmmm1\nreq=/tcn-mmmmmmmmm2", t0 + 10 * kSec)});
    CHECK(out.matched == 1);  // one alert, counted once
    auto r1 = fx.run("tcn-mmmmmmmmm1");
    auto r2 = fx.run("tcn-mmmmmmmmm2");
    CHECK(r1.state == DetectionState::alerted);
    CHECK(r1.time_to_alert_ns == 10 * kSec);
    CHECK(r2.state == DetectionState::alerted);
    CHECK(r2.time_to_alert_ns == 5 * kSec);
    CHECK(r1.alert_key == r2.alert_key);
    CHECK(fx.wait_event("tcn-mmmmmmmmm2", "alerted"));
    CHECK(fx.correlator->pending_runs() == 0);
  }
  SUBCASE("a run whose result comes later is matched when it comes") {
    fx.submit({make_alert("tcn-mmmmmmmmm1 tcn-mmmmmmmmm3", t0 + 10 * kSec)});
    CHECK(fx.run("tcn-mmmmmmmmm1").state == DetectionState::alerted);
    fx.add_run(make_run("tcn-mmmmmmmmm3", t0 + 4 * kSec, 3600 * kSec));
    CHECK(fx.wait_event("tcn-mmmmmmmmm3", "alerted"));
    CHECK(fx.run("tcn-mmmmmmmmm3").time_to_alert_ns == 6 * kSec);
    auto counters = fx.correlator->counters();
    REQUIRE(counters.size() == 1);
    CHECK(counters[0].matched == 1);
  }
  SUBCASE("beyond the cap, markers are counted and ignored") {
    std::string text = "tcn-mmmmmmmmm1";
    for (int i = 0; i < static_cast<int>(kMaxRunsPerAlert) + 3; ++i)
      text += " tcn-" + std::to_string(5000000000LL + i);
    fx.submit({make_alert(text, t0 + 10 * kSec)});
    CHECK(fx.run("tcn-mmmmmmmmm1").state == DetectionState::alerted);
    auto counters = fx.correlator->counters();
    REQUIRE(counters.size() == 1);
    CHECK(counters[0].markers_over_cap == 4);
  }
}

TEST_CASE("a negative time to alert within the error bound is not a clock anomaly") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-bound00001", t0, 3600 * kSec));  // bound 2 ms
  fx.add_run(make_run("tcn-bound00002", t0, 3600 * kSec));
  fx.submit({make_alert("tcn-bound00001", t0 - kSec / 1000)});
  fx.submit({make_alert("tcn-bound00002", t0 - kSec / 100)});
  auto within = fx.run("tcn-bound00001");
  CHECK(within.time_to_alert_ns == -kSec / 1000);  // kept as measured
  CHECK_FALSE(within.clock_anomaly);
  CHECK(fx.run("tcn-bound00002").clock_anomaly);
}

TEST_CASE("an alert from the agent's source address matches by address and technique, less sure") {
  Fixture fx;
  WriteSet ws;
  AgentRecord agent;
  agent.agent_id = "agent-1";
  agent.hostname = "web01";
  agent.last_address = "::ffff:10.1.2.3";  // as a dual-stack listener reports it
  ws.put_agent(agent);
  fx.store->commit(std::move(ws));
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-address001", t0, 3600 * kSec));
  auto a = make_alert("scenario=http-probing source.ip=10.1.2.3", t0 + 4 * kSec);
  a.host = "crowdsec-lapi";
  a.technique = "T1105";
  a.event_ns = t0 + kSec;
  SUBCASE("the agent's address") {
    a.source_addresses = {"10.1.2.3"};
    CHECK(fx.submit({a}).matched == 1);
    auto r = fx.run("tcn-address001");
    CHECK(r.state == DetectionState::alerted);
    CHECK(r.confidence == doctest::Approx(0.4));
    CHECK(r.match_reason.find("source address") != std::string::npos);
  }
  SUBCASE("another address") {
    a.source_addresses = {"10.1.2.4", "not an address"};
    CHECK(fx.submit({a}).matched == 0);
  }
}

TEST_CASE("a technique or rule from a source cannot forge the kind of a fuzzy key") {
  using tocsin::collector::detail::runs::fuzzy_keys;
  using tocsin::collector::detail::runs::FuzzyKind;
  // Before, both were the same string "a\0r:b\0t:c", and the kind was read from its bytes.
  auto rule = fuzzy_keys("a", {}, "", {std::string("b\0t:c", 5)});
  auto tech = fuzzy_keys(std::string("a\0r:b", 5), {}, "c", {});
  REQUIRE(rule.size() == 1);
  REQUIRE(tech.size() == 1);
  CHECK(rule[0].key != tech[0].key);
  CHECK(rule[0].kind == FuzzyKind::host_rule);
  CHECK(tech[0].kind == FuzzyKind::host_technique);

  Fixture fx;
  auto t0 = now_ns();
  auto run = make_run("tcn-spoof00001", t0, 3600 * kSec);
  run.technique = std::string("T1105\0r:x", 9);
  fx.add_run(run);
  auto a = make_alert("AV quarantine", t0 + 2 * kSec);
  a.host = "web01";
  a.technique = run.technique;  // control bytes from a source are neutralised
  CHECK(fx.submit({a}).matched == 0);
  CHECK(fx.run("tcn-spoof00001").state == DetectionState::pending);
}

TEST_CASE(
    "runs with more detections than stored decode, and a damaged run does not stop correlation") {
  auto r = make_run("tcn-detect0001", 1, kSec);
  for (int i = 0; i < 100; ++i) r.detections.push_back("rule " + std::to_string(i));
  auto d = decode_run(encode_run(r));
  CHECK(d.detections.size() == kMaxRunDetections);
  CHECK(d.detections.back() == "rule " + std::to_string(kMaxRunDetections - 1));

  tocsin::common::ResultRecord rec;
  rec.agent_id = "agent-1";
  tocsin::common::ResultBody body;
  body.marker = "tcn-detect0002";
  body.verdict = "prevented";
  body.detections.assign(8192, "x");
  body.clock_stepped = true;
  auto built = run_from_result(rec, body, AgentRecord{}, 5, CorrelationConfig{});
  REQUIRE(built);
  CHECK(built->detections.size() == kMaxRunDetections);
  CHECK(built->clock_stepped);

  Fixture fx;
  auto t0 = now_ns();
  WriteSet ws;
  ws.put(Table::runs, "tcn-corruptrun", "\x93\x01\x02\x03");
  fx.store->commit(std::move(ws));
  fx.add_run(make_run("tcn-goodrun001", t0, 3600 * kSec));
  CHECK(fx.submit({make_alert("tcn-corruptrun tcn-goodrun001", t0 + kSec)}).matched == 1);
  CHECK(fx.wait_event("tcn-goodrun001", "alerted"));
  fx.submit({make_alert("tcn-corruptrun alone", t0 + kSec)});
  fx.add_run(make_run("tcn-goodrun002", t0, 3600 * kSec));  // the thread still runs
  CHECK(fx.submit({make_alert("tcn-goodrun002", t0 + kSec)}).matched == 1);
}

TEST_CASE("the latency report leaves clock anomalies and held runs out of the percentiles") {
  constexpr std::int64_t kBase = 1795860000LL * kSec;
  std::vector<Run> runs;
  for (int i = 0; i < 5; ++i) {
    auto r = make_run("tcn-" + std::to_string(2000000000 + i), kBase, 60 * kSec);
    r.state = DetectionState::alerted;
    r.alert_key = "k" + std::to_string(i);
    r.time_to_alert_ns = (i + 1) * kSec;
    r.arrival_ns = kBase + r.time_to_alert_ns;
    // CrowdSec: created_at in whole seconds, a little "before" the (finer) ingest time.
    r.created_ns = kBase + kSec;
    r.ingest_ns = kBase + kSec + 115'600'000;
    runs.push_back(r);
  }
  runs[3].time_to_alert_ns = -10 * kSec;
  runs[3].clock_anomaly = true;
  runs[4].state = DetectionState::pending;
  runs[4].clock_synced = false;  // alert held until the agent's offset is known
  runs[2].clock_stepped = true;
  auto rows = latency_report(runs, GroupBy::test);
  REQUIRE(rows.size() == 1);
  const auto& row = rows[0];
  CHECK(row.time_to_alert.count == 3);
  CHECK(row.time_to_alert.p50 == 2 * kSec);
  CHECK(row.time_to_alert.max == 3 * kSec);
  CHECK(row.clock_anomalies == 1);
  CHECK(row.clock_held == 1);
  CHECK(row.clock_stepped == 1);
  CHECK(row.pipeline_lag.count == 3);
  CHECK(row.rule_latency.count == 5);  // the SIEM's own interval needs no agent clock
  CHECK(row.rule_latency.p50 == -115'600'000);
  CHECK(row.rule_latency.resolution_ns == kSec);
}

TEST_CASE("an alert naming a matched run and a waiting one keeps both in its record") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(make_run("tcn-multi00001", t0, 3600 * kSec));
  auto a = make_alert("tcn-multi00001 and tcn-multi00002", t0 + 2 * kSec, "both");
  CHECK(fx.submit({a}).matched == 1);
  fx.add_run(make_run("tcn-multi00002", t0, 3600 * kSec));
  CHECK(fx.wait_event("tcn-multi00002", "alerted"));
  fx.correlator->drain();
  auto v = fx.store->get(Table::alerts, alert_key(a));
  REQUIRE(v);
  auto rec = tocsin::collector::detail::runs::decode_alert_record(*v);
  REQUIRE(rec);
  CHECK(rec->second == std::vector<std::string>{"tcn-multi00001", "tcn-multi00002"});
  auto oh = msgpack::unpack(v->data(), v->size());
  const auto* f = oh.get().via.array.ptr;
  CHECK(f[15].as<std::string>() == "tcn-multi00001");  // the first run it matched
  auto reason = f[16].as<std::string>();
  CHECK(reason == "exact marker tcn-multi00001, tcn-multi00002");
}
