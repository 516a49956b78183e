// Incidents end to end: a real agent's failed expectations reach a real collector, the
// collector opens deduplicated critical incidents on its own, and an operator works them
// through the `firedrill` CLI while a viewer may only read.
#include <doctest/doctest.h>

#include <fstream>

#include "tests/integration/harness.hpp"

using namespace firedrill::test;
using json = nlohmann::json;

namespace {

json incidents(Collector& c) { return c.api_get("/api/v1/incidents")["incidents"]; }

json find_kind(const json& list, const std::string& kind, const std::string& test_id) {
  for (const auto& i : list)
    if (i["kind"] == kind && i["test_id"] == test_id) return i;
  return nullptr;
}

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

  // The feed follows the stored results and detection events on its own (every 5 s).
  json prevention, missed;
  REQUIRE_MESSAGE(wait_until([&] {
                    auto list = incidents(c);
                    prevention = find_kind(list, "prevention_failed", "smb-should-be-blocked");
                    missed = find_kind(list, "detection_missed", "smb-should-be-blocked");
                    return !prevention.is_null() && !missed.is_null() &&
                           prevention["occurrences"].get<int>() >= 2;
                  }, 60s),
                  "incidents: " << incidents(c).dump(2) << "\ncollector log:\n" << c.log());
  agent.stop();
  INFO(prevention.dump(2));
  CHECK(prevention["severity"] == "critical");
  CHECK(prevention["state"] == "open");
  CHECK(prevention["agent_id"] == agent.id());
  CHECK(prevention["ack_sla"]["running"] == true);
  CHECK(missed["severity"] == "critical");
  // Every run failed the same way: one incident per failure kind, with occurrences.
  int same = 0;
  for (const auto& i : incidents(c))
    if (i["kind"] == "prevention_failed") ++same;
  CHECK(same == 1);

  auto id = std::to_string(prevention["id"].get<std::uint64_t>());
  auto viewer = c.cli({"api-token", "create", "--name", "soc-screen", "--role", "viewer"});
  REQUIRE_MESSAGE(viewer.rc == 0, viewer.err);
  auto viewer_file = c.dir().parent_path() / "viewer.token";
  std::ofstream(viewer_file) << viewer.out.substr(viewer.out.rfind('\n', viewer.out.size() - 2) + 1);
  auto as_viewer = run_command({bin("firedrill").string(), "--server",
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
  CHECK_MESSAGE(table.out.find("no alert for smb-should-be-blocked") != std::string::npos, table.out);
}
