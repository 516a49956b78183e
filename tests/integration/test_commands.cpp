// Remote restart with approval, end to end: a real nginx started by the test goes down, the
// agent's http_check opens a health incident at the real collector, an operator requests a
// restart, the operator cannot approve it, an approver does, the agent runs the `exec` action
// from its own config (starting nginx again), rechecks, and the incident resolves on its own —
// with the webhook calls a person would see. A target outside the agent's allowlist is refused
// by the agent. Every step is in the audit log, which still verifies.
#include <doctest/doctest.h>
#include <signal.h>

#include <fstream>
#include <string>

#include "tests/integration/harness.hpp"
#include "tests/unit/peers.hpp"

using namespace firedrill::test;
using json = nlohmann::json;

namespace {

// nginx as a daemon (master + worker), as a service manager would run it.
struct DaemonNginx {
  explicit DaemonNginx(const TempDir& tmp) : dir(tmp / "nginx") {
    fs::create_directories(dir / "www");
    fs::create_directories(dir / "tmp");
    std::ofstream(dir / "www" / "health") << "status: ok\n";
    port = closed_port();
    auto t = (dir / "tmp").string();
    std::ofstream(dir / "nginx.conf")
        << "worker_processes 1;\npid " << (dir / "nginx.pid").string() << ";\nerror_log "
        << (dir / "error.log").string() << ";\nevents { worker_connections 64; }\n"
        << "http {\n  access_log off;\n  client_body_temp_path " << t << "/body;\n  proxy_temp_path "
        << t << "/proxy;\n  fastcgi_temp_path " << t << "/fcgi;\n  uwsgi_temp_path " << t
        << "/uwsgi;\n  scgi_temp_path " << t << "/scgi;\n  default_type text/plain;\n"
        << "  server { listen 127.0.0.1:" << port << "; root " << (dir / "www").string() << "; }\n}\n";
  }
  ~DaemonNginx() { stop(); }
  std::vector<std::string> argv() const {
    return {"/usr/sbin/nginx", "-p", dir.string(), "-c", (dir / "nginx.conf").string(), "-e",
            (dir / "error.log").string()};
  }
  void start() {
    auto r = run_command(argv(), 20s);
    REQUIRE_MESSAGE(r.rc == 0, r.err);
  }
  void stop() {
    std::ifstream in(dir / "nginx.pid");
    long pid = 0;
    if (in >> pid && pid > 1) ::kill(static_cast<pid_t>(pid), SIGTERM);
    wait_until([&] { return !fs::exists(dir / "nginx.pid"); }, 10s);
  }
  bool up() const { return fs::exists(dir / "nginx.pid"); }
  fs::path dir;
  std::uint16_t port = 0;
};

// A token of `role` named `name`, written next to the collector's files; returns its path.
fs::path make_token(Collector& c, const std::string& name, const std::string& role) {
  auto r = c.cli({"api-token", "create", "--name", name, "--role", role});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto file = c.dir().parent_path() / (name + ".token");
  std::ofstream(file) << r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  return file;
}

CommandResult cli_as(Collector& c, const fs::path& token, std::vector<std::string> args) {
  std::vector<std::string> argv{bin("firedrill").string(), "--server",
                                "https://127.0.0.1:" + std::to_string(c.api_port()), "--token-file",
                                token.string(), "--ca", c.ca_pem().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv);
}

json command(Collector& c, std::uint64_t id) { return c.api_get("/api/v1/commands/" + std::to_string(id)); }

json health_incident(Collector& c) {
  auto list = c.api_get("/api/v1/incidents")["incidents"];
  for (const auto& i : list)
    if (i["kind"] == "health_failed") return i;
  return nullptr;
}

}  // namespace

