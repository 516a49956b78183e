// Incidents end to end: a real agent's failed expectations reach a real collector, the
// collector opens deduplicated critical incidents on its own, and an operator works them
// through the `tocsin` CLI while a viewer may only read.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>

#include "collector/cli/api_client.hpp"

#include "tests/integration/harness.hpp"
#include "tests/unit/peers.hpp"

using namespace tocsin::test;
using json = nlohmann::json;

namespace {

json incidents(Collector& c) { return c.api_get("/api/v1/incidents")["incidents"]; }

}  // namespace

TEST_CASE("a failed prevention and a missed alert open critical incidents that an operator works through the CLI") {
  Collector c;
  c.set_grace("1s");
  OpenPort open;  // the "SMB" port that a firewall should have blocked
  Agent agent(c);
  agent.write_config_yaml(
      "allowlist:\n  network: [\"127.0.0.1\"]\ntests:\n"
      "  - id: smb-should-be-blocked\n    kind: tcp_connect\n    every: 1s\n    jitter: 0s\n"
      "    timeout: 2s\n    technique: T1021.002\n"
      "    expect: {prevent: true, alert_within: 1s}\n"
      "    params: {targets: [\"127.0.0.1:" + std::to_string(open.port()) + "\"]}\n");
  agent.start();

  // The feed follows the stored results and detection events on its own (every 5 s). Not
  // prevented and no alert are two facets of one failing test: one incident shows both.
  json prevention;
  auto has_facet = [](const json& i, const std::string& f) {
    const auto& fs = i["facets"];
    return std::find(fs.begin(), fs.end(), json(f)) != fs.end();
  };
  REQUIRE_MESSAGE(wait_until([&] {
                    auto list = incidents(c);
                    prevention = nullptr;  // its kind is whichever facet the feed saw first
                    for (const auto& i : list)
                      if (i["test_id"] == "smb-should-be-blocked") prevention = i;
                    return !prevention.is_null() && has_facet(prevention, "prevention_failed") &&
                           has_facet(prevention, "detection_missed") &&
                           prevention["occurrences"].get<int>() >= 2;
                  }, 60s),
                  "incidents: " << incidents(c).dump(2) << "\ncollector log:\n" << c.log());
  agent.stop();
  INFO(prevention.dump(2));
  CHECK(prevention["severity"] == "critical");
  CHECK(prevention["state"] == "open");
  CHECK(prevention["agent_id"] == agent.id());
  CHECK(prevention["ack_sla"]["running"] == true);
  CHECK(prevention["silenced_by"] == json::array());
  // Every run failed the same way: one incident for the test, with occurrences.
  int same = 0;
  for (const auto& i : incidents(c))
    if (i["test_id"] == "smb-should-be-blocked") ++same;
  CHECK(same == 1);

  auto id = std::to_string(prevention["id"].get<std::uint64_t>());
  auto viewer = c.cli({"api-token", "create", "--name", "soc-screen", "--role", "viewer"});
  REQUIRE_MESSAGE(viewer.rc == 0, viewer.err);
  auto viewer_file = c.dir().parent_path() / "viewer.token";
  std::ofstream(viewer_file) << viewer.out.substr(viewer.out.rfind('\n', viewer.out.size() - 2) + 1);
  auto as_viewer = run_command({bin("tocsin").string(), "--server",
                                "https://127.0.0.1:" + std::to_string(c.api_port()),
                                "--token-file", viewer_file.string(), "--ca", c.ca_pem().string(),
                                "incident", "ack", id});
  CHECK(as_viewer.rc != 0);
  CHECK_MESSAGE(as_viewer.err.find("403") != std::string::npos, as_viewer.err);

  auto r = c.cli({"incident", "ack", id});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  r = c.cli({"incident", "note", id, "firewall rule 4711 missing on fw-dmz-2"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  r = c.cli({"incident", "assign", id, "alice"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  r = c.cli({"incident", "ack", id});  // twice: a conflict, said so
  CHECK(r.rc != 0);
  r = c.cli({"incident", "resolve", id, "rule restored"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);

  auto shown = c.api_get("/api/v1/incidents/" + id);
  INFO(shown.dump(2));
  CHECK(shown["state"] == "resolved");
  CHECK(shown["owner"] == "alice");
  CHECK(shown["touched"] == true);
  CHECK(shown["resolution"] == "rule restored");
  CHECK(shown["ack_sla"]["running"] == false);
  std::string whats;
  for (const auto& t : shown["timeline"]) whats += t["what"].get<std::string>() + " ";
  CHECK(whats.find("opened") == 0);
  for (const char* w : {"occurrence", "acknowledged", "noted", "assigned", "resolved"})
    CHECK_MESSAGE(whats.find(w) != std::string::npos, w << " missing from: " << whats);
  auto table = c.cli({"incidents"});
  REQUIRE_MESSAGE(table.rc == 0, table.err);
  CHECK_MESSAGE(table.out.find("smb-should-be-blocked") != std::string::npos, table.out);
  auto filtered = c.api_get("/api/v1/incidents?test=smb-should-be-blocked&kind=prevention_failed&agent=" +
                            agent.id())["incidents"];
  CHECK(filtered.size() == 1);
  // Resolved, nothing of it is failing any more: a facet filter no longer matches it.
  CHECK(c.api_get("/api/v1/incidents?test=smb-should-be-blocked&kind=detection_missed&agent=" +
                  agent.id())["incidents"].empty());
  CHECK(c.api_get("/api/v1/incidents?agent=someone-else")["incidents"].empty());
}

TEST_CASE("silences over the API: created by an operator, listed by a viewer, expired, bad input named") {
  Collector c;
  auto token_of = [](const std::filesystem::path& file) {
    std::ifstream in(file);
    std::string t((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    return t;
  };
  auto base = "https://127.0.0.1:" + std::to_string(c.api_port());
  tocsin::collector::ApiClient op(base, token_of(c.api_token("oncall", "operator")), c.ca_pem());
  tocsin::collector::ApiClient viewer(base, token_of(c.api_token("screen", "viewer")), c.ca_pem());
  auto status_of = [](const std::function<void()>& call, std::string* message) -> long {
    try {
      call();
    } catch (const tocsin::collector::ApiError& e) {
      if (message) *message = e.what();
      return e.status;
    }
    return 200;
  };

  auto made = op.post("/api/v1/silences", {{"test", "smb-should-be-blocked"},
                                           {"labels", {{"probe", "tcp_connect"}}},
                                           {"until", "2h"},
                                           {"reason", "firewall change window"}});
  auto s = made["silence"];
  INFO(made.dump(2));
  CHECK(s["id"] == "1");
  CHECK(s["state"] == "active");
  CHECK(s["created_by"] == "oncall");
  CHECK(s["matchers"]["test"] == "smb-should-be-blocked");
  CHECK(s["matchers"]["labels"]["probe"] == "tcp_connect");
  CHECK(s["expired_at"].is_null());
  CHECK(s["silenced_signals"] == 0);

  struct Bad {
    json body;
    std::string names;
  };
  for (const auto& b : std::vector<Bad>{
           {{{"until", "2h"}, {"reason", "r"}}, "matcher"},
           {{{"test", "t"}, {"reason", "r"}}, "until"},
           {{{"test", "t"}, {"until", "someday"}, {"reason", "r"}}, "until"},
           {{{"test", "t"}, {"until", "2h"}}, "reason"},
           {{{"test", "t"}, {"until", "2h"}, {"reason", "r"}, {"labels", {{"team", "x"}}}}, "labels"},
           {{{"test", "t"}, {"until", "2h"}, {"reason", "r"}, {"kind", "nope"}}, "kind"},
           {{{"test", 5}, {"until", "2h"}, {"reason", "r"}}, "test"},
           {{{"test", "t"}, {"until", "2h"}, {"reason", "r"}, {"owner", "x"}}, "owner"}}) {
    CAPTURE(b.body.dump());
    std::string msg;
    CHECK(status_of([&] { op.post("/api/v1/silences", b.body); }, &msg) == 400);
    CHECK_MESSAGE(msg.find(b.names) != std::string::npos, msg);
  }
  std::string msg;
  CHECK(status_of([&] { viewer.post("/api/v1/silences", {{"test", "t"}, {"until", "1h"}, {"reason", "r"}}); },
                  &msg) == 403);
  auto listed = viewer.get("/api/v1/silences")["silences"];
  REQUIRE(listed.size() == 1);
  CHECK(listed[0]["id"] == "1");
  CHECK(status_of([&] { viewer.post("/api/v1/silences/1/expire", json::object()); }, nullptr) == 403);
  auto ended = op.post("/api/v1/silences/1/expire", json::object())["silence"];
  CHECK(ended["state"] == "expired");
  CHECK(ended["expired_by"] == "oncall");
  CHECK(ended["expired_at"].is_string());
  CHECK(status_of([&] { op.post("/api/v1/silences/1/expire", json::object()); }, nullptr) == 409);
  CHECK(status_of([&] { op.post("/api/v1/silences/99/expire", json::object()); }, nullptr) == 404);
  CHECK(viewer.get("/api/v1/silences")["silences"].empty());
  CHECK(viewer.get("/api/v1/silences?state=expired")["silences"].size() == 1);
  CHECK(viewer.get("/api/v1/silences?state=all")["silences"].size() == 1);
  CHECK(status_of([&] { viewer.get("/api/v1/silences?state=gone"); }, nullptr) == 400);
  CHECK(status_of([&] { viewer.get("/api/v1/incidents?kind=gone"); }, &msg) == 400);
  CHECK_MESSAGE(msg.find("kind") != std::string::npos, msg);
  // Both are in the audit log.
  auto audit = c.api_get("/api/v1/audit/export")["entries"];
  std::string actions;
  for (const auto& e : audit) actions += e["action"].get<std::string>() + " ";
  CHECK_MESSAGE(actions.find("silence_created") != std::string::npos, actions);
  CHECK_MESSAGE(actions.find("silence_expired") != std::string::npos, actions);
}

TEST_CASE("incidents leave the collector by mail and signed webhook, the CLI shows every message") {
  SmtpSink sink;
  SiemMock hook({{"POST /hook", {{{"status", 500}, {"body", "receiver restarting"}},
                                 {{"status", 200}, {"body", "ok"}}}}});
  CollectorOptions o;
  o.extra_yaml = "notify:\n  retry: {initial: 1s, max: 2s}\n  channels:\n"
                 "    - {name: soc-mail, type: email, url: \"" + sink.url() +
                 "\", starttls: off, from: tocsin@soc.test, to: [soc@soc.test]}\n"
                 "    - {name: hook, type: webhook, url: \"" + hook.url() +
                 "/hook\", secret: 0123456789abcdef-secret}\n"
                 "  status_mail: {channel: soc-mail, every: 30m, to: [manager@soc.test]}\n";
  Collector c(o);
  OpenPort open;
  Agent agent(c);
  agent.write_config_yaml(
      "allowlist:\n  network: [\"127.0.0.1\"]\ntests:\n"
      "  - id: smb-should-be-blocked\n    kind: tcp_connect\n    every: 1s\n    jitter: 0s\n"
      "    timeout: 2s\n    expect: {prevent: true}\n"
      "    params: {targets: [\"127.0.0.1:" + std::to_string(open.port()) + "\"]}\n");
  agent.start();

  // The incident mail and the first status mail; the webhook after one 500.
  REQUIRE_MESSAGE(wait_until([&] { return sink.count() >= 2 && hook.requests("POST", "/hook").size() >= 2; }, 60s),
                  "mails: " << sink.count() << "\ncollector log:\n" << c.log());
  agent.stop();
  std::vector<std::string> subjects;
  for (int n = 1; n <= static_cast<int>(sink.count()); ++n) subjects.push_back(sink.mail(n)["subject"]);
  auto has = [&](const std::string& prefix) {
    return std::any_of(subjects.begin(), subjects.end(),
                       [&](const std::string& s) { return s.rfind(prefix, 0) == 0; });
  };
  CHECK(has("[Tocsin] Opened #1 [critical] "));
  CHECK(has("[Tocsin] Major incident status 1: 1 critical open (#1)"));
  json body = json::parse(std::string(hook.requests("POST", "/hook")[1]["body"]));
  CHECK(body["incident"]["test_id"] == "smb-should-be-blocked");

  auto sent = c.cli({"notifications", "--state", "sent"});
  REQUIRE_MESSAGE(sent.rc == 0, sent.err);
  CHECK_MESSAGE(sent.out.find("soc-mail") != std::string::npos, sent.out);
  CHECK_MESSAGE(sent.out.find("#1 opened") != std::string::npos, sent.out);
  auto as_json = c.cli({"notifications", "--json"});
  REQUIRE(as_json.rc == 0);
  bool retried = false;
  for (const auto& d : json::parse(as_json.out))
    if (d["channel"] == "hook" && d["attempts"].get<int>() >= 2 && d["state"] == "sent") retried = true;
  CHECK_MESSAGE(retried, as_json.out);

  // Resolving the last critical incident sends the all-clear. Results the agent sent before it
  // stopped may still reopen it on the feed's next round: resolve until none stays open.
  auto all_clear = [&] {
    for (int n = 1; n <= static_cast<int>(sink.count()); ++n)
      if (sink.mail(n)["subject"].get<std::string>().rfind("[Tocsin] All clear", 0) == 0) return true;
    return false;
  };
  for (int round = 0; round < 30 && !all_clear(); ++round) {
    auto open_list = c.api_get("/api/v1/incidents?state=open")["incidents"];  // not a temporary's member
    for (const auto& i : open_list) {
      auto r = c.cli({"incident", "resolve", std::to_string(i["id"].get<std::uint64_t>()), "port closed"});
      REQUIRE_MESSAGE(r.rc == 0, r.err);
    }
    wait_until(all_clear, 2s);
  }
  CHECK_MESSAGE(all_clear(), c.cli({"notifications"}).out << c.log());
}
