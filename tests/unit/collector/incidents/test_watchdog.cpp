// The service watchdog on real engines and a real RocksDB, with an injected clock: a watched
// health check failing becomes a restart request by "watchdog" with the incident's SLA paused
// while it waits; approval resumes it; a restart that did not help escalates and asks again;
// max_restarts stops the loop; a denial stops asking; a collector restart repeats nothing.
#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "collector/commands/commands.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/incidents/watchdog.hpp"
#include "tests/unit/collector/engine_fixture.hpp"

using namespace tocsin::collector;
using namespace tocsin::test;
namespace common = tocsin::common;

namespace {

const std::string kTest = "wordpress-health";

WatchPolicy policy_from(const std::string& yaml) {
  return WatchPolicy::load(common::ConfigNode::load_string(yaml, "collector.yaml")["watch"]);
}

struct Fixture : EngineFixture {
  std::unique_ptr<AuditLog> audit;
  std::unique_ptr<IncidentEngine> incidents;
  std::unique_ptr<CommandEngine> commands;
  std::unique_ptr<Watchdog> watchdog;
  WatchPolicy watch = policy_from(R"(
watch:
  - test: wordpress-health
    on_unhealthy: request_restart
    target: nginx.service
    recheck_after: 180s
    max_restarts: 2 per 1h
)");

  Fixture() : EngineFixture("watchdog") { make(); }
  // (Re)creates everything on the same database: what a collector restart does.
  void make() {
    watchdog.reset();
    commands.reset();
    incidents.reset();
    audit = make_audit();
    IncidentPolicy ip;
    ip.severity[IncidentKind::health_failed] = Severity::high;
    ip.sla[static_cast<std::size_t>(Severity::high)] = {std::chrono::minutes(15), std::chrono::hours(4)};
    incidents = std::make_unique<IncidentEngine>(*store, ip, clock());
    incidents->set_audit(audit.get());
    commands = std::make_unique<CommandEngine>(*store, command_signer(), CommandPolicy{}, audit.get(),
                                               clock());
    watchdog = std::make_unique<Watchdog>(*incidents, *commands, watch, clock());
  }
  Signal health(bool healthy) {
    Signal s;
    s.kind = IncidentKind::health_failed;
    s.key = dedup_key(IncidentKind::health_failed, kTest, kAgentId);
    s.severity = Severity::high;
    s.test_id = kTest;
    s.agent_id = kAgentId;
    s.title = "health check wordpress-health failing on agt-web01";
    s.time_ns = now;
    s.agent_started_ns = now - 1 * kSec;  // the check began a second before it arrived
    s.clears = healthy;
    return s;
  }
  Incident incident() { return *incidents->get(1); }
  std::vector<CommandRecord> cmds() {
    return commands->find([](const CommandRecord&) { return true; });
  }
  // The agent fetches the approved command and reports `verdict`.
  void agent_runs(std::uint64_t id, const std::string& verdict = "executed") {
    auto polled = commands->poll(kAgentId);
    REQUIRE(polled.commands.size() == 1);
    common::ResultBody outcome;
    outcome.kind = "command";
    outcome.test_id = "cmd-" + std::to_string(id);
    outcome.verdict = verdict;
    outcome.reason = verdict == "executed" ? "exit_0" : "not_allowlisted";
    outcome.evidence = {{"nonce", polled.commands[0].nonce}};
    outcome.finished_ns = now;  // the agent's clock (the same as ours here)
    commands->results_stored(kAgentId, {outcome});
  }
  std::vector<std::string> timeline() {
    std::vector<std::string> out;
    for (const auto& e : incident().timeline) out.push_back(e.what);
    return out;
  }
};

}  // namespace

TEST_CASE("watchdog: unhealthy, restart requested, SLA paused until approved, healthy recheck resolves") {
  Fixture f;
  CHECK(f.watchdog->poll_once() == 0);  // nothing failing
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 1);
  auto cs = f.cmds();
  REQUIRE(cs.size() == 1);
  CHECK(cs[0].requester == "watchdog");
  CHECK(cs[0].target == "nginx.service");
  CHECK(cs[0].incident_id == 1);
  CHECK(cs[0].recheck_test == kTest);
  CHECK(cs[0].recheck_after_ns == 180 * kSec);
  CHECK(f.incident().paused());
  CHECK(f.incident().pause_reason == "waiting for approval of restart cmd-1");

  // Waiting: more failures and more rounds ask for nothing more, and the SLA stands still.
  f.now += 20 * 60 * kSec;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 1);
  CHECK(*f.incident().ack_sla.remaining_ns(f.now) == 15 * 60 * kSec);  // paused from the start

  // Restart-safe: a new collector on the same database does not ask again.
  f.make();
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 1);

  CHECK_THROWS_AS(f.commands->approve(1, "watchdog"), CommandError);  // the requester
  f.commands->approve(1, "anna");
  CHECK(f.watchdog->poll_once() == 1);  // resumed
  CHECK_FALSE(f.incident().paused());
  f.now += 10 * kSec;
  f.agent_runs(1);
  CHECK(f.watchdog->poll_once() == 0);  // waits for the recheck
  f.now += 180 * kSec;
  f.incidents->apply(f.health(true));  // the recheck passes
  CHECK(f.incident().state == IncidentState::resolved);
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 1);
  auto tl = f.timeline();
  CHECK(contains(tl, "paused"));
  CHECK(contains(tl, "resumed"));
  CHECK_FALSE(contains(tl, "escalated"));
  CHECK(f.audit->verify().ok());
}

