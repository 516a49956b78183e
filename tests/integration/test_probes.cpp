// Probes against real defences started by the test: ClamAV's clamd with a custom EICAR
// signature, driven by inotify to quarantine drops (Debian ships no virus database).
#include <doctest/doctest.h>

#include <fstream>

#include "common/crypto.hpp"
#include "tests/integration/clamav.hpp"
#include "tests/integration/harness.hpp"

using namespace firedrill;
using namespace firedrill::test;

namespace {

nlohmann::json run_once(const fs::path& config, const std::string& test) {
  auto r = run_command({bin("firedrill-agent").string(), "run-once", "--config", config.string(),
                        "--test", test, "--json"}, 120s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return nlohmann::json::parse(r.out);
}

}  // namespace

TEST_CASE("eicar_drop is prevented when ClamAV quarantines the drop and not when nothing watches") {
  TempDir tmp("probes");
  fs::create_directories(tmp / "drop");
  ClamAv clam(tmp.path());
  std::ofstream(tmp / "agent.yaml")
      << "state_dir: " << (tmp / "state").string() << "\n"
      << "tests:\n  - id: eicar-drop\n    kind: eicar_drop\n    every: 1h\n"
      << "    technique: T1105\n    expect: {prevent: true, alert_within: 15m}\n"
      << "    params: {directory: " << (tmp / "drop").string() << ", observe: 10s}\n";

  SUBCASE("defence present") {
    auto watcher = clam.watch(tmp / "drop");
    auto r = run_once(tmp / "agent.yaml", "eicar-drop");
    INFO(r.dump(2) << "\nwatch log:\n" << watcher.log());
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "removed");
    CHECK(r["technique"] == "T1105");
    CHECK(r["evidence"].contains("time_to_action_ms"));
    CHECK(r["evidence"]["cleanup"] == "already gone");
    CHECK(r["evidence"]["cleanup_verified"] == "true");
    // The defence's own record: the marker-named file is in quarantine, detected by name.
    auto marker = r["marker"].get<std::string>();
    CHECK(fs::exists(clam.dir / "quarantine" / (marker + "-eicar.com")));
    CHECK(watcher.log().find("FireDrillTest.EICAR.Body.UNOFFICIAL FOUND") != std::string::npos);
  }
  SUBCASE("defence absent") {
    auto r = run_once(tmp / "agent.yaml", "eicar-drop");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "intact");
    CHECK(r["evidence"]["cleanup"] == "removed");
    CHECK(fs::is_empty(clam.dir / "quarantine"));
  }
  CHECK(fs::is_empty(tmp / "drop"));  // the probe cleaned up after itself either way
}

TEST_CASE("encoded_command runs the benign encoded script and reports a missing interpreter honestly") {
  TempDir tmp("probes");
  std::ofstream(tmp / "agent.yaml")
      << "state_dir: " << (tmp / "state").string() << "\n"
      << "tests:\n  - id: enc-sh\n    kind: encoded_command\n    every: 1h\n"
      << "    technique: T1027\n    expect: {prevent: true}\n"
      << "  - id: enc-pwsh\n    kind: encoded_command\n    every: 1h\n"
      << "    params: {interpreter: pwsh}\n";
  auto sh = run_once(tmp / "agent.yaml", "enc-sh");
  CHECK(sh["verdict"] == "not_prevented");  // nothing on this machine blocks it: say so
  CHECK(sh["reason"] == "marker_in_output");
  CHECK(sh["evidence"]["stdout"].get<std::string>().find(sh["marker"].get<std::string>()) !=
        std::string::npos);
  CHECK(sh["evidence"]["command_line"].get<std::string>().find(sh["marker"].get<std::string>()) ==
        std::string::npos);  // only inside the encoded script, as the technique hides it
  auto pwsh = run_once(tmp / "agent.yaml", "enc-pwsh");
  CHECK(pwsh["verdict"] == "not_applicable");  // Debian has no PowerShell
  CHECK(pwsh["reason"] == "interpreter_missing");
}
