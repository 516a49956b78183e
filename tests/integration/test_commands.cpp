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
#include <thread>

#include "tests/integration/harness.hpp"
#include "tests/unit/peers.hpp"

using namespace tocsin::test;
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

  auto olivia = c.api_token("olivia", "operator");
  auto anna = c.api_token("anna", "approver");
  auto viewer = c.api_token("screen", "viewer");

  auto req = c.cli_as(olivia, {"command", "request", "--agent", agent.id(), "--restart", "nginx-test",
                                "--reason", "wordpress-health failing", "--recheck",
                                "wordpress-health", "--recheck-after", "1s", "--json"});
  REQUIRE_MESSAGE(req.rc == 0, req.err);
  auto id = json::parse(req.out)["id"].get<std::uint64_t>();
  auto sid = std::to_string(id);

  // Refusals before anything runs: the requester, and a viewer.
  auto self = c.cli_as(olivia, {"approve", sid});
  CHECK(self.rc != 0);
  CHECK_MESSAGE(self.err.find("cannot approve their own request") != std::string::npos, self.err);
  auto weak = c.cli_as(viewer, {"approve", sid});
  CHECK(weak.rc != 0);
  CHECK_MESSAGE(weak.err.find("403") != std::string::npos, weak.err);
  auto pending = c.cli_as(anna, {"approvals"});
  REQUIRE(pending.rc == 0);
  CHECK_MESSAGE(pending.out.find("nginx-test") != std::string::npos, pending.out);
  CHECK(command(c, id)["state"] == "awaiting_approval");
  CHECK_FALSE(nginx.up());

  auto ok = c.cli_as(anna, {"approve", sid});
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
  auto bad = c.cli_as(olivia, {"command", "request", "--agent", agent.id(), "--restart",
                                "sshd.service", "--reason", "try", "--json"});
  REQUIRE_MESSAGE(bad.rc == 0, bad.err);
  auto bad_id = json::parse(bad.out)["id"].get<std::uint64_t>();
  REQUIRE(c.cli_as(anna, {"approve", std::to_string(bad_id)}).rc == 0);
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

namespace {

// The approval mail to `to` (its text part), or null.
json approval_mail_to(const SmtpSink& sink, const std::string& to) {
  for (int n = 1; n <= static_cast<int>(sink.count()); ++n) {
    auto m = sink.mail(n);
    if (m["to"] != to || m["subject"].get<std::string>().find("Approval needed") == std::string::npos) continue;
    for (const auto& p : m["parts"])
      if (p["type"] == "text/plain") return {{"subject", m["subject"]}, {"text", p["text"]}};
  }
  return nullptr;
}

// The path of the link after "Review and decide: " (its host is notify.link_base).
std::string link_path(const json& mail) {
  std::string text = mail["text"];
  auto at = text.find("Review and decide: ");
  REQUIRE_MESSAGE(at != std::string::npos, text);
  auto url = text.substr(at + 19, text.find('\n', at) - at - 19);
  auto path = url.find("/approve/");
  REQUIRE_MESSAGE(path != std::string::npos, url);
  return url.substr(path);
}

struct Page {
  int status = 0;
  std::string body;
};

// A browser's GET or form POST, with curl (not our client) against the real API listener.
Page browse(Collector& c, const std::string& path, const std::string& form = {}) {
  std::vector<std::string> argv{"/usr/bin/curl", "-sS", "--cacert", c.ca_pem().string(), "-w", "\n%{http_code}",
                                "https://127.0.0.1:" + std::to_string(c.api_port()) + path};
  if (!form.empty()) {
    argv.push_back("--data");
    argv.push_back(form);
  }
  auto r = run_command(argv);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto nl = r.out.rfind('\n');
  return {std::stoi(r.out.substr(nl + 1)), r.out.substr(0, nl)};
}

bool command_exists(Collector& c, std::uint64_t id) {
  try {
    command(c, id);
    return true;
  } catch (const std::exception&) {  // 404
    return false;
  }
}

std::string yaml_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (const auto& a : v) s += "\"" + a + "\", ";
  s.resize(s.size() - 2);
  return s + "]";
}

std::string health_agent_yaml(const DaemonNginx& nginx, const std::vector<std::string>& exec) {
  return "allowlist:\n  network: [\"127.0.0.1\"]\n"
         "allowed_actions:\n  restart_service:\n    - name: nginx-test\n      exec: " + yaml_list(exec) + "\n"
         "tests:\n  - id: wordpress-health\n    kind: http_check\n    every: 2s\n    jitter: 0s\n"
         "    timeout: 2s\n    params:\n      url: http://127.0.0.1:" + std::to_string(nginx.port) +
         "/health\n      expect_status: 200\n";
}

}  // namespace

