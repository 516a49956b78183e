// The dns_lookup probe without a resolver: how observations map to verdicts, how params load
// (errors with file:line), and how c-ares outcomes are classified against sockets that never
// answer or are closed.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>

#include <optional>
#include <string>
#include <vector>

#include "agent/probes/dns_lookup.hpp"
#include "agent/runtime/config.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace tocsin::agent;
using tocsin::common::ConfigError;
using tocsin::common::HostPort;
using tocsin::common::ResultBody;
using tocsin::test::TempDir;

namespace {

asio::ip::address ip(const char* text) {
  return asio::ip::make_address(text);
}

DnsLookupParams params_with(std::vector<std::string> expect = {},
                            DnsRecordType type = DnsRecordType::a) {
  DnsLookupParams p;
  p.domain = "bad.example";
  p.control_domain = "good.example";
  for (const auto& s : default_sinkhole()) p.sinkhole.push_back(AddressRange::parse(s));
  for (const auto& e : expect) p.expect.push_back(ip(e.c_str()));
  p.record_type = type;
  return p;
}

DnsObservation seen(DnsStatus st, std::vector<const char*> answers = {}) {
  DnsObservation o;
  o.status = st;
  for (auto a : answers) o.answers.push_back(ip(a));
  return o;
}

}  // namespace

TEST_CASE("dns_verdict maps each observation and control to a verdict and reason") {
  using S = DnsStatus;
  const std::optional<DnsObservation> none;
  const auto ok = std::optional(seen(S::answered, {"192.0.2.5"}));
  const auto ctl_nx = std::optional(seen(S::nxdomain));
  const auto ctl_sink = std::optional(seen(S::answered, {"0.0.0.0"}));
  const auto ctl_loopback = std::optional(seen(S::answered, {"127.0.0.9"}));
  const auto ctl_nodata = std::optional(seen(S::nodata));
  const auto ctl_timeout = std::optional(seen(S::timeout));
  struct Case {
    const char* name;
    DnsObservation target;
    std::optional<DnsObservation> control;
    std::vector<std::string> expect;
    DnsRecordType type;
    const char* verdict;
    const char* reason;
  } cases[] = {
      {"sinkhole answer",
       seen(S::answered, {"0.0.0.0"}),
       none,
       {},
       DnsRecordType::a,
       "prevented",
       "sinkholed"},
      {"loopback sinkhole",
       seen(S::answered, {"127.0.0.1", "127.1.2.3"}),
       none,
       {},
       DnsRecordType::a,
       "prevented",
       "sinkholed"},
      {"v6 sinkhole",
       seen(S::answered, {"::"}),
       none,
       {},
       DnsRecordType::aaaa,
       "prevented",
       "sinkholed"},
      {"sinkhole even with a failed control",
       seen(S::answered, {"0.0.0.0"}),
       ctl_nx,
       {},
       DnsRecordType::a,
       "prevented",
       "sinkholed"},
      {"real answer",
       seen(S::answered, {"192.0.2.10"}),
       ok,
       {},
       DnsRecordType::a,
       "not_prevented",
       "resolved"},
      {"real answer among sinkholes",
       seen(S::answered, {"0.0.0.0", "192.0.2.10"}),
       none,
       {},
       DnsRecordType::a,
       "not_prevented",
       "resolved"},
      {"expected real answer",
       seen(S::answered, {"192.0.2.10"}),
       none,
       {"192.0.2.10"},
       DnsRecordType::a,
       "not_prevented",
       "resolved"},
      {"neither sinkhole nor expected",
       seen(S::answered, {"198.51.100.7"}),
       ok,
       {"192.0.2.10"},
       DnsRecordType::a,
       "inconclusive",
       "unexpected_answer"},
      {"nxdomain, control resolved",
       seen(S::nxdomain),
       ok,
       {},
       DnsRecordType::a,
       "prevented",
       "nxdomain_by_policy"},
      {"nxdomain, no control",
       seen(S::nxdomain),
       none,
       {},
       DnsRecordType::a,
       "inconclusive",
       "nxdomain_without_control"},
      {"nxdomain, control nxdomain",
       seen(S::nxdomain),
       ctl_nx,
       {},
       DnsRecordType::a,
       "inconclusive",
       "control_failed"},
      // The control shows the resolver answers; its address is not judged against the
      // sinkhole list (a lab resolver may well answer 127.0.0.9 for it).
      {"nxdomain, control answered a sinkhole-listed address",
       seen(S::nxdomain),
       ctl_sink,
       {},
       DnsRecordType::a,
       "prevented",
       "nxdomain_by_policy"},
      {"nxdomain, control answered a loopback address",
       seen(S::nxdomain),
       ctl_loopback,
       {},
       DnsRecordType::a,
       "prevented",
       "nxdomain_by_policy"},
      {"nxdomain, control without records",
       seen(S::nxdomain),
       ctl_nodata,
       {},
       DnsRecordType::a,
       "inconclusive",
       "control_failed"},
      {"nxdomain, control timed out",
       seen(S::nxdomain),
       ctl_timeout,
       {},
       DnsRecordType::a,
       "inconclusive",
       "control_failed"},
      {"refused, control resolved",
       seen(S::refused),
       ok,
       {},
       DnsRecordType::a,
       "prevented",
       "refused"},
      {"refused, no control",
       seen(S::refused),
       none,
       {},
       DnsRecordType::a,
       "inconclusive",
       "refused_without_control"},
      {"nodata, real answers unknown",
       seen(S::nodata),
       ok,
       {},
       DnsRecordType::a,
       "inconclusive",
       "no_data"},
      {"nodata, only other-family answers known",
       seen(S::nodata),
       ok,
       {"2001:db8::1"},
       DnsRecordType::a,
       "inconclusive",
       "no_data"},
      {"nodata, real A answers known",
       seen(S::nodata),
       ok,
       {"192.0.2.10"},
       DnsRecordType::a,
       "prevented",
       "nodata_by_policy"},
      {"nodata, no control",
       seen(S::nodata),
       none,
       {"192.0.2.10"},
       DnsRecordType::a,
       "inconclusive",
       "nodata_without_control"},
      {"servfail", seen(S::servfail), ok, {}, DnsRecordType::a, "inconclusive", "dns_failure"},
      {"resolver unreachable",
       seen(S::unreachable),
       none,
       {},
       DnsRecordType::a,
       "inconclusive",
       "dns_failure"},
      {"other failure",
       seen(S::failure),
       none,
       {},
       DnsRecordType::a,
       "inconclusive",
       "dns_failure"},
      {"timeout", seen(S::timeout), ok, {}, DnsRecordType::a, "inconclusive", "timeout"},
  };
  for (const auto& c : cases) {
    std::string name = c.name;  // CAPTURE of a const char* would log the pointer
    CAPTURE(name);
    auto p = params_with(c.expect, c.type);
    auto v = dns_verdict(p, c.target, c.control);
    CHECK(v.verdict == c.verdict);
    CHECK(v.reason == c.reason);
    CHECK_FALSE(v.note.empty());
  }
}

