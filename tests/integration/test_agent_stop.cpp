// The agent's way out and its kill switch (issue 18): `run --once` ends as soon as its results
// are acknowledged, SIGTERM ends an idle agent at once (both used to wait out a 5 s grace timer
// that kept the event loop busy), and `run-once` honours the kill switch like `run` does.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <fstream>

#include "tests/integration/harness.hpp"

using namespace tocsin;
using namespace tocsin::test;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A loopback listener that never accepts: a probe's connect completes into its backlog, where
// pending() sees it without any timing.
class Backlog {
 public:
  Backlog() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 16) != 0)
      throw std::runtime_error("cannot listen on loopback");
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~Backlog() { close(fd_); }
  std::uint16_t port() const { return port_; }
  bool pending() const {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

std::string beacon(std::uint16_t port, const std::string& every = "1h") {
  return "  - id: beacon\n    probe: tcp_connect\n    every: " + every +
         "\n    jitter: 0s\n    timeout: 2s\n    expect: {prevent: false}\n"
         "    targets: [\"127.0.0.1:" + std::to_string(port) + "\"]\n";
}

// The agent used to spend a 5 s grace after every stop, busy or not: half of it is a bound no
// prompt stop comes near (they take milliseconds) and the old behaviour never met.
constexpr auto kPrompt = std::chrono::milliseconds(2500);

}  // namespace

TEST_CASE("run --once exits as soon as the collector has acknowledged its results") {
  Collector c;
  Backlog target;
  Agent agent(c);
  // A 30 s clock exchange interval: the agent must not be waiting on any of its own timers.
  agent.write_config_yaml("  clock_sync_interval: 30s\nallowlist:\n  tcp_connect: [\"127.0.0.1\"]\n"
                          "tests:\n" + beacon(target.port()));
  agent.start({"--once"});
  std::chrono::steady_clock::time_point done_seen;
  REQUIRE_MESSAGE(wait_until([&] { return contains(agent.log(), "done (--once); stopping"); }, 30s),
                  agent.log());
  done_seen = std::chrono::steady_clock::now();
  auto rc = agent.process().wait(30s);
  auto took = std::chrono::steady_clock::now() - done_seen;
  auto log = agent.log();
  INFO(log);
  REQUIRE(rc.has_value());
  CHECK(*rc == 0);
  CHECK(target.pending());          // the test ran
  CHECK(agent.status()["pending"] == 0);  // and its result was acknowledged before the exit
  // The event loop ran out of work by itself: the grace never had to stop it.
  CHECK(contains(log, "agent: stopped"));
  CHECK_FALSE(contains(log, "exiting anyway"));
  MESSAGE("run --once exited " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                               << " ms after logging done");
  CHECK(took < kPrompt);
}

TEST_CASE("SIGTERM stops an idle agent at once") {
  Collector c;
  Backlog target;
  Agent agent(c);
  agent.write_config_yaml("  clock_sync_interval: 30s\n  command_poll: 30s\nallowlist:\n"
                          "  tcp_connect: [\"127.0.0.1\"]\ntests:\n" + beacon(target.port()));
  agent.start();
  // Idle: its one run is delivered and it waits on hour- and half-minute-long timers.
  REQUIRE_MESSAGE(wait_until([&] { return c.stored_results(agent.id()) == 1; }, 30s), agent.log());
  auto sent = std::chrono::steady_clock::now();
  agent.process().signal(SIGTERM);
  auto rc = agent.process().wait(30s);
  auto took = std::chrono::steady_clock::now() - sent;
  auto log = agent.log();
  INFO(log);
  REQUIRE(rc.has_value());
  CHECK(*rc == 0);
  CHECK(contains(log, "received SIGTERM; stopping"));
  CHECK(contains(log, "agent: stopped"));
  CHECK_FALSE(contains(log, "exiting anyway"));
  MESSAGE("idle agent exited " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                               << " ms after SIGTERM");
  CHECK(took < kPrompt);
}

TEST_CASE("run-once refuses to run a test while the kill switch is present") {
  TempDir tmp("run-once-kill");
  Backlog target;
  auto kill = tmp.path() / "disabled";
  auto config = tmp.path() / "agent.yaml";
  std::ofstream(config) << "state_dir: " << (tmp.path() / "state").string() << "\n"
                        << "kill_switch: " << kill.string() << "\n"
                        << "allowlist:\n  tcp_connect: [\"127.0.0.1\"]\ntests:\n"
                        << beacon(target.port());
  std::vector<std::string> argv = {bin("tocsin-agent").string(), "run-once", "--config",
                                   config.string(), "--test", "beacon"};
  std::ofstream(kill) << "";
  auto refused = run_command(argv);
  INFO(refused.out << refused.err);
  CHECK(refused.rc == 4);
  CHECK(contains(refused.err, "kill switch " + kill.string()));
  CHECK_FALSE(target.pending());  // no connection was made

  fs::remove(kill);
  auto ran = run_command(argv);
  INFO(ran.out << ran.err);
  CHECK(ran.rc == 0);
  CHECK(contains(ran.out, "verdict:"));
  CHECK(target.pending());
}
