// http_beacon: where the marker goes, the verdict table, config loading with file:line, and
// the run-time allowlist gate.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <regex>
#include <string>
#include <vector>

#include "agent/probes/http_beacon.hpp"
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

FetchResult answer(long status, std::map<std::string, std::string> headers = {}) {
  FetchResult r;
  r.transport = Transport::ok;
  r.status = status;
  r.headers = std::move(headers);
  return r;
}

FetchResult failure(Transport tr) {
  FetchResult r;
  r.transport = tr;
  return r;
}

std::string load_error(const std::string& params) {
  TempDir tmp("beacon-config");
  auto path = tmp / "agent.yaml";
  tocsin::common::write_file_atomic(
      path,
      "state_dir: state\n"
      "allowlist: {network: [\"127.0.0.1:8080\", \"c2.lab:443\"]}\n"
      "tests:\n"
      "  - id: beacon\n"
      "    kind: http_beacon\n"
      "    params:\n" +
          params);
  try {
    AgentConfig::load(path);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "loaded";
}

}  // namespace

TEST_CASE("the beacon's marker goes where the template says, or becomes the last path segment") {
  CHECK(beacon_url("http://c2.lab/api/{marker}/poll", "tcn-a") == "http://c2.lab/api/tcn-a/poll");
  CHECK(beacon_url("http://c2.lab/api/poll?x=1", "tcn-a") == "http://c2.lab/api/poll/tcn-a?x=1");
  CHECK(beacon_url("https://c2.lab:8443/", "tcn-a") == "https://c2.lab:8443/tcn-a");
  CHECK(beacon_url("http://c2.lab", "tcn-a") == "http://c2.lab/tcn-a");
}

TEST_CASE("beacon verdicts: any answer from the origin means it got out, a refusal does not") {
  FetchResult connect_denied = failure(Transport::reset);
  connect_denied.connect_status = 403;
  struct Row {
    const char* what;
    FetchResult r;
    bool via_proxy;
    Verdict v;
  };
  std::map<std::string, std::string> denied{{"x-squid-error", "ERR_ACCESS_DENIED 0"}};
  std::vector<Row> rows = {
      {"origin 200", answer(200), true, {"not_prevented", "origin_responded"}},
      {"origin 404 (C2 path unknown)", answer(404), false, {"not_prevented", "origin_responded"}},
      {"origin 403 direct", answer(403), false, {"not_prevented", "origin_responded"}},
      {"origin 500", answer(500), true, {"not_prevented", "origin_responded"}},
      {"squid denial", answer(403, denied), true, {"prevented", "blocked_by_proxy"}},
      {"CONNECT refused", connect_denied, true, {"prevented", "blocked_by_proxy"}},
      {"403 through a proxy", answer(403), true, {"prevented", "blocked_status"}},
      {"451 through a proxy", answer(451), true, {"prevented", "blocked_status"}},
      {"squid cannot connect",
       answer(503, {{"x-squid-error", "ERR_CONNECT_FAIL 111"}}),
       true,
       {"inconclusive", "proxy_upstream_failure"}},
      {"proxy wants auth", answer(407), true, {"inconclusive", "proxy_auth_required"}},
      // A proxy that does not name itself and cannot reach the origin: a failure, not a block,
      // and not the origin answering either.
      {"bare 502 through a proxy", answer(502), true, {"inconclusive", "proxy_upstream_failure"}},
      {"bare 504 through a proxy", answer(504), true, {"inconclusive", "proxy_upstream_failure"}},
      {"origin 503 direct", answer(503), false, {"not_prevented", "origin_responded"}},
      {"reset", failure(Transport::reset), false, {"prevented", "connection_reset"}},
      {"dns", failure(Transport::dns_failure), false, {"inconclusive", "dns_failure"}},
      {"proxy down",
       failure(Transport::proxy_unreachable),
       true,
       {"inconclusive", "proxy_unreachable"}},
      {"origin down",
       failure(Transport::origin_unreachable),
       false,
       {"inconclusive", "origin_unreachable"}},
      {"timeout", failure(Transport::timeout), false, {"inconclusive", "timeout"}},
      {"tls", failure(Transport::tls_error), false, {"inconclusive", "tls_error"}},
      {"libcurl missing",
       failure(Transport::libcurl_unavailable),
       false,
       {"error", "libcurl_unavailable"}},
      {"off list",
       failure(Transport::not_allowlisted),
       false,
       {"not_applicable", "target_not_allowlisted"}},
      {"other", failure(Transport::error), false, {"error", "fetch_failed"}},
  };
  for (const auto& row : rows) {
    CAPTURE(row.what);
    auto v = beacon_verdict(row.r, row.via_proxy);
    CHECK(v.verdict == row.v.verdict);
    CHECK(v.reason == row.v.reason);
  }
}

TEST_CASE("http_beacon params load, and bad values are refused with file:line") {
  CHECK(load_error(
            "      url: https://c2.lab/beacon\n      method: POST\n      header: X-Session\n") ==
        "loaded");
  struct Row {
    const char* params;
    const char* message;
  };
  for (const auto& row : std::vector<Row>{
           {"      url: https://c2.lab:8443/beacon\n", "c2.lab:8443 is not on the allowlist"},
           {"      url: http://127.0.0.1:8080/b\n      proxy: 127.0.0.1:3128\n",
            "proxy 127.0.0.1:3128 is not on the allowlist"},
           {"      url: http://127.0.0.1:8080/b\n      method: DELETE\n", "GET or POST"},
           {"      url: http://127.0.0.1:8080/b\n      header: \"X Bad\"\n", "header name"},
           {"      url: http://127.0.0.1:8080/b\n      user_agent: \"a\\tb\"\n", "printable"},
       }) {
    CAPTURE(row.params);
    auto e = load_error(row.params);
    CHECK(std::regex_search(e, std::regex("agent\\.yaml:[0-9]+")));
    CHECK(e.find(row.message) != std::string::npos);
  }
}

TEST_CASE("a beacon to an address off the allowlist is not_applicable and never sent") {
  asio::io_context io;
  asio::ip::tcp::acceptor listener(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto port = listener.local_endpoint().port();
  auto allow = Allowlist::parse({"10.0.0.0/8"});
  ClockState clock;
  HttpBeaconProbe probe(io.get_executor(), allow, clock);
  TestSpec t;
  t.id = "beacon";
  t.probe = "http_beacon";
  t.timeout = 5s;
  auto p = std::make_shared<HttpBeaconParams>();
  p->url = "http://127.0.0.1:" + std::to_string(port) + "/beacon";
  p->user_agent = "ua {marker}";
  t.http_beacon = p;
  std::vector<ResultBody> out;
  asio::co_spawn(io, probe.run(t, "tcn-unittest02"),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   bool failed = static_cast<bool>(e);
                   REQUIRE_FALSE(failed);
                   out = std::move(r);
                 });
  io.run();
  REQUIRE(out.size() == 1);
  CHECK(out[0].verdict == "not_applicable");
  CHECK(out[0].reason == "target_not_allowlisted");
  CHECK(out[0].target == "http://127.0.0.1:" + std::to_string(port) + "/beacon/tcn-unittest02");
  listener.non_blocking(true);
  boost::system::error_code ec;
  asio::ip::tcp::socket peer(io);
  listener.accept(peer, ec);
  CHECK(ec);  // nothing queued: never contacted
}
