// restart_service through the Windows Service Control Manager, end to end under wine64: a real
// service (tests/windows/probe_service.c, which appends its process id to a file each time it
// starts) registered with `sc create` in a prefix of its own, the Linux collector, and the
// cross-built agent polling for commands that one person requests and another approves.
#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/integration/harness.hpp"
#include "tests/windows/wine.hpp"

using namespace tocsin::test;
using json = nlohmann::json;

namespace {

constexpr const char* kService = "TocsinProbeSvc";
constexpr const char* kMissing = "TocsinNoSuchSvc";

// The process ids the probe service wrote, one per start.
std::vector<std::string> starts(const fs::path& file) {
  std::ifstream in(file);
  std::vector<std::string> pids;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) pids.push_back(line);
  return pids;
}

// An approver other than the requester (the CLI's admin token); returns its token file.
fs::path approver_token(Collector& c) {
  auto r = c.cli({"api-token", "create", "--name", "anna", "--role", "approver"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto file = c.dir().parent_path() / "anna.token";
  std::ofstream(file) << r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  return file;
}

// Requests `restart_service target` (admin), approves it (anna) and waits until the agent's
// outcome is stored; returns the command as the API shows it.
json restart(Collector& c, const fs::path& anna, const std::string& agent_id,
             const std::string& target, Process& agent) {
  auto req = c.cli({"command", "request", "--agent", agent_id, "--restart", target, "--reason",
                    "SCM test", "--json"});
  REQUIRE_MESSAGE(req.rc == 0, req.err);
  auto id = std::to_string(json::parse(req.out)["id"].get<std::uint64_t>());
  auto approve = run_command({bin("tocsin").string(), "--server",
                              "https://127.0.0.1:" + std::to_string(c.api_port()), "--token-file",
                              anna.string(), "--ca", c.ca_pem().string(), "approve", id});
  REQUIRE_MESSAGE(approve.rc == 0, approve.err);
  json cmd;
  auto settled = [&] {
    cmd = c.api_get("/api/v1/commands/" + id);
    return cmd["state"] == "executed" || cmd["state"] == "failed" || cmd["state"] == "refused";
  };
  REQUIRE_MESSAGE(wait_until(settled, 90s), cmd.dump(2) << "\n" << agent.log());
  return cmd;
}

}  // namespace

TEST_CASE(
    "the Windows agent restarts a real service through the SCM after approval, and an unknown "
    "service fails with the SCM's reason") {
  Collector c;
  TempDir tmp("wine-scm");
  OwnPrefix p(tmp / "prefix");
  auto started = tmp / "starts.txt";
  auto create =
      p.run({"sc", "create", kService,
             "binPath=", "\"" + winpath(TOCSIN_PROBE_SERVICE) + "\" " + winpath(started)});
  REQUIRE_MESSAGE(create.rc == 0, create.out << create.err);
  REQUIRE(p.run({"sc", "start", kService}).rc == 0);
  REQUIRE(p.service_reaches(kService, "RUNNING"));
  REQUIRE(starts(started).size() == 1);

  auto id = enroll(c, tmp / "state", p.path);
  std::ofstream(tmp / "agent.yaml")
      << "state_dir: '" << winpath(tmp / "state") << "'\n"
      << "kill_switch: '" << winpath(tmp / "disabled") << "'\n"
      << "uplink:\n  backoff_initial: 50ms\n  backoff_max: 500ms\n  connect_timeout: 5s\n"
      << "  command_poll: 200ms\n"
      << "allowed_actions:\n  timeout: 60s\n  restart_service: [" << kService << ", " << kMissing
      << "]\n";
  Process agent(
      wine_argv({windows_agent().string(), "run", "--config", winpath(tmp / "agent.yaml")}, p.path),
      tmp / "agent.log");
  auto anna = approver_token(c);

  // Running: stopped through the SCM and started again, a new process (the service wrote its
  // pid at each start; the agent read the same pids from QueryServiceStatusEx).
  auto cmd = restart(c, anna, id, kService, agent);
  INFO(cmd.dump(2));
  CHECK(cmd["state"] == "executed");
  CHECK(cmd["outcome_reason"] == "restarted");
  auto pids = starts(started);
  REQUIRE(pids.size() == 2);
  CHECK(pids[0] != pids[1]);
  auto ev = cmd["outcome_evidence"];
  CHECK(ev["previous_state"] == "running");
  CHECK(ev["previous_pid"] == pids[0]);
  CHECK(ev["new_state"] == "running");
  CHECK(ev["new_pid"] == pids[1]);
  CHECK(ev["exit_code"] == "0");
  CHECK(ev["output"].get<std::string>().find("restarted") != std::string::npos);
  CHECK(p.service_reaches(kService, "RUNNING"));

  // Stopped: a restart starts it, like `systemctl restart`.
  p.stop_service(kService);
  cmd = restart(c, anna, id, kService, agent);
  INFO(cmd.dump(2));
  CHECK(cmd["state"] == "executed");
  CHECK(cmd["outcome_evidence"]["previous_state"] == "stopped");
  pids = starts(started);
  REQUIRE(pids.size() == 3);
  CHECK(cmd["outcome_evidence"]["new_pid"] == pids[2]);

  // Allowed by the agent's config, but no such service: the SCM's own error, by number and text.
  cmd = restart(c, anna, id, kMissing, agent);
  INFO(cmd.dump(2));
  CHECK(cmd["state"] == "failed");
  CHECK(cmd["outcome_reason"] == "no_such_service");
  CHECK(cmd["outcome_evidence"]["win32_error"] == "1060");  // ERROR_SERVICE_DOES_NOT_EXIST
  CHECK(cmd["outcome_evidence"]["exit_code"] == "1060");
  auto output = cmd["outcome_evidence"]["output"].get<std::string>();
  CHECK(output.find(std::string(kMissing) + ": cannot open the service: ") == 0);
  CHECK(output.find("(Win32 error 1060)") != std::string::npos);
  CHECK(starts(started).size() == 3);  // nothing else was touched
}

TEST_CASE("on Windows a restart_service name is a Windows service name, not a systemd unit") {
  TempDir tmp("wine-scm-config");
  auto check = [&](const std::string& entry) {
    std::ofstream(tmp / "agent.yaml", std::ios::trunc)
        << "state_dir: state\nallowed_actions:\n  restart_service:\n    - " << entry << "\n";
    return wine({windows_agent().string(), "tests", "--config", winpath(tmp / "agent.yaml")});
  };
  for (std::string ok : {"Spooler", "\"Probe Service\"", "wuauserv"}) {
    auto r = check(ok);
    CHECK_MESSAGE(r.rc == 0, ok << ": " << r.out << r.err);
  }
  for (std::string bad : {"'a\\b'", "a/b", "\"\""}) {
    auto r = check(bad);
    INFO(bad << ": " << r.out << r.err);
    CHECK(r.rc != 0);
    CHECK(r.err.find("agent.yaml:4:") != std::string::npos);
    CHECK(r.err.find("is not a Windows service name") != std::string::npos);
  }
}
