// agent.yaml loading and the allowlist that bounds what probes may contact.
#include <doctest/doctest.h>

#include <boost/asio/ip/address.hpp>

#include <string>

#include "agent/runtime/config.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using tocsin::agent::AgentConfig;
using tocsin::agent::Allowlist;
using tocsin::common::ConfigError;
using tocsin::test::TempDir;

namespace {

const char* const kValid = R"(state_dir: state
allowlist:
  tcp_connect:
    - 127.0.0.1
    - "10.0.0.0/8:445"
    - "*.lab:22"
tests:
  - id: smb-lateral
    probe: tcp_connect
    targets: ["10.1.2.3:445"]
  - id: ssh.db_1
    probe: tcp_connect
    every: 30s
    jitter: 5s
    timeout: 2s
    expect: {prevent: true}
    targets:
      - "db.lab:22"
      - "127.0.0.1:8080"
    control: "127.0.0.1:9"
)";

// A config file in its own temp dir.
struct ConfigFile {
  TempDir tmp{"agent-config"};
  fs::path path = tmp / "agent.yaml";
  explicit ConfigFile(const std::string& text) { tocsin::common::write_file_atomic(path, text); }
  AgentConfig load() const { return AgentConfig::load(path); }
  // The message of the ConfigError loading throws.
  std::string error() const {
    try {
      AgentConfig::load(path);
    } catch (const ConfigError& e) {
      return e.what();
    }
    FAIL("expected a ConfigError");
    return {};
  }
};

// kValid with one line replaced (a line of kValid must match `from` exactly).
std::string valid_with(const std::string& from, const std::string& to) {
  std::string s = kValid;
  auto at = s.find(from);
  REQUIRE(at != std::string::npos);
  return s.replace(at, from.size(), to);
}

const char* const kMinimalHead = "state_dir: /var/lib/tocsin\n";

boost::asio::ip::address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

}  // namespace

TEST_CASE("a valid agent config loads with defaults for what it leaves out") {
  ConfigFile f(kValid);
  auto c = f.load();
  CHECK(c.state_dir == f.tmp / "state");  // relative to the config file
  CHECK(c.server.empty());
  CHECK(c.log_level == "info");
  CHECK(c.outbox_max_bytes == 64ull << 20);
  CHECK(c.uplink.connect_timeout == 10s);
  CHECK(c.uplink.io_timeout == 30s);
  CHECK(c.uplink.backoff_initial == 1s);
  CHECK(c.uplink.backoff_max == 60s);
  CHECK(c.uplink.batch_max_results == 512);
  REQUIRE(c.tests.size() == 2);

  const auto& a = c.tests[0];
  CHECK(a.id == "smb-lateral");
  CHECK(a.probe == "tcp_connect");
  CHECK(a.every == 5min);
  CHECK(a.jitter == 30s);  // default: 10% of every (5m)
  CHECK(a.timeout == 3s);
  CHECK_FALSE(a.expect_prevent);
  REQUIRE(a.targets.size() == 1);
  CHECK(a.targets[0].host == "10.1.2.3");
  CHECK(a.targets[0].port == 445);
  CHECK_FALSE(a.control.has_value());

  const auto& b = c.tests[1];
  CHECK(b.id == "ssh.db_1");
  CHECK(b.every == 30s);
  CHECK(b.jitter == 5s);
  CHECK(b.timeout == 2s);
  CHECK(b.expect_prevent);
  REQUIRE(b.targets.size() == 2);
  CHECK(b.targets[0].to_string() == "db.lab:22");
  REQUIRE(b.control.has_value());
  CHECK(b.control->to_string() == "127.0.0.1:9");

  CHECK(c.allowlist.allows_name("db.lab", 22));
  CHECK(c.allowlist.allows_address(ip("10.9.9.9"), 445));
}

TEST_CASE("explicit top-level settings override the defaults") {
  ConfigFile f(std::string(kMinimalHead) +
               "server: collector.lab:7443\nlog_level: debug\noutbox: {max_bytes: 1MiB}\n"
               "uplink:\n  io_timeout: 5s\n  backoff_initial: 2s\n  backoff_max: 2m\n"
               "  batch_max_results: 100\n");
  auto c = f.load();
  CHECK(c.state_dir == "/var/lib/tocsin");
  CHECK(c.server == "collector.lab:7443");
  CHECK(c.log_level == "debug");
  CHECK(c.outbox_max_bytes == 1 << 20);
  CHECK(c.uplink.io_timeout == 5s);
  CHECK(c.uplink.backoff_initial == 2s);
  CHECK(c.uplink.backoff_max == 2min);
  CHECK(c.uplink.batch_max_results == 100);
  CHECK(c.tests.empty());
}

