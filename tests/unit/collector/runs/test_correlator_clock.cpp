// The correlator and the agents' clocks: runs held until their agent's offset is known (and
// only from the same process frame), the hold deadline, saturating clock arithmetic, timestamp
// resolution in matching and in the report, and the run record's layouts.
#include <doctest/doctest.h>
#include <msgpack.hpp>

#include <climits>
#include <string>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "collector/runs/correlator_detail.hpp"
#include "collector/runs/report.hpp"
#include "common/clock.hpp"
#include "common/wire.hpp"
#include "tests/unit/collector/runs/correlator_fixture.hpp"

using namespace tocsin::collector;
using namespace tocsin::test;
using namespace std::chrono_literals;
using tocsin::common::now_ns;

namespace {
// A run made before its agent's first clock exchange, on the agent's raw clock.
Run held_run(const std::string& marker, std::int64_t agent_ns, std::int64_t within_ns) {
  auto r = make_run(marker, agent_ns, within_ns);
  r.clock_synced = false;
  r.action_error_ns = -1;
  return r;
}
// A later result of the same agent, after its clock exchange.
Run synced_run(const std::string& marker, std::uint64_t seq, std::int64_t agent_ns,
               std::int64_t offset_ns) {
  auto r = make_run(marker, agent_ns + offset_ns, 3600 * kSec);
  r.seq = seq;
  r.agent_started_ns = agent_ns;
  r.clock_offset_ns = offset_ns;
  r.action_error_ns = kSec / 1000;
  return r;
}
}  // namespace

TEST_CASE(
    "a run made before the agent's clock exchange has no deadline until the offset is known") {
  Fixture fx;
  auto t0 = now_ns();
  fx.add_run(held_run("tcn-held000001", t0 - 10 * kSec, kSec));    // SLA passed on its raw clock
  auto control = make_run("tcn-control001", t0 - 5 * kSec, kSec);  // a later SLA, also passed
  control.agent_id = "agent-2";
  fx.add_run(control);
  CHECK(fx.wait_event("tcn-control001", "overdue"));
  {
    std::lock_guard lk(fx.mu);
    for (const auto& e : fx.events) CHECK(e.marker != "tcn-held000001");
  }
  auto held = fx.run("tcn-held000001");
  CHECK(held.state == DetectionState::pending);
  CHECK_FALSE(held.overdue);
  CHECK(held.clock_held());

  // The same agent's next result brings an offset: the run is re-corrected and timed.
  fx.add_run(synced_run("tcn-synced0001", 2, t0, 2 * kSec));
  CHECK(fx.wait_event("tcn-held000001", "overdue"));
  auto r = fx.run("tcn-held000001");
  CHECK(r.clock_resolved);
  CHECK_FALSE(r.clock_held());
  CHECK(r.clock_offset_ns == 2 * kSec);
  CHECK(r.action_ns == t0 - 8 * kSec);
  CHECK(r.action_error_ns == kSec / 1000 + 10 * kSec / 1'000'000 * 100);  // 10 s at 100 ppm
}

TEST_CASE("an alert for a held run is decided, with its latency, once the offset is known") {
  Fixture fx;
  auto t0 = now_ns();
  // The agent's clock runs 100 s ahead; the action really happened at t0.
  fx.add_run(held_run("tcn-held000002", t0 + 100 * kSec, 60 * kSec));
  CHECK(fx.submit({make_alert("tcn-held000002", t0 + 3 * kSec)}).matched == 1);
  auto held = fx.run("tcn-held000002");
  CHECK(held.state == DetectionState::pending);  // not an anomaly, not a decision yet
  CHECK_FALSE(held.alert_key.empty());
  {
    std::lock_guard lk(fx.mu);
    CHECK(fx.events.empty());
  }
  SUBCASE("an earlier result of the agent resolves nothing") {
    auto earlier = synced_run("tcn-synced0002", 0, t0 + 90 * kSec, -100 * kSec);
    earlier.agent_id = "agent-1";
    fx.add_run(earlier);
    CHECK(fx.run("tcn-held000002").clock_held());
  }
  SUBCASE("a later result resolves it") {
    fx.add_run(synced_run("tcn-synced0003", 2, t0 + 200 * kSec, -100 * kSec));
    CHECK(fx.wait_event("tcn-held000002", "alerted"));
    auto r = fx.run("tcn-held000002");
    CHECK(r.state == DetectionState::alerted);
    CHECK(r.time_to_alert_ns == 3 * kSec);
    CHECK_FALSE(r.clock_anomaly);
    CHECK(r.clock_resolved);
    CHECK(r.action_error_ns == kSec / 1000 + 100 * kSec / 1'000'000 * 100);
  }
}