TEST_CASE("watchdog: a restart that does not help escalates, asks again, and stops at max_restarts") {
  Fixture f;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 1);
  for (std::uint64_t n = 1; n <= 2; ++n) {
    REQUIRE(f.cmds().size() == n);
    f.commands->approve(n, "anna");
    f.watchdog->poll_once();
    f.now += 5 * kSec;
    f.agent_runs(n);
    f.now += 180 * kSec;
    f.incidents->apply(f.health(false));  // the recheck still fails
    CHECK(f.watchdog->poll_once() >= 1);
    CHECK(f.incident().severity == Severity::critical);
  }
  // Two restarts in the hour: the second failure escalates with max_restarts and asks no more.
  CHECK(f.cmds().size() == 2);
  auto last = f.incident().timeline.back();
  CHECK(last.what == "escalated");
  CHECK(last.detail.find("max_restarts reached: 2 restart(s) of nginx.service") != std::string::npos);
  f.now += 10 * 60 * kSec;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 0);
  f.make();
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 2);
  std::size_t escalations = 0;
  for (const auto& w : f.timeline()) escalations += w == "escalated";
  CHECK(escalations == 3);  // cmd-1 did not help, cmd-2 did not help, max_restarts
}

TEST_CASE("watchdog: no recheck result at all counts as not helped, after recheck_after and a grace") {
  Fixture f;
  f.incidents->apply(f.health(false));
  f.watchdog->poll_once();
  f.commands->approve(1, "anna");
  f.watchdog->poll_once();
  f.agent_runs(1);
  f.now += 200 * kSec;
  CHECK(f.watchdog->poll_once() == 0);  // still within recheck_after + grace
  f.now += 60 * kSec;
  CHECK(f.watchdog->poll_once() >= 1);
  CHECK(f.timeline().back() == "paused");  // escalated, then asked again and paused
  CHECK(contains(f.timeline(), "escalated"));
  CHECK(f.cmds().size() == 2);
}

TEST_CASE("watchdog: denied, expired or refused stops asking for this opening, a reopening asks again") {
  Fixture f;
  f.incidents->apply(f.health(false));
  f.watchdog->poll_once();
  SUBCASE("denied") {
    f.commands->deny(1, "anna", "maintenance window");
  }
  SUBCASE("expired") {
    f.now += 2 * 3600 * kSec;
    f.commands->tick();
  }
  SUBCASE("refused by the agent") {
    f.commands->approve(1, "anna");
    f.agent_runs(1, "refused");
  }
  CHECK(f.watchdog->poll_once() >= 1);
  auto i = f.incident();
  CHECK_FALSE(i.paused());
  CHECK(i.timeline.back().what == "escalated");
  CHECK(i.timeline.back().detail.find("no automatic restart until this incident is resolved") != std::string::npos);
  f.now += 60 * kSec;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 1);
  // Healthy, then failing again: a new opening, a new request.
  f.incidents->apply(f.health(true));
  f.now += 3 * 3600 * kSec;
  f.incidents->apply(f.health(false));
  CHECK(f.incident().state == IncidentState::open);
  CHECK(f.watchdog->poll_once() == 1);
  CHECK(f.cmds().size() == 2);
}

TEST_CASE("watchdog: a check that began before the restart but arrived after it is not a failed recheck") {
  Fixture f;
  f.incidents->apply(f.health(false));
  f.watchdog->poll_once();
  f.commands->approve(1, "anna");
  f.watchdog->poll_once();
  f.now += 10 * kSec;
  f.agent_runs(1);  // the restart finished at now (agent clock)
  f.now += 3 * kSec;
  auto in_flight = f.health(false);
  in_flight.agent_started_ns = f.now - 8 * kSec;  // started 5 s before the restart finished
  f.incidents->apply(in_flight);
  CHECK(f.watchdog->poll_once() == 0);
  CHECK_FALSE(contains(f.timeline(), "escalated"));
  f.now += 180 * kSec;
  f.incidents->apply(f.health(false));  // the recheck, begun after the restart, fails
  CHECK(f.watchdog->poll_once() >= 1);
  CHECK(contains(f.timeline(), "escalated"));
}