TEST_CASE("a target not on the allowlist is rejected naming file, line and key") {
  ConfigFile f(valid_with(R"(targets: ["10.1.2.3:445"])", R"(targets: ["192.168.1.1:445"])"));
  auto msg = f.error();
  CHECK_MESSAGE(msg.find(f.path.string() + ":10") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("tests[0].targets") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("192.168.1.1:445") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("allowlist") != std::string::npos, msg);
}

TEST_CASE("a target on an allowed network but another port is rejected") {
  ConfigFile f(valid_with(R"(targets: ["10.1.2.3:445"])", R"(targets: ["10.1.2.3:446"])"));
  CHECK_MESSAGE(f.error().find("tests[0].targets") != std::string::npos, f.error());
}

TEST_CASE("a control not on the allowlist is rejected") {
  ConfigFile f(valid_with(R"(control: "127.0.0.1:9")", R"(control: "10.0.0.1:9")"));
  auto msg = f.error();
  CHECK_MESSAGE(msg.find("tests[1].control") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find(f.path.string() + ":20") != std::string::npos, msg);
}

TEST_CASE("unknown keys are rejected by name") {
  SUBCASE("at the top level") {
    ConfigFile f(std::string(kValid) + "colector: x\n");
    auto msg = f.error();
    CHECK_MESSAGE(msg.find("'colector'") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("unknown key") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(f.path.string() + ":21") != std::string::npos, msg);
  }
  SUBCASE("in a test") {
    ConfigFile f(valid_with("    every: 30s\n", "    evry: 30s\n"));
    auto msg = f.error();
    CHECK_MESSAGE(msg.find("tests[1].evry") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(f.path.string() + ":13") != std::string::npos, msg);
  }
  SUBCASE("under expect") {
    ConfigFile f(valid_with("expect: {prevent: true}", "expect: {prevnet: true}"));
    CHECK_MESSAGE(f.error().find("tests[1].expect.prevnet") != std::string::npos, f.error());
  }
  SUBCASE("under uplink") {
    ConfigFile f(std::string(kMinimalHead) + "uplink:\n  retries: 3\n");
    CHECK_MESSAGE(f.error().find("uplink.retries") != std::string::npos, f.error());
  }
}

TEST_CASE("bad durations are rejected naming the key") {
  struct Case {
    std::string from, to, key;
  } cases[] = {
      {"    every: 30s\n", "    every: 30 seconds\n", "tests[1].every"},
      {"    timeout: 2s\n", "    timeout: soon\n", "tests[1].timeout"},
      {"    jitter: 5s\n", "    jitter: -5s\n", "tests[1].jitter"},
      {"    every: 30s\n", "    every: 5ms\n", "tests[1].every"},       // below min_every
      {"    jitter: 5s\n", "    jitter: 30s\n", "tests[1].jitter"},     // not shorter than every
      {"    timeout: 2s\n", "    timeout: 16m\n", "tests[1].timeout"},  // above 15m
      {"    timeout: 2s\n", "    timeout: 0s\n", "tests[1].timeout"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.to);
    ConfigFile f(valid_with(c.from, c.to));
    auto msg = f.error();
    CHECK_MESSAGE(msg.find(c.key) != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(f.path.string() + ":") != std::string::npos, msg);
  }
  SUBCASE("in the uplink section") {
    ConfigFile f(std::string(kMinimalHead) + "uplink:\n  io_timeout: forever\n");
    CHECK_MESSAGE(f.error().find("uplink.io_timeout") != std::string::npos, f.error());
  }
}

// kValid with a top-level `min_every` and test 1 running every `every` (jitter 0s).
std::string with_min_every(const std::string& min_every, const std::string& every) {
  std::string s = valid_with("    every: 30s\n    jitter: 5s\n",
                             "    every: " + every + "\n    jitter: 0s\n");
  return "min_every: " + min_every + "\n" + s;
}

TEST_CASE("test timing keys outside their bounds are refused naming file, line, key and bound") {
  struct Case {
    std::string text, key, bound;
  } cases[] = {
      // Issue 18: a run every 10 ms was accepted. Each run is an attack step the SIEM ingests.
      {valid_with("    every: 30s\n", "    every: 10ms\n"), ":13: key 'tests[1].every'",
       "at least 10s"},
      {valid_with("    every: 30s\n    jitter: 5s\n", "    every: 9s\n    jitter: 1s\n"),
       ":13: key 'tests[1].every'", "at least 10s"},
      {valid_with("    every: 30s\n", "    every: 31d\n"), ":13: key 'tests[1].every'",
       "at most 30d"},
      {valid_with("{prevent: true}", "{prevent: true, alert_within: 0s}"),
       ":16: key 'tests[1].expect.alert_within'", "at least 1s"},
      {valid_with("{prevent: true}", "{prevent: true, alert_within: 500ms}"),
       ":16: key 'tests[1].expect.alert_within'", "at least 1s"},
      {valid_with("{prevent: true}", "{prevent: true, alert_within: 31d}"),
       ":16: key 'tests[1].expect.alert_within'", "at most 30d"},
      {with_min_every("1ms", "30s"), ":1: key 'min_every'", "at least 10ms"},
      {with_min_every("31d", "30s"), ":1: key 'min_every'", "at most 30d"},
      {with_min_every("20ms", "10ms"), ":14: key 'tests[1].every'", "at least 20ms"},
      {with_min_every("1m", "30s"), ":14: key 'tests[1].every'", "at least 1m"},  // raises it
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    ConfigFile f(c.text);
    auto msg = f.error();
    CHECK_MESSAGE(msg.find(f.path.string() + c.key) != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(c.bound) != std::string::npos, msg);
  }
}

