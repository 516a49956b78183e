// tcp_connect across two network namespaces ("segments") joined by a veth pair, with a real
// firewall (nftables, inside the server namespace only) between them: the agent runs in the
// client namespace. Skipped with a message where the kernel refuses `ip netns add`.
#include <doctest/doctest.h>

#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include "tests/integration/harness.hpp"

using namespace tocsin::test;

namespace {

fs::path find_program(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin"})
    if (fs::exists(fs::path(dir) / name)) return fs::path(dir) / name;
  return {};
}

// Namespaces created by this test, deleted (with the veth inside them) however the test ends.
struct Namespaces {
  fs::path ip;
  std::vector<std::string> names;
  bool add(const std::string& name, std::string* err = nullptr) {
    auto r = run_command({ip.string(), "netns", "add", name}, 10s);
    if (r.rc == 0) names.push_back(name);
    if (err) *err = r.err;
    return r.rc == 0;
  }
  ~Namespaces() {
    for (const auto& n : names) run_command({ip.string(), "netns", "del", n}, 10s);
  }
};

void must(const std::vector<std::string>& argv) {
  auto r = run_command(argv, 20s);
  std::string line;
  for (const auto& a : argv) line += a + " ";
  REQUIRE_MESSAGE(r.rc == 0, line << "failed: " << r.err << r.out);
}

}  // namespace

