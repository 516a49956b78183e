// The `tocsin` CLI as a SOC engineer meets it (issue 18): usage errors that say what was wrong,
// the incident verbs on one or many ids, silences, newest-first results, clock flags, CSV
// numbers; and the collector's check-config and init with port 0. Real binaries, loopback.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/integration/harness.hpp"

using namespace tocsin::test;
using json = nlohmann::json;

namespace {

// TOCSIN_CLI_BIN runs these tests against another build of the CLI (e.g. the one before a fix).
std::string cli_bin() {
  const char* alt = std::getenv("TOCSIN_CLI_BIN");
  return alt && *alt ? alt : bin("tocsin").string();
}

// The CLI with no collector behind it: for errors that must come before any request.
CommandResult offline(std::vector<std::string> args) {
  std::vector<std::string> argv = {cli_bin(), "--server", "https://127.0.0.1:1", "--token-file",
                                   "/nonexistent/admin.token"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, 30s);
}

CommandResult run_cli(Collector& c, std::vector<std::string> args) {
  std::vector<std::string> argv = {cli_bin(),
                                   "--server",
                                   "https://127.0.0.1:" + std::to_string(c.api_port()),
                                   "--token-file",
                                   c.admin_token().string(),
                                   "--ca",
                                   c.ca_pem().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv);
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A collector with an incident about a real agent (its prevention failed).
struct IncidentFixture {
  Collector c;
  OpenPort open;
  Agent agent{c};
  std::string id;

  IncidentFixture() {
    agent.write_config_yaml(
        "allowlist:\n  network: [\"127.0.0.1\"]\ntests:\n"
        "  - id: smb-should-be-blocked\n    kind: tcp_connect\n    every: 1s\n    jitter: 0s\n"
        "    timeout: 2s\n    technique: T1021.002\n"
        "    expect: {prevent: true, alert_within: 1s}\n"
        "    params: {targets: [\"127.0.0.1:" +
        std::to_string(open.port()) + "\"]}\n");
    agent.start();
    json found;
    REQUIRE_MESSAGE(wait_until(
                        [&] {
                          auto list = c.api_get("/api/v1/incidents");  // not a temporary's member
                          for (const auto& i : list["incidents"])
                            if (i["agent_id"] == agent.id()) found = i;
                          return !found.is_null();
                        },
                        60s),
                    "incidents: " << c.api_get("/api/v1/incidents").dump() << "\n"
                                  << c.log());
    agent.stop();
    id = std::to_string(found["id"].get<std::uint64_t>());
  }
};

}  // namespace

TEST_CASE("an unknown subcommand is named with the closest known one and the usage exit code") {
  auto r = offline({"incidnets"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "unknown command 'incidnets'"), r.err);
  CHECK_MESSAGE(has(r.err, "did you mean 'incidents'?"), r.err);
  CHECK_FALSE(has(r.err, "A subcommand is required"));

  r = offline({"incident", "clsoe", "1"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "unknown command 'clsoe' for 'tocsin incident'"), r.err);
  CHECK_MESSAGE(has(r.err, "did you mean 'close'?"), r.err);

  // Global options with values before the command are skipped, not taken for commands.
  r = offline({"--timeout", "5", "silense", "list"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "did you mean 'silence'?"), r.err);

  r = offline({"zzzzzzzzzz"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "unknown command 'zzzzzzzzzz'"));
  CHECK_FALSE(has(r.err, "did you mean"));
}

TEST_CASE("an id that is not a positive integer is a usage error naming the id") {
  auto r = offline({"incident", "show", "abc"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "incident id must be a positive integer, got 'abc'"), r.err);
  CHECK(r.err.size() < 300);  // not a 300-digit range
  r = offline({"incident", "ack", "5", "0"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "got '0'"));
  r = offline({"incident", "resolve", "x7", "fixed"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "got 'x7'"));
  // Two ids and no reason: the second id must not become the reason of closing the first.
  r = offline({"incident", "close", "12", "13"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "the last word '13' looks like an incident id"), r.err);
  r = offline({"approve", "abc"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "command id must be a positive integer, got 'abc'"), r.err);
}

TEST_CASE("silence arguments are checked before anything is sent") {
  auto r = offline({"silence", "add", "--until", "2h", "--reason", "maintenance"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "at least one matcher"), r.err);
  r = offline({"silence", "add", "--label", "site", "--until", "2h", "--reason", "x"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "--label must be KEY=VALUE, got 'site'"), r.err);
  r = offline(
      {"silence", "add", "--label", "a=1", "--label", "a=2", "--until", "2h", "--reason", "x"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "given twice"));
  r = offline({"silence", "add", "--test", "t", "--until", "soon", "--reason", "x"});
  CHECK(r.rc == 2);
  CHECK_MESSAGE(has(r.err, "--until must be a duration"), r.err);
  r = offline(
      {"silence", "add", "--test", "t", "--until", "2020-01-01T00:00:00Z", "--reason", "x"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "in the past"));
  r = offline({"silence", "add", "--test", "t", "--until", "2h"});
  CHECK(r.rc == 2);  // --reason is required
  r = offline({"silence", "list", "--all", "--expired"});
  CHECK(r.rc == 2);
  r = offline({"silence", "expire", "a b"});
  CHECK(r.rc == 2);
  CHECK(has(r.err, "silence id"));
  // Valid arguments get as far as needing a token.
  r = offline({"silence", "add", "--test", "t", "--label", "site=dmz", "--until", "2h", "--reason",
               "maintenance window"});
  CHECK(r.rc == 1);
  CHECK_MESSAGE(has(r.err, "token"), r.err);
}

TEST_CASE("incident verbs: ack many ids with a report per id, pause and resume") {
  IncidentFixture f;
  auto r = run_cli(f.c, {"incident", "ack", f.id, "999999"});
  CHECK(r.rc == 1);  // one failed
  CHECK_MESSAGE(has(r.out, "#" + f.id + ": ack done, now acknowledged"), r.out);
  CHECK_MESSAGE(has(r.out, "#999999: FAILED"), r.out);
  CHECK(has(r.out, "404"));
  CHECK(has(r.err, "1 of 2 incident(s) failed"));

  r = run_cli(f.c, {"incident", "pause", f.id, "waiting on the vendor"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK_MESSAGE(has(r.out, "SLA paused: waiting on the vendor"), r.out);
  r = run_cli(f.c, {"incident", "resume", f.id});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK_FALSE(has(r.out, "SLA paused"));
  r = run_cli(f.c, {"incident", "show", f.id, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(json::parse(r.out)["state"] == "acknowledged");
}

// Against the server side of issue 18: POST /api/v1/incidents/N/close, the agent/test/kind
// filters and /api/v1/silences.
TEST_CASE("incident close, incident filters and silences end to end") {
  IncidentFixture f;
  auto r = run_cli(f.c, {"incidents", "--agent", f.agent.id(), "--kind", "prevention_failed",
                         "--test", "smb-should-be-blocked", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(json::parse(r.out).size() == 1);
  r = run_cli(f.c, {"incidents", "--agent", "nobody", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(json::parse(r.out).empty());

  r = run_cli(f.c, {"silence", "add", "--test", "smb-should-be-blocked", "--until", "2h",
                    "--reason", "firewall change window", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto silence = json::parse(r.out);
  CHECK(silence["state"] == "active");
  r = run_cli(f.c, {"silence", "list"});
  CHECK(has(r.out, "test=smb-should-be-blocked"));
  CHECK(has(r.out, "firewall change window"));
  r = run_cli(f.c, {"incident", "show", f.id});
  CHECK(has(r.out, "silenced by: silence " + silence["id"].get<std::string>()));
  r = run_cli(f.c, {"silence", "expire", silence["id"].get<std::string>()});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  r = run_cli(f.c, {"silence", "list", "--expired", "--json"});
  CHECK(json::parse(r.out).size() == 1);

  r = run_cli(f.c, {"incident", "close", f.id, "accepted risk: legacy SMB host"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(has(r.out, "state: closed"));
}

TEST_CASE("results are listed newest first with 'N of total', and agents flag unsynced clocks") {
  Collector c;
  OpenPort open;
  Agent a(c);
  Agent never_connected(c);  // enrolled, never measured its clock
  a.write_config({{"one", "1s", {"127.0.0.1:" + std::to_string(open.port())}},
                  {"two", "1s", {"127.0.0.1:" + std::to_string(open.port())}},
                  {"three", "1s", {"127.0.0.1:" + std::to_string(open.port())}}});
  a.start({"--once"});
  REQUIRE(a.process().wait(60s) == 0);

  auto r = run_cli(c, {"results", "--limit", "2", "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto j = json::parse(r.out);
  REQUIRE(j.size() == 2);
  CHECK(j[0]["seq"].get<int>() == 3);
  CHECK(j[1]["seq"].get<int>() == 2);
  r = run_cli(c, {"results", "--limit", "2"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK_MESSAGE(has(r.out, "2 of 3 result(s)"), r.out);

  r = run_cli(c, {"agents"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  INFO(r.out);
  std::istringstream lines(r.out);
  std::string line;
  int unsynced = 0, ok = 0;
  while (std::getline(lines, line)) {
    if (has(line, never_connected.id())) unsynced += has(line, "UNSYNCED");
    if (has(line, a.id())) ok += line.size() >= 2 && line.substr(line.size() - 2) == "ok";
    CHECK_FALSE(has(line, "± 0.0 ms"));
  }
  CHECK(unsynced == 1);
  CHECK(ok == 1);
  CHECK(has(r.out, "1 agent(s) with an unsynchronised clock"));
}

TEST_CASE("latency CSV carries plain numbers with the unit in the header") {
  Collector c;
  auto r = run_cli(c, {"latency", "--format", "csv"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto header = r.out.substr(0, r.out.find('\n'));
  CHECK_MESSAGE(has(header, "time_to_alert_p50_ms"), header);
  CHECK(has(header, "clock_anomalies"));
  CHECK_FALSE(has(header, " "));
}

TEST_CASE("check-config validates what run would load and names the bad key and line") {
  Collector c;
  auto cfg = c.dir() / "collector.yaml";
  auto r =
      run_command({bin("tocsin-collector").string(), "check-config", "--config", cfg.string()});
  CHECK_MESSAGE(r.rc == 0, r.err);
  CHECK_MESSAGE(r.out.rfind("ok: agents on 127.0.0.1:" + std::to_string(c.agent_port()), 0) == 0,
                r.out);
  CHECK(has(r.out, "API on 127.0.0.1:" + std::to_string(c.api_port())));

  auto bad = c.dir() / "bad.yaml";
  std::ofstream(bad) << read_text(cfg) << "correlation_typo: 1\n";
  r = run_command({bin("tocsin-collector").string(), "check-config", "--config", bad.string()});
  CHECK(r.rc == 1);
  CHECK_MESSAGE(has(r.err, "correlation_typo"), r.err);
  CHECK(has(r.err, "bad.yaml"));
  r = run_command(
      {bin("tocsin-collector").string(), "check-config", "--config", bad.string(), "--json"});
  CHECK(r.rc == 1);
  auto j = json::parse(r.out);
  CHECK(j["ok"] == false);
  CHECK(has(j["error"].get<std::string>(), "correlation_typo"));

  // A server key that does not exist is found without starting anything.
  auto nokey = c.dir() / "nokey.yaml";
  std::string text = read_text(cfg);
  auto pos = text.find("server_key: server.key");
  REQUIRE(pos != std::string::npos);
  text.replace(pos, 22, "server_key: missing.key");
  std::ofstream(nokey) << text;
  r = run_command({bin("tocsin-collector").string(), "check-config", "--config", nokey.string()});
  CHECK(r.rc == 1);
  CHECK_MESSAGE(has(r.err, "missing.key"), r.err);

  // A log level run would refuse only once it starts logging.
  auto verbose = c.dir() / "verbose.yaml";
  text = read_text(cfg);
  pos = text.find("log_level: ");
  REQUIRE(pos != std::string::npos);
  text.replace(pos, text.find('\n', pos) - pos, "log_level: verbose");
  std::ofstream(verbose) << text;
  r = run_command({bin("tocsin-collector").string(), "check-config", "--config", verbose.string()});
  CHECK(r.rc == 1);
  CHECK_MESSAGE(has(r.err, "unknown level 'verbose'"), r.err);
  CHECK(c.running());  // the live collector was not disturbed
}

TEST_CASE("init with port 0 writes the ports it chose, so a restart keeps them") {
  Collector c;  // the harness initialises with 127.0.0.1:0 for both listeners
  auto yaml = read_text(c.dir() / "collector.yaml");
  CHECK_FALSE(has(yaml, "agent_listen: 127.0.0.1:0\n"));
  CHECK_FALSE(has(yaml, "api_listen: 127.0.0.1:0\n"));
  CHECK_MESSAGE(has(yaml, "agent_listen: 127.0.0.1:" + std::to_string(c.agent_port()) + "\n"),
                yaml);
  CHECK(has(yaml, "api_listen: 127.0.0.1:" + std::to_string(c.api_port()) + "\n"));
}
