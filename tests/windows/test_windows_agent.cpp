// The cross-built Windows agent (tocsin-agent.exe) under wine64 against a real Linux
// collector on loopback. wine has no Defender and only a stub powershell.exe, so the honest
// verdicts here are "nothing prevented it", "the interpreter printed nothing" and, for the
// absent PowerShell 7, "not applicable": the tests check exactly that, and that the results
// arrive signed and verify.
#include <doctest/doctest.h>

#include <fstream>
#include <map>

#include "tests/integration/harness.hpp"
#include "tests/windows/wine.hpp"

using namespace tocsin::test;

TEST_CASE(
    "the Windows agent enrolls under wine, runs tcp_connect and eicar_drop, and its signed results "
    "verify") {
  Collector c;
  OpenPort open;
  TempDir tmp("wine-agent");
  fs::create_directories(tmp / "drop");
  auto id = enroll(c, tmp / "state");
  // What enroll wrote is what a Windows service account will read.
  for (const char* f : {"key.pem", "cert.pem", "ca.pem", "identity.yaml"})
    CHECK(fs::exists(tmp / "state" / f));

  std::ofstream(tmp / "agent.yaml")
      << "state_dir: '" << winpath(tmp / "state") << "'\n"
      << "kill_switch: '" << winpath(tmp / "disabled") << "'\n"
      << "uplink:\n  backoff_initial: 50ms\n  backoff_max: 500ms\n  connect_timeout: 5s\n"
      << "allowlist:\n  network: [\"127.0.0.1\"]\n"
      << "tests:\n"
      << "  - id: open\n    kind: tcp_connect\n    every: 1h\n    timeout: 5s\n"
      << "    targets: [\"127.0.0.1:" << open.port() << "\"]\n"
      << "  - id: closed\n    kind: tcp_connect\n    every: 1h\n    timeout: 5s\n"
      << "    expect: {prevent: true}\n"
      << "    targets: [\"127.0.0.1:" << closed_port() << "\"]\n"
      << "  - id: eicar\n    kind: eicar_drop\n    every: 1h\n    technique: T1105\n"
      << "    expect: {prevent: true}\n"
      << "    params: {directory: '" << winpath(tmp / "drop") << "', observe: 1s}\n"
      << "  - id: encoded\n    kind: encoded_command\n    every: 1h\n    technique: T1027\n"
      << "    expect: {prevent: true}\n    params: {interpreter: powershell.exe}\n"
      << "  - id: pwsh\n    kind: encoded_command\n    every: 1h\n"
      << "    params: {interpreter: pwsh}\n";

  auto run = wine(
      {windows_agent().string(), "run", "--config", winpath(tmp / "agent.yaml"), "--once"}, 180s);
  INFO("agent: " << run.out << run.err);
  REQUIRE(run.rc == 0);

  auto r = c.cli({"results", "--agent", id, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto results = nlohmann::json::parse(r.out);
  REQUIRE(results.size() == 5);
  std::map<std::string, nlohmann::json> by_test;
  for (auto& x : results) {
    INFO(x.dump(2));
    CHECK(x["verified"] == true);  // hash chain and Ed25519 signature re-checked by the collector
    CHECK(x["signature"].get<std::string>().size() == 128);
    CHECK(x["marker"].get<std::string>().rfind("tcn-", 0) == 0);
    by_test[x["test_id"].get<std::string>()] = x;
  }
  CHECK(by_test["open"]["verdict"] == "not_prevented");
  CHECK(by_test["open"]["reason"] == "connected");
  CHECK(by_test["closed"]["verdict"] == "prevented");
  CHECK(by_test["closed"]["reason"] == "refused");

  // No Defender under wine: the drop stays intact, and the agent says so rather than guessing.
  auto& eicar = by_test["eicar"];
  INFO(eicar.dump(2));
  CHECK(eicar["verdict"] == "not_prevented");
  CHECK(eicar["reason"] == "intact");
  CHECK(eicar["evidence"]["cleanup"] == "removed");
  CHECK(eicar["evidence"]["cleanup_verified"] == "true");
  CHECK(eicar["evidence"]["file"].get<std::string>().find(eicar["marker"].get<std::string>() +
                                                          "-eicar.com") != std::string::npos);
  CHECK(fs::is_empty(tmp / "drop"));

  // wine's powershell.exe is a stub that prints nothing: the encoded command ran, and nothing
  // can be concluded from it. Never "prevented".
  auto& enc = by_test["encoded"];
  INFO(enc.dump(2));
  CHECK(enc["verdict"] == "inconclusive");
  CHECK(enc["reason"] == "no_marker_output");
  CHECK(enc["evidence"]["command_line"].get<std::string>().find("-EncodedCommand") !=
        std::string::npos);

  // No PowerShell 7 under wine: a missing interpreter is not a block.
  CHECK(by_test["pwsh"]["verdict"] == "not_applicable");
  CHECK(by_test["pwsh"]["reason"] == "interpreter_missing");

  // The collector knows this agent as a Windows host.
  auto agents = c.api_get("/api/v1/agents")["agents"];
  REQUIRE(agents.size() == 1);
  CHECK(agents[0]["os"].get<std::string>().rfind("Windows", 0) == 0);
}

TEST_CASE(
    "the Windows agent refuses the libcurl and c-ares probe kinds when it loads its "
    "configuration") {
  TempDir tmp("wine-agent");
  for (std::string kind :
       {"web_download", "http_beacon", "tls_policy", "http_check", "dns_lookup"}) {
    std::ofstream(tmp / "agent.yaml", std::ios::trunc)
        << "state_dir: state\ntests:\n  - id: t\n    kind: " << kind << "\n    every: 1h\n";
    auto r = wine({windows_agent().string(), "tests", "--config", winpath(tmp / "agent.yaml")});
    INFO(kind << ": " << r.out << r.err);
    CHECK(r.rc != 0);
    CHECK(r.err.find("probe kind '" + kind + "' is not available in this build") !=
          std::string::npos);
    CHECK(r.err.find("agent.yaml:4: key 'tests[0].kind'") != std::string::npos);  // file:line
  }
}