TEST_CASE("test timing keys at their bounds load, and min_every lowers the floor for a lab") {
  SUBCASE("every: 10s, every: 30d and alert_within: 1s / 30d are the edges") {
    auto c = ConfigFile(valid_with("    every: 30s\n", "    every: 10s\n")).load();
    CHECK(c.min_every == 10s);
    CHECK(c.tests[1].every == 10s);
    CHECK(ConfigFile(valid_with("    every: 30s\n", "    every: 30d\n")).load().tests[1].every ==
          std::chrono::days(30));
    const std::chrono::milliseconds month = std::chrono::days(30);
    for (auto [text, value] : {std::pair{"1s", std::chrono::milliseconds(1s)},
                               std::pair{"30d", month}}) {
      CAPTURE(text);
      auto d = ConfigFile(valid_with("{prevent: true}",
                                     std::string("{prevent: true, alert_within: ") + text + "}"))
                   .load();
      CHECK(d.tests[1].alert_within == value);
    }
  }
  SUBCASE("min_every: 20ms lets a lab run a test every 20ms") {
    auto c = ConfigFile(with_min_every("20ms", "20ms")).load();
    CHECK(c.min_every == 20ms);
    CHECK(c.tests[1].every == 20ms);
    CHECK(c.tests[0].every == 5min);  // the default every is untouched
  }
}

TEST_CASE("duplicate test ids are rejected") {
  ConfigFile f(valid_with("  - id: ssh.db_1\n", "  - id: smb-lateral\n"));
  auto msg = f.error();
  CHECK_MESSAGE(msg.find("duplicate test id 'smb-lateral'") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("tests[1].id") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find(f.path.string() + ":11") != std::string::npos, msg);
}

TEST_CASE("other invalid test definitions are rejected naming the key") {
  struct Case {
    std::string from, to, key;
  } cases[] = {
      {"  - id: ssh.db_1\n", "  - id: SSH\n", "tests[1].id"},
      {"  - id: ssh.db_1\n", "  - id: \"\"\n", "tests[1].id"},
      {"  - id: ssh.db_1\n", "  - id: " + std::string(65, 'a') + "\n", "tests[1].id"},
      {"    probe: tcp_connect\n    every", "    probe: icmp\n    every", "tests[1].probe"},
      {R"(targets: ["10.1.2.3:445"])", "targets: []", "tests[0].targets"},
      {R"(targets: ["10.1.2.3:445"])", R"(targets: ["10.1.2.3"])", "tests[0].targets"},
      {"expect: {prevent: true}", "expect: {prevent: perhaps}", "tests[1].expect.prevent"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.to);
    ConfigFile f(valid_with(c.from, c.to));
    CHECK_MESSAGE(f.error().find(c.key) != std::string::npos, f.error());
  }
}