TEST_CASE("an unhealthy nginx is restarted by the agent after an approver other than the requester approves") {
  REQUIRE_MESSAGE(fs::exists("/usr/sbin/nginx"), "nginx is missing: install it (scripts/deps)");
  SiemMock hook({{"POST /hook", {{{"status", 200}, {"body", "ok"}}}}});
  CollectorOptions o;
  o.extra_yaml = "notify:\n  channels:\n    - {name: hook, type: webhook, url: \"" + hook.url() +
                 "/hook\", secret: 0123456789abcdef-secret}\n";
  Collector c(o);
  TempDir tmp("restart");
  DaemonNginx nginx(tmp);
  nginx.start();

  Agent agent(c);
  agent.set_command_poll("200ms");
  std::string exec = "[";
  for (const auto& a : nginx.argv()) exec += "\"" + a + "\", ";
  exec.resize(exec.size() - 2);
  exec += "]";
  agent.write_config_yaml(
      "allowlist:\n  network: [\"127.0.0.1\"]\n"
      "allowed_actions:\n  restart_service:\n    - name: nginx-test\n      exec: " + exec + "\n"
      "tests:\n  - id: wordpress-health\n    kind: http_check\n    every: 2s\n    jitter: 0s\n"
      "    timeout: 2s\n    params:\n      url: http://127.0.0.1:" + std::to_string(nginx.port) +
      "/health\n      expect_status: 200\n");
  agent.start();
  REQUIRE_MESSAGE(wait_until([&] { return c.stored_results(agent.id()) >= 1; }, 30s), agent.log());

  // The service goes down: the agent's health check opens an incident at the collector.
  nginx.stop();
  json incident;
  REQUIRE_MESSAGE(wait_until([&] {
                    incident = health_incident(c);
                    return !incident.is_null() && incident["state"] == "open";
                  }, 60s),
                  c.log());

  auto olivia = make_token(c, "olivia", "operator");
  auto anna = make_token(c, "anna", "approver");
  auto viewer = make_token(c, "screen", "viewer");

  auto req = cli_as(c, olivia, {"command", "request", "--agent", agent.id(), "--restart", "nginx-test",
                                "--reason", "wordpress-health failing", "--recheck",
                                "wordpress-health", "--recheck-after", "1s", "--json"});
  REQUIRE_MESSAGE(req.rc == 0, req.err);
  auto id = json::parse(req.out)["id"].get<std::uint64_t>();
  auto sid = std::to_string(id);

  // Refusals before anything runs: the requester, and a viewer.
  auto self = cli_as(c, olivia, {"approve", sid});
  CHECK(self.rc != 0);
  CHECK_MESSAGE(self.err.find("cannot approve their own request") != std::string::npos, self.err);
  auto weak = cli_as(c, viewer, {"approve", sid});
  CHECK(weak.rc != 0);
  CHECK_MESSAGE(weak.err.find("403") != std::string::npos, weak.err);
  auto pending = cli_as(c, anna, {"approvals"});
  REQUIRE(pending.rc == 0);
  CHECK_MESSAGE(pending.out.find("nginx-test") != std::string::npos, pending.out);
  CHECK(command(c, id)["state"] == "awaiting_approval");
  CHECK_FALSE(nginx.up());

  auto ok = cli_as(c, anna, {"approve", sid});
  REQUIRE_MESSAGE(ok.rc == 0, ok.err);

  // The agent fetches the signed command, runs its own exec action, reports it, rechecks.
  REQUIRE_MESSAGE(wait_until([&] { return command(c, id)["state"] == "executed"; }, 60s),
                  command(c, id).dump(2) << "\n" << agent.log());
  CHECK(nginx.up());
  auto done = command(c, id);
  CHECK(done["outcome_evidence"]["exit_code"] == "0");
  CHECK(done["approvals"][0]["who"] == "anna");
  REQUIRE_MESSAGE(wait_until([&] {
                    incident = health_incident(c);
                    return incident["state"] == "resolved";
                  }, 60s),
                  incident.dump(2));

  // A service the agent does not allow: approved at the collector, refused by the agent.
  auto bad = cli_as(c, olivia, {"command", "request", "--agent", agent.id(), "--restart",
                                "sshd.service", "--reason", "try", "--json"});
  REQUIRE_MESSAGE(bad.rc == 0, bad.err);
  auto bad_id = json::parse(bad.out)["id"].get<std::uint64_t>();
  REQUIRE(cli_as(c, anna, {"approve", std::to_string(bad_id)}).rc == 0);
  REQUIRE_MESSAGE(wait_until([&] { return command(c, bad_id)["state"] == "refused"; }, 60s),
                  command(c, bad_id).dump(2));
  CHECK(command(c, bad_id)["outcome_reason"] == "not_allowlisted");
  agent.stop();

  // What a person saw: the incident opened and resolved on the webhook.
  std::string events;
  for (const auto& r : hook.requests("POST", "/hook"))
    events += json::parse(std::string(r["body"]))["event"]["what"].get<std::string>() + " ";
  CHECK_MESSAGE(events.find("opened") != std::string::npos, events);
  CHECK_MESSAGE(events.find("resolved") != std::string::npos, events);

  // Every step is audited, and the chain verifies.
  auto verify = c.cli({"audit", "verify"});
  CHECK_MESSAGE(verify.rc == 0, verify.out << verify.err);
  auto exported = c.cli({"audit", "export", "--since", "1h"});
  REQUIRE(exported.rc == 0);
  for (const char* a : {"command_requested", "command_approved", "command_delivered", "command_executed",
                        "command_refused"})
    CHECK_MESSAGE(exported.out.find(a) != std::string::npos, a);
}
