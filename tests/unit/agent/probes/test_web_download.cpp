// web_download: URL parsing and bypass variants, the verdict table, config loading with
// file:line, and the run-time allowlist gate (nothing off the list is ever contacted).
#include <doctest/doctest.h>

#include <curl/curl.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <regex>
#include <string>
#include <vector>

#include "agent/probes/web_download.hpp"
#include "agent/runtime/config.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using namespace tocsin::agent;
using tocsin::common::ConfigError;
using tocsin::common::ResultBody;
using tocsin::test::TempDir;

namespace {

// A loopback listener that never accepts: whether anyone connected is read from its backlog.
struct Listener {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io, {asio::ip::make_address("127.0.0.1"), 0}};
  std::uint16_t port() const { return acceptor.local_endpoint().port(); }
  bool was_contacted() {
    acceptor.non_blocking(true);
    boost::system::error_code ec;
    asio::ip::tcp::socket peer(io);
    acceptor.accept(peer, ec);
    return !ec;
  }
};

std::string dump(const std::map<std::string, std::string>& m) {
  std::string out;
  for (const auto& [k, v] : m) out += k + "=" + v + "\n";
  return out;
}

std::vector<ResultBody> run(Probe& p, const TestSpec& t, asio::io_context& io) {
  std::vector<ResultBody> out;
  std::exception_ptr err;
  asio::co_spawn(io, p.run(t, "tcn-unittest01"),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   err = e;
                   out = std::move(r);
                 });
  io.run();
  if (err) std::rethrow_exception(err);
  return out;
}

TestSpec download_spec(const std::string& url,
                       std::optional<tocsin::common::HostPort> proxy = {}) {
  TestSpec t;
  t.id = "wd";
  t.probe = "web_download";
  t.timeout = 5s;
  auto p = std::make_shared<WebDownloadParams>();
  p->url = url;
  p->proxy = proxy;
  p->user_agent = "Tocsin-test {marker}";
  t.web_download = p;
  return t;
}

FetchResult response(long status, std::map<std::string, std::string> headers = {},
                     std::string sha = "", Transport tr = Transport::ok) {
  FetchResult r;
  r.transport = tr;
  r.status = status;
  r.headers = std::move(headers);
  r.sha256 = std::move(sha);
  return r;
}

FetchResult failure(Transport tr) {
  FetchResult r;
  r.transport = tr;
  return r;
}

