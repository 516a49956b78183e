// Probes against real defences started by the test: ClamAV's clamd with a custom EICAR
// signature, driven by inotify to quarantine drops (Debian ships no virus database); and two
// real agents confirming a path from both ends with tcp_connect's handshake and tcp_listen.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/crypto.hpp"
#include "tests/integration/clamav.hpp"
#include "tests/integration/harness.hpp"

using namespace tocsin;
using namespace tocsin::test;

namespace {

nlohmann::json run_once(const fs::path& config, const std::string& test) {
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config", config.string(),
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
    CHECK(watcher.log().find("TocsinTest.EICAR.Body.UNOFFICIAL FOUND") != std::string::npos);
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

TEST_CASE("encoded_command is prevented when policy forbids executing the interpreter (noexec)") {
  // A real, kernel-enforced execution control: in a private mount namespace the shell binary
  // is re-mounted noexec (as hardening guides do for interpreters and /tmp), so execve fails
  // with EACCES. Nothing outside this test's namespace changes.
  auto shell = fs::canonical("/bin/sh").string();
  auto probe_ns = run_command({"/usr/bin/unshare", "-m", "--propagation", "private", "true"});
  if (probe_ns.rc != 0) {
    MESSAGE("skipped: cannot create a mount namespace here (" << probe_ns.err << ")");
    return;
  }
  TempDir tmp("probes");
  std::ofstream(tmp / "agent.yaml")
      << "state_dir: " << (tmp / "state").string() << "\n"
      << "tests:\n  - id: enc-sh\n    kind: encoded_command\n    every: 1h\n"
      << "    technique: T1027\n    expect: {prevent: true}\n";
  auto r = run_command({"/usr/bin/unshare", "-m", "--propagation", "private", "/bin/bash", "-c",
                        "mount --bind " + shell + " " + shell + " && mount -o remount,bind,noexec " +
                            shell + " " + shell + " && exec " + bin("tocsin-agent").string() +
                            " run-once --config " + (tmp / "agent.yaml").string() +
                            " --test enc-sh --json"},
                       60s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  auto j = nlohmann::json::parse(r.out);
  INFO(j.dump(2));
  CHECK(j["verdict"] == "prevented");
  CHECK(j["reason"] == "access_denied");
  CHECK(j["evidence"]["spawn_error"] == "Permission denied");
  // Outside the namespace the same test still runs: the block was the policy, not the probe.
  CHECK(run_once(tmp / "agent.yaml", "enc-sh")["verdict"] == "not_prevented");
}

namespace {

// True once something listens on 127.0.0.1:port (read from /proc, so nothing connects).
bool listening(std::uint16_t port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  char want[16];
  std::snprintf(want, sizeof want, "0100007F:%04X", port);
  while (std::getline(in, line))
    if (line.find(want) != std::string::npos && line.find(" 0A ") != std::string::npos) return true;
  return false;
}

std::uint16_t unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

TEST_CASE("tcp_connect's handshake and a tcp_listen agent confirm an open path from both ends") {
  TempDir tmp("probes-listen");
  auto open_port = unused_port();
  auto blocked_port = unused_port();  // nothing listens: the path is "blocked in between"
  std::ofstream(tmp / "receiver.yaml")
      << "state_dir: " << (tmp / "rx").string() << "\n"
      << "allowlist: {network: [\"127.0.0.1\"]}\n"
      << "tests:\n  - id: dmz-inbound\n    kind: tcp_listen\n    every: 1h\n"
      << "    params: {listen: [\"127.0.0.1:" << open_port << "\"], window: 4s}\n";
  std::ofstream(tmp / "sender.yaml")
      << "state_dir: " << (tmp / "tx").string() << "\n"
      << "allowlist: {network: [\"127.0.0.1\"]}\n"
      << "tests:\n  - id: inbound-to-dmz\n    kind: tcp_connect\n    every: 1h\n"
      << "    technique: T1021\n    timeout: 2s\n"
      << "    params: {targets: [\"127.0.0.1:" << open_port << "\", \"127.0.0.1:" << blocked_port
      << "\"], handshake: true}\n";
  Process receiver({"/bin/sh", "-c",
                    bin("tocsin-agent").string() + " run-once --config " +
                        (tmp / "receiver.yaml").string() + " --test dmz-inbound --json > " +
                        (tmp / "rx.json").string()},
                   tmp / "rx.log");
  REQUIRE_MESSAGE(wait_until([&] { return listening(open_port); }, 10s), receiver.log());

  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config",
                        (tmp / "sender.yaml").string(), "--test", "inbound-to-dmz", "--json"},
                       60s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  std::istringstream lines(r.out);
  std::string open_line, blocked_line;
  std::getline(lines, open_line);
  std::getline(lines, blocked_line);
  auto tx_open = nlohmann::json::parse(open_line);
  auto tx_blocked = nlohmann::json::parse(blocked_line);

  REQUIRE(receiver.wait(30s) == 0);
  auto rx = nlohmann::json::parse(common::read_file(tmp / "rx.json"));
  INFO(tx_open.dump(2) << "\n" << tx_blocked.dump(2) << "\n" << rx.dump(2));
  // Arrived, seen from both ends: each side names the other's marker.
  CHECK(tx_open["verdict"] == "not_prevented");
  CHECK(tx_open["reason"] == "handshake_confirmed");
  CHECK(tx_open["evidence"]["receiver_marker"] == rx["marker"]);
  CHECK(rx["verdict"] == "not_prevented");
  CHECK(rx["reason"] == "handshake_received");
  CHECK(rx["evidence"]["received"].get<std::string>().find(tx_open["marker"].get<std::string>()) == 0);
  CHECK(rx["evidence"]["handshakes"] == "1");
  // Blocked: the sender is refused and the receiver saw nothing from it.
  CHECK(tx_blocked["verdict"] == "prevented");
  CHECK(tx_blocked["reason"] == "refused");
  CHECK(rx["evidence"]["received"].get<std::string>().find(tx_blocked["marker"].get<std::string>()) ==
        std::string::npos);
}