TEST_CASE("run records keep format 1: new fields are appended, 39-field records decode as before") {
  auto r = make_run("tcn-format0001", 1, kSec);
  r.clock_synced = false;
  r.clock_resolved = true;
  r.clock_stepped = true;
  r.clock_frame = "";
  r.clock_steps = 5;
  r.clock_unresolved = true;
  auto bytes = encode_run(r);
  auto d = decode_run(bytes);
  CHECK(d.clock_resolved);
  CHECK(d.clock_stepped);
  CHECK(d.clock_steps == 5);
  CHECK(d.clock_unresolved);
  // What an older collector's decoder expects: format 1, at least 39 fields, the first 39 in
  // their old order (it ignores the rest).
  auto oh = msgpack::unpack(bytes.data(), bytes.size());
  const auto& o = oh.get();
  REQUIRE(o.type == msgpack::type::ARRAY);
  CHECK(o.via.array.ptr[0].as<std::uint64_t>() == 1);
  REQUIRE(o.via.array.size >= 39);
  CHECK(o.via.array.ptr[1].as<std::string>() == r.marker);
  CHECK(o.via.array.ptr[17].as<bool>() == r.clock_synced);
  CHECK(o.via.array.ptr[38].as<std::int64_t>() == r.logged_arrival_ns);
  // A record of the first layout: the same array without the appended fields (each one byte
  // here: two booleans, "", 5 and a boolean).
  REQUIRE(static_cast<unsigned char>(bytes[0]) == 0xdc);
  REQUIRE(bytes[2] == 44);
  auto v1 = bytes.substr(0, bytes.size() - 5);
  v1[2] = 39;
  auto old = decode_run(v1);
  CHECK(old.marker == r.marker);
  CHECK_FALSE(old.clock_stepped);
  CHECK_FALSE(old.clock_unresolved);
  CHECK(old.clock_frame.empty());
  CHECK(old.clock_resolved);  // never held: decided as before
}

namespace {
// A held run and a synced result stamped in the agent process `frame` after `steps` steps.
Run framed(Run r, const std::string& frame, std::uint64_t steps) {
  r.clock_frame = frame;
  r.clock_steps = steps;
  return r;
}
}  // namespace

TEST_CASE("a held run is resolved only by a result of the same process frame and step count") {
  Fixture fx;
  auto t0 = now_ns();
  // Process A, offline at boot with a clock an hour wrong: a held run.
  fx.add_run(framed(held_run("tcn-frame00001", t0 + 3600 * kSec, 60 * kSec), "aaaaaaaaaaaaaaaa", 0));
  CHECK(fx.submit({make_alert("tcn-frame00001", t0 + 3 * kSec)}).matched == 1);
  SUBCASE("another process's offset resolves nothing") {
    fx.add_run(framed(synced_run("tcn-frame00002", 2, t0 + 10 * kSec, 0), "bbbbbbbbbbbbbbbb", 0));
    auto r = fx.run("tcn-frame00001");
    CHECK(r.clock_held());
    CHECK(r.state == DetectionState::pending);
  }
  SUBCASE("the same process after a step resolves nothing") {
    fx.add_run(
        framed(synced_run("tcn-frame00003", 2, t0 + 3610 * kSec, -3600 * kSec), "aaaaaaaaaaaaaaaa", 1));
    CHECK(fx.run("tcn-frame00001").clock_held());
  }
  SUBCASE("the same process with no step between resolves it") {
    fx.add_run(
        framed(synced_run("tcn-frame00004", 2, t0 + 3610 * kSec, -3600 * kSec), "aaaaaaaaaaaaaaaa", 0));
    CHECK(fx.wait_event("tcn-frame00001", "alerted"));
    auto r = fx.run("tcn-frame00001");
    CHECK(r.clock_resolved);
    CHECK(r.time_to_alert_ns == 3 * kSec);
  }
  SUBCASE("in one batch, the result of its own frame resolves it") {
    fx.correlator->runs_stored(
        {framed(synced_run("tcn-frame00005", 3, t0 + 10 * kSec, 0), "bbbbbbbbbbbbbbbb", 0),
         framed(synced_run("tcn-frame00006", 2, t0 + 3610 * kSec, -3600 * kSec), "aaaaaaaaaaaaaaaa", 0)});
    CHECK(fx.wait_event("tcn-frame00001", "alerted"));
    CHECK(fx.run("tcn-frame00001").time_to_alert_ns == 3 * kSec);
  }
  using tocsin::collector::detail::runs::offset_applies;
  auto synced = framed(synced_run("x", 2, 0, 0), "aaaaaaaaaaaaaaaa", 0);
  CHECK(offset_applies("", 7, 1, synced));  // an older agent's run: any later synced result
  CHECK_FALSE(offset_applies("aaaaaaaaaaaaaaaa", 0, 2, synced));  // not later
  synced.clock_stepped = true;
  CHECK_FALSE(offset_applies("aaaaaaaaaaaaaaaa", 0, 1, synced));
}