// An agent.yaml in its own temp dir; error() is the ConfigError loading throws.
struct ConfigFile {
  TempDir tmp{"web-config"};
  std::filesystem::path path = tmp / "agent.yaml";
  explicit ConfigFile(const std::string& params) {
    tocsin::common::write_file_atomic(
        path,
        "state_dir: state\n"
        "allowlist:\n"
        "  network: [\"127.0.0.1:8080\", \"proxy.lab:3128\", \"files.lab:80\"]\n"
        "tests:\n"
        "  - id: wd\n"
        "    kind: web_download\n"
        "    params:\n" +
            params);
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

TEST_CASE("http URLs are split into the parts the probes rewrite, and bad ones are refused") {
  auto u = parse_http_url("http://127.0.0.1:8080/tcn-x/file.zip?a=b#frag");
  CHECK(u.scheme == "http");
  CHECK(u.host == "127.0.0.1");
  CHECK(u.port == 8080);
  CHECK(u.path == "/tcn-x/file.zip");
  CHECK(u.query == "a=b");
  CHECK(u.str() == "http://127.0.0.1:8080/tcn-x/file.zip?a=b");  // the fragment is never sent
  auto s = parse_http_url("HTTPS://Files.Lab.");
  CHECK(s.port == 443);
  CHECK(s.path == "/");
  CHECK(s.allowlist_host() == "Files.Lab");
  CHECK(parse_http_url("http://[::1]:81/x").host == "::1");
  CHECK(parse_http_url("http://[::1]:81/x").str() == "http://[::1]:81/x");
  for (const char* bad :
       {"ftp://h/x", "h/x", "http://user:pw@h/x", "http://h:0/", "http://h:99999/", "http:///x",
        "http://h/a b", "http://h_x/", "http://[zz]/"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(parse_http_url(bad), std::invalid_argument);
  }
  CHECK(replace_marker("http://h/{marker}/x?m={marker}", "tcn-a") == "http://h/tcn-a/x?m=tcn-a");
}

TEST_CASE("bypass variants rewrite only the last segment, the query and the host's dot") {
  auto names = [](const std::vector<UrlVariant>& v) {
    std::vector<std::string> n;
    for (const auto& x : v) n.push_back(x.name + " " + x.url);
    return n;
  };
  CHECK(names(bypass_variants("http://127.0.0.1:8080/tcn-abc/file.zip")) ==
        std::vector<std::string>{"query_string http://127.0.0.1:8080/tcn-abc/file.zip?x=1",
                                 "upper_case http://127.0.0.1:8080/tcn-abc/FILE.ZIP",
                                 "percent_encoded http://127.0.0.1:8080/tcn-abc/file.zi%70",
                                 "percent_encoded_dot http://127.0.0.1:8080/tcn-abc/file%2Ezip",
                                 "trailing_slash http://127.0.0.1:8080/tcn-abc/file.zip/"});
  // A DNS name also gets the trailing-dot form (the same FQDN); an existing query is extended.
  CHECK(names(bypass_variants("http://files.lab/get?id=7")) ==
        std::vector<std::string>{"query_string http://files.lab/get?id=7&x=1",
                                 "upper_case http://files.lab/GET?id=7",
                                 "percent_encoded http://files.lab/ge%74?id=7",
                                 "trailing_slash http://files.lab/get/?id=7",
                                 "trailing_dot_host http://files.lab./get?id=7"});
  // A directory URL has no last segment to rewrite.
  CHECK(names(bypass_variants("http://127.0.0.1/dir/")) ==
        std::vector<std::string>{"query_string http://127.0.0.1/dir/?x=1"});
}

TEST_CASE("download verdicts: a refusal is prevented, a failure is not, the hash decides") {
  const std::string sha(64, 'a'), other(64, 'b');
  std::map<std::string, std::string> denied{{"x-squid-error", "ERR_ACCESS_DENIED 0"}};
  std::map<std::string, std::string> dns_fail{{"x-squid-error", "ERR_DNS_FAIL 0"}};
  std::map<std::string, std::string> connect_fail{{"x-squid-error", "ERR_CONNECT_FAIL 111"}};
  std::map<std::string, std::string> rfc_denied{{"proxy-status", "gw; error=http_request_denied"}};
  std::map<std::string, std::string> rfc_dns{
      {"proxy-status", "gw; error=dns_error; rcode=NXDOMAIN"}};
  FetchResult over = response(200, {}, other);
  over.over_cap = true;
  FetchResult connect_refused = response(0, denied, "", Transport::reset);
  connect_refused.connect_status = 403;
  struct Row {
    const char* what;
    FetchResult r;
    std::string expected_sha;
    Verdict v;
  };
  std::vector<Row> rows = {
      {"squid denial", response(403, denied), sha, {"prevented", "blocked_by_proxy"}},
      {"denied CONNECT", connect_refused, sha, {"prevented", "blocked_by_proxy"}},
      {"RFC 9209 denial", response(403, rfc_denied), "", {"prevented", "blocked_by_proxy"}},
      {"squid cannot resolve",
       response(503, dns_fail),
       sha,
       {"inconclusive", "proxy_upstream_failure"}},
      {"squid cannot connect",
       response(503, connect_fail),
       "",
       {"inconclusive", "proxy_upstream_failure"}},
      {"RFC 9209 dns error",
       response(502, rfc_dns),
       "",
       {"inconclusive", "proxy_upstream_failure"}},
      {"proxy wants auth", response(407), sha, {"inconclusive", "proxy_auth_required"}},
      {"intact payload", response(200, {}, sha), sha, {"not_prevented", "payload_received"}},
      {"altered payload", response(200, {}, other), sha, {"prevented", "content_altered"}},
      {"any payload, no hash given",
       response(200, {}, other),
       "",
       {"not_prevented", "payload_received"}},
      {"payload over the cap", over, sha, {"inconclusive", "payload_over_cap"}},
      {"cut mid-body",
       response(200, {}, other, Transport::reset),
       sha,
       {"prevented", "connection_reset"}},
      {"slow mid-body",
       response(200, {}, other, Transport::timeout),
       sha,
       {"inconclusive", "timeout"}},
      {"redirect", response(302), sha, {"inconclusive", "redirected"}},
      {"origin has no such file", response(404), sha, {"inconclusive", "payload_not_found"}},
      {"bare gateway error", response(502), sha, {"inconclusive", "upstream_failure"}},
      {"generic 403 block page", response(403), sha, {"prevented", "blocked_status"}},
      {"server error 500 (a failure, not a block)", response(500), "", {"inconclusive", "upstream_failure"}},
      {"rate limited", response(429), sha, {"inconclusive", "rate_limited"}},
      {"reset", failure(Transport::reset), sha, {"prevented", "connection_reset"}},
      {"dns failure", failure(Transport::dns_failure), sha, {"inconclusive", "dns_failure"}},
      {"proxy down",
       failure(Transport::proxy_unreachable),
       sha,
       {"inconclusive", "proxy_unreachable"}},
      {"origin down",
       failure(Transport::origin_unreachable),
       sha,
       {"inconclusive", "origin_unreachable"}},
      {"timeout", failure(Transport::timeout), sha, {"inconclusive", "timeout"}},
      {"tls", failure(Transport::tls_error), sha, {"inconclusive", "tls_error"}},
      {"off the allowlist",
       failure(Transport::not_allowlisted),
       sha,
       {"not_applicable", "target_not_allowlisted"}},
      {"other failure", failure(Transport::error), sha, {"error", "fetch_failed"}},
      {"libcurl missing",
       failure(Transport::libcurl_unavailable),
       sha,
       {"error", "libcurl_unavailable"}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    auto v = download_verdict(row.r, row.expected_sha);
    CHECK(v.verdict == row.v.verdict);
    CHECK(v.reason == row.v.reason);
  }
}

TEST_CASE("libcurl results map to transport outcomes that tell a block from a broken path") {
  struct Row {
    CURLcode code;
    bool via_proxy, vetoed_all, connected, over_cap;
    Transport t;
  };
  std::vector<Row> rows = {
      {CURLE_OK, true, false, true, false, Transport::ok},
      {CURLE_WRITE_ERROR, false, false, true, true, Transport::ok},
      {CURLE_WRITE_ERROR, false, false, true, false, Transport::error},
      {CURLE_COULDNT_RESOLVE_PROXY, true, false, false, false, Transport::dns_failure},
      {CURLE_COULDNT_RESOLVE_HOST, false, false, false, false, Transport::dns_failure},
      {CURLE_COULDNT_CONNECT, true, false, false, false, Transport::proxy_unreachable},
      {CURLE_COULDNT_CONNECT, false, false, false, false, Transport::origin_unreachable},
      {CURLE_COULDNT_CONNECT, true, true, false, false, Transport::not_allowlisted},
      {CURLE_OPERATION_TIMEDOUT, true, false, false, false, Transport::proxy_unreachable},
      {CURLE_OPERATION_TIMEDOUT, true, false, true, false, Transport::timeout},
      {CURLE_RECV_ERROR, true, false, true, false, Transport::reset},
      {CURLE_GOT_NOTHING, false, false, true, false, Transport::reset},
      {CURLE_PARTIAL_FILE, false, false, true, false, Transport::reset},
      {CURLE_PEER_FAILED_VERIFICATION, false, false, true, false, Transport::tls_error},
      {CURLE_UNSUPPORTED_PROTOCOL, false, false, false, false, Transport::error},
  };
  for (const auto& r : rows) {
    CAPTURE(r.code);
    CAPTURE(r.via_proxy);
    CHECK(classify_curl(r.code, r.via_proxy, r.vetoed_all, r.connected, r.over_cap) == r.t);
  }
}

TEST_CASE("web_download params load, and off-allowlist targets are refused with file:line") {
  SUBCASE("valid") {
    ConfigFile f(
        "      url: http://127.0.0.1:8080/{marker}/eicar.com\n"
        "      proxy: http://proxy.lab:3128\n"
        "      sha256: " +
        std::string(64, 'A') + "\n");
    auto c = AgentConfig::load(f.path);
    REQUIRE(c.tests.size() == 1);
    const auto& p = *c.tests[0].web_download;
    CHECK(p.proxy->host == "proxy.lab");
    CHECK(p.proxy->port == 3128);
    CHECK(p.sha256 == std::string(64, 'a'));
    CHECK(p.variants);
    CHECK(p.user_agent.find("{marker}") != std::string::npos);
    CHECK(c.tests[0].timeout == 30s);
    CHECK(c.tests[0].summary == "http://127.0.0.1:8080/{marker}/eicar.com via proxy.lab:3128");
  }
  SUBCASE("a user agent without the marker gets it appended") {
    ConfigFile f(
        "      url: http://files.lab/x.zip\n      user_agent: Wget/1.21\n      variants: false\n");
    auto c = AgentConfig::load(f.path);
    CHECK(c.tests[0].web_download->user_agent == "Wget/1.21 {marker}");
    CHECK_FALSE(c.tests[0].web_download->variants);
  }
  struct Row {
    const char* params;
    const char* key;
    const char* message;
  };
  for (const auto& row : std::vector<Row>{
           {"      url: http://127.0.0.1:9999/x\n", "url",
            "127.0.0.1:9999 is not on the allowlist"},
           {"      url: http://evil.example/x\n", "url", "evil.example:80 is not on the allowlist"},
           {"      url: http://127.0.0.1:8080/x\n      proxy: 127.0.0.1:3128\n", "proxy",
            "127.0.0.1:3128 is not on the allowlist"},
           {"      url: ftp://127.0.0.1:8080/x\n", "url", "only http and https"},
           {"      url: http://127.0.0.1:8080/x\n      sha256: abc\n", "sha256", "64 hex digits"},
           {"      url: http://127.0.0.1:8080/x\n      proxy: nope\n", "proxy", "host:port"},
           {"      url: http://127.0.0.1:8080/x\n      colour: red\n", "colour", "unknown"},
           {"      proxy: proxy.lab:3128\n", "url", "is required"},
           {"      url: http://127.0.0.1:8080/x\n      ca_file: ca.pem\n", "ca_file",
            "absolute path"},
           {"      url: http://127.0.0.1:8080/x\n      ca_file: /nonexistent/ca.pem\n", "ca_file",
            "no such file"},
       }) {
    CAPTURE(row.params);
    ConfigFile f(row.params);
    auto e = f.error();
    CHECK(std::regex_search(e, std::regex("agent\\.yaml:[0-9]+")));  // file:line
    CHECK(e.find(row.key) != std::string::npos);
    CHECK(e.find(row.message) != std::string::npos);
  }
}

TEST_CASE("at run time nothing off the allowlist is contacted: not_applicable") {
  Listener origin;
  asio::io_context io;
  SUBCASE("a literal address off the list, direct") {
    auto allow = Allowlist::parse({"10.0.0.0/8"});
    ClockState clock;
    WebDownloadProbe probe(io.get_executor(), allow, clock);
    auto url = "http://127.0.0.1:" + std::to_string(origin.port()) + "/{marker}/eicar.com";
    auto r = run(probe, download_spec(url), io);
    REQUIRE(r.size() == 1);
    INFO(dump(r[0].evidence));
    CHECK(r[0].verdict == "not_applicable");
    CHECK(r[0].reason == "target_not_allowlisted");
    CHECK(r[0].evidence["not_contacted"] == "127.0.0.1:" + std::to_string(origin.port()));
    CHECK(r[0].target.find("/tcn-unittest01/") != std::string::npos);
  }
  SUBCASE("a name whose resolved addresses are off the list, direct") {
    auto allow = Allowlist::parse({"10.0.0.0/8"});
    ClockState clock;
    WebDownloadProbe probe(io.get_executor(), allow, clock);
    auto r =
        run(probe, download_spec("http://localhost:" + std::to_string(origin.port()) + "/x"), io);
    REQUIRE(r.size() == 1);
    INFO(dump(r[0].evidence));
    CHECK(r[0].verdict == "not_applicable");
    CHECK(r[0].evidence["not_contacted"].find(":" + std::to_string(origin.port())) !=
          std::string::npos);
  }
  SUBCASE("an origin off the list behind an allowed proxy") {
    auto allow = Allowlist::parse({"127.0.0.1:" + std::to_string(origin.port())});
    ClockState clock;
    WebDownloadProbe probe(io.get_executor(), allow, clock);
    auto r = run(probe,
                 download_spec("http://files.elsewhere:80/x",
                               tocsin::common::HostPort{"127.0.0.1", origin.port()}),
                 io);
    REQUIRE(r.size() == 1);
    CHECK(r[0].verdict == "not_applicable");
    CHECK(r[0].evidence["detail"].find("files.elsewhere:80") != std::string::npos);
  }
  CHECK_FALSE(origin.was_contacted());
}
