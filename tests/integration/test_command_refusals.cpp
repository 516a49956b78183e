// Commands the agent must refuse, end to end (issue 6, "proven by tests"): the real collector
// and agent on loopback, and a command forged or altered in the collector's database, signed
// with another key, expired by the time the agent checks it, replayed, or approved by fewer
// people than the agent demands. For each: the agent refuses with its reason code, its exec
// action did not run (every action appends its name to a file the test reads), `tocsin
// commands --json` shows the refusal, the collector audited it, and `tocsin audit verify`
// still passes (the tampering is in the commands table, which the audit chain does not cover).
#include <doctest/doctest.h>

#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "collector/commands/commands.hpp"
#include "collector/store/store.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/wire.hpp"
#include "tests/integration/harness.hpp"

using namespace tocsin::test;
using json = nlohmann::json;
namespace collector = tocsin::collector;
namespace common = tocsin::common;

namespace {

// An `allowed_actions` exec entry that appends `name` to `log` (there is no systemd here).
std::string exec_entry(const std::string& name, const fs::path& log,
                       const std::string& before = "") {
  return "    - name: " + name + "\n      exec: [\"/bin/sh\", \"-c\", \"" + before + "echo " +
         name + " >> '" + log.string() + "'\"]\n";
}

// A collector, an enrolled agent (not started), an operator who requests and an approver.
struct Setup {
  explicit Setup(const CollectorOptions& o = {}) : c(o), agent(c) {
    agent.set_command_poll("200ms");
    olivia = c.api_token("olivia", "operator");
    anna = c.api_token("anna", "approver");
  }

  // `entries` under allowed_actions.restart_service; `policy` above them (min_approvals).
  void configure_agent(const std::string& entries, const std::string& policy = "") {
    agent.write_config_yaml("tests: []\nallowed_actions:\n" + policy + "  restart_service:\n" +
                            entries);
  }

  // Requested by the operator and approved by the approver: signed and waiting for the agent.
  std::uint64_t approved(const std::string& target) {
    auto req = c.cli_as(olivia, {"command", "request", "--agent", agent.id(), "--restart", target,
                                 "--reason", "refusal test", "--json"});
    REQUIRE_MESSAGE(req.rc == 0, req.err);
    auto id = json::parse(req.out)["id"].get<std::uint64_t>();
    auto ok = c.cli_as(anna, {"approve", std::to_string(id)});
    REQUIRE_MESSAGE(ok.rc == 0, ok.err);
    return id;
  }

  // The command as `tocsin commands --json` lists it.
  json command(std::uint64_t id) {
    auto r = c.cli({"commands", "--json"});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    for (const auto& cmd : json::parse(r.out))
      if (cmd["id"] == id) return cmd;
    FAIL("command " << id << " is not in `tocsin commands --json`: " << r.out);
    return nullptr;
  }

  void wait_state(std::uint64_t id, const std::string& state) {
    json last;
    REQUIRE_MESSAGE(wait_until(
                        [&] {
                          last = command(id);
                          return last["state"] == state;
                        },
                        30s),
                    "command " << id << " never became " << state << ": " << last.dump(2)
                               << "\nagent log:\n"
                               << agent.log());
  }

  // The audit entries about command `id`, in log order.
  std::vector<json> audited(std::uint64_t id) {
    auto r = c.cli({"audit", "export", "--since", "1h"});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    std::vector<json> out;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      auto entry = json::parse(line);
      if (entry["subject"] == "cmd-" + std::to_string(id)) out.push_back(std::move(entry));
    }
    return out;
  }