TEST_CASE("a held run that nothing resolves is decided at its hold deadline, unresolved") {
  CorrelationConfig cfg;
  cfg.grace = 0ms;
  Fixture fx(cfg);
  auto t0 = now_ns();
  // Received 10 s ago with a 1 s SLA: its hold deadline (received + SLA + grace) has passed.
  auto quiet = held_run("tcn-expire0001", t0 + 3600 * kSec, kSec);
  quiet.received_ns = t0 - 10 * kSec;
  auto alerted = held_run("tcn-expire0002", t0 - 9 * kSec, kSec);
  alerted.received_ns = t0 - 10 * kSec;
  alerted.alert_key = "siem:x";
  alerted.alert_source = "siem";
  alerted.match_reason = "exact marker tcn-expire0002";
  alerted.arrival_ns = t0 - 9 * kSec + kSec / 2;
  auto waiting = held_run("tcn-expire0003", t0, kSec);  // received now: still held
  waiting.received_ns = t0 + 3600 * kSec;
  fx.add_run(quiet);
  fx.add_run(alerted);
  fx.add_run(waiting);
  CHECK(fx.wait_event("tcn-expire0001", "missed"));
  CHECK(fx.wait_event("tcn-expire0002", "alerted"));
  auto q = fx.run("tcn-expire0001");
  CHECK(q.clock_unresolved);
  CHECK_FALSE(q.clock_held());
  CHECK(q.action_error_ns == -1);
  auto a = fx.run("tcn-expire0002");
  CHECK(a.clock_unresolved);
  CHECK(a.time_to_alert_ns == kSec / 2);
  CHECK(a.action_error_ns == -1);
  CHECK(fx.run("tcn-expire0003").clock_held());
  CHECK(fx.correlator->pending_runs() == 1);
  {
    std::lock_guard lk(fx.mu);
    for (const auto& e : fx.events)
      if (e.marker == "tcn-expire0001") CHECK(e.detail.find("hold deadline") != std::string::npos);
  }
  // Unresolved runs are counted, not measured.
  auto rows = latency_report({q, a}, GroupBy::test);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].clock_unresolved == 1);
  CHECK(rows[0].time_to_alert.count == 0);
  CHECK(rows[0].missed == 1);
}

TEST_CASE("a held run keeps its hold deadline and frame across a restart") {
  auto r = framed(held_run("tcn-restart001", 1, kSec), "cccccccccccccccc", 2);
  r.received_ns = 123 * kSec;
  auto v = tocsin::collector::detail::runs::open_run_value(r);
  auto back = tocsin::collector::detail::runs::open_run_from_value(r.marker, v);
  REQUIRE(back);
  CHECK(back->clock_held());
  CHECK(back->received_ns == 123 * kSec);
  CHECK(back->clock_frame == "cccccccccccccccc");
  CHECK(back->clock_steps == 2);
  // A summary written without them: the full record is read instead.
  CHECK_FALSE(tocsin::collector::detail::runs::open_run_from_value(
      r.marker, R"({"a":1,"e":-1,"w":1,"held":true})"));
}

