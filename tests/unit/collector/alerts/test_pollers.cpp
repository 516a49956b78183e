// SIEM pollers against tests/peers/siem_mock.py, a local server replaying each vendor's
// documented response shapes: fields and ids, paging, windows, rate limits, failures, auth.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/pollers/pollers.hpp"
#include "tests/unit/peers.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::test::Routes;
using tocsin::test::SiemMock;
using tocsin::test::TempDir;
using tocsin::test::kWait;
using tocsin::test::wait_until;
using json = nlohmann::json;

namespace {

// "2026-03-01T10:00:00.250Z" (what the pollers send) -> ns, independent of the code under test.
std::int64_t iso_ns(const std::string& s) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
    throw std::runtime_error("not an ISO time: " + s);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1'000'000'000 + ms * 1'000'000LL;
}

std::int64_t sec_ns(std::int64_t s) {
  return s * 1'000'000'000;
}

std::string url_decode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

// "a=1&b=x%20y" -> {a: "1", b: "x y"}
std::map<std::string, std::string> form(const std::string& body) {
  std::map<std::string, std::string> out;
  std::size_t pos = 0;
  while (pos <= body.size()) {
    std::size_t amp = body.find('&', pos);
    std::string pair = body.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    std::size_t eq = pair.find('=');
    if (eq != std::string::npos)
      out[url_decode(pair.substr(0, eq))] = url_decode(pair.substr(eq + 1));
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return out;
}

// Records submissions like the real sink: dedup by alert_key, optional store failures.
class RecordingSink : public AlertSink {
 public:
  void submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) override {
    SubmitOutcome out;
    {
      std::lock_guard lock(mu_);
      if (fail_next_ > 0) {
        --fail_next_;
        out.error = "disk full (test)";
      } else {
        for (auto& a : alerts) {
          if (keys_.insert(alert_key(a)).second) {
            ++out.accepted;
            alerts_.push_back(std::move(a));
          } else {
            ++out.duplicates;
          }
        }
      }
    }
    cv_.notify_all();
    done(out);
  }

  void rejected(const std::string& source, const std::string& reason,
                const std::string& detail) override {
    {
      std::lock_guard lock(mu_);
      rejections_.push_back({source, reason, detail});
    }
    cv_.notify_all();
  }

  void fail_next(int n) {
    std::lock_guard lock(mu_);
    fail_next_ = n;
  }

  std::vector<Alert> wait_alerts(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kWait, [&] { return alerts_.size() >= n; });
    REQUIRE(alerts_.size() >= n);
    return alerts_;
  }

  std::vector<Alert> wait_alert_id(const std::string& id) {
    std::unique_lock lock(mu_);
    auto has = [&] {
      return std::any_of(alerts_.begin(), alerts_.end(), [&](auto& a) { return a.id == id; });
    };
    cv_.wait_for(lock, kWait, has);
    REQUIRE_MESSAGE(has(), "no alert with id " << id);
    return alerts_;
  }

  // The first rejection with `reason`; fails the test if none comes.
  std::vector<std::string> wait_rejection(const std::string& reason) {
    std::unique_lock lock(mu_);
    auto has = [&] {
      return std::any_of(rejections_.begin(), rejections_.end(),
                         [&](const auto& r) { return r[1] == reason; });
    };
    cv_.wait_for(lock, kWait, has);
    REQUIRE_MESSAGE(has(), "no rejection with reason " << reason);
    return *std::find_if(rejections_.begin(), rejections_.end(),
                         [&](const auto& r) { return r[1] == reason; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> keys_;
  std::vector<Alert> alerts_;
  std::vector<std::vector<std::string>> rejections_;
  int fail_next_ = 0;
};

const Alert& by_id(const std::vector<Alert>& alerts, const std::string& id) {
  auto it = std::find_if(alerts.begin(), alerts.end(), [&](const Alert& a) { return a.id == id; });
  REQUIRE_MESSAGE(it != alerts.end(), "no alert with id " << id);
  return *it;
}

std::string header(const json& req, const std::string& name) {
  auto it = req["headers"].find(name);
  return it == req["headers"].end() ? "" : it->get<std::string>();
}

json body_json(const json& req) {
  return json::parse(req["body"].get<std::string>());
}

// ------------------------------------------------------------------------------------------
// Vendor response shapes (as documented) and configs.

json es_hit(const std::string& index, const std::string& id, json source, json sort) {
  return {{"_index", index},
          {"_id", id},
          {"_score", nullptr},
          {"_source", std::move(source)},
          {"sort", std::move(sort)}};
}

json es_page(json hits) {
  return {{"status", 200},
          {"json",
           {{"took", 3},
            {"timed_out", false},
            {"_shards", {{"total", 2}, {"successful", 2}, {"skipped", 0}, {"failed", 0}}},
            {"hits",
             {{"total", {{"value", hits.size()}, {"relation", "eq"}}},
              {"max_score", nullptr},
              {"hits", std::move(hits)}}}}}};
}

json es_empty() {
  return es_page(json::array());
}

AlertSourceConfig poller_config(SourceType type, const std::string& url) {
  AlertSourceConfig c;
  c.name = "siem-poll";
  c.type = type;
  c.url = url;
  c.interval = 200ms;
  c.timeout = 10s;
  c.lookback = 10min;
  return c;
}

AlertSourceConfig es_config(const std::string& url) {
  auto c = poller_config(SourceType::elasticsearch, url);
  c.index = "alerts-*";
  c.api_key = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";
  c.query = "event.kind:alert";
  return c;
}

const std::string kEsPath = "/alerts-*/_search";
const std::string kSplunkPath = "/services/search/jobs/export";

}  // namespace

TEST_SUITE_BEGIN("pollers");

TEST_CASE("elasticsearch poller follows search_after pages and maps hits to alerts") {
  json hit1 = es_hit("alerts-2026.03", "a1",
                     {{"@timestamp", "2026-03-01T10:00:00.000Z"},
                      {"event", {{"ingested", "2026-03-01T10:00:05.000Z"}}},
                      {"host", {{"name", "web-01"}}},
                      {"rule", {{"name", "Suspicious download"}}},
                      {"threat", json::array({{{"technique", json::array({{{"id", "T1105"}}})}}})},
                      {"process", {{"command_line", "curl -o /tmp/x http://h/tcn-abc123xyz0"}}}},
                     json::array({1772359200000LL, 5}));
  // A Kibana security alert: literal dotted keys, as the .alerts-security indices store them.
  json hit2 = es_hit(".alerts-security.alerts-default", "b2",
                     {{"@timestamp", "2026-03-01T10:01:00.000Z"},
                      {"kibana.alert.original_time", "2026-03-01T10:00:30.000Z"},
                      {"kibana.alert.start", "2026-03-01T10:01:00.000Z"},
                      {"kibana.alert.rule.name", "EICAR test file"},
                      {"kibana.alert.severity", "high"},
                      {"kibana.alert.rule.threat",
                       json::array({{{"technique", json::array({{{"id", "T1059.001"}}})}}})},
                      {"host.hostname", "db-02"}},
                     json::array({1772359260000LL, 9}));
  json hit3 = es_hit("alerts-2026.03", "c3",
                     {{"@timestamp", "2026-03-01T10:02:00.000Z"},
                      {"agent", {{"name", "agent-3"}}},
                      {"signal", {{"rule", {{"name", "Legacy signal"}}}}},
                      {"message", "credential dumping T1003 observed"}},
                     json::array({1772359320000LL, 2}));
  SiemMock mock({{"POST " + kEsPath,
                  {es_page(json::array({hit1, hit2})), es_page(json::array({hit3})), es_empty()}}});
  RecordingSink sink;
  auto cfg = es_config(mock.url());
  cfg.page_size = 2;
  Poller poller(cfg, sink);
  poller.start();

  auto alerts = sink.wait_alerts(3);
  auto reqs = mock.wait_requests("POST", kEsPath, 2);
  poller.stop();

  SUBCASE("hits become alerts with the vendor's ids and fields") {
    const Alert& a = by_id(alerts, "alerts-2026.03/a1");
    CHECK(a.source == "siem-poll");
    CHECK(a.source_type == "elasticsearch");
    CHECK(a.host == "web-01");
    CHECK(a.rule == "Suspicious download");
    CHECK(a.technique == "T1105");
    CHECK(a.event_ns == iso_ns("2026-03-01T10:00:00.000Z"));
    CHECK(a.ingest_ns == iso_ns("2026-03-01T10:00:05.000Z"));
    CHECK(a.arrival_ns > 0);
    CHECK(find_markers(a.text) == std::vector<std::string>{"tcn-abc123xyz0"});

    const Alert& b = by_id(alerts, ".alerts-security.alerts-default/b2");
    CHECK(b.host == "db-02");
    CHECK(b.rule == "EICAR test file");
    CHECK(b.severity == "high");
    CHECK(b.technique == "T1059.001");
    CHECK(b.event_ns == iso_ns("2026-03-01T10:00:30.000Z"));  // original_time, not @timestamp
    CHECK(b.created_ns == iso_ns("2026-03-01T10:01:00.000Z"));

    const Alert& c = by_id(alerts, "alerts-2026.03/c3");
    CHECK(c.host == "agent-3");
    CHECK(c.rule == "Legacy signal");
    CHECK(c.technique == "T1003");
    CHECK(c.ingest_ns == 0);
  }

  SUBCASE("the second page carries the last hit's sort values, same window") {
    json first = body_json(reqs[0]);
    json second = body_json(reqs[1]);
    CHECK_FALSE(first.contains("search_after"));
    CHECK(second["search_after"] == json::array({1772359260000LL, 9}));
    CHECK(first["size"] == 2);
    CHECK(first["query"] == second["query"]);
    json range = first["query"]["bool"]["filter"][0]["range"]["@timestamp"];
    CHECK(range["format"] == "strict_date_optional_time");
    CHECK(iso_ns(range["lte"]) - iso_ns(range["gte"]) == sec_ns(600));
    CHECK(first["query"]["bool"]["filter"][1]["query_string"]["query"] == "event.kind:alert");
    CHECK(first["sort"][0]["@timestamp"]["order"] == "asc");
  }

  SUBCASE("api_key is sent as an ApiKey authorization") {
    CHECK(header(reqs[0], "authorization") == "ApiKey " + cfg.api_key);
    CHECK(header(reqs[0], "content-type") == "application/json");
  }

  auto st = poller.status();
  CHECK(st.alerts == 3);
  CHECK(st.failures == 0);
  CHECK(st.last_success_ns > 0);
}

TEST_CASE("elasticsearch poller windows overlap by the lookback and use basic auth") {
  SiemMock mock({{"POST " + kEsPath, {es_empty()}}});
  RecordingSink sink;
  auto cfg = es_config(mock.url());
  cfg.api_key.clear();
  cfg.username = "elastic";
  cfg.password = "changeme";
  cfg.lookback = 5s;
  Poller poller(cfg, sink);
  poller.start();
  auto reqs = mock.wait_requests("POST", kEsPath, 3);
  // The mock records a request before the poller has read the answer: wait for the poll itself.
  CHECK(wait_until([&] { return poller.status().polls >= 3; }));
  poller.stop();

  auto window = [&](std::size_t i) {
    json r = body_json(reqs[i])["query"]["bool"]["filter"][0]["range"]["@timestamp"];
    return std::pair{iso_ns(r["gte"]), iso_ns(r["lte"])};
  };
  CHECK(window(0).second - window(0).first == sec_ns(5));  // first poll: [now - lookback, now]
  CHECK(window(1).first == window(0).second - sec_ns(5));
  CHECK(window(2).first == window(1).second - sec_ns(5));
  CHECK(window(1).second >= window(0).second);
  CHECK(header(reqs[0], "authorization") == "Basic ZWxhc3RpYzpjaGFuZ2VtZQ==");
}

TEST_CASE("elasticsearch poller continues a window in the next poll after max_pages") {
  json a = es_hit("i", "a", {{"@timestamp", "2026-03-01T10:00:00.000Z"}}, json::array({1, 1}));
  json b = es_hit("i", "b", {{"@timestamp", "2026-03-01T10:00:01.000Z"}}, json::array({2, 2}));
  SiemMock mock(
      {{"POST " + kEsPath, {es_page(json::array({a})), es_page(json::array({b})), es_empty()}}});
  RecordingSink sink;
  auto cfg = es_config(mock.url());
  cfg.page_size = 1;
  cfg.max_pages = 1;
  cfg.lookback = 5s;
  Poller poller(cfg, sink);
  poller.start();
  auto reqs = mock.wait_requests("POST", kEsPath, 4);
  poller.stop();

  auto range = [&](std::size_t i) {
    return body_json(reqs[i])["query"]["bool"]["filter"][0]["range"]["@timestamp"];
  };
  CHECK_FALSE(body_json(reqs[0]).contains("search_after"));
  CHECK(body_json(reqs[1])["search_after"] == json::array({1, 1}));
  CHECK(body_json(reqs[2])["search_after"] == json::array({2, 2}));
  CHECK(range(1) == range(0));  // the same window, resumed
  CHECK(range(2) == range(0));
  CHECK_FALSE(body_json(reqs[3]).contains("search_after"));  // window done: a new one
  CHECK(iso_ns(range(3)["gte"]) == iso_ns(range(0)["lte"]) - sec_ns(5));
  CHECK(sink.wait_alerts(2).size() == 2);
}

TEST_CASE("poller honours 429 Retry-After before asking again") {
  std::string retry_after;
  SUBCASE("delta seconds") {
    retry_after = "1";
  }
  SUBCASE("HTTP-date") {
    retry_after = "@http-date+2";
  }
  json hit = es_hit("i", "x", {{"@timestamp", "2026-03-01T10:00:00.000Z"}}, json::array({1, 1}));
  SiemMock mock({{"POST " + kEsPath,
                  {{{"status", 429},
                    {"headers", {{"Retry-After", retry_after}}},
                    {"json", {{"error", "too many requests"}}}},
                   es_page(json::array({hit}))}}});
  RecordingSink sink;
  Poller poller(es_config(mock.url()), sink);
  poller.start();
  sink.wait_alerts(1);
  auto reqs = mock.wait_requests("POST", kEsPath, 2);
  auto rejection = sink.wait_rejection("poll_failed");
  poller.stop();

  // A lower bound only: the mock's own clock says how long the poller waited.
  CHECK(reqs[1]["t"].get<double>() - reqs[0]["t"].get<double>() >= 0.9);
  CHECK(rejection[0] == "siem-poll");
  CHECK(rejection[2].find("429") != std::string::npos);
  auto st = poller.status();
  CHECK(st.failures == 1);
  CHECK(st.last_error.find("429") != std::string::npos);
  CHECK(st.last_success_ns > 0);
}

TEST_CASE("poller does not advance the window until the sink stored the alerts") {
  json hit = es_hit("i", "x", {{"@timestamp", "2026-03-01T10:00:00.000Z"}}, json::array({1, 1}));
  SiemMock mock({{"POST " + kEsPath, {es_page(json::array({hit}))}}});
  RecordingSink sink;
  sink.fail_next(1);
  auto cfg = es_config(mock.url());
  cfg.lookback = 2s;
  Poller poller(cfg, sink);
  poller.start();
  sink.wait_alerts(1);
  auto reqs = mock.wait_requests("POST", kEsPath, 3);
  auto rejection = sink.wait_rejection("poll_failed");
  poller.stop();

  auto window = [&](std::size_t i) {
    json r = body_json(reqs[i])["query"]["bool"]["filter"][0]["range"]["@timestamp"];
    return std::pair{iso_ns(r["gte"]), iso_ns(r["lte"])};
  };
  CHECK(window(1).first == window(0).first);  // the failed window is asked for again, whole
  CHECK(window(2).first == window(1).second - sec_ns(2));
  CHECK(rejection[2].find("disk full") != std::string::npos);
  CHECK(poller.status().failures == 1);
}

TEST_CASE("splunk poller retries after a 5xx, records the failure and maps export results") {
  json r1 = {{"preview", false},
             {"offset", 0},
             {"result",
              {{"_bkt", "edr~12~5D1B"},
               {"_cd", "12:345"},
               {"_indextime", "1772359205"},
               {"_raw", "File created C:\\temp\\tcn-k2j4h6g8f0.com"},
               {"_serial", "0"},
               {"_time", "2026-03-01T10:00:00.000+00:00"},
               {"host", "win-07"},
               {"source", "WinEventLog:Security"},
               {"search_name", "EICAR detected"},
               {"annotations.mitre_attack", "T1105"}}}};
  json r2 = {{"preview", false},
             {"offset", 1},
             {"result",
              {{"_time", "2026-03-01T10:00:10.000+00:00"},
               {"host", "win-08"},
               {"source", "stats"},
               {"count", "3"}}}};
  SiemMock mock({{"POST " + kSplunkPath,
                  {{{"status", 503}, {"body", "Service Unavailable"}},
                   {{"status", 200},
                    {"ndjson", json::array({r1, r2, {{"preview", false}, {"lastrow", true}}})}}}}});
  RecordingSink sink;
  auto cfg = poller_config(SourceType::splunk_search, mock.url());
  cfg.query = "index=edr tcn-*";
  cfg.username = "admin";
  cfg.password = "s3cret";
  Poller poller(cfg, sink);
  poller.start();
  auto alerts = sink.wait_alerts(2);
  auto reqs = mock.wait_requests("POST", kSplunkPath, 2);
  auto rejection = sink.wait_rejection("poll_failed");
  poller.stop();

  const Alert& a = by_id(alerts, "edr~12~5D1B/12:345");
  CHECK(a.source_type == "splunk_search");
  CHECK(a.host == "win-07");
  CHECK(a.rule == "EICAR detected");
  CHECK(a.technique == "T1105");
  CHECK(a.event_ns == iso_ns("2026-03-01T10:00:00.000Z"));
  CHECK(a.ingest_ns == sec_ns(1772359205));
  CHECK(find_markers(a.text) == std::vector<std::string>{"tcn-k2j4h6g8f0"});
  auto b = std::find_if(alerts.begin(), alerts.end(), [](auto& x) { return x.host == "win-08"; });
  REQUIRE(b != alerts.end());
  CHECK(b->id.rfind("sha256:", 0) == 0);  // no _cd: a stable content hash
  CHECK(b->rule == "stats");

  auto f = form(reqs[0]["body"]);
  CHECK(f["search"] == "search index=edr tcn-*");
  CHECK(f["output_mode"] == "json");
  double earliest = std::stod(f["earliest_time"]), latest = std::stod(f["latest_time"]);
  CHECK(latest - earliest == doctest::Approx(600.0).epsilon(1e-6));
  CHECK(header(reqs[0], "authorization") == "Basic YWRtaW46czNjcmV0");
  CHECK(header(reqs[0], "content-type") == "application/x-www-form-urlencoded");
  CHECK(rejection[2].find("503") != std::string::npos);
  auto st = poller.status();
  CHECK(st.failures == 1);
  CHECK(st.last_error.find("503") != std::string::npos);
  CHECK(st.alerts == 2);
}

namespace {

// The shape real CrowdSec 1.4.6 answers on GET /v1/alerts (captured from one): created_at is
// RFC 3339, start_at/stop_at are Go's time.String() ("... +0000 UTC").
json crowdsec_alert(int id) {
  return {
      {"id", id},
      {"machine_id", "edge-fw-01"},
      {"created_at", "2026-03-01T10:00:05Z"},
      {"scenario", "crowdsecurity/apache_log4j2_cve-2021-44228"},
      {"scenario_hash", "abc"},
      {"scenario_version", "0.4"},
      {"message", "Ip 100.64.0.7 performed 'crowdsecurity/apache_log4j2_cve-2021-44228'"},
      {"events_count", 1},
      {"start_at", "2026-03-01 10:00:00.41762128 +0000 UTC"},
      {"stop_at", "2026-03-01 10:00:00.417621461 +0000 UTC"},
      {"capacity", 0},
      {"leakspeed", "0s"},
      {"simulated", false},
      {"labels", nullptr},
      {"events", json::array({{{"timestamp", "2026-03-01 10:00:00 +0000 UTC"},
                               {"meta", json::array({{{"key", "http_path"},
                                                      {"value", "/probe/tcn-p0o9i8u7y6"}},
                                                     {{"key", "source_ip"},
                                                      {"value", "100.64.0.7"}}})}}})},
      {"source", {{"scope", "Ip"}, {"value", "100.64.0.7"}, {"ip", "100.64.0.7"}}},
      {"decisions", json::array({{{"scope", "Ip"}, {"type", "ban"}, {"value", "100.64.0.7"}}})}};
}

json lapi_login(const std::string& token) {
  return {{"status", 200},
          {"json", {{"code", 200}, {"expire", "2099-01-01T00:00:00Z"}, {"token", token}}}};
}

// Real LAPI answers a machine login without "User-Agent: name/version" with 401 "incorrect
// Username or Password" and alerts only to a machine's JWT. The mock only records, so these
// are the demands, checked on every request it saw.
void check_lapi_demands(const SiemMock& mock, const std::string& token) {
  auto logins = mock.requests("POST", "/v1/watchers/login");
  auto alerts = mock.requests("GET", "/v1/alerts");
  REQUIRE(!logins.empty());
  for (const auto& reqs : {logins, alerts})
    for (const auto& r : reqs) {
      std::string ua = header(r, "user-agent");
      CAPTURE(ua);
      CHECK(ua.rfind("tocsin-collector/", 0) == 0);
      CHECK(ua.size() > std::string("tocsin-collector/").size());
    }
  for (const auto& r : alerts) {
    CHECK(header(r, "authorization") == "Bearer " + token);
    CHECK(header(r, "x-api-key").empty());
  }
}

AlertSourceConfig lapi_config(const std::string& url) {
  auto cfg = poller_config(SourceType::crowdsec_lapi, url);
  cfg.username = "tocsin";
  cfg.password = "machine-pass";
  return cfg;
}

}  // namespace

TEST_CASE("crowdsec poller reports a malformed body and keeps polling") {
  SiemMock mock({{"POST /v1/watchers/login", {lapi_login("jwt-1")}},
                 {"GET /v1/alerts",
                  {{{"status", 200}, {"body", "<html>maintenance</html>"}},
                   {{"status", 200}, {"json", json::array({crowdsec_alert(42)})}}}}});
  RecordingSink sink;
  auto cfg = lapi_config(mock.url());
  cfg.page_size = 50;
  cfg.max_pages = 4;
  Poller poller(cfg, sink);
  poller.start();
  auto rejection = sink.wait_rejection("malformed");
  auto alerts = sink.wait_alerts(1);
  auto reqs = mock.wait_requests("GET", "/v1/alerts", 2);
  poller.stop();

  const Alert& a = by_id(alerts, "42");
  CHECK(a.source_type == "crowdsec_lapi");
  CHECK(a.rule == "crowdsecurity/apache_log4j2_cve-2021-44228");
  CHECK(a.host == "edge-fw-01");
  CHECK(a.created_ns == iso_ns("2026-03-01T10:00:05.000Z"));
  CHECK(a.event_ns == iso_ns("2026-03-01T10:00:00.000Z") + 417'621'280);
  CHECK(a.source_addresses == std::vector<std::string>{"100.64.0.7"});
  CHECK(find_markers(a.text) == std::vector<std::string>{"tcn-p0o9i8u7y6"});
  CHECK(rejection[2].find("not valid JSON") != std::string::npos);
  check_lapi_demands(mock, "jwt-1");
  auto q = form(reqs[0]["query"]);
  REQUIRE(q.count("since"));
  CHECK(q["since"].back() == 's');
  int since = std::stoi(q["since"]);
  CHECK(since >= 600);
  CHECK(since <= 605);
  CHECK(q["limit"] == "200");  // LAPI has no paging: page_size * max_pages in one request
  CHECK(poller.status().failures == 1);
}

TEST_CASE("crowdsec poller logs in as a machine with a User-Agent and reuses the JWT") {
  SiemMock mock({{"POST /v1/watchers/login", {lapi_login("jwt-1")}},
                 {"GET /v1/alerts", {{{"status", 200}, {"json", json::array({crowdsec_alert(7)})}}}}});
  RecordingSink sink;
  Poller poller(lapi_config(mock.url()), sink);
  poller.start();
  sink.wait_alerts(1);
  mock.wait_requests("GET", "/v1/alerts", 3);
  poller.stop();

  auto logins = mock.requests("POST", "/v1/watchers/login");
  REQUIRE(logins.size() == 1);
  CHECK(body_json(logins[0]) == json{{"machine_id", "tocsin"}, {"password", "machine-pass"}});
  check_lapi_demands(mock, "jwt-1");
}

TEST_CASE("crowdsec poller logs in again when LAPI answers 401 to its JWT") {
  SiemMock mock(
      {{"POST /v1/watchers/login", {lapi_login("jwt-old"), lapi_login("jwt-new")}},
       {"GET /v1/alerts",
        {{{"status", 401}, {"json", {{"code", 401}, {"message", "Token is expired"}}}},
         {{"status", 200}, {"json", json::array({crowdsec_alert(8)})}}}}});
  RecordingSink sink;
  Poller poller(lapi_config(mock.url()), sink);
  poller.start();
  sink.wait_alert_id("8");
  auto alerts = mock.wait_requests("GET", "/v1/alerts", 2);
  poller.stop();

  auto logins = mock.requests("POST", "/v1/watchers/login");
  REQUIRE(logins.size() == 2);
  CHECK(header(alerts[0], "authorization") == "Bearer jwt-old");
  CHECK(header(alerts[1], "authorization") == "Bearer jwt-new");
  CHECK(poller.status().failures == 0);
}

TEST_CASE("crowdsec poller refuses a bouncer api_key: alerts need a machine login") {
  RecordingSink sink;
  auto cfg = poller_config(SourceType::crowdsec_lapi, "http://127.0.0.1:9");
  cfg.api_key = "bouncer-key";
  CHECK_THROWS_WITH_AS(Poller(cfg, sink),
                       doctest::Contains("cannot use api_key: that is a bouncer key"),
                       std::invalid_argument);
  cfg.api_key.clear();
  CHECK_THROWS_WITH_AS(Poller(cfg, sink), doctest::Contains("needs machine_id and password"),
                       std::invalid_argument);
}

namespace {

json sentinel_table(json rows) {
  json cols = json::array();
  for (auto [n, t] :
       std::vector<std::pair<const char*, const char*>>{{"TimeGenerated", "datetime"},
                                                        {"SystemAlertId", "string"},
                                                        {"AlertName", "string"},
                                                        {"AlertSeverity", "string"},
                                                        {"CompromisedEntity", "string"},
                                                        {"Techniques", "string"},
                                                        {"StartTime", "datetime"},
                                                        {"Description", "string"}})
    cols.push_back({{"name", n}, {"type", t}});
  return {{"status", 200},
          {"json",
           {{"tables",
             json::array(
                 {{{"name", "PrimaryResult"}, {"columns", cols}, {"rows", std::move(rows)}}})}}}};
}

json sentinel_row(const std::string& id, const std::string& host) {
  return json::array({"2026-03-01T10:00:20.1234567Z", id, "Suspicious file download", "High", host,
                      "[\"T1105\"]", "2026-03-01T10:00:00Z",
                      "EICAR written by run tcn-s3n7in3l00"});
}

}  // namespace

TEST_CASE("sentinel poller fetches a token once, reuses it and refreshes it after a 401") {
  const std::string token_path = "/tenant-1/oauth2/v2.0/token";
  const std::string query_path = "/v1/workspaces/ws-1/query";
  SiemMock mock(
      {{"POST " + token_path,
        {{{"status", 200},
          {"json", {{"token_type", "Bearer"}, {"expires_in", 3599}, {"access_token", "tok-1"}}}},
         {{"status", 200},
          {"json",
           {{"token_type", "Bearer"}, {"expires_in", "3599"}, {"access_token", "tok-2"}}}}}},
       {"POST " + query_path,
        {sentinel_table(json::array({sentinel_row("a-1", "WIN-07")})),
         sentinel_table(json::array()),
         {{"status", 401}, {"json", {{"error", {{"code", "InvalidTokenError"}}}}}},
         sentinel_table(json::array({sentinel_row("a-2", "WIN-08")}))}}});
  RecordingSink sink;
  auto cfg = poller_config(SourceType::sentinel, mock.url());
  cfg.token_url = mock.url() + token_path;
  cfg.tenant_id = "tenant-1";
  cfg.client_id = "app-id";
  cfg.client_secret = "app-secret";
  cfg.workspace_id = "ws-1";
  cfg.query = "SecurityAlert | where ProviderName != 'ASI Scheduled Alerts'";
  Poller poller(cfg, sink);
  poller.start();
  auto alerts = sink.wait_alerts(2);
  auto queries = mock.wait_requests("POST", query_path, 6);
  poller.stop();

  auto tokens = mock.requests("POST", token_path);
  REQUIRE(tokens.size() == 2);  // once at start, once after the 401; reused otherwise
  auto f = form(tokens[0]["body"]);
  CHECK(f["grant_type"] == "client_credentials");
  CHECK(f["client_id"] == "app-id");
  CHECK(f["client_secret"] == "app-secret");
  CHECK(f["scope"] == "https://api.loganalytics.io/.default");
  for (std::size_t i = 0; i < 3; ++i) CHECK(header(queries[i], "authorization") == "Bearer tok-1");
  for (std::size_t i = 3; i < queries.size(); ++i)
    CHECK(header(queries[i], "authorization") == "Bearer tok-2");

  json q = body_json(queries[0]);
  CHECK(q["query"] == cfg.query);
  std::string span = q["timespan"];
  auto slash = span.find('/');
  REQUIRE(slash != std::string::npos);
  CHECK(iso_ns(span.substr(slash + 1)) - iso_ns(span.substr(0, slash)) == sec_ns(600));

  const Alert& a = by_id(alerts, "a-1");
  CHECK(a.source_type == "sentinel");
  CHECK(a.host == "WIN-07");
  CHECK(a.rule == "Suspicious file download");
  CHECK(a.severity == "High");
  CHECK(a.technique == "T1105");
  CHECK(a.event_ns == iso_ns("2026-03-01T10:00:00.000Z"));
  CHECK(a.created_ns == iso_ns("2026-03-01T10:00:20.123Z") + 456'700);
  CHECK(find_markers(a.text) == std::vector<std::string>{"tcn-s3n7in3l00"});
  CHECK(by_id(alerts, "a-2").host == "WIN-08");
  CHECK(poller.status().failures == 0);  // the 401 was absorbed by the refresh
}

TEST_CASE("poller survives hostile answers and keeps polling") {
  json good =
      es_hit("i", "good", {{"@timestamp", "2026-03-01T10:00:00.000Z"}}, json::array({1, 1}));
  std::vector<json> first;
  std::string reason, detail;
  SUBCASE("a body over 16 MiB is cut off") {
    first = {{{"status", 200}, {"body", std::string((16 << 20) + 1024, 'x')}}};
    reason = "poll_failed";
    detail = "exceeds 16 MiB";
  }
  SUBCASE("a 2xx body without hits.hits") {
    first = {{{"status", 200}, {"json", {{"hits", "nope"}}}}};
    reason = "malformed";
    detail = "hits.hits";
  }
  SUBCASE("a hit without _source and a garbled time: the rest of the page is kept") {
    json no_source = {{"_index", "i"}, {"_id", "bad"}, {"sort", json::array({0, 0})}};
    json bad_time = es_hit("i", "odd", {{"@timestamp", "yesterday-ish"}}, json::array({0, 1}));
    first = {es_page(json::array({no_source, bad_time}))};
    reason = "malformed";
    detail = "_source";
  }
  SUBCASE("shard failures: alerts kept, the window is read again") {
    json partial = es_page(json::array({good}));
    partial["json"]["_shards"]["failed"] = 1;
    first = {partial};
    reason = "poll_failed";
    detail = "shard failures";
  }
  first.push_back(es_page(json::array({good})));
  SiemMock mock({{"POST " + kEsPath, first}});
  RecordingSink sink;
  Poller poller(es_config(mock.url()), sink);
  poller.start();
  auto rejection = sink.wait_rejection(reason);
  auto alerts = sink.wait_alert_id("i/good");
  mock.wait_requests("POST", kEsPath, 2);
  poller.stop();
  CHECK(rejection[2].find(detail) != std::string::npos);
  CHECK(by_id(alerts, "i/good").event_ns == iso_ns("2026-03-01T10:00:00.000Z"));
  if (detail == "_source") {
    CHECK(by_id(alerts, "i/odd").event_ns == 0);  // the garbled time is dropped, not the alert
    CHECK(std::none_of(alerts.begin(), alerts.end(), [](auto& a) { return a.id == "i/bad"; }));
  }
}

TEST_CASE("splunk poller treats a FATAL search message as a failed poll") {
  SiemMock mock(
      {{"POST " + kSplunkPath,
        {{{"status", 200},
          {"ndjson",
           json::array(
               {{{"messages", json::array({{{"type", "FATAL"},
                                            {"text", "Unknown search command 'foo'."}}})}}})}}}}});
  RecordingSink sink;
  auto cfg = poller_config(SourceType::splunk_search, mock.url());
  cfg.query = "| foo";
  cfg.api_key = "splunk-token";
  Poller poller(cfg, sink);
  poller.start();
  auto rejection = sink.wait_rejection("poll_failed");
  auto reqs = mock.wait_requests("POST", kSplunkPath, 1);
  poller.stop();
  CHECK(rejection[2].find("Unknown search command") != std::string::npos);
  CHECK(form(reqs[0]["body"])["search"] == "| foo");  // a leading pipe is not prefixed
  CHECK(header(reqs[0], "authorization") == "Bearer splunk-token");
  CHECK(poller.status().last_success_ns == 0);
}

TEST_CASE("poller stop is prompt with a long interval and refuses a second start") {
  SiemMock mock({{"POST " + kEsPath, {es_empty()}}});
  RecordingSink sink;
  auto cfg = es_config(mock.url());
  cfg.interval = std::chrono::hours(1);
  Poller poller(cfg, sink);
  poller.start();
  mock.wait_requests("POST", kEsPath, 1);
  wait_until([&] { return poller.status().polls >= 1; });
  poller.stop();  // returns at once; a whole interval would exceed the test timeout
  CHECK(poller.status().polls == 1);
  CHECK_THROWS_AS(poller.start(), std::logic_error);
  poller.stop();  // idempotent
}

TEST_CASE("poller refuses configs its vendor cannot use") {
  RecordingSink sink;
  auto es = es_config("https://es:9200");
  SUBCASE("no index") {
    es.index.clear();
  }
  SUBCASE("not http") {
    es.url = "file:///etc/passwd";
  }
  SUBCASE("header injection") {
    es.api_key = "x\r\nX-Evil: 1";
  }
  SUBCASE("zero page size") {
    es.page_size = 0;
  }
  SUBCASE("not a poller type") {
    es.type = SourceType::generic;
  }
  SUBCASE("sentinel without credentials") {
    es = poller_config(SourceType::sentinel, "https://api.loganalytics.io");
    es.workspace_id = "ws";
    es.query = "SecurityAlert";
  }
  CHECK_THROWS_AS(Poller(es, sink), std::invalid_argument);
}

TEST_SUITE_END();
