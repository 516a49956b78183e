// The collector's side of remote commands on a real RocksDB: requests, approvals by someone other
// than the requester, signing, delivery on poll, outcomes, denial and expiry, every step in the
// audit log (which still verifies). The clock is injected.
#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "collector/commands/commands.hpp"
#include "tests/unit/collector/engine_fixture.hpp"

using namespace tocsin::collector;
using namespace tocsin::test;
namespace common = tocsin::common;

namespace {

struct Fixture : EngineFixture {
  std::unique_ptr<AuditLog> audit = make_audit();
  CommandPolicy policy;
  std::unique_ptr<CommandEngine> engine;

  explicit Fixture(std::size_t approvals = 1) : EngineFixture("commands") {
    policy.approvals_required = approvals;
    make();
  }
  void make() {
    engine = std::make_unique<CommandEngine>(*store, command_signer(), policy, audit.get(), clock());
  }
  CommandRecord request(const std::string& requester = "olivia") {
    CommandRequest r;
    r.agent_id = "agt-web01";
    r.target = "nginx.service";
    r.requester = requester;
    r.reason = "wordpress-health failing";
    r.recheck_test = "wordpress-health";
    r.recheck_after_ns = 180 * kSec;
    return engine->request(r);
  }
  std::vector<std::string> actions() {
    std::vector<std::string> out;
    for (const auto& e : audit->list(1, 0, 1000)) out.push_back(e.action);
    return out;
  }
};

}  // namespace

TEST_CASE("a command runs only after someone other than the requester approves it, signed") {
  Fixture f;
  auto c = f.request();
  CHECK(c.state == CommandState::awaiting_approval);
  CHECK(f.engine->poll("agt-web01").commands.empty());  // nothing before approval
  CHECK_THROWS_WITH_AS(f.engine->approve(c.id, "olivia"),
                       "the requester (olivia) cannot approve their own request", CommandError);
  f.now += 60 * kSec;
  auto a = f.engine->approve(c.id, "anna");
  CHECK(a.state == CommandState::approved);
  const auto& k = a.command;
  CHECK(k.id == "cmd-" + std::to_string(c.id));
  CHECK(k.approvals == std::vector<std::string>{"anna"});
  CHECK(k.nonce.size() == 32);
  CHECK(k.expires_ns == f.now + 10 * 60 * kSec);
  CHECK(k.recheck_test == "wordpress-health");
  auto pub = common::Ed25519Key::from_public_pem(f.engine->key_pem());
  auto bytes = common::command_signing_bytes(k);
  CHECK(pub.verify(bytes, k.signature));
  auto forged = k;
  forged.target = "sshd.service";
  CHECK_FALSE(pub.verify(common::command_signing_bytes(forged), k.signature));

  CHECK(f.engine->poll("agt-other").commands.empty());
  auto polled = f.engine->poll("agt-web01");
  REQUIRE(polled.commands.size() == 1);
  CHECK(polled.command_key_pem == f.engine->key_pem());
  CHECK(polled.commands[0].nonce == k.nonce);
  CHECK(f.engine->get(c.id)->state == CommandState::delivered);
  CHECK(f.engine->poll("agt-web01").commands.empty());  // delivered once

  common::ResultBody outcome;
  outcome.kind = "command";
  outcome.test_id = k.id;
  outcome.verdict = "executed";
  outcome.reason = "exit_0";
  outcome.evidence = {{"exit_code", "0"}, {"nonce", k.nonce}};
  auto wrong_nonce = outcome;
  wrong_nonce.evidence["nonce"] = std::string(32, '0');
  f.engine->results_stored("agt-web01", {wrong_nonce});  // not the nonce it was signed with
  CHECK(f.engine->get(c.id)->state == CommandState::delivered);
  f.engine->results_stored("agt-other", {outcome});  // not that agent's command: ignored
  CHECK(f.engine->get(c.id)->state == CommandState::delivered);
  f.engine->results_stored("agt-web01", {outcome});
  auto done = f.engine->get(c.id);
  CHECK(done->state == CommandState::executed);
  CHECK(done->outcome_evidence.at("exit_code") == "0");

  auto acts = f.actions();
  for (const char* a : {"command_requested", "command_approved", "command_delivered", "command_executed"})
    CHECK_MESSAGE(contains(acts, a), a);
  CHECK(f.audit->verify().ok());
}

TEST_CASE("two approvals: distinct people, then signed, denial and expiry are final") {
  Fixture f(2);
  auto c = f.request();
  auto one = f.engine->approve(c.id, "anna");
  CHECK(one.state == CommandState::awaiting_approval);
  CHECK_THROWS_AS(f.engine->approve(c.id, "anna"), CommandError);
  auto two = f.engine->approve(c.id, "bert");
  CHECK(two.state == CommandState::approved);
  CHECK(two.command.approvals == std::vector<std::string>{"anna", "bert"});

  auto d = f.request();
  CHECK_THROWS_AS(f.engine->deny(d.id, "anna", ""), CommandError);
  auto denied = f.engine->deny(d.id, "anna", "not during business hours");
  CHECK(denied.state == CommandState::denied);
  CHECK_THROWS_AS(f.engine->approve(d.id, "bert"), CommandError);

  auto e = f.request();
  f.now += 2 * 3600 * kSec;  // past the 1 h approval time
  CHECK(f.engine->tick() >= 1);
  CHECK(f.engine->get(e.id)->state == CommandState::expired);
  CHECK_THROWS_AS(f.engine->approve(e.id, "anna"), CommandError);
  // The approved command nobody fetched within its 10 minutes expired too.
  CHECK(f.engine->get(c.id)->state == CommandState::expired);

  auto acts = f.actions();
  CHECK(contains(acts, "command_denied"));
  CHECK(contains(acts, "command_expired"));
  CHECK(f.audit->verify().ok());
}

