// http_check: how observations map to healthy/unhealthy (tables), and how params load.
#include <doctest/doctest.h>

#include "agent/probes/http_check.hpp"
#include "common/config.hpp"

using namespace tocsin;
using agent::HttpCheckParams;
using agent::HttpObservation;

namespace {

agent::TestSpec load(const std::string& params, const std::string& extra = "") {
  auto root = common::ConfigNode::load_string(
      "id: t\nkind: http_check\n" + extra + "params: " + params + "\n", "test.yaml");
  auto allow = agent::Allowlist::parse({"127.0.0.1:1-65535", "svc.lab:443"});
  agent::TestSpec s;
  agent::load_http_check(root, root["params"], s, allow);
  return s;
}

HttpObservation ok() {
  HttpObservation o;
  o.status = 200;
  o.total_us = 20'000;
  o.cert_days_left = 100;
  o.body_sha256 = std::string(64, 'a');
  return o;
}

}  // namespace

TEST_CASE("http_check verdicts: each failed check is a reason, the first one wins") {
  HttpCheckParams p;
  p.https = true;
  p.max_response_time = std::chrono::milliseconds(500);
  struct Row {
    const char* name;
    std::function<void(HttpObservation&, HttpCheckParams&)> change;
    const char* verdict;
    const char* reason;
  };
  std::vector<Row> rows = {
      {"all fine", [](auto&, auto&) {}, "healthy", "checks_passed"},
      {"404", [](auto& o, auto&) { o.status = 404; }, "unhealthy", "status_mismatch"},
      {"exact status", [](auto& o, auto& q) { q.status_lo = q.status_hi = 204; }, "unhealthy",
       "status_mismatch"},
      {"body", [](auto& o, auto&) { o.body_matches = false; }, "unhealthy", "body_mismatch"},
      {"fixed hash", [](auto&, auto& q) { q.expect_sha256 = std::string(64, 'b'); }, "unhealthy",
       "content_changed"},
      {"fixed hash equal", [](auto&, auto& q) { q.expect_sha256 = std::string(64, 'a'); },
       "healthy", "checks_passed"},
      {"cert", [](auto& o, auto&) { o.cert_days_left = 3; }, "unhealthy", "cert_expiring"},
      {"cert on http is not checked",
       [](auto& o, auto& q) {
         o.cert_days_left = 3;
         q.https = false;
       },
       "healthy", "checks_passed"},
      {"slow", [](auto& o, auto&) { o.total_us = 900'000; }, "unhealthy", "slow_response"},
      {"connect", [](auto& o, auto&) { o.failure = "connect_failed"; }, "unhealthy",
       "connect_failed"},
      {"timeout", [](auto& o, auto&) { o.failure = "timeout"; }, "unhealthy", "timeout"},
      {"dns", [](auto& o, auto&) { o.failure = "dns_failure"; }, "unhealthy", "dns_failure"},
      {"off list", [](auto& o, auto&) { o.failure = "target_not_allowlisted"; }, "not_applicable",
       "target_not_allowlisted"},
      {"libcurl missing: nothing was asked", [](auto& o, auto&) { o.failure = "libcurl_unavailable"; },
       "error", "libcurl_unavailable"},
      {"two problems",
       [](auto& o, auto&) {
         o.status = 500;
         o.total_us = 900'000;
       },
       "unhealthy", "status_mismatch"},
  };
  for (auto& r : rows) {
    auto o = ok();
    auto q = p;
    r.change(o, q);
    auto v = agent::evaluate_http(o, q, std::nullopt);
    INFO(r.name);
    CHECK(v.verdict == r.verdict);
    CHECK(v.reason == r.reason);
  }
  auto both = ok();
  both.status = 500;
  both.total_us = 900'000;
  CHECK(agent::evaluate_http(both, p, std::nullopt).problems ==
        std::vector<std::string>{"status_mismatch", "slow_response"});
}

TEST_CASE("http_check content tracking compares with the previous run's hash") {
  HttpCheckParams p;
  p.track_changes = true;
  auto o = ok();
  CHECK(agent::evaluate_http(o, p, std::nullopt).verdict == "healthy");  // first run: a baseline
  CHECK(agent::evaluate_http(o, p, o.body_sha256).verdict == "healthy");
  auto v = agent::evaluate_http(o, p, std::string(64, 'c'));
  CHECK(v.verdict == "unhealthy");
  CHECK(v.reason == "content_changed");
  p.track_changes = false;
  CHECK(agent::evaluate_http(o, p, std::string(64, 'c')).verdict == "healthy");
}

TEST_CASE("http_check params load with defaults and refuse what is wrong, with file:line") {
  auto s = load("{url: \"https://svc.lab/health\"}");
  REQUIRE(s.http_check);
  CHECK(s.http_check->https);
  CHECK(s.http_check->host == "svc.lab");
  CHECK(s.http_check->port == 443);
  CHECK(s.http_check->status_lo == 200);
  CHECK(s.http_check->status_hi == 299);
  CHECK(s.http_check->cert_min_days == 14);
  CHECK(s.timeout == std::chrono::seconds(10));
  CHECK(s.summary == "https://svc.lab/health");
  auto t = load(
      "{url: \"http://127.0.0.1:8080/\", expect_status: 204, body_regex: \"ok$\", "
      "max_response_time: 30s, track_changes: true}");
  CHECK(t.http_check->status_lo == 204);
  CHECK(t.http_check->status_hi == 204);
  CHECK(t.http_check->body_regex.has_value());
  CHECK(t.timeout == std::chrono::seconds(60));
  CHECK(load("{url: \"http://127.0.0.1:8080/\", expect_status: 3xx}").http_check->status_lo == 300);

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
  fails("{url: \"https://evil.example/\"}", "not on the allowlist");
  fails("{url: \"https://svc.lab:8443/\"}", "not on the allowlist");
  fails("{url: \"ftp://127.0.0.1/\"}", "only http and https");
  fails("{url: \"not a url\"}", "not a valid URL");
  fails("{url: \"http://127.0.0.1/\", expect_status: 2x}", "expect_status");
  fails("{url: \"http://127.0.0.1/\", body_regex: \"(\"}", "regular expression");
  fails("{url: \"http://127.0.0.1/\", expect_sha256: xyz}", "SHA-256");
  fails("{url: \"http://127.0.0.1/\", ca_file: relative.pem}", "absolute");
  fails("{url: \"http://127.0.0.1/\", verb: POST}", "verb");
}
