// tls_policy: how observations map to verdicts (tables), how params load, and that an address
// off the allowlist is never contacted.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "agent/probes/tls_policy.hpp"
#include "common/config.hpp"

using namespace tocsin;
using agent::CertFacts;
using agent::ScanCheck;
using agent::TlsEnd;
using agent::TlsPolicyParams;

namespace {

CertFacts bad_cert() {
  CertFacts c;
  c.sha256 = std::string(64, 'a');
  c.issuer = "CN=bad.tocsin.test";
  c.days_left = -30;
  c.expired = true;
  c.self_signed = true;
  c.verify_error = "certificate has expired";
  return c;
}

agent::TestSpec load(const std::string& params, const std::string& extra = "") {
  auto root = common::ConfigNode::load_string(
      "id: t\nkind: tls_policy\n" + extra + "params: " + params + "\n", "test.yaml");
  auto allow = agent::Allowlist::parse({"127.0.0.1:1-65535", "proxy.lab:3128", "bad.example:443"});
  agent::TestSpec s;
  agent::load_tls_policy(root, root["params"], s, allow);
  return s;
}

}  // namespace

TEST_CASE("tls_policy outbound verdicts: a failure is not a block, a replaced cert is") {
  TlsPolicyParams p;
  struct Row {
    TlsEnd end;
    int proxy_status;
    const char* verdict;
    const char* reason;
  };
  for (auto r : {Row{TlsEnd::dns_failure, 0, "inconclusive", "dns_failure"},
                 Row{TlsEnd::not_allowlisted, 0, "not_applicable", "target_not_allowlisted"},
                 Row{TlsEnd::refused, 0, "inconclusive", "refused"},
                 Row{TlsEnd::connect_timeout, 0, "inconclusive", "connect_timeout"},
                 Row{TlsEnd::unreachable, 0, "inconclusive", "unreachable"},
                 Row{TlsEnd::proxy_unreachable, 0, "inconclusive", "proxy_unreachable"},
                 Row{TlsEnd::proxy_error, 0, "inconclusive", "proxy_error"},
                 Row{TlsEnd::proxy_status, 403, "prevented", "proxy_denied"},
                 Row{TlsEnd::proxy_status, 407, "inconclusive", "proxy_auth_required"},
                 Row{TlsEnd::proxy_status, 503, "inconclusive", "proxy_upstream_failure"},
                 Row{TlsEnd::handshake_reset, 0, "prevented", "handshake_reset"},
                 Row{TlsEnd::handshake_closed, 0, "prevented", "handshake_closed"},
                 Row{TlsEnd::handshake_timeout, 0, "prevented", "handshake_timeout"},
                 Row{TlsEnd::peer_alert, 0, "inconclusive", "handshake_failed"},
                 Row{TlsEnd::local_error, 0, "inconclusive", "handshake_failed"}}) {
    auto v = agent::outbound_verdict(r.end, r.proxy_status, std::nullopt, p);
    INFO(agent::to_string(r.end) << " " << r.proxy_status);
    CHECK(v.verdict == r.verdict);
    CHECK(v.reason == r.reason);
  }
}

TEST_CASE("tls_policy outbound verdicts on a completed handshake") {
  TlsPolicyParams p;
  auto cert = bad_cert();
  SUBCASE("expected fingerprint") {
    p.expect_fingerprint = cert.sha256;
    CHECK(agent::outbound_verdict(TlsEnd::completed, 0, cert, p).verdict == "not_prevented");
    auto replaced = cert;
    replaced.sha256 = std::string(64, 'b');
    replaced.chain_verifies = true;
    auto v = agent::outbound_verdict(TlsEnd::completed, 0, replaced, p);
    CHECK(v.verdict == "prevented");
    CHECK(v.reason == "certificate_replaced");
  }
  SUBCASE("expected issuer") {
    p.expect_issuer = "bad.tocsin.test";
    CHECK(agent::outbound_verdict(TlsEnd::completed, 0, cert, p).reason ==
          "invalid_certificate_delivered");
    auto replaced = cert;
    replaced.issuer = "CN=Corp Inspection CA";
    CHECK(agent::outbound_verdict(TlsEnd::completed, 0, replaced, p).reason ==
          "certificate_replaced");
  }
  SUBCASE("no expectation: validation decides, and a valid certificate proves nothing") {
    CHECK(agent::outbound_verdict(TlsEnd::completed, 0, cert, p).verdict == "not_prevented");
    auto valid = cert;
    valid.chain_verifies = true;
    auto v = agent::outbound_verdict(TlsEnd::completed, 0, valid, p);
    CHECK(v.verdict == "inconclusive");
    CHECK(v.reason == "valid_certificate_presented");
  }
}