TEST_CASE("the watchdog: unhealthy nginx, approval mail with a one-time link, restart, recheck, resolved") {
  REQUIRE_MESSAGE(fs::exists("/usr/sbin/nginx"), "nginx is missing: install it (scripts/deps)");
  SmtpSink sink;
  SiemMock hook({{"POST /hook", {{{"status", 200}, {"body", "ok"}}}}});
  CollectorOptions o;
  o.extra_yaml = "notify:\n  link_base: https://collector.soc.test:7444\n  channels:\n"
                 "    - {name: soc-mail, type: email, url: \"" + sink.url() +
                 "\", starttls: off, from: tocsin@soc.test, to: [soc@soc.test]}\n"
                 "    - {name: hook, type: webhook, url: \"" + hook.url() +
                 "/hook\", secret: 0123456789abcdef-secret, events: [opened, updated, escalated, resolved]}\n"
                 "  approvals:\n    channel: soc-mail\n    approvers:\n"
                 "      - {name: anna, email: anna@soc.test}\n      - {name: ben, email: ben@soc.test}\n"
                 "watch:\n  - test: wordpress-health\n    on_unhealthy: request_restart\n"
                 "    target: nginx-test\n    recheck_after: 2s\n    max_restarts: 3 per 1h\n";
  Collector c(o);
  TempDir tmp("watchdog");
  DaemonNginx nginx(tmp);
  nginx.start();
  Agent agent(c);
  agent.set_command_poll("200ms");
  agent.write_config_yaml(health_agent_yaml(nginx, nginx.argv()));
  agent.start();
  REQUIRE_MESSAGE(wait_until([&] { return c.stored_results(agent.id()) >= 1; }, 30s), agent.log());

  // Down: incident, a restart request by the watchdog, the SLA paused, a mail to each approver.
  nginx.stop();
  json anna_mail, ben_mail;
  REQUIRE_MESSAGE(wait_until([&] {
                    anna_mail = approval_mail_to(sink, "anna@soc.test");
                    ben_mail = approval_mail_to(sink, "ben@soc.test");
                    return !anna_mail.is_null() && !ben_mail.is_null();
                  }, 60s),
                  "mails: " << sink.count() << "\n" << c.log());
  CHECK(anna_mail["subject"] == "[Tocsin] Approval needed: restart nginx-test on agent " + agent.id() + " (cmd-1)");
  std::string text = anna_mail["text"];
  CHECK_MESSAGE(text.find("Requested by: watchdog") != std::string::npos, text);
  CHECK_MESSAGE(text.find("tocsin approve 1") != std::string::npos, text);
  auto incident = health_incident(c);
  CHECK(incident["pause_reason"] == "waiting for approval of restart cmd-1");
  CHECK(command(c, 1)["requester"] == "watchdog");

  // Opening the link shows what will happen and changes nothing.
  auto anna_link = link_path(anna_mail), ben_link = link_path(ben_mail);
  CHECK(anna_link != ben_link);
  auto page = browse(c, anna_link);
  CHECK(page.status == 200);
  CHECK_MESSAGE(page.body.find("Approve the restart") != std::string::npos, page.body);
  CHECK(page.body.find("nginx-test") != std::string::npos);
  CHECK(browse(c, anna_link).status == 200);
  CHECK(command(c, 1)["state"] == "awaiting_approval");
  CHECK_FALSE(nginx.up());
  // A damaged link decides nothing.
  std::string forged = anna_link;
  forged[forged.size() - 5] = forged[forged.size() - 5] == 'A' ? 'B' : 'A';
  CHECK(browse(c, forged, "decision=approve").status == 404);
  CHECK(command(c, 1)["state"] == "awaiting_approval");

  // Confirming on the page approves as anna; the same link a second time is refused.
  auto approved = browse(c, anna_link, "decision=approve");
  CHECK_MESSAGE(approved.status == 200, approved.body);
  CHECK_MESSAGE(approved.body.find("Approved") != std::string::npos, approved.body);
  auto again = browse(c, anna_link, "decision=approve");
  CHECK(again.status == 409);
  CHECK_MESSAGE(again.body.find("already used") != std::string::npos, again.body);
  CHECK(browse(c, ben_link, "decision=deny&reason=late").status == 409);  // decided already
  CHECK(command(c, 1)["approvals"][0]["who"] == "anna");

  // The agent restarts nginx with its own exec entry, rechecks, and the incident resolves.
  REQUIRE_MESSAGE(wait_until([&] { return command(c, 1)["state"] == "executed"; }, 60s),
                  command(c, 1).dump(2) << "\n" << agent.log());
  CHECK(nginx.up());
  REQUIRE_MESSAGE(wait_until([&] {
                    incident = health_incident(c);
                    return incident["state"] == "resolved";
                  }, 60s),
                  incident.dump(2));
  agent.stop();

  // The notifier delivers on its own tick, after the incident changed: wait for the last one.
  std::string events;
  auto hook_events = [&] {
    events.clear();
    for (const auto& r : hook.requests("POST", "/hook"))
      events += json::parse(std::string(r["body"]))["event"]["what"].get<std::string>() + " ";
    return events.find("auto_resolved") != std::string::npos;
  };
  CHECK_MESSAGE(wait_until(hook_events, 30s), events);
  for (const char* w : {"opened", "paused", "resumed", "auto_resolved"})
    CHECK_MESSAGE(events.find(w) != std::string::npos, w << " missing from: " << events);
  CHECK(events.find("escalated") == std::string::npos);

  auto verify = c.cli({"audit", "verify"});
  CHECK_MESSAGE(verify.rc == 0, verify.out << verify.err);
  auto exported = c.cli({"audit", "export", "--since", "1h"});
  REQUIRE(exported.rc == 0);
  for (const char* a : {"command_requested", "incident_paused", "command_approved", "approval_link_refused",
                        "command_executed", "incident_auto_resolved"})
    CHECK_MESSAGE(exported.out.find(a) != std::string::npos, a);
  CHECK(exported.out.find("\"via\":\"approval link\"") != std::string::npos);
}

