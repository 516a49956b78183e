// The MSI (packaging/msi) inspected with msiinfo, and installed, upgraded and removed under
// wine64 with silent enrollment against a real Linux collector on loopback.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "tests/integration/harness.hpp"
#include "tests/windows/wine.hpp"

using namespace tocsin::test;

namespace {

fs::path msi() {
  return TOCSIN_WINDOWS_MSI;
}

std::string table(const fs::path& package, const std::string& name) {
  auto r = run_command({"/usr/bin/msiinfo", "export", package.string(), name});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return r.out;
}

bool has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE(
    "the MSI's tables: the exe, the auto-start service, silent enrollment, a config template and "
    "MajorUpgrade") {
  auto files = table(msi(), "File");
  CHECK(has(files, "tocsin-agent.exe"));
  CHECK(has(files, "agent.yaml.default"));
  auto service = table(msi(), "ServiceInstall");
  // Name, display name, own process (16), automatic start (2), normal error control (1).
  CHECK(has(service, "tocsin-agent\tTocsin Agent\t16\t2\t1"));
  CHECK(has(service, "LocalSystem"));
  CHECK(has(service, "service --config \"[CommonAppDataFolder]Tocsin\\agent.yaml\""));
  // Start on install (not waiting: an agent not enrolled yet must not fail the install);
  // stop on install and uninstall, delete on uninstall (2|32|128), waiting for the stop.
  auto control = table(msi(), "ServiceControl");
  CHECK(has(control, "AgentServiceStart\ttocsin-agent\t1\t\t0"));
  CHECK(has(control, "AgentServiceStop\ttocsin-agent\t162\t\t1"));
  auto actions = table(msi(), "CustomAction");
  // 3090: an exe from the package's own file, deferred, not impersonated (LocalSystem).
  CHECK(has(actions,
            "Enroll\t3090\tAgentExe\tenroll --server \"[SERVER]\" --token \"[TOKEN]\" --ca "
            "\"[CA_FILE]\""));
  CHECK(has(actions, "InstallDefaultConfig\t3090\tAgentExe\tinstall-config --from"));
  auto sequence = table(msi(), "InstallExecuteSequence");
  CHECK(has(sequence, "Enroll\tNOT REMOVE AND SERVER AND TOKEN AND CA_FILE"));
  CHECK(has(sequence, "InstallDefaultConfig\tNOT REMOVE"));
  CHECK(has(sequence, "RemoveExistingProducts"));
  auto upgrade = table(msi(), "Upgrade");
  CHECK(has(upgrade, "WIX_UPGRADE_DETECTED"));
  CHECK(has(upgrade, "WIX_DOWNGRADE_DETECTED"));
  CHECK(has(table(msi(), "Property"), "MsiHiddenProperties\tTOKEN"));
}

TEST_CASE(
    "the MSI installs under wine with silent enrollment, the service runs, an upgrade keeps config "
    "and identity, uninstall keeps the state") {
  Collector c;
  TempDir tmp("wine-msi");
  OwnPrefix p(tmp / "prefix");
  auto exe = p.c("Program Files/Tocsin/tocsin-agent.exe");
  auto data = p.c("ProgramData/Tocsin");

  auto install = p.run({"msiexec", "/i", winpath(msi()), "/qn", "SERVER=" + c.agent_endpoint(),
                        "TOKEN=" + c.create_token(), "CA_FILE=" + winpath(c.ca_pem())});
  REQUIRE_MESSAGE(install.rc == 0, install.out << install.err);
  CHECK(fs::exists(exe));
  CHECK(read(data / "agent.yaml") ==
        read(fs::path(TOCSIN_SOURCE_DIR) / "packaging/msi/agent.yaml"));
  REQUIRE(fs::exists(data / "state/identity.yaml"));
  auto identity = read(data / "state/identity.yaml");
  auto agents = c.api_get("/api/v1/agents")["agents"];
  REQUIRE(agents.size() == 1);
  auto id = agents[0]["agent_id"].get<std::string>();
  CHECK(identity.find(id) != std::string::npos);

  // The SCM started the service, and it runs the agent with the installed configuration.
  CHECK(p.service_reaches("tocsin-agent", "RUNNING"));
  CHECK(
      wait_until([&] { return has(read(data / "agent.log"), "agent " + id + " starting"); }, 60s));

  SUBCASE("a major upgrade keeps the edited config and the identity; uninstall keeps the state") {
    std::ofstream(data / "agent.yaml", std::ios::app) << "# edited by the admin\n";
    auto edited = read(data / "agent.yaml");
    auto next =
        run_command({fs::path(TOCSIN_SOURCE_DIR).append("packaging/msi/build-msi").string(),
                     windows_agent().string(), tmp.path().string(), "99.0.0"});
    REQUIRE_MESSAGE(next.rc == 0, next.err);
    p.stop_service();
    auto upgrade = p.run({"msiexec", "/i", winpath(tmp / "tocsin-agent-99.0.0-x64.msi"), "/qn"});
    REQUIRE_MESSAGE(upgrade.rc == 0, upgrade.out << upgrade.err);
    CHECK(read(data / "agent.yaml") == edited);
    CHECK(read(data / "state/identity.yaml") == identity);
    CHECK(fs::exists(exe));
    // The upgrade started the service again, still the same agent: no second enrollment.
    CHECK(p.service_reaches("tocsin-agent", "RUNNING"));
    CHECK(c.api_get("/api/v1/agents")["agents"].size() == 1);

    p.stop_service();

    auto remove = p.run({"msiexec", "/x", winpath(tmp / "tocsin-agent-99.0.0-x64.msi"), "/qn"});
    REQUIRE_MESSAGE(remove.rc == 0, remove.out << remove.err);
  }
  SUBCASE("uninstall removes the program and the service and keeps the state") {
    p.stop_service();
    // The stop came from the SCM and the agent said why it stopped.
    CHECK(has(read(data / "agent.log"), "the Service Control Manager asked to stop"));
    auto remove = p.run({"msiexec", "/x", winpath(msi()), "/qn"});
    REQUIRE_MESSAGE(remove.rc == 0, remove.out << remove.err);
  }
  CHECK(!fs::exists(exe));
  CHECK(!has(p.run({"sc", "query", "tocsin-agent"}).out, "SERVICE_NAME: tocsin-agent"));
  CHECK(read(data / "state/identity.yaml") == identity);
  CHECK(fs::exists(data / "state/key.pem"));
  CHECK(fs::exists(data / "agent.yaml"));
}