TEST_CASE("requests are validated, and state survives a restart") {
  Fixture f;
  CommandRequest r;
  r.agent_id = "agt-nobody";
  r.target = "nginx.service";
  r.requester = "olivia";
  CHECK_THROWS_WITH_AS(f.engine->request(r), "no enrolled agent 'agt-nobody'", CommandError);
  r.agent_id = "agt-web01";
  r.target = "nginx.service; rm -rf /";
  CHECK_THROWS_AS(f.engine->request(r), CommandError);
  r.target = "-nginx";
  CHECK_THROWS_AS(f.engine->request(r), CommandError);
  r.target = "nginx.service";
  r.kind = "format_disk";
  CHECK_THROWS_AS(f.engine->request(r), CommandError);

  auto c = f.request();
  f.engine->approve(c.id, "anna");
  f.make();  // a new engine over the same store: the approved command is still waiting
  auto polled = f.engine->poll("agt-web01");
  REQUIRE(polled.commands.size() == 1);
  CHECK(polled.commands[0].id == "cmd-" + std::to_string(c.id));
  auto next = f.request();
  CHECK(next.id == c.id + 1);
}

TEST_CASE("approval links: signed for one approver, single use, expiring, never the requester's") {
  Fixture f;
  auto c = f.request("watchdog");
  auto link = f.engine->approval_link(c.id, "anna", "d1");
  CHECK(link == f.engine->approval_link(c.id, "anna", "d1"));  // a retried mail renders the same
  auto l = f.engine->check_link(link);
  CHECK(l.command_id == c.id);
  CHECK(l.approver == "anna");
  CHECK(l.expires_ns == c.request_expires_ns);

  SUBCASE("any changed character is refused, and so is another collector's link") {
    const auto audited = f.audit->head_seq();
    for (std::size_t pos : {std::size_t{3}, link.find('.') - 2, link.find('.') + 5, link.size() - 3}) {
      std::string bad = link;
      bad[pos] = bad[pos] == 'A' ? 'B' : 'A';
      CHECK_THROWS_AS(f.engine->check_link(bad), CommandError);
      CHECK_THROWS_AS(f.engine->approve_by_link(bad), CommandError);
    }
    CHECK_THROWS_AS(f.engine->check_link("not-a-link"), CommandError);
    CommandEngine other(*f.store, common::Ed25519Key::generate(), f.policy, nullptr, [&] { return f.now; });
    CHECK_THROWS_WITH_AS(f.engine->approve_by_link(other.approval_link(c.id, "anna", "d1")),
                         "not a valid approval link (damaged, or not made by this collector)",
                         CommandError);
    CHECK(f.engine->get(c.id)->state == CommandState::awaiting_approval);
    CHECK(f.audit->head_seq() == audited);  // a stranger's forgeries write nothing to the log
  }
  SUBCASE("used once it approves as its approver, used twice it is refused and audited") {
    auto a = f.engine->approve_by_link(link);
    CHECK(a.state == CommandState::approved);
    REQUIRE(a.approvals.size() == 1);
    CHECK(a.approvals[0].first == "anna");
    CHECK_THROWS_WITH_AS(f.engine->approve_by_link(link), "this approval link was already used",
                         CommandError);
    CHECK_THROWS_AS(f.engine->deny_by_link(link, "again"), CommandError);
    auto acts = f.actions();
    CHECK(contains(acts, "command_approved"));
    CHECK(std::count(acts.begin(), acts.end(), "approval_link_refused") == 1);  // audited once
    CHECK(f.audit->verify().ok());
  }
  SUBCASE("a link used to deny is spent too") {
    CHECK_THROWS_WITH_AS(f.engine->deny_by_link(link, ""), "a denial needs a reason", CommandError);
    auto d = f.engine->deny_by_link(link, "not during business hours");
    CHECK(d.state == CommandState::denied);
    CHECK(d.denied_by == "anna");
    CHECK_THROWS_AS(f.engine->approve_by_link(link), CommandError);
  }
  SUBCASE("a link past its expiry is refused even while the request still waits") {
    auto short_link = f.engine->approval_link(c.id, "anna", "d2", std::chrono::minutes(5));
    f.now += 6 * 60 * kSec;
    CHECK_THROWS_AS(f.engine->approve_by_link(short_link), CommandError);
    CHECK(f.engine->get(c.id)->state == CommandState::awaiting_approval);
    CHECK(f.engine->approve_by_link(link).state == CommandState::approved);  // the long one works
  }
  SUBCASE("the requester's own link approves nothing") {
    auto own = f.engine->approval_link(c.id, "watchdog", "d3");
    CHECK_THROWS_WITH_AS(f.engine->approve_by_link(own),
                         "the requester (watchdog) cannot approve their own request", CommandError);
  }
}

TEST_CASE("base64url round-trips and refuses what is not base64url") {
  for (std::string s : {std::string(), std::string("f"), std::string("fo"), std::string("foo"),
                        std::string("\xff\xfe\x00\x01", 4)}) {
    auto e = common::base64url_encode(s);
    CHECK(e.find_first_of("+/=") == std::string::npos);
    CHECK(common::base64url_decode(e) == s);
  }
  CHECK(common::base64url_encode("\xfb\xff") == "-_8");
  CHECK_FALSE(common::base64url_decode("a").has_value());
  CHECK_FALSE(common::base64url_decode("ab+c").has_value());
  CHECK_FALSE(common::base64url_decode("Zh").has_value());  // leftover bits set: not canonical
}