TEST_CASE("the report's resolution per source is the finest its values show") {
  constexpr std::int64_t kBase = 1795860000LL * kSec;
  std::vector<Run> runs;
  auto add = [&](const std::string& source, std::int64_t created) {
    auto r = make_run("tcn-" + std::to_string(3000000000 + runs.size()), kBase, 60 * kSec);
    r.state = DetectionState::alerted;
    r.alert_key = "k" + std::to_string(runs.size());
    r.alert_source = source;
    r.time_to_alert_ns = 5 * kSec;
    r.arrival_ns = kBase + 5 * kSec;
    r.created_ns = created;
    r.ingest_ns = created - 7 * kSec / 1000;
    runs.push_back(r);
  };
  // A millisecond SIEM: 1000 values, every 1000th a whole second.
  for (int i = 0; i < 1000; ++i) add("siem-ms", kBase + kSec + i * 1'000'000);
  auto rows = latency_report(runs, GroupBy::test);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].delivery_lag.resolution_ns == 1'000'000);
  CHECK(rows[0].rule_latency.resolution_ns == 1'000'000);
  CHECK(rows[0].pipeline_lag.resolution_ns == 1'000'000);
  // Another source writing whole seconds: the row's figure is the coarser of the two.
  for (int i = 0; i < 3; ++i) add("crowdsec", kBase + (i + 2) * kSec);
  rows = latency_report(runs, GroupBy::test);
  CHECK(rows[0].delivery_lag.resolution_ns == kSec);
  CHECK(rows[0].rule_latency.resolution_ns == kSec);
}

TEST_CASE("hostile clock values saturate instead of overflowing") {
  using tocsin::collector::detail::runs::resolve_offset;
  CorrelationConfig cfg;
  auto r = held_run("tcn-hostile001", INT64_MIN, kSec);
  REQUIRE(resolve_offset(r, INT64_MIN, INT64_MAX, INT64_MAX, cfg));
  CHECK(r.action_error_ns == INT64_MAX);
  CHECK(r.action_ns == INT64_MIN);
  CHECK(r.sla_deadline_ns() == INT64_MIN + kSec);

  tocsin::common::ResultRecord rec;
  rec.agent_id = "agent-1";
  tocsin::common::ResultBody body;
  body.marker = "tcn-hostile002";
  body.verdict = "prevented";
  body.alert_within_ns = 60 * kSec;
  body.started_ns = INT64_MAX;
  body.clock_offset_ns = INT64_MAX;
  body.clock_error_ns = 5;
  auto built = run_from_result(rec, body, AgentRecord{}, 5, cfg);
  REQUIRE(built);
  CHECK(built->action_ns == INT64_MAX);
  CHECK(built->sla_deadline_ns() == INT64_MAX);
  // Borrowed across the whole range: the bound saturates (the gap used to wrap to 1 ns).
  body.started_ns = INT64_MIN;
  body.clock_error_ns = -1;
  AgentRecord agent;
  agent.clock_offset_ns = 0;
  agent.clock_error_ns = INT64_MAX - 1;
  built = run_from_result(rec, body, agent, INT64_MAX, cfg);
  REQUIRE(built);
  CHECK(built->action_error_ns == INT64_MAX);
}

TEST_CASE("a fuzzy match allows for the resolution of the alert's timestamp") {
  Fixture fx;
  // An action half a second into a second; CrowdSec writes that second, truncated.
  auto second = now_ns() / kSec * kSec;
  fx.add_run(make_run("tcn-resolut001", second + kSec / 2, 3600 * kSec));  // bound 2 ms
  auto a = make_alert("scenario=probing", second + kSec);
  a.host = "web01.corp.example";
  a.technique = "T1105";
  a.created_ns = second;
  CHECK(fx.submit({a}).matched == 1);
  auto r = fx.run("tcn-resolut001");
  CHECK(r.state == DetectionState::alerted);
  // A finer time that far before the action is still refused.
  fx.add_run(make_run("tcn-resolut002", second + 3 * kSec + kSec / 2, 3600 * kSec));
  auto b = make_alert("scenario=other", second + 4 * kSec, "b");
  b.host = "web01";
  b.technique = "T1105";
  b.created_ns = second + 3 * kSec + 1'000'000;  // ms resolution, 499 ms early
  CHECK(fx.submit({b}).matched == 0);
}