TEST_CASE("invalid top-level settings are rejected naming the key") {
  struct Case {
    std::string text, key;
  } cases[] = {
      {"server: x\n", "state_dir"},  // required
      {std::string(kMinimalHead) + "server: no-port\n", "server"},
      {std::string(kMinimalHead) + "outbox: {max_bytes: 1KiB}\n", "outbox.max_bytes"},
      {std::string(kMinimalHead) + "uplink: {backoff_initial: 0s}\n", "uplink.backoff_initial"},
      {std::string(kMinimalHead) + "uplink: {backoff_initial: 10s, backoff_max: 5s}\n",
       "uplink.backoff_max"},
      {std::string(kMinimalHead) + "uplink: {batch_max_results: 0}\n", "uplink.batch_max_results"},
      {std::string(kMinimalHead) + "allowlist: {tcp_connect: ['*']}\n", "allowlist.tcp_connect"},
      {std::string(kMinimalHead) + "tests: {id: x}\n", "tests"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    ConfigFile f(c.text);
    CHECK_MESSAGE(f.error().find(c.key) != std::string::npos, f.error());
  }
}

TEST_CASE("a missing or syntactically invalid config file is a ConfigError") {
  TempDir tmp("agent-config");
  CHECK_THROWS_AS(AgentConfig::load(tmp / "missing.yaml"), ConfigError);
  ConfigFile f("state_dir: x\ntests: [\n");
  CHECK_MESSAGE(f.error().find(f.path.string() + ":") != std::string::npos, f.error());
}

TEST_CASE("Allowlist networks match addresses inside them on the allowed ports") {
  auto a = Allowlist::parse({"10.0.0.0/8:445", "192.168.1.0/24:80-443", "127.0.0.1"});
  CHECK(a.allows_address(ip("10.0.0.0"), 445));
  CHECK(a.allows_address(ip("10.255.255.255"), 445));
  CHECK_FALSE(a.allows_address(ip("11.0.0.1"), 445));
  CHECK_FALSE(a.allows_address(ip("10.1.2.3"), 446));
  CHECK_FALSE(a.allows_address(ip("192.168.1.7"), 79));
  CHECK(a.allows_address(ip("192.168.1.7"), 80));
  CHECK(a.allows_address(ip("192.168.1.7"), 443));
  CHECK_FALSE(a.allows_address(ip("192.168.1.7"), 444));
  CHECK_FALSE(a.allows_address(ip("192.168.2.7"), 80));
  CHECK(a.allows_address(ip("127.0.0.1"), 1));  // no port part: every port
  CHECK(a.allows_address(ip("127.0.0.1"), 65535));
  CHECK_FALSE(a.allows_address(ip("127.0.0.2"), 22));   // a bare address is a /32
  CHECK(a.allows_address(ip("::ffff:10.1.2.3"), 445));  // IPv4-mapped IPv6
  CHECK_FALSE(a.allows_address(ip("::1"), 445));
  CHECK(a.allows_name("10.1.2.3", 445));  // literal addresses given as names
  CHECK_FALSE(a.allows_name("10.1.2.3", 22));
}

TEST_CASE("Allowlist IPv6 entries need brackets for a port range") {
  auto a = Allowlist::parse({"[::1]:1-65535", "[fd00::/8]:22"});
  CHECK(a.allows_address(ip("::1"), 1));
  CHECK(a.allows_address(ip("::1"), 65535));
  CHECK_FALSE(a.allows_address(ip("::2"), 22));
  CHECK(a.allows_name("::1", 8080));
  CHECK(a.allows_address(ip("fd12::1"), 22));
  CHECK_FALSE(a.allows_address(ip("fd12::1"), 23));
  CHECK_FALSE(a.allows_address(ip("fe80::1"), 22));
  CHECK_FALSE(a.allows_address(ip("127.0.0.1"), 22));
  SUBCASE("an unbracketed IPv6 address means every port") {
    auto b = Allowlist::parse({"::1"});
    CHECK(b.allows_address(ip("::1"), 22));
  }
}

TEST_CASE("Allowlist names match by name, case-insensitively, with *. for subdomains") {
  auto a = Allowlist::parse({"*.lab:22", "Host.Example"});
  CHECK(a.allows_name("db.lab", 22));
  CHECK(a.allows_name("a.b.lab", 22));
  CHECK(a.allows_name("DB.LAB", 22));
  CHECK_FALSE(a.allows_name("lab", 22));
  CHECK_FALSE(a.allows_name("evillab", 22));
  CHECK_FALSE(a.allows_name("db.lab.evil.com", 22));
  CHECK_FALSE(a.allows_name("db.lab", 23));
  CHECK(a.allows_name("host.example", 1));
  CHECK(a.allows_name("HOST.EXAMPLE", 65535));
  CHECK_FALSE(a.allows_name("www.host.example", 80));
  CHECK_FALSE(a.allows_address(ip("127.0.0.1"), 22));  // names never match addresses
  CHECK_FALSE(Allowlist::parse({}).allows_name("anything", 1));
  CHECK(Allowlist::parse({}).empty());
}

TEST_CASE("Allowlist rejects entries that are malformed or allow everything") {
  for (const char* entry :
       {"*", "*:22", "*.", "", ":22", "10.0.0.0/33", "::1/129", "10.0.0.0/x", "host:0",
        "host:70000", "host:80-70", "host:-5", "host:80-", "[::1", "[::1]22", "name/8"}) {
    CAPTURE(std::string(entry));
    CHECK_THROWS_AS(Allowlist::parse({entry}), std::invalid_argument);
  }
}

// Regression: std::stoul ignored trailing characters, so "10.0.0.0/8:22,445" silently allowed
// only port 22 and "10.0.0.0/8x" was taken as /8.
TEST_CASE("Allowlist rejects trailing junk after a port or prefix length") {
  for (const char* entry : {"10.0.0.0/8:22,445", "host:22x", "host:80-443abc", "10.0.0.0/8x:22"}) {
    CAPTURE(std::string(entry));
    CHECK_THROWS_AS(Allowlist::parse({entry}), std::invalid_argument);
  }
}