  // What a refusal leaves behind at the collector: the command is `refused` with the agent's
  // reason, the log shows one delivery and the refusal last, and the chain still verifies.
  void check_refused(std::uint64_t id, const std::string& reason,
                     const std::vector<std::string>& actions) {
    auto cmd = command(id);
    CHECK(cmd["state"] == "refused");
    CHECK_MESSAGE(cmd["outcome_reason"] == reason, cmd.dump(2));
    CHECK(cmd["outcome_evidence"]["exit_code"] == "");
    auto entries = audited(id);
    std::vector<std::string> seen;
    for (const auto& e : entries) seen.push_back(e["action"].get<std::string>());
    CHECK(seen == actions);
    REQUIRE(!entries.empty());
    const auto& refusal = entries.back();
    CHECK(refusal["action"] == "command_refused");
    CHECK(refusal["actor"] == agent.id());
    CHECK(refusal["detail"]["reason"] == reason);
    CHECK(refusal["detail"]["nonce"] == cmd["nonce"]);
    auto verify = c.cli({"audit", "verify"});
    CHECK_MESSAGE(verify.rc == 0, verify.out << verify.err);
  }

  // Rewrites stored command records with the collector stopped, then starts it again: what
  // someone with write access to the database could do.
  void edit_commands(const std::map<std::uint64_t, std::function<void(json&)>>& edits) {
    c.stop();
    {
      auto store = collector::Store::open(c.dir() / "db");
      collector::WriteSet ws;
      for (const auto& [id, edit] : edits) {
        std::string key;
        collector::put_be64(key, id);
        auto value = store->get(collector::Table::commands, key);
        REQUIRE(value);
        auto record = json::parse(*value);
        edit(record);
        ws.put(collector::Table::commands, key, record.dump());
      }
      store->commit(std::move(ws));
    }
    c.start();
  }

  std::vector<std::string> ran() const {
    std::vector<std::string> lines;
    std::ifstream in(ran_log);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  Collector c;
  Agent agent;
  TempDir tmp{"refusals"};
  fs::path ran_log = tmp / "ran.log";
  fs::path olivia, anna;
};

// Signs a stored command record again with `key`, over the fields the collector sends.
void sign_record(json& r, const common::Ed25519Key& key) {
  common::Command k;
  k.id = "cmd-" + std::to_string(r["id"].get<std::uint64_t>());
  k.agent_id = r["agent_id"].get<std::string>();
  k.kind = r["kind"].get<std::string>();
  k.target = r["target"].get<std::string>();
  k.requester = r["requester"].get<std::string>();
  for (const auto& a : r["approvals"]) k.approvals.push_back(a["who"].get<std::string>());
  k.nonce = r["nonce"].get<std::string>();
  k.issued_ns = r["issued_ns"].get<std::int64_t>();
  k.expires_ns = r["expires_ns"].get<std::int64_t>();
  k.recheck_test = r["recheck_test"].get<std::string>();
  k.recheck_after_ns = r["recheck_after_ns"].get<std::int64_t>();
  auto bytes = common::command_signing_bytes(k);
  r["signature"] = common::to_hex(key.sign(bytes));
}

const std::vector<std::string> kRefusedOnce = {"command_requested", "command_approved",
                                               "command_delivered", "command_refused"};

}  // namespace

TEST_CASE(
    "the agent refuses commands altered in the collector database or signed with another key") {
  Setup s;
  s.configure_agent(exec_entry("count", s.ran_log) + exec_entry("harmless", s.ran_log));
  // Approved while the agent is not running, so they wait in state `approved`.
  auto altered_target = s.approved("harmless");
  auto altered_kind = s.approved("harmless");
  auto other_key = s.approved("harmless");
  for (auto id : {altered_target, altered_kind, other_key})
    CHECK(s.command(id)["state"] == "approved");

  auto forger = common::Ed25519Key::generate();
  s.edit_commands({
      {altered_target, [](json& r) { r["target"] = "count"; }},  // old signature kept
      {altered_kind, [](json& r) { r["kind"] = "stop_service"; }},
      {other_key, [&](json& r) { sign_record(r, forger); }},  // a valid signature, wrong key
  });
  s.agent.start();
  for (auto id : {altered_target, altered_kind, other_key}) s.wait_state(id, "refused");
  for (auto id : {altered_target, altered_kind, other_key})
    s.check_refused(id, "bad_signature", kRefusedOnce);
  CHECK(s.command(altered_target)["target"] == "count");

  // A collector whose command key was replaced signs valid-looking commands and offers its new
  // key; the agent keeps the key it pinned at enrollment.
  auto pinned_file = s.agent.state_dir() / "command-key.pem";
  auto pinned = common::read_file(pinned_file);
  s.c.stop();
  common::write_file_atomic(collector::command_key_path(s.c.dir()),
                            common::Ed25519Key::generate().private_pem());
  s.c.start();
  auto new_key = s.approved("count");
  s.wait_state(new_key, "refused");
  s.check_refused(new_key, "bad_signature", kRefusedOnce);
  CHECK_MESSAGE(s.agent.log().find("differs from the pinned one") != std::string::npos,
                s.agent.log());
  CHECK(common::read_file(pinned_file) == pinned);
  CHECK(s.ran().empty());
}

