// Remote commands on the agent: allowed_actions loading, the checks in order, the durable nonce
// store, the pinned command key, running actions, their results, the runner and the poll seam.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "agent/actions/actions.hpp"
#include "agent/probes/probe.hpp"
#include "agent/runtime/config.hpp"
#include "agent/runtime/scheduler.hpp"
#include "agent/runtime/uplink.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace tocsin::agent;
using tocsin::common::Command;
using tocsin::common::ConfigError;
using tocsin::common::Ed25519Key;
using tocsin::common::ResultBody;
using tocsin::test::TempDir;

namespace {

constexpr std::int64_t kSecond = 1'000'000'000;
const std::string kAgent = "agent-7";

// execute() on an io_context of its own, run to completion.
ActionOutcome run_execute(const ActionPolicy& policy, const ActionEntry& e) {
  asio::io_context io;
  std::optional<ActionOutcome> out;
  std::exception_ptr error;
  asio::co_spawn(io, execute(io.get_executor(), policy, e),
                 [&](std::exception_ptr ex, ActionOutcome o) {
                   error = ex;
                   if (!ex) out = std::move(o);
                 });
  io.run();
  if (error) std::rethrow_exception(error);
  REQUIRE(out.has_value());
  return *out;
}

AgentConfig load_config(const TempDir& tmp, const std::string& text) {
  auto path = tmp / "agent.yaml";
  tocsin::common::write_file_atomic(path, "state_dir: state\n" + text);
  return AgentConfig::load(path);
}

std::string config_error(const std::string& text) {
  TempDir tmp("actions-config");
  try {
    load_config(tmp, text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError for:\n" << text);
  return {};
}

ActionPolicy policy_with(std::vector<ActionEntry> entries, int min_approvals = 1) {
  ActionPolicy p;
  p.min_approvals = min_approvals;
  p.restart_service = std::move(entries);
  return p;
}

ActionEntry unit_entry(const std::string& unit) {
  return {unit, unit, {}};
}

// A command for kAgent that passes every check, signed with `key`.
Command good_command(const Ed25519Key& key, std::int64_t now = tocsin::common::now_ns()) {
  Command c;
  c.id = "cmd-1";
  c.agent_id = kAgent;
  c.kind = "restart_service";
  c.target = "nginx.service";
  c.requester = "alice";
  c.approvals = {"bob"};
  c.nonce = "00112233445566778899aabbccddeeff";
  c.issued_ns = now;
  c.expires_ns = now + 300 * kSecond;
  c.signature = key.sign(tocsin::common::command_signing_bytes(c));
  return c;
}

void resign(Command& c, const Ed25519Key& key) {
  c.signature = key.sign(tocsin::common::command_signing_bytes(c));
}

}  // namespace

// --- configuration ---------------------------------------------------------------------------

TEST_CASE("allowed_actions loads both the systemd and the exec form") {
  TempDir tmp("actions-config");
  auto c = load_config(tmp, R"(allowed_actions:
  min_approvals: 2
  timeout: 30s
  restart_service:
    - nginx.service
    - php8.2-fpm.service
    - name: wordpress
      exec: ["/usr/sbin/nginx", "-s", "reload"]
uplink:
  command_poll: 200ms
)");
  CHECK(c.actions.min_approvals == 2);
  CHECK(c.actions.timeout == 30s);
  REQUIRE(c.actions.restart_service.size() == 3);
  CHECK(c.actions.restart_service[0].unit == "nginx.service");
  CHECK(c.actions.restart_service[1].name == "php8.2-fpm.service");
  const auto* wp = c.actions.find("restart_service", "wordpress");
  REQUIRE(wp != nullptr);
  CHECK(wp->unit.empty());
  CHECK(c.actions.argv_for(*wp) == std::vector<std::string>{"/usr/sbin/nginx", "-s", "reload"});
  CHECK(c.actions.find("restart_service", "sshd.service") == nullptr);
  CHECK(c.actions.find("stop_probe", "nginx.service") == nullptr);
  CHECK(c.uplink.command_poll_interval == 200ms);
}

TEST_CASE("without allowed_actions nothing is allowed and polling defaults to 30s") {
  TempDir tmp("actions-config");
  auto c = load_config(tmp, "");
  CHECK(c.actions.restart_service.empty());
  CHECK(c.actions.min_approvals == 1);
  CHECK(c.uplink.command_poll_interval == 30s);
}

TEST_CASE("allowed_actions errors name the file, the line and the key") {
  struct Case {
    const char* yaml;
    const char* needle;
  };
  const Case cases[] = {
      {"allowed_actions:\n  restart_service:\n    - ../etc/passwd.service\n", "not a valid name"},
      {"allowed_actions:\n  restart_service:\n    - a/b.service\n", "not a valid name"},
      {"allowed_actions:\n  restart_service:\n    - -x.service\n", "not a valid name"},
      {"allowed_actions:\n  restart_service:\n    - \"nginx service\"\n", "not a valid name"},
      {"allowed_actions:\n  restart_service:\n    - nginx\n", "not a systemd unit name"},
      {"allowed_actions:\n  restart_service:\n    - name: web\n      exec: [nginx, -s, reload]\n",
       "must be an absolute path"},
      {"allowed_actions:\n  restart_service:\n    - name: web\n      exec: []\n",
       "give the program"},
      {"allowed_actions:\n  restart_service:\n    - name: web\n      exec: [/bin/true]\n      "
       "shell: x\n",
       "shell"},
      {"allowed_actions:\n  restart_service: [a.service, a.service]\n", "listed twice"},
      {"allowed_actions:\n  min_approvals: 0\n", "min_approvals"},
      {"allowed_actions:\n  stop_everything: []\n", "stop_everything"},
      {"uplink:\n  command_poll: 10ms\n", "command_poll"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.yaml);
    auto e = config_error(c.yaml);
    CHECK(e.find("agent.yaml:") != std::string::npos);
    CHECK(e.find(c.needle) != std::string::npos);
  }
}

TEST_CASE("unit names: the character set, no leading dash and a unit suffix") {
  CHECK(valid_unit_name("nginx.service"));
  CHECK(valid_unit_name("getty@tty1.service"));
  CHECK(valid_unit_name("php8.2-fpm.service"));
  CHECK(valid_unit_name("backup.timer"));
  CHECK_FALSE(valid_unit_name("nginx"));
  CHECK_FALSE(valid_unit_name(".service"));
  CHECK_FALSE(valid_unit_name("--now.service"));
  CHECK_FALSE(valid_unit_name("a/../b.service"));
  CHECK_FALSE(valid_unit_name("a;b.service"));
  CHECK_FALSE(valid_unit_name(""));
}

// --- the checks ------------------------------------------------------------------------------

TEST_CASE("check_command accepts a good command and refuses each fault with its own reason") {
  auto key = Ed25519Key::generate();
  auto other = Ed25519Key::generate();
  TempDir tmp("actions-check");
  NonceStore nonces(tmp / "nonces");
  auto policy = policy_with({unit_entry("nginx.service")});
  auto now = tocsin::common::now_ns();
  CheckInputs in{&key, kAgent, now, &policy, &nonces};
  auto c = good_command(key, now);

  SUBCASE("accepted") {
    auto r = check_command(c, in);
    CHECK(r.ok());
    REQUIRE(r.action != nullptr);
    CHECK(r.action->unit == "nginx.service");
  }
  SUBCASE("bad_signature: signed by another key") {
    resign(c, other);
    CHECK(check_command(c, in).reason == "bad_signature");
  }
  SUBCASE("bad_signature: a field changed after signing") {
    c.target = "sshd.service";
    CHECK(check_command(c, in).reason == "bad_signature");
  }
  SUBCASE("bad_signature: an approval added after signing") {
    c.approvals.push_back("carol");
    CHECK(check_command(c, in).reason == "bad_signature");
  }
  SUBCASE("bad_signature: no key pinned") {
    in.command_key = nullptr;
    CHECK(check_command(c, in).reason == "bad_signature");
  }
  SUBCASE("wrong_agent") {
    c.agent_id = "agent-8";
    resign(c, key);
    CHECK(check_command(c, in).reason == "wrong_agent");
  }
  SUBCASE("expired, and the error bound counts against the command") {
    c.expires_ns = now - 1;
    resign(c, key);
    CHECK(check_command(c, in).reason == "expired");
    ClockState clock{0, 2 * kSecond};  // expiry 1 s ahead, but collector time may be 2 s ahead
    c.expires_ns = now + kSecond;
    resign(c, key);
    in.collector_now_latest_ns = collector_now_latest(clock, now);
    CHECK(check_command(c, in).reason == "expired");
    ClockState behind{-10 * kSecond, 0};  // the collector's clock is 10 s behind ours
    in.collector_now_latest_ns = collector_now_latest(behind, now);
    CHECK(check_command(c, in).ok());
  }
  SUBCASE("bad_nonce") {
    c.nonce = "abc\nx";
    resign(c, key);
    CHECK(check_command(c, in).reason == "bad_nonce");
  }
  SUBCASE("replayed_nonce") {
    nonces.remember(c.nonce, c.expires_ns, now);
    CHECK(check_command(c, in).reason == "replayed_nonce");
  }
  SUBCASE("unknown_kind") {
    c.kind = "run_shell";
    resign(c, key);
    CHECK(check_command(c, in).reason == "unknown_kind");
  }
  SUBCASE("not_allowlisted") {
    c.target = "sshd.service";
    resign(c, key);
    CHECK(check_command(c, in).reason == "not_allowlisted");
  }
  SUBCASE("not_approved: no approvals") {
    c.approvals.clear();
    resign(c, key);
    CHECK(check_command(c, in).reason == "not_approved");
  }
  SUBCASE("not_approved: the requester approved") {
    c.approvals = {"bob", "alice"};
    resign(c, key);
    CHECK(check_command(c, in).reason == "not_approved");
  }
  SUBCASE("not_approved: the same approver twice does not make two") {
    policy.min_approvals = 2;
    c.approvals = {"bob", "bob", ""};
    resign(c, key);
    CHECK(check_command(c, in).reason == "not_approved");
    c.approvals = {"bob", "carol"};
    resign(c, key);
    CHECK(check_command(c, in).ok());
  }
}

TEST_CASE("check_command reports the first failing check when several fail") {
  auto key = Ed25519Key::generate();
  TempDir tmp("actions-check");
  NonceStore nonces(tmp / "nonces");
  auto policy = policy_with({});
  auto now = tocsin::common::now_ns();
  CheckInputs in{&key, kAgent, now, &policy, &nonces};
  auto c = good_command(key, now);
  c.agent_id = "other";
  c.expires_ns = now - kSecond;
  c.approvals.clear();
  resign(c, key);
  CHECK(check_command(c, in).reason == "wrong_agent");
  c.agent_id = kAgent;
  resign(c, key);
  CHECK(check_command(c, in).reason == "expired");
}

// --- durable state ---------------------------------------------------------------------------

TEST_CASE("NonceStore remembers nonces across reopen and prunes expired ones") {
  TempDir tmp("actions-nonces");
  auto file = tmp / "command-nonces";
  const std::string a(32, 'a'), b(32, 'b'), c(32, 'c');
  std::int64_t t0 = 1'000'000 * kSecond;
  {
    NonceStore s(file);
    CHECK(s.size() == 0);
    s.remember(a, t0 + 60 * kSecond, t0);
    s.remember(b, t0 + 3600 * kSecond, t0);
  }
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  {
    NonceStore s(file);
    CHECK(s.seen(a));
    CHECK(s.seen(b));
    CHECK_FALSE(s.seen(c));
    // Past a's expiry, but within the grace: kept.
    s.remember(c, t0 + 7200 * kSecond, t0 + 120 * kSecond);
    CHECK(s.seen(a));
    // Past a's expiry and the grace: pruned on the next write.
    s.remember(std::string(32, 'd'), t0 + 7200 * kSecond,
               t0 + 60 * kSecond + NonceStore::kPruneGraceNs + kSecond);
    CHECK_FALSE(s.seen(a));
    CHECK(s.seen(b));
  }
  NonceStore s(file);
  CHECK_FALSE(s.seen(a));
  CHECK(s.seen(b));
  CHECK(s.seen(c));
  CHECK(s.size() == 3);
}

TEST_CASE("NonceStore skips a corrupt line instead of refusing to start") {
  TempDir tmp("actions-nonces");
  auto file = tmp / "command-nonces";
  tocsin::common::write_file_atomic(
      file, std::string(32, 'a') + " 5\ngarbage\n" + std::string(32, 'b') + " 7\n");
  NonceStore s(file);
  CHECK(s.size() == 2);
  CHECK(s.seen(std::string(32, 'b')));
}

TEST_CASE("CommandKey pins the first key it is offered and refuses any other") {
  TempDir tmp("actions-key");
  auto file = tmp / "command-key.pem";
  auto k1 = Ed25519Key::generate();
  auto k2 = Ed25519Key::generate();
  {
    CommandKey key(file);
    CHECK(key.key() == nullptr);
    CHECK(key.offer("") == CommandKey::Offer::none);
    CHECK(key.offer("not a pem") == CommandKey::Offer::none);
    CHECK(key.offer(k1.public_pem()) == CommandKey::Offer::pinned_now);
    CHECK(key.offer(k1.public_pem()) == CommandKey::Offer::matches);
    CHECK(key.offer(k2.public_pem()) == CommandKey::Offer::mismatch);
  }
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CommandKey again(file);
  REQUIRE(again.key() != nullptr);
  CHECK(again.key()->public_raw() == k1.public_raw());
  CHECK(again.offer(k2.public_pem()) == CommandKey::Offer::mismatch);
  CHECK(again.offer("") == CommandKey::Offer::none);
  CHECK(again.key()->public_raw() == k1.public_raw());
}

// --- acting ----------------------------------------------------------------------------------

TEST_CASE("execute runs an exec action's argv and reports its exit and output") {
  TempDir tmp("actions-exec");
  auto marker = tmp / "restarted";
  // /bin/sh -c is acceptable here only because this argv is what an agent's own config would
  // hold; nothing in a command can reach it.
  ActionEntry e{"web", "", {"/bin/sh", "-c", "echo restarting; touch '" + marker.string() + "'"}};
  auto policy = policy_with({e});
  auto o = run_execute(policy, e);
  CHECK(o.verdict == "executed");
  CHECK(o.reason == "exit_0");
  CHECK(o.exit_code == 0);
  CHECK(o.output == "restarting\n");
  CHECK(fs::exists(marker));

  ActionEntry failing{"web", "", {"/bin/sh", "-c", "echo nope >&2; exit 3"}};
  o = run_execute(policy, failing);
  CHECK(o.verdict == "failed");
  CHECK(o.reason == "exit_3");
  CHECK(o.exit_code == 3);
  CHECK(o.output == "nope\n");

  ActionEntry missing{"web", "", {(tmp / "no-such-program").string()}};
  o = run_execute(policy, missing);
  CHECK(o.verdict == "failed");
  CHECK(o.reason == "spawn_failed");
}

TEST_CASE("execute caps the output it keeps") {
  ActionEntry e{"web", "", {"/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"}};
  auto policy = policy_with({e});
  auto o = run_execute(policy, e);
  CHECK(o.verdict == "executed");
  CHECK(o.output.size() == kMaxActionOutput);
}

TEST_CASE("the systemd form runs `systemctl restart UNIT` by argv") {
  TempDir tmp("actions-systemd");
  auto fake = tmp / "systemctl";
  auto log = tmp / "argv";
  // A stand-in for systemctl (no systemd here) that records its argv one per line.
  tocsin::common::write_file_atomic(
      fake, "#!/bin/sh\nfor a in \"$0\" \"$@\"; do echo \"$a\"; done > '" + log.string() + "'\n",
      fs::perms::owner_all);
  auto policy = policy_with({unit_entry("nginx.service")});
  CHECK(policy.argv_for(policy.restart_service[0]) ==
        std::vector<std::string>{"/usr/bin/systemctl", "restart", "nginx.service"});
  policy.systemctl = fake.string();
  auto o = run_execute(policy, policy.restart_service[0]);
  CHECK(o.verdict == "executed");
  CHECK(tocsin::common::read_file(log) == fake.string() + "\nrestart\nnginx.service\n");
}

TEST_CASE("command_result carries the command, the outcome and the evidence") {
  auto key = Ed25519Key::generate();
  auto c = good_command(key);
  c.approvals = {"bob", "carol"};
  ClockState clock{1500, 20};
  ActionOutcome o{"executed", "exit_0", 0, "ok\n"};
  auto b = command_result(c, o.verdict, o.reason, &o, clock);
  CHECK(b.kind == "command");
  CHECK(b.test_id == "cmd-1");
  CHECK(b.probe == "restart_service");
  CHECK(b.target == "nginx.service");
  CHECK(b.verdict == "executed");
  CHECK(b.reason == "exit_0");
  CHECK(b.evidence.at("command_id") == "cmd-1");
  CHECK(b.evidence.at("requester") == "alice");
  CHECK(b.evidence.at("approvals") == "bob,carol");
  CHECK(b.evidence.at("exit_code") == "0");
  CHECK(b.evidence.at("output") == "ok\n");
  CHECK(b.evidence.at("nonce") == c.nonce);
  CHECK(b.clock_offset_ns == 1500);
  CHECK(b.clock_error_ns == 20);
  CHECK(b.finished_ns >= b.started_ns);
  // It survives the wire encoding the outbox uses.
  auto back = tocsin::common::decode_body(tocsin::common::encode_body(b));
  CHECK(back.kind == "command");
  CHECK(back.evidence == b.evidence);

  auto refused = command_result(c, "refused", "not_approved", nullptr, clock);
  CHECK(refused.verdict == "refused");
  CHECK(refused.reason == "not_approved");
  CHECK(refused.evidence.at("exit_code").empty());
  CHECK(refused.evidence.at("output").empty());
}

// --- the runner ------------------------------------------------------------------------------

namespace {

struct RunnerFixture {
  TempDir tmp{"actions-runner"};
  Ed25519Key key = Ed25519Key::generate();
  ClockState clock;
  asio::io_context io;
  std::vector<ResultBody> reports;
  std::vector<std::pair<std::string, std::chrono::milliseconds>> rechecks;
  fs::path marker = tmp / "restarted";

  std::unique_ptr<ActionRunner> make(ActionPolicy policy) {
    ActionRunner::Hooks hooks;
    hooks.report = [this](const ResultBody& b) { reports.push_back(b); };
    hooks.recheck = [this](const std::string& id, std::chrono::milliseconds d) {
      rechecks.emplace_back(id, d);
      return id == "wordpress-health";
    };
    return std::make_unique<ActionRunner>(io.get_executor(), std::move(policy),
                                          tmp / "command-key.pem", tmp / "command-nonces", kAgent,
                                          clock, std::move(hooks));
  }
  ActionPolicy exec_policy() {
    return policy_with(
        {{"nginx.service", "", {"/bin/sh", "-c", "touch '" + marker.string() + "'"}}});
  }
  tocsin::common::Commands commands(std::vector<Command> cs) {
    tocsin::common::Commands m;
    m.commands = std::move(cs);
    m.command_key_pem = key.public_pem();
    return m;
  }
};

}  // namespace

TEST_CASE(
    "the runner pins the key, acts once, reports, schedules the recheck and refuses a replay") {
  RunnerFixture f;
  auto runner = f.make(f.exec_policy());
  auto c = good_command(f.key);
  c.recheck_test = "wordpress-health";
  c.recheck_after_ns = 180 * kSecond;
  resign(c, f.key);
  runner->on_commands(f.commands({c}));
  f.io.run();
  REQUIRE(runner->command_key().key() != nullptr);
  CHECK(fs::exists(f.tmp / "command-key.pem"));
  CHECK(fs::exists(f.marker));
  REQUIRE(f.reports.size() == 1);
  CHECK(f.reports[0].verdict == "executed");
  CHECK(f.reports[0].evidence.at("recheck") == "wordpress-health");
  REQUIRE(f.rechecks.size() == 1);
  CHECK(f.rechecks[0].second == 180s);

  // The same command again, even from a fresh runner (a restarted agent): refused.
  fs::remove(f.marker);
  auto restarted = f.make(f.exec_policy());
  CHECK(restarted->nonces().seen(c.nonce));
  restarted->on_commands(f.commands({c}));
  f.io.restart();
  f.io.run();
  REQUIRE(f.reports.size() == 2);
  CHECK(f.reports[1].verdict == "refused");
  CHECK(f.reports[1].reason == "replayed_nonce");
  CHECK_FALSE(fs::exists(f.marker));
}

TEST_CASE("the runner reports refusals as results and keeps the pinned key against another") {
  RunnerFixture f;
  auto runner = f.make(f.exec_policy());
  auto good = good_command(f.key);
  auto unapproved = good;
  unapproved.nonce = std::string(32, '1');
  unapproved.approvals = {"alice"};
  resign(unapproved, f.key);
  runner->on_commands(f.commands({unapproved}));
  f.io.run();
  REQUIRE(f.reports.size() == 1);
  CHECK(f.reports[0].verdict == "refused");
  CHECK(f.reports[0].reason == "not_approved");
  CHECK_FALSE(f.reports[0].evidence.at("detail").empty());
  CHECK(runner->nonces().seen(unapproved.nonce));  // spent: it cannot come back later

  // A collector that now presents another key (and signs with it) is not believed.
  auto impostor = Ed25519Key::generate();
  auto forged = good;
  forged.nonce = std::string(32, '2');
  resign(forged, impostor);
  auto msg = f.commands({forged});
  msg.command_key_pem = impostor.public_pem();
  runner->on_commands(msg);
  f.io.restart();
  f.io.run();
  REQUIRE(f.reports.size() == 2);
  CHECK(f.reports[1].reason == "bad_signature");
  CHECK_FALSE(runner->nonces().seen(forged.nonce));
  CHECK(runner->command_key().key()->public_raw() == f.key.public_raw());
  CHECK_FALSE(fs::exists(f.marker));
}

TEST_CASE("a command offered again while it waits is handled once") {
  RunnerFixture f;
  auto runner = f.make(f.exec_policy());
  auto c = good_command(f.key);
  runner->on_commands(f.commands({c, c}));
  runner->on_commands(f.commands({c}));
  f.io.run();
  REQUIRE(f.reports.size() == 1);
  CHECK(f.reports[0].verdict == "executed");
  // Once handled, another offer is a replay, reported as such.
  runner->on_commands(f.commands({c}));
  f.io.restart();
  f.io.run();
  REQUIRE(f.reports.size() == 2);
  CHECK(f.reports[1].reason == "replayed_nonce");
}

TEST_CASE("a recheck naming a test the agent lacks is reported, the action still runs") {
  RunnerFixture f;
  auto runner = f.make(f.exec_policy());
  auto c = good_command(f.key);
  c.recheck_test = "no-such-test";
  c.recheck_after_ns = kSecond;
  resign(c, f.key);
  runner->on_commands(f.commands({c}));
  f.io.run();
  REQUIRE(f.reports.size() == 1);
  CHECK(f.reports[0].verdict == "executed");
  CHECK(f.reports[0].evidence.at("recheck") == "unknown_test:no-such-test");
}

// --- the uplink's poll answer and the scheduler's extra run ---------------------------------

TEST_CASE("handle_poll_answer dispatches Commands and turns polling off for an older collector") {
  std::vector<tocsin::common::Commands> got;
  auto dispatch = [&](tocsin::common::Commands c) { got.push_back(std::move(c)); };
  tocsin::common::Commands cs;
  cs.commands.resize(2);
  CHECK(handle_poll_answer(cs, dispatch) == PollAnswer::dispatched);
  REQUIRE(got.size() == 1);
  CHECK(got[0].commands.size() == 2);
  // What a collector before issue 6 answers: it cannot decode the poll.
  tocsin::common::ErrorMsg old{"malformed_message", "unknown message type 'command_poll'"};
  CHECK(handle_poll_answer(old, dispatch) == PollAnswer::unsupported);
  tocsin::common::ErrorMsg other{"unknown_agent", "revoked"};
  CHECK_THROWS(handle_poll_answer(other, dispatch));
  CHECK_THROWS(handle_poll_answer(tocsin::common::Ack{3}, dispatch));
  CHECK(got.size() == 1);
}

TEST_CASE("Scheduler::run_once_after runs a configured test once after the delay") {
  asio::io_context io;
  TestSpec t;
  t.id = "wordpress-health";
  t.probe = "http_check";
  t.every = 1h;
  std::vector<std::string> ran;
  Scheduler s(io.get_executor(), {t}, [&](const TestSpec& spec) -> asio::awaitable<void> {
    ran.push_back(spec.id);
    co_return;
  });
  CHECK_FALSE(s.run_once_after("nope", 1ms));
  auto start = std::chrono::steady_clock::now();
  CHECK(s.run_once_after("wordpress-health", 50ms));
  io.run();
  CHECK(ran == std::vector<std::string>{"wordpress-health"});
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
}