TEST_CASE("a control counts when it is answered with an address, whatever the address") {
  auto p = params_with();
  CHECK(control_resolved(p, seen(DnsStatus::answered, {"192.0.2.5"})));
  CHECK(control_resolved(p, seen(DnsStatus::answered, {"127.0.0.9"})));
  CHECK(control_resolved(p, seen(DnsStatus::answered, {"0.0.0.0"})));
  CHECK(control_resolved(p, seen(DnsStatus::answered, {"::1"})));
  CHECK_FALSE(control_resolved(p, seen(DnsStatus::answered)));  // no address in the answer
  for (auto st : {DnsStatus::nxdomain, DnsStatus::refused, DnsStatus::nodata, DnsStatus::servfail,
                  DnsStatus::timeout, DnsStatus::unreachable, DnsStatus::failure}) {
    CAPTURE(static_cast<int>(st));
    CHECK_FALSE(control_resolved(p, seen(st, {"192.0.2.5"})));
  }
}

TEST_CASE("a failure is never a block: only sinkholes and confirmed negatives are prevented") {
  auto p = params_with();
  for (auto st :
       {DnsStatus::timeout, DnsStatus::servfail, DnsStatus::unreachable, DnsStatus::failure})
    for (auto control :
         {std::optional<DnsObservation>{}, std::optional(seen(DnsStatus::answered, {"192.0.2.5"}))})
      CHECK(dns_verdict(p, seen(st), control).verdict == "inconclusive");
}