TEST_CASE(
    "tcp_connect between two network namespaces: the open port connects, firewalled and "
    "closed ports are prevented") {
  auto ip = find_program("ip");
  auto socat = find_program("socat");
  auto nft = find_program("nft");
  REQUIRE_MESSAGE(!ip.empty(), "ip not found: install iproute2 (scripts/deps --test)");
  REQUIRE_MESSAGE(!socat.empty(), "socat not found: install socat (scripts/deps --test)");
  const std::string id = std::to_string(::getpid());
  const std::string client = "tcn-cli-" + id, server = "tcn-srv-" + id;
  const std::string cli_if = "tcnc" + id, srv_if = "tcns" + id;  // at most 15 characters
  // A private /30 that exists only inside the two namespaces this test creates.
  const std::string net = "10.213." + std::to_string(::getpid() % 250) + ".";
  const std::string cli_addr = net + "1", srv_addr = net + "2";
  TempDir tmp("probes-netns");
  std::string root_ruleset_before =
      nft.empty() ? "" : run_command({nft.string(), "list", "ruleset"}, 10s).out;
  {
    Namespaces ns{ip, {}};
    std::string err;
    if (!ns.add(client, &err)) {
      MESSAGE("skipped: the kernel refused `ip netns add` (" << err << ")");
      return;
    }
    REQUIRE(ns.add(server));
    must({ip.string(), "link", "add", cli_if, "netns", client, "type", "veth", "peer", "name",
          srv_if, "netns", server});
    must({ip.string(), "-n", client, "addr", "add", cli_addr + "/30", "dev", cli_if});
    must({ip.string(), "-n", server, "addr", "add", srv_addr + "/30", "dev", srv_if});
    for (const auto& [n, dev] : {std::pair{client, cli_if}, std::pair{server, srv_if}}) {
      must({ip.string(), "-n", n, "link", "set", dev, "up"});
      must({ip.string(), "-n", n, "link", "set", "lo", "up"});
    }
    // The defence: in the server segment, 8081 silently dropped and 8082 rejected with a reset
    // although both listen. Without nft only the closed port 8083 stands for a block.
    const bool firewall = !nft.empty();
    if (firewall) {
      std::ofstream(tmp / "rules.nft")
          << "table inet tocsin {\n  chain input {\n"
          << "    type filter hook input priority 0; policy accept;\n"
          << "    tcp dport 8081 drop\n    tcp dport 8082 reject with tcp reset\n  }\n}\n";
      must(
          {ip.string(), "netns", "exec", server, nft.string(), "-f", (tmp / "rules.nft").string()});
    } else {
      MESSAGE(
          "nft is not installed: only the closed port shows a block (install nftables for "
          "the firewall cases)");
    }
    std::vector<Process> listeners;
    listeners.reserve(3);
    for (int port : {8080, 8081, 8082})
      listeners.emplace_back(
          std::vector<std::string>{
              ip.string(), "netns", "exec", server, socat.string(), "-d", "-d", "-u",
              "TCP-LISTEN:" + std::to_string(port) + ",bind=" + srv_addr + ",fork,reuseaddr",
              "OPEN:/dev/null"},
          tmp / ("socat-" + std::to_string(port) + ".log"));
    REQUIRE_MESSAGE(wait_until(
                        [&] {
                          auto out = run_command({ip.string(), "netns", "exec", server,
                                                  find_program("ss").string(), "-Hltn"},
                                                 5s)
                                         .out;
                          for (int p : {8080, 8081, 8082})
                            if (out.find(srv_addr + ":" + std::to_string(p)) == std::string::npos)
                              return false;
                          return true;
                        },
                        15s),
                    "socat did not listen: " << listeners[0].log());

    std::ofstream(tmp / "agent.yaml")
        << "state_dir: " << (tmp / "state").string() << "\n"
        << "allowlist:\n  network: [\"" << net << "0/30:8080-8083\"]\n"
        << "tests:\n  - id: segment-egress\n    kind: tcp_connect\n    every: 1h\n"
        << "    timeout: 1s\n    expect: {prevent: true}\n    params:\n"
        << "      control: \"" << srv_addr << ":8080\"\n      targets:\n"
        << "        - \"" << srv_addr << ":8080-8083\"\n";
    auto r = run_command(
        {ip.string(), "netns", "exec", client, bin("tocsin-agent").string(), "run-once",
         "--config", (tmp / "agent.yaml").string(), "--test", "segment-egress", "--json"},
        60s);
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    std::map<std::string, nlohmann::json> by_target;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) {
        auto j = nlohmann::json::parse(line);
        by_target[j["target"].get<std::string>()] = j;
      }
    INFO(r.out);
    REQUIRE(by_target.size() == 4);
    auto at = [&](int port) { return by_target[srv_addr + ":" + std::to_string(port)]; };

    CHECK(at(8080)["verdict"] == "not_prevented");
    CHECK(at(8080)["reason"] == "connected");
    CHECK(at(8080)["evidence"]["address"] == srv_addr);
    CHECK(at(8080)["evidence"]["control"] == srv_addr + ":8080 connected");
    // The server saw the connection arrive from the client segment over the veth.
    CHECK(wait_until(
        [&] {
          return listeners[0].log().find("accepting connection from AF=2 " + cli_addr) !=
                 std::string::npos;
        },
        10s));
    CHECK(at(8083)["verdict"] == "prevented");
    CHECK(at(8083)["reason"] == "refused");
    if (firewall) {
      CHECK(at(8081)["verdict"] == "prevented");
      CHECK(at(8081)["reason"] == "timeout");
      CHECK(at(8082)["verdict"] == "prevented");
      CHECK(at(8082)["reason"] == "refused");
      // Dropped and rejected before the listener: socat never accepted anything.
      CHECK(listeners[1].log().find("accepting connection") == std::string::npos);
      CHECK(listeners[2].log().find("accepting connection") == std::string::npos);
    }
    for (auto& l : listeners) l.kill9();
  }
  // Everything is gone again, and the root namespace's firewall was never touched.
  auto list = run_command({ip.string(), "netns", "list"}, 10s).out;
  CHECK(list.find(client) == std::string::npos);
  CHECK(list.find(server) == std::string::npos);
  CHECK(run_command({ip.string(), "link", "show", cli_if}, 10s).rc != 0);
  if (!nft.empty())
    CHECK(run_command({nft.string(), "list", "ruleset"}, 10s).out == root_ruleset_before);
}