TEST_CASE("the agent refuses a command that expired while it waited behind another action") {
  // The collector hands out only live commands, so the expiry has to pass on the agent: the
  // command waits in the agent's queue behind an action held open by the test. The agent's
  // estimate of collector time is never behind the test's clock here (same host), so once the
  // test has seen the expiry pass, the agent sees it too.
  CollectorOptions o;
  o.extra_yaml = "commands:\n  command_ttl: 5s\n";
  Setup s(o);
  auto started = s.tmp / "slow-started", gate = s.tmp / "gate";
  // Waits for the gate, or gives up when the test's directory is gone (a failed test).
  auto hold = "touch '" + started.string() + "'; while [ -e '" + started.string() +
              "' ] && [ ! -e '" + gate.string() + "' ]; do sleep 0.05; done; ";
  s.configure_agent(exec_entry("slow", s.ran_log, hold) + exec_entry("count", s.ran_log));
  s.agent.start();
  auto slow = s.approved("slow");
  REQUIRE_MESSAGE(wait_until([&] { return fs::exists(started); }, 30s), s.agent.log());
  auto late = s.approved("count");
  s.wait_state(late, "delivered");  // handed out while live, now queued on the agent
  auto expires_ns = s.command(late)["expires_ns"].get<std::int64_t>();
  REQUIRE(wait_until([&] { return common::now_ns() > expires_ns; }, 30s));
  std::ofstream(gate).put('\n');

  s.wait_state(slow, "executed");
  s.wait_state(late, "refused");
  s.check_refused(late, "expired", kRefusedOnce);
  CHECK(s.ran() == std::vector<std::string>{"slow"});
}

TEST_CASE("the agent refuses a replayed command and does not run its action again") {
  Setup s;
  s.configure_agent(exec_entry("count", s.ran_log));
  s.agent.start();
  auto id = s.approved("count");
  s.wait_state(id, "executed");
  REQUIRE(s.ran() == std::vector<std::string>{"count"});
  auto nonce = s.command(id)["nonce"];

  // The same signed command, put back in the queue as if it had never been handed out.
  s.edit_commands({{id, [](json& r) {
                      r["state"] = "approved";
                      r["delivered_ns"] = 0;
                      r["finished_ns"] = 0;
                      r["outcome_reason"] = "";
                      r["outcome_evidence"] = json::object();
                    }}});
  s.wait_state(id, "refused");
  CHECK(s.command(id)["nonce"] == nonce);
  s.check_refused(id, "replayed_nonce",
                  {"command_requested", "command_approved", "command_delivered", "command_executed",
                   "command_delivered", "command_refused"});
  CHECK(s.ran() == std::vector<std::string>{"count"});
}

TEST_CASE("the agent refuses a command with fewer approvers than its own min_approvals") {
  Setup s;  // the collector asks for one approval
  s.configure_agent(exec_entry("count", s.ran_log), "  min_approvals: 2\n");
  s.agent.start();
  auto id = s.approved("count");
  s.wait_state(id, "refused");
  s.check_refused(id, "not_approved", kRefusedOnce);
  CHECK(s.command(id)["outcome_evidence"]["detail"] == "1 distinct approver(s), 2 required");
  CHECK(s.ran().empty());
}