TEST_CASE("address ranges match single addresses and networks of their own family") {
  auto r = AddressRange::parse("127.0.0.0/8");
  CHECK(r.contains(ip("127.0.0.1")));
  CHECK(r.contains(ip("127.255.0.9")));
  CHECK_FALSE(r.contains(ip("128.0.0.1")));
  CHECK_FALSE(r.contains(ip("::1")));
  CHECK(AddressRange::parse("0.0.0.0").contains(ip("0.0.0.0")));
  CHECK_FALSE(AddressRange::parse("0.0.0.0").contains(ip("0.0.0.1")));
  CHECK(AddressRange::parse("0.0.0.0/0").contains(ip("203.0.113.1")));
  CHECK(AddressRange::parse("2001:db8::/32").contains(ip("2001:db8:1::5")));
  CHECK_FALSE(AddressRange::parse("2001:db8::/32").contains(ip("2001:db9::5")));
  CHECK(AddressRange::parse("::").to_string() == "::/128");
  for (const char* bad :
       {"", "sinkhole.example", "10.0.0.0/33", "10.0.0.0/", "::/129", "1.2.3.4/x"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(AddressRange::parse(bad), std::invalid_argument);
  }
}

TEST_CASE("domains are normalised and refused when they cannot carry a marker label") {
  CHECK(normalize_domain("Bad.Example.") == "bad.example");
  CHECK(normalize_domain("x_y.bad-1.test") == "x_y.bad-1.test");
  std::string long_label(64, 'a');
  std::string too_long;
  for (int i = 0; i < 4; ++i) too_long += std::string(60, 'a') + ".";
  too_long += "test";  // 248 characters: fine alone, too long under a marker
  for (const std::string& bad :
       {std::string(), std::string("."), std::string("a..b"), std::string("-a.test"),
        std::string("a b.test"), std::string("a/b"), long_label + ".test", too_long}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(normalize_domain(bad), std::invalid_argument);
  }
}

namespace {

struct ConfigFile {
  TempDir tmp{"dns-config"};
  fs::path path = tmp / "agent.yaml";
  explicit ConfigFile(const std::string& params, const std::string& extra = "") {
    tocsin::common::write_file_atomic(
        path,
        "state_dir: state\nallowlist:\n  network: [\"127.0.0.1:1-65535\", \"10.9.9.9:53\"]\n"
        "tests:\n  - id: dns\n    kind: dns_lookup\n" +
            extra + "    params:\n" + params);
  }
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

}  // namespace

TEST_CASE("dns_lookup params load with defaults and are refused with file:line when wrong") {
  SUBCASE("defaults") {
    ConfigFile f("      domain: Bad.Example.\n");
    auto c = AgentConfig::load(f.path);
    REQUIRE(c.tests.size() == 1);
    const auto& t = c.tests[0];
    REQUIRE(t.dns_lookup);
    CHECK(t.dns_lookup->domain == "bad.example");
    CHECK_FALSE(t.dns_lookup->resolver.has_value());
    CHECK(t.dns_lookup->sinkhole.size() == default_sinkhole().size());
    CHECK(t.dns_lookup->record_type == DnsRecordType::a);
    CHECK(t.timeout == 5s);
    CHECK(t.summary == "<marker>.bad.example A via system resolvers");
  }
  SUBCASE("everything given") {
    ConfigFile f(
        "      domain: bad.example\n      resolver: \"127.0.0.1:5353\"\n"
        "      sinkhole: [10.66.0.0/16, \"::\"]\n      expect: [192.0.2.10]\n"
        "      control_domain: good.example\n      record_type: aaaa\n",
        "    timeout: 2s\n");
    auto c = AgentConfig::load(f.path);
    const auto& p = *c.tests[0].dns_lookup;
    REQUIRE(p.resolver);
    CHECK(p.resolver->to_string() == "127.0.0.1:5353");
    CHECK(p.sinkhole.size() == 2);
    CHECK(p.expect.size() == 1);
    CHECK(p.control_domain == "good.example");
    CHECK(p.record_type == DnsRecordType::aaaa);
    CHECK(c.tests[0].timeout == 2s);
  }
  SUBCASE("a bare resolver address means port 53") {
    ConfigFile f("      domain: bad.example\n      resolver: 10.9.9.9\n");
    CHECK(AgentConfig::load(f.path).tests[0].dns_lookup->resolver->to_string() == "10.9.9.9:53");
  }
  struct Bad {
    const char* params;
    const char* message;
  } bad[] = {
      {"      resolver: 127.0.0.1\n", "domain"},
      {"      domain: bad.example\n      resolver: \"10.9.9.9:5353\"\n", "not on the allowlist"},
      {"      domain: bad.example\n      resolver: 192.0.2.53\n", "not on the allowlist"},
      {"      domain: bad.example\n      resolver: \"dns.example:53\"\n", "must be an IP address"},
      {"      domain: bad..example\n", "invalid label"},
      {"      domain: bad.example\n      sinkhole: [sinkhole.example]\n", "not an IP address"},
      {"      domain: bad.example\n      expect: [0.0.0.0]\n", "also on the sinkhole list"},
      {"      domain: bad.example\n      record_type: MX\n", "not A or AAAA"},
      {"      domain: bad.example\n      servers: [127.0.0.1]\n", "servers"},
      {"      domain: bad.example\n      control_domain: \"good example\"\n", "control_domain"},
  };
  for (const auto& b : bad) {
    CAPTURE(b.params);
    auto msg = ConfigFile(b.params).error();
    CHECK_MESSAGE(msg.find(b.message) != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("agent.yaml:") != std::string::npos, msg);  // file:line
  }
}

namespace {

// A UDP socket on 127.0.0.1:<free port> that receives queries and never answers.
struct SilentResolver {
  asio::io_context io;
  asio::ip::udp::socket sock{io, asio::ip::udp::endpoint(ip("127.0.0.1"), 0)};
  HostPort endpoint() const { return {"127.0.0.1", sock.local_endpoint().port()}; }
  std::size_t pending() const { return sock.available(); }
};

std::uint16_t closed_udp_port() {
  asio::io_context io;
  asio::ip::udp::socket s(io, asio::ip::udp::endpoint(ip("127.0.0.1"), 0));
  return s.local_endpoint().port();
}

std::vector<ResultBody> run_probe(const Allowlist& allow, const TestSpec& t) {
  asio::io_context io;
  ClockState clock;
  DnsLookupProbe probe(io.get_executor(), allow, clock);
  std::optional<std::vector<ResultBody>> out;
  std::exception_ptr error;
  asio::co_spawn(io, probe.run(t, "tcn-unitmarker"),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   error = e;
                   if (!e) out = std::move(r);
                 });
  io.run();
  if (error) std::rethrow_exception(error);
  REQUIRE(out.has_value());
  return *out;
}

TestSpec spec_for(const HostPort& resolver, std::chrono::milliseconds timeout) {
  auto p = std::make_shared<DnsLookupParams>(params_with());
  p->resolver = resolver;
  TestSpec t;
  t.id = "dns";
  t.probe = "dns_lookup";
  t.timeout = timeout;
  t.dns_lookup = p;
  return t;
}

}  // namespace

TEST_CASE(
    "a resolver that never answers is a timeout, a closed port a failure: both inconclusive") {
  SUBCASE("silent") {
    SilentResolver silent;
    auto run = resolve_names(silent.endpoint(), {"good.example", "tcn-x.bad.example"},
                             DnsRecordType::a, 600ms);
    REQUIRE(run.results.size() == 2);
    for (const auto& o : run.results) {
      CHECK(o.status == DnsStatus::timeout);
      CHECK(o.rcode.empty());
    }
    CHECK(run.servers == silent.endpoint().to_string());
    CHECK(silent.pending() > 0);  // the queries did arrive

    auto r = run_probe(Allowlist::parse({"127.0.0.1:1-65535"}), spec_for(silent.endpoint(), 600ms));
    REQUIRE(r.size() == 1);
    CHECK(r[0].verdict == "inconclusive");
    CHECK(r[0].reason == "timeout");
    CHECK(r[0].evidence["query"] == "tcn-unitmarker.bad.example");
    CHECK(r[0].evidence["control_dns_status"] != "ARES_SUCCESS");
  }
  SUBCASE("closed") {
    HostPort closed{"127.0.0.1", closed_udp_port()};
    auto run = resolve_names(closed, {"tcn-x.bad.example"}, DnsRecordType::aaaa, 2s);
    REQUIRE(run.results.size() == 1);
    CHECK(run.results[0].status == DnsStatus::unreachable);
    CHECK(run.results[0].ares_status == "ARES_ECONNREFUSED");
    auto r = run_probe(Allowlist::parse({"127.0.0.1:1-65535"}), spec_for(closed, 2s));
    CHECK(r[0].verdict == "inconclusive");
    CHECK(r[0].reason == "dns_failure");
  }
}

TEST_CASE("a resolver off the allowlist at run time is not_applicable and never queried") {
  SilentResolver silent;
  auto r = run_probe(Allowlist::parse({"10.0.0.0/8"}), spec_for(silent.endpoint(), 2s));
  REQUIRE(r.size() == 1);
  CHECK(r[0].verdict == "not_applicable");
  CHECK(r[0].reason == "target_not_allowlisted");
  CHECK(silent.pending() == 0);
}
