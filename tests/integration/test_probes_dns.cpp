// dns_lookup against real resolvers: dnsmasq instances started by the test on loopback, one
// sinkholing the bad domain, one answering NXDOMAIN for it, one giving its real answer; run
// through the real tocsin-agent binary (`run-once --json`).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>

#include <fstream>
#include <sstream>

#include "tests/integration/harness.hpp"

using namespace tocsin::test;

namespace {

fs::path find_program(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin"})
    if (fs::exists(fs::path(dir) / name)) return fs::path(dir) / name;
  return {};
}

// A UDP port on 127.0.0.1 nobody holds right now (bind port 0, read it back, close).
std::uint16_t free_udp_port() {
  boost::asio::io_context io;
  boost::asio::ip::udp::socket s(
      io, boost::asio::ip::udp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  return s.local_endpoint().port();
}

// One A query for `name` to 127.0.0.1:port; true if any response arrives within 200 ms.
bool answers(std::uint16_t port, const std::string& name) {
  std::string q("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 12);
  std::istringstream labels(name);
  for (std::string label; std::getline(labels, label, '.');)
    q += static_cast<char>(label.size()) + label;
  q += std::string("\x00\x00\x01\x00\x01", 5);
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval tv{0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  char buf[512];
  bool ok = ::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) > 0 &&
            ::recv(fd, buf, sizeof buf, 0) >= 12;
  ::close(fd);
  return ok;
}

// dnsmasq on 127.0.0.1:<free port> with only the given records (no upstream, no hosts file),
// logging every query to its own file. Killed on destruction.
class Dnsmasq {
 public:
  Dnsmasq(const fs::path& root, const std::string& name, const std::vector<std::string>& policy)
      : dir_(root / name) {
    auto exe = find_program("dnsmasq");
    REQUIRE_MESSAGE(!exe.empty(), "dnsmasq not found: install dnsmasq-base (scripts/deps --test)");
    fs::create_directories(dir_);
    // The port is free when picked but another test may take it first: then dnsmasq exits
    // at once ("Address already in use") and we pick again.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = free_udp_port();
      std::vector<std::string> argv = {exe.string(),
                                       "--no-daemon",
                                       "--conf-file=/dev/null",
                                       "--no-resolv",
                                       "--no-hosts",
                                       "--listen-address=127.0.0.1",
                                       "--bind-interfaces",
                                       "--port=" + std::to_string(port_),
                                       "--pid-file=" + (dir_ / "dnsmasq.pid").string(),
                                       "--log-queries",
                                       "--log-facility=" + query_log_path().string(),
                                       "--host-record=good.test,192.0.2.5,2001:db8::5"};
      if (::geteuid() == 0) argv.push_back("--user=root");  // the log stays in our temp dir
      argv.insert(argv.end(), policy.begin(), policy.end());
      proc_ = Process(argv, dir_ / "dnsmasq.out");
      if (wait_until([&] { return !proc_.running() || answers(port_, "good.test"); }, 10s) &&
          proc_.running())
        return;
      proc_.kill9();
    }
    FAIL("dnsmasq did not start: " << proc_.log());
  }
  std::uint16_t port() const { return port_; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
  fs::path query_log_path() const { return dir_ / "queries.log"; }
  std::string query_log() const {
    std::ifstream in(query_log_path());
    return {std::istreambuf_iterator<char>(in), {}};
  }

 private:
  fs::path dir_;
  std::uint16_t port_ = 0;
  Process proc_;
};

nlohmann::json run_once(const fs::path& config, const std::string& test) {
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config", config.string(),
                        "--test", test, "--json"},
                       60s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return nlohmann::json::parse(r.out);
}

std::string dns_test(const std::string& id, const std::string& resolver,
                     const std::string& extra_params = "", const std::string& timeout = "3s") {
  return "  - id: " + id + "\n    kind: dns_lookup\n    every: 1h\n    timeout: " + timeout +
         "\n    technique: T1071.004\n    expect: {prevent: true}\n    params:\n"
         "      domain: bad.test\n      resolver: \"" +
         resolver + "\"\n" + extra_params;
}

}  // namespace

TEST_CASE(
    "dns_lookup against real dnsmasq resolvers: sinkholed, NXDOMAIN by policy, resolved, "
    "and inconclusive when nothing is proven") {
  TempDir tmp("probes-dns");
  Dnsmasq sinkhole(tmp.path(), "sinkhole",
                   {"--address=/bad.test/0.0.0.0", "--address=/bad.test/::"});
  Dnsmasq nxdomain(tmp.path(), "nxdomain", {"--address=/bad.test/"});
  Dnsmasq open(tmp.path(), "open",
               {"--address=/bad.test/192.0.2.10", "--address=/bad.test/2001:db8::10"});
  boost::asio::io_context io;  // a UDP socket that takes queries and never answers
  boost::asio::ip::udp::socket silent(
      io, boost::asio::ip::udp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  std::string silent_ep = "127.0.0.1:" + std::to_string(silent.local_endpoint().port());
  std::string closed_ep = "127.0.0.1:" + std::to_string(free_udp_port());
  const std::string control = "      control_domain: good.test\n";

  std::ofstream(tmp / "agent.yaml")
      << "state_dir: " << (tmp / "state").string() << "\n"
      << "allowlist:\n  network: [\"127.0.0.1:1-65535\"]\n"
      << "tests:\n"
      << dns_test("sinkhole", sinkhole.endpoint(), control)
      << dns_test("sinkhole-aaaa", sinkhole.endpoint(), control + "      record_type: AAAA\n")
      << dns_test("nx-control", nxdomain.endpoint(), control)
      << dns_test("nx-alone", nxdomain.endpoint())
      << dns_test("nx-bad-control", nxdomain.endpoint(), "      control_domain: missing.test\n")
      << dns_test("open", open.endpoint(), control)
      << dns_test("open-expected", open.endpoint(), control + "      expect: [192.0.2.10]\n")
      << dns_test("open-unexpected", open.endpoint(), "      expect: [198.51.100.1]\n")
      << dns_test("silent", silent_ep, control, "1s")
      << dns_test("closed", closed_ep, control, "2s");
  auto config = tmp / "agent.yaml";

  SUBCASE("defence present: sinkhole answer") {
    auto r = run_once(config, "sinkhole");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "sinkholed");
    CHECK(r["technique"] == "T1071.004");
    CHECK(r["target"] == "bad.test");
    CHECK(r["evidence"]["answers"] == "0.0.0.0");
    CHECK(r["evidence"]["rcode"] == "NOERROR");
    CHECK(r["evidence"]["sinkhole_match"] == "0.0.0.0 in 0.0.0.0/32");
    CHECK(r["evidence"]["control"] == "good.test resolved");
    CHECK(r["evidence"]["control_answers"] == "192.0.2.5");
    // The resolver's own log names this run: the marker is the first label of the query.
    auto marker = r["marker"].get<std::string>();
    CHECK(r["evidence"]["query"] == marker + ".bad.test");
    auto log = sinkhole.query_log();
    INFO(log);
    CHECK(log.find("query[A] " + marker + ".bad.test from 127.0.0.1") != std::string::npos);
    CHECK(log.find("config " + marker + ".bad.test is 0.0.0.0") != std::string::npos);
  }
  SUBCASE("defence present: sinkhole answer for AAAA") {
    auto r = run_once(config, "sinkhole-aaaa");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "sinkholed");
    CHECK(r["evidence"]["record_type"] == "AAAA");
    CHECK(r["evidence"]["answers"] == "::");
    CHECK(sinkhole.query_log().find("query[AAAA] " + r["marker"].get<std::string>() +
                                    ".bad.test") != std::string::npos);
  }
  SUBCASE("defence present: NXDOMAIN while the control resolves") {
    auto r = run_once(config, "nx-control");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "nxdomain_by_policy");
    CHECK(r["evidence"]["rcode"] == "NXDOMAIN");
    CHECK(r["evidence"]["dns_status"] == "ARES_ENOTFOUND");
    CHECK(r["evidence"]["control"] == "good.test resolved");
    CHECK(nxdomain.query_log().find(r["marker"].get<std::string>() + ".bad.test is NXDOMAIN") !=
          std::string::npos);
  }
  SUBCASE("NXDOMAIN without a control proves nothing") {
    auto r = run_once(config, "nx-alone");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "nxdomain_without_control");
    CHECK(r["evidence"]["rcode"] == "NXDOMAIN");
    CHECK(r["evidence"]["note"].get<std::string>().find("control_domain") != std::string::npos);
  }
  SUBCASE("NXDOMAIN with a control that does not resolve proves nothing") {
    auto r = run_once(config, "nx-bad-control");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "control_failed");
    CHECK(r["evidence"]["control"] == "missing.test failed");
    CHECK(r["evidence"]["control_rcode"] == "REFUSED");  // dnsmasq has no upstream for it
  }
  SUBCASE("defence absent: the real answer") {
    auto r = run_once(config, "open");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "resolved");
    CHECK(r["evidence"]["answers"] == "192.0.2.10");
    CHECK_FALSE(r["evidence"].contains("sinkhole_match"));
    CHECK(open.query_log().find("query[A] " + r["marker"].get<std::string>() + ".bad.test") !=
          std::string::npos);
    auto expected = run_once(config, "open-expected");
    CHECK(expected["verdict"] == "not_prevented");
    CHECK(expected["reason"] == "resolved");
  }
  SUBCASE("an answer that is neither sinkhole nor the known real answer") {
    auto r = run_once(config, "open-unexpected");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "unexpected_answer");
    CHECK(r["evidence"]["answers"] == "192.0.2.10");
  }
  SUBCASE("a resolver that never answers: timeout, inconclusive") {
    auto r = run_once(config, "silent");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "timeout");
    CHECK(r["evidence"]["rcode"] == "none (no response)");
  }
  SUBCASE("a closed resolver port: dns_failure, inconclusive") {
    auto r = run_once(config, "closed");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "dns_failure");
    CHECK(r["evidence"]["dns_status"] == "ARES_ECONNREFUSED");
  }
}

TEST_CASE("dns_lookup refuses at load a resolver that is not on the allowlist, naming file:line") {
  TempDir tmp("probes-dns");
  std::ofstream(tmp / "agent.yaml") << "state_dir: " << (tmp / "state").string() << "\n"
                                    << "allowlist:\n  network: [\"10.0.0.0/8\"]\n"
                                    << "tests:\n"
                                    << dns_test("off-list", "127.0.0.1:53");
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config",
                        (tmp / "agent.yaml").string(), "--test", "off-list", "--json"},
                       30s);
  CHECK(r.rc != 0);
  CHECK_MESSAGE(r.err.find("agent.yaml:") != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("not on the allowlist") != std::string::npos, r.err);
}