TEST_CASE("tls_policy inbound verdicts list every finding, most serious first") {
  using S = ScanCheck::State;
  auto check = [](const char* name, S s) { return ScanCheck{name, s, ""}; };
  CertFacts good;
  good.days_left = 200;
  SUBCASE("everything refused") {
    auto v = agent::inbound_verdict({check("modern", S::accepted), check("tls1_0", S::refused),
                                     check("cipher_rc4", S::untestable)},
                                    good, 30);
    CHECK(v.verdict == "prevented");
    CHECK(v.reason == "policy_enforced");
    CHECK(v.findings.empty());
  }
  SUBCASE("weak protocol and weak cipher and a bad certificate") {
    auto cert = bad_cert();
    cert.name_matches = false;
    auto v = agent::inbound_verdict({check("modern", S::accepted), check("tls1_0", S::accepted),
                                     check("cipher_null", S::accepted)},
                                    cert, 30);
    CHECK(v.verdict == "not_prevented");
    CHECK(v.reason == "weak_protocol_accepted");
    CHECK(v.findings == std::vector<std::string>{"tls1_0_accepted", "cipher_null_accepted",
                                                 "certificate_expired", "certificate_self_signed",
                                                 "certificate_name_mismatch"});
  }
  SUBCASE("only a weak cipher") {
    auto v = agent::inbound_verdict(
        {check("modern", S::accepted), check("cipher_anonymous", S::accepted)}, good, 30);
    CHECK(v.reason == "weak_cipher_accepted");
  }
  SUBCASE("expiring within min_days_left") {
    auto soon = good;
    soon.days_left = 10;
    CHECK(agent::inbound_verdict({check("modern", S::accepted)}, soon, 30).reason ==
          "certificate_expiring");
    CHECK(agent::inbound_verdict({check("modern", S::accepted)}, soon, 7).verdict == "prevented");
  }
  SUBCASE("nothing completed, or a check could not finish") {
    CHECK(agent::inbound_verdict({check("modern", S::failed), check("tls1_0", S::refused)},
                                 std::nullopt, 30)
              .reason == "no_tls_handshake");
    CHECK(
        agent::inbound_verdict({check("modern", S::accepted), check("tls1_0", S::failed)}, good, 30)
            .reason == "incomplete_scan");
  }
}

TEST_CASE("tls_policy params load with defaults and refuse what is wrong, with file:line") {
  auto s = load(
      "{target: \"bad.example:443\", sni_marker: true, expect_fingerprint: "
      "\"AA:" +
      std::string(62, 'b') + "\"}");
  REQUIRE(s.tls_policy);
  CHECK(s.tls_policy->mode == TlsPolicyParams::Mode::outbound);
  CHECK(s.tls_policy->server_name == "bad.example");
  CHECK(s.tls_policy->expect_fingerprint == "aa" + std::string(62, 'b'));
  CHECK(s.timeout == std::chrono::seconds(15));
  CHECK(s.summary == "outbound to bad.example:443");
  auto in = load("{mode: inbound, target: \"127.0.0.1:8443\"}");
  CHECK(in.tls_policy->min_days_left == 30);
  CHECK(in.tls_policy->server_name.empty());
  CHECK(in.timeout == std::chrono::seconds(30));
  CHECK(load("{target: \"127.0.0.1:1\", proxy: \"proxy.lab:3128\"}", "timeout: 2s\n").summary ==
        "outbound to 127.0.0.1:1 via proxy.lab:3128");

  auto fails = [](const std::string& params, const std::string& text) {
    try {
      load(params);
      FAIL("accepted: " << params);
    } catch (const common::ConfigError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find("test.yaml:") != std::string::npos);
      CHECK(std::string(e.what()).find(text) != std::string::npos);
    }
  };
  fails("{target: \"10.0.0.1:443\"}", "not on the allowlist");
  fails("{target: \"127.0.0.1:443\", proxy: \"other.lab:3128\"}", "not on the allowlist");
  fails("{target: \"127.0.0.1\"}", "host:port");
  fails("{mode: sideways, target: \"127.0.0.1:1\"}", "not one of outbound, inbound");
  fails("{target: \"127.0.0.1:1\", expect_fingerprint: abc}", "SHA-256");
  fails("{mode: inbound, target: \"127.0.0.1:1\", proxy: \"proxy.lab:3128\"}", "only for mode");
  fails("{target: \"127.0.0.1:1\", min_days_left: 3}", "only for mode");
  fails("{target: \"127.0.0.1:1\", colour: red}", "colour");
}

TEST_CASE("tls_policy never contacts an address off the allowlist") {
  namespace asio = boost::asio;
  asio::io_context io;
  asio::ip::tcp::acceptor listener(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto port = listener.local_endpoint().port();
  auto allow = agent::Allowlist::parse({"10.0.0.0/8"});
  agent::ClockState clock;
  agent::TlsPolicyProbe probe(io.get_executor(), allow, clock);
  agent::TestSpec t;
  t.id = "off-list";
  t.probe = "tls_policy";
  auto p = std::make_shared<TlsPolicyParams>();
  p->target = {"127.0.0.1", port};
  t.tls_policy = p;
  std::vector<common::ResultBody> out;
  asio::co_spawn(io, probe.run(t, "tcn-test"), [&](std::exception_ptr e, auto r) {
    if (e) std::rethrow_exception(e);
    out = std::move(r);
  });
  io.run_for(std::chrono::seconds(10));
  REQUIRE(out.size() == 1);
  CHECK(out[0].verdict == "not_applicable");
  CHECK(out[0].reason == "target_not_allowlisted");
  listener.non_blocking(true);
  boost::system::error_code ec;
  asio::ip::tcp::socket peer(io);
  listener.accept(peer, ec);
  CHECK(ec);  // nothing connected
}