TEST_CASE("watchdog: a request whose incident recovers is withdrawn, and nothing is asked twice") {
  Fixture f;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 1);
  f.now += 30 * kSec;
  f.incidents->apply(f.health(true));  // recovered on its own while nobody approved
  CHECK(f.watchdog->poll_once() == 1);
  auto c = *f.commands->get(1);
  CHECK(c.state == CommandState::denied);
  CHECK(c.denied_by == "watchdog");
  CHECK(c.deny_reason.find("recovered before anyone approved") != std::string::npos);
  CHECK_THROWS_AS(f.commands->approve(1, "anna"), CommandError);  // too late to restart it

  // Reopened while an approved restart is still on its way: no second request meanwhile.
  f.now += 60 * kSec;
  f.incidents->apply(f.health(false));
  CHECK(f.watchdog->poll_once() == 1);  // cmd-2 for the reopening
  f.commands->approve(2, "anna");
  f.incidents->apply(f.health(true));
  f.now += 60 * kSec;
  f.incidents->apply(f.health(false));  // reopened again before the agent fetched cmd-2
  CHECK(f.watchdog->poll_once() == 0);
  CHECK(f.cmds().size() == 2);
}

TEST_CASE("watchdog: a person who resumes the SLA is not overruled, a revoked agent is escalated once") {
  Fixture f;
  f.incidents->apply(f.health(false));
  f.watchdog->poll_once();
  CHECK(f.incident().paused());
  f.incidents->resume(1, "olivia");  // on purpose: the SLA runs while we wait
  CHECK(f.watchdog->poll_once() == 0);
  CHECK_FALSE(f.incident().paused());
  f.incidents->pause(1, "olivia", "vendor call");
  f.commands->deny(1, "anna", "not now");
  f.watchdog->poll_once();
  CHECK(f.incident().pause_reason == "vendor call");  // a person's pause is theirs to lift

  Fixture g;
  AgentRecord revoked;
  revoked.agent_id = kAgentId;
  revoked.revoked = true;
  WriteSet ws;
  ws.put_agent(revoked);
  g.store->commit(std::move(ws));
  g.incidents->apply(g.health(false));
  CHECK(g.watchdog->poll_once() == 1);
  CHECK(g.cmds().empty());
  CHECK(g.timeline().back() == "escalated");
  CHECK(g.incident().timeline.back().detail.find("cannot request a restart") != std::string::npos);
  CHECK(g.watchdog->poll_once() == 0);  // said once, not every round
}

TEST_CASE("watch policy: loads max_restarts as \"N per window\", names the key of every mistake") {
  auto p = policy_from(R"(
watch:
  - test: wordpress-health
    target: nginx.service
  - test: shop-health
    agent: agt-shop
    target: php8.2-fpm.service
    recheck_after: 30s
    max_restarts: 5
    window: 2h
)");
  REQUIRE(p.rules.size() == 2);
  CHECK(p.rules[0].recheck_after == std::chrono::seconds(180));
  CHECK(p.rules[0].max_restarts == 3);
  CHECK(p.rules[0].window == std::chrono::hours(1));
  CHECK(p.rules[1].max_restarts == 5);
  CHECK(p.rules[1].window == std::chrono::hours(2));
  CHECK(p.rule_for("shop-health", "agt-shop") == &p.rules[1]);
  CHECK(p.rule_for("shop-health", "agt-other") == nullptr);
  CHECK(p.rule_for("wordpress-health", "agt-any") == &p.rules[0]);
  CHECK(policy_from(R"(
watch:
  - {test: t, target: a.service, max_restarts: 3 per 30m}
)").rules[0].window == std::chrono::minutes(30));

  auto fails = [](const std::string& yaml, const std::string& words) {
    try {
      policy_from(yaml);
      FAIL("accepted: " << yaml);
    } catch (const std::exception& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(words) != std::string::npos);
    }
  };
  fails("watch:\n  - {test: t, target: a.service, on_unhealthy: reboot}\n", "on_unhealthy");
  fails("watch:\n  - {test: t, target: 'rm -rf'}\n", "is not a service name");
  fails("watch:\n  - {test: t, target: a.service, max_restarts: lots}\n", "max_restarts");
  fails("watch:\n  - {test: t, target: a.service, max_restarts: 0}\n", "between 1 and 100");
  fails("watch:\n  - {test: t, target: a.service, max_restarts: 3 per 1h, window: 2h}\n", "given twice");
  fails("watch:\n  - {test: t, target: a.service, recheck_after: 0s}\n", "recheck_after");
  fails("watch:\n  - {test: t, target: a.service}\n  - {test: t, target: b.service}\n", "watched twice");
  fails("watch:\n  - {test: t, target: a.service, colour: red}\n", "colour");
}