TEST_CASE("the watchdog escalates a restart that did not help and stops at max_restarts") {
  REQUIRE_MESSAGE(fs::exists("/usr/sbin/nginx"), "nginx is missing: install it (scripts/deps)");
  SmtpSink sink;
  SiemMock hook({{"POST /hook", {{{"status", 200}, {"body", "ok"}}}}});
  CollectorOptions o;
  o.extra_yaml = "notify:\n  link_base: https://collector.soc.test:7444\n  channels:\n"
                 "    - {name: hook, type: webhook, url: \"" + hook.url() +
                 "/hook\", secret: 0123456789abcdef-secret}\n"
                 "    - {name: soc-mail, type: email, url: \"" + sink.url() +
                 "\", starttls: off, from: tocsin@soc.test, to: [soc@soc.test]}\n"
                 "  approvals: {channel: soc-mail, link_ttl: 1s, approvers: [{name: anna, email: anna@soc.test}]}\n"
                 "watch:\n  - {test: wordpress-health, target: nginx-test, recheck_after: 1s, "
                 "max_restarts: 1 per 1h}\n";
  Collector c(o);
  TempDir tmp("watchdog-useless");
  DaemonNginx nginx(tmp);  // never started: the "restart" below does not start it either
  Agent agent(c);
  agent.set_command_poll("200ms");
  agent.write_config_yaml(health_agent_yaml(nginx, {"/bin/true"}));
  agent.start();
  REQUIRE_MESSAGE(wait_until([&] { return command_exists(c, 1); }, 60s), c.log());
  // The link lives one second: past that, confirming it is refused and nothing is approved.
  json mail;
  REQUIRE_MESSAGE(wait_until([&] { return !(mail = approval_mail_to(sink, "anna@soc.test")).is_null(); }, 60s),
                  c.log());
  auto link = link_path(mail);
  auto expires = fs::file_time_type::clock::now() + 1100ms;
  wait_until([&] { return fs::file_time_type::clock::now() > expires; }, 10s);
  auto late = browse(c, link, "decision=approve");
  CHECK(late.status == 409);
  CHECK_MESSAGE(late.body.find("expired") != std::string::npos, late.body);
  CHECK(command(c, 1)["state"] == "awaiting_approval");
  auto anna = c.api_token("anna", "approver");
  REQUIRE(c.cli_as(anna, {"approve", "1"}).rc == 0);
  json incident;
  REQUIRE_MESSAGE(wait_until([&] {
                    incident = health_incident(c);
                    return incident["severity"] == "critical" && incident["pause_reason"] == "";
                  }, 60s),
                  incident.dump(2));
  auto shown = c.api_get("/api/v1/incidents/" + std::to_string(incident["id"].get<int>()));
  std::string escalations;
  for (const auto& e : shown["timeline"])
    if (e["what"] == "escalated") escalations += e["detail"].get<std::string>() + "\n";
  CHECK_MESSAGE(escalations.find("ran, but wordpress-health still fails after it") != std::string::npos, escalations);
  CHECK_MESSAGE(escalations.find("max_restarts reached") != std::string::npos, escalations);
  // No second request, however long it keeps failing.
  std::this_thread::sleep_for(3s);
  CHECK_FALSE(command_exists(c, 2));
  agent.stop();
  std::string events;
  for (const auto& r : hook.requests("POST", "/hook"))
    events += json::parse(std::string(r["body"]))["event"]["what"].get<std::string>() + " ";
  CHECK_MESSAGE(events.find("escalated") != std::string::npos, events);
}
