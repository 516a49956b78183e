// Webhook and HEC bodies as each vendor sends them, and everything malformed around them.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "collector/alerts/webhooks.hpp"

using namespace tocsin::collector;
using nlohmann::json;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kBase = 1795860000LL * kSec;  // 2026-11-28T10:00:00Z
constexpr std::int64_t kArrival = kBase + 42 * kSec;
const std::string kM = "tcn-a1b2c3d4e5";

AlertSourceConfig source(SourceType type, bool events = false) {
  AlertSourceConfig c;
  c.name = "src-" + source_type_name(type);
  c.type = type;
  c.events = events;
  c.token = "0123456789abcdef";
  c.max_body = 16 << 20;
  return c;
}

std::vector<Alert> parse(SourceType type, const std::string& body) {
  return parse_webhook(source(type), body, kArrival);
}

std::vector<std::string> markers(const Alert& a) {
  return find_markers(a.text);
}

// The message of the AlertParseError `f` throws; fails the test if it throws nothing.
template <class F>
std::string parse_error(F f) {
  try {
    f();
  } catch (const AlertParseError& e) {
    return e.what();
  }
  FAIL("expected an AlertParseError");
  return {};
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string nested_arrays(std::size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

// Alertmanager 0.25's webhook body, field order as it marshals notify/webhook.Message.
const std::string kAlertmanager = R"json({
  "receiver": "tocsin",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {"alertname": "SuspiciousDownload", "instance": "web01:9100", "job": "node",
                 "severity": "critical"},
      "annotations": {"summary": "curl fetched a payload", "technique": "attack.t1105",
                      "description": "url=https://dl.example.com/tcn-a1b2c3d4e5/p.sh"},
      "startsAt": "2026-11-28T10:00:05.123456789Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=download_total%3E0&g0.tab=1",
      "fingerprint": "c4a6f1d2e3b4a5f6"
    },
    {
      "status": "resolved",
      "labels": {"alertname": "SuspiciousDownload", "instance": "web02:9100", "job": "node",
                 "severity": "critical"},
      "annotations": {"summary": "curl fetched a payload"},
      "startsAt": "2026-11-28T09:00:00Z",
      "endsAt": "2026-11-28T09:30:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=download_total%3E0&g0.tab=1",
      "fingerprint": "0000000000000001"
    },
    {
      "status": "firing",
      "labels": {"alertname": "CredentialDump", "host": "db01", "instance": "10.0.0.9:9100",
                 "severity": "warning"},
      "annotations": {"summary": "lsass access"},
      "startsAt": "2026-11-28T10:00:06Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
      "fingerprint": "d00dfeedd00dfeed"
    }
  ],
  "groupLabels": {"alertname": "SuspiciousDownload"},
  "commonLabels": {"job": "node", "team": "tcn-0000000009"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "version": "4",
  "groupKey": "{}:{alertname=\"SuspiciousDownload\"}",
  "truncatedAlerts": 0
})json";

// Splunk's webhook alert action: the first result row plus the search's identity.
const std::string kSplunk = R"json({
  "result": {
    "_time": "1795859990",
    "_indextime": "1795859995",
    "host": "web01",
    "sourcetype": "linux:audit",
    "process": "/usr/bin/curl -o /tmp/tcn-a1b2c3d4e5.sh https://dl.example.com/x",
    "annotations.mitre_attack": "T1105",
    "urgency": "high",
    "count": "1"
  },
  "sid": "scheduler__admin__search__RMD5a1b2c3d4e5f6a7b8_at_1795860000_42",
  "results_link": "https://splunk:8000/app/search/@go?sid=scheduler__admin__search__RMD5a1b2c3d4e5f6a7b8_at_1795860000_42",
  "search_name": "Tocsin - Ingress Tool Transfer",
  "owner": "admin",
  "app": "search"
})json";

// A Kibana webhook connector body templated as {"rule": ..., "date": "{{date}}",
// "context": {"alerts": {{context.alerts}}}}; alert documents keep kibana.* keys flat.
const std::string kKibana = R"json({
  "rule": {"id": "9b3c", "name": "Tocsin detection (rule object)"},
  "date": "2026-11-28T10:00:09.000Z",
  "context": {
    "alerts": [
      {
        "@timestamp": "2026-11-28T10:00:08.000Z",
        "kibana.alert.uuid": "5e1f0c7a-uuid",
        "kibana.alert.rule.name": "Ingress Tool Transfer via curl",
        "kibana.alert.severity": "high",
        "kibana.alert.original_time": "2026-11-28T10:00:01.000Z",
        "kibana.alert.start": "2026-11-28T10:00:08.500Z",
        "kibana.alert.rule.threat": [
          {"framework": "MITRE ATT&CK", "tactic": {"id": "TA0011"},
           "technique": [{"id": "T1105", "name": "Ingress Tool Transfer"}]}
        ],
        "event": {"ingested": "2026-11-28T10:00:03.000Z", "kind": "signal"},
        "host": {"name": "web01", "os": {"family": "debian"}},
        "process": {"command_line": "curl -o /tmp/tcn-a1b2c3d4e5 https://dl.example.com"}
      },
      {
        "@timestamp": "2026-11-28T10:00:08.000Z",
        "kibana": {"alert": {"uuid": "nested-uuid", "severity": "low"}},
        "host": {"name": ["web02", "web02.example.com"]}
      }
    ]
  }
})json";

// CrowdSec's http plugin with its default format ({{.|toJson}}): a list of models.Alert.
const std::string kCrowdsec = R"json([
  {
    "capacity": 5,
    "created_at": "2026-11-28T10:00:10Z",
    "decisions": [{"duration": "4h", "origin": "crowdsec", "scenario": "crowdsecurity/ssh-bf",
                   "scope": "Ip", "type": "ban", "value": "192.0.2.7"}],
    "events": [{"meta": [{"key": "target_user", "value": "tcn-a1b2c3d4e5"},
                         {"key": "source_ip", "value": "192.0.2.7"}],
                "timestamp": "2026-11-28T10:00:02Z"}],
    "events_count": 6,
    "id": 1234,
    "labels": null,
    "leakspeed": "10s",
    "machine_id": "web01",
    "message": "Ip 192.0.2.7 performed 'crowdsecurity/ssh-bf' (6 events over 3s)",
    "remediation": true,
    "scenario": "crowdsecurity/ssh-bf",
    "scenario_hash": "4441dcff07020f6690d998b7101e642359ba405c2abb83565bbbdcee36de280f",
    "scenario_version": "0.1",
    "simulated": false,
    "source": {"as_name": "EXAMPLE", "cn": "FR", "ip": "192.0.2.7", "range": "192.0.2.0/24",
               "scope": "Ip", "value": "192.0.2.7"},
    "start_at": "2026-11-28T10:00:01.123456789Z",
    "stop_at": "2026-11-28T10:00:04.5Z"
  }
])json";

}  // namespace

TEST_CASE("Alertmanager v4: one alert per firing alert, group context in the text") {
  auto alerts = parse(SourceType::alertmanager, kAlertmanager);
  REQUIRE(alerts.size() == 2);  // the resolved one is not a new alert

  const auto& a = alerts[0];
  CHECK(a.source == "src-alertmanager");
  CHECK(a.source_type == "alertmanager");
  CHECK_FALSE(a.is_event);
  CHECK(a.arrival_ns == kArrival);
  CHECK(a.id == "c4a6f1d2e3b4a5f6@2026-11-28T10:00:05.123456789Z");
  CHECK(a.rule == "SuspiciousDownload");
  CHECK(a.host == "web01");  // instance without its port
  CHECK(a.severity == "critical");
  CHECK(a.technique == "T1105");  // from annotations.technique, normalised
  CHECK(a.created_ns == kBase + 5 * kSec + 123'456'789);
  CHECK(a.event_ns == 0);
  CHECK(markers(a) == std::vector<std::string>{kM, "tcn-0000000009"});
  CHECK(a.text.find("labels.alertname=SuspiciousDownload\n") != std::string::npos);
  CHECK(a.text.find("receiver=tocsin\n") != std::string::npos);

  const auto& b = alerts[1];
  CHECK(b.host == "db01");  // an explicit host label beats instance
  CHECK(b.rule == "CredentialDump");
  CHECK(b.technique.empty());
  CHECK(b.id == "d00dfeedd00dfeed@2026-11-28T10:00:06Z");
}

TEST_CASE("Alertmanager payloads of the wrong version or shape are refused clearly") {
  struct Case {
    std::string body;
    std::string want;
  } cases[] = {
      {R"({"version":"3","alerts":[]})", "alertmanager: version: \"3\" is not supported"},
      {R"({"version":4,"alerts":[]})", "alertmanager: version: 4 is not supported"},
      {R"({"alerts":[]})", "alertmanager: version: missing"},
      {R"({"version":"4","alerts":{"status":"firing"}})",
       "alertmanager: alerts: missing or not an array"},
      {R"({"version":"4"})", "alertmanager: alerts: missing or not an array"},
      {R"({"version":"4","alerts":[1]})", "alertmanager: alerts[0]: not an object"},
      {R"({"version":"4","alerts":[{"status":"pending","startsAt":"2026-11-28T10:00:00Z"}]})",
       "alertmanager: alerts[0].status: 'pending' is neither firing nor resolved"},
      {R"({"version":"4","alerts":[{"status":"firing"}]})",
       "alertmanager: alerts[0].startsAt: missing"},
      {R"({"version":"4","alerts":[{"status":"resolved"},{"status":"firing","startsAt":"soon"}]})",
       "alertmanager: alerts[1].startsAt: 'soon' is not a time"},
      {R"(["version","4"])", "alertmanager: body must be a JSON object"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.body);
    CHECK_THROWS_WITH_AS(parse(SourceType::alertmanager, c.body), doctest::Contains(c.want.c_str()),
                         AlertParseError);
  }
  CHECK(parse(SourceType::alertmanager, R"({"version":"4","status":"resolved","alerts":[]})")
            .empty());
}

TEST_CASE("Splunk webhook alert action: search name, result row and the sid's trigger time") {
  auto alerts = parse(SourceType::splunk_webhook, kSplunk);
  REQUIRE(alerts.size() == 1);
  const auto& a = alerts[0];
  CHECK(a.rule == "Tocsin - Ingress Tool Transfer");
  CHECK(a.host == "web01");
  CHECK(a.severity == "high");
  CHECK(a.technique == "T1105");
  CHECK(a.event_ns == kBase - 10 * kSec);
  CHECK(a.ingest_ns == kBase - 5 * kSec);
  CHECK(a.created_ns == kBase);
  CHECK(a.id == "scheduler__admin__search__RMD5a1b2c3d4e5f6a7b8_at_1795860000_42:1795859990");
  CHECK(markers(a) == std::vector<std::string>{kM});

  SUBCASE("the documented minimal example, with a null search name and no _time") {
    auto min = parse(SourceType::splunk_webhook, R"({"result":{"sourcetype":"mongod","count":"8"},
      "sid":"scheduler_admin_search_W2_at_14232356_132","results_link":"http://x",
      "search_name":null,"owner":"admin","app":"search"})");
    REQUIRE(min.size() == 1);
    CHECK(min[0].rule.empty());
    CHECK(min[0].created_ns == 0);  // 8 digits after _at_ are not an epoch
    CHECK(min[0].id.rfind("scheduler_admin_search_W2_at_14232356_132:", 0) == 0);
    CHECK(min[0].id.size() ==
          std::string("scheduler_admin_search_W2_at_14232356_132:").size() + 16);
  }
  SUBCASE("shape errors") {
    CHECK_THROWS_WITH_AS(parse(SourceType::splunk_webhook, R"({"sid":"x"})"),
                         doctest::Contains("splunk_webhook: result: missing or not an object"),
                         AlertParseError);
    CHECK_THROWS_WITH_AS(
        parse(SourceType::splunk_webhook, R"({"sid":"x","result":{"_time":"later"}})"),
        doctest::Contains("splunk_webhook: result._time: 'later' is not a time"), AlertParseError);
  }
}

TEST_CASE("Elastic connector: context.alerts documents with Kibana and ECS names") {
  auto alerts = parse(SourceType::elastic, kKibana);
  REQUIRE(alerts.size() == 2);
  const auto& a = alerts[0];
  CHECK(a.id == "5e1f0c7a-uuid");
  CHECK(a.rule == "Ingress Tool Transfer via curl");
  CHECK(a.host == "web01");
  CHECK(a.severity == "high");
  CHECK(a.technique == "T1105");
  CHECK(a.event_ns == kBase + 1 * kSec);
  CHECK(a.ingest_ns == kBase + 3 * kSec);
  CHECK(a.created_ns == kBase + 8'500'000'000);
  CHECK(markers(a) == std::vector<std::string>{kM});
  CHECK(a.text.find("date=2026-11-28T10:00:09.000Z\n") != std::string::npos);  // context

  const auto& b = alerts[1];
  CHECK(b.id == "nested-uuid");  // nested objects work as well as flat dotted keys
  CHECK(b.severity == "low");
  CHECK(b.host == "web02");                              // first value of an ECS array
  CHECK(b.rule == "Tocsin detection (rule object)");  // from the enclosing body
  CHECK(b.created_ns == kBase + 9 * kSec);               // the connector's {{date}}
  CHECK(b.event_ns == kBase + 8 * kSec);

  SUBCASE("a single templated object, with fields: overriding the defaults") {
    auto src = source(SourceType::elastic);
    src.fields.host = "agent.name";
    src.fields.event_time = "when";
    auto one = parse_webhook(src, R"({"agent":{"name":"edge-7"},"host":{"name":"ignored"},
        "when":1795860000123,"rule":{"name":"R"},"msg":"tcn-a1b2c3d4e5"})",
                             kArrival);
    REQUIRE(one.size() == 1);
    CHECK(one[0].host == "edge-7");
    CHECK(one[0].rule == "R");
    CHECK(one[0].event_ns == kBase + 123'000'000);
    CHECK(markers(one[0]) == std::vector<std::string>{kM});
  }
  SUBCASE("a top-level alerts array") {
    auto list =
        parse(SourceType::elastic, R"({"alerts":[{"host":{"name":"a"}},{"host":{"name":"b"}}]})");
    REQUIRE(list.size() == 2);
    CHECK(list[1].host == "b");
  }
}

TEST_CASE("CrowdSec http plugin: the default JSON list of alerts") {
  auto alerts = parse(SourceType::crowdsec, kCrowdsec);
  REQUIRE(alerts.size() == 1);
  const auto& a = alerts[0];
  CHECK(a.id == "1234");
  CHECK(a.rule == "crowdsecurity/ssh-bf");
  CHECK(a.host == "web01");
  CHECK(a.created_ns == kBase + 10 * kSec);
  CHECK(a.event_ns == kBase + 1 * kSec + 123'456'789);
  CHECK(markers(a) == std::vector<std::string>{kM});
  CHECK(a.text.find("events[0].meta[0].value=" + kM) != std::string::npos);
  CHECK(a.source_addresses == std::vector<std::string>{"192.0.2.7"});

  CHECK_THROWS_WITH_AS(parse(SourceType::crowdsec, R"([{"scenario":"x","created_at":"nope"}])"),
                       doctest::Contains("crowdsec: [0].created_at: 'nope' is not a time"),
                       AlertParseError);
  CHECK_THROWS_WITH_AS(parse(SourceType::crowdsec, R"("text")"),
                       doctest::Contains("crowdsec: body must be a JSON array of alerts"),
                       AlertParseError);
}

TEST_CASE("CrowdSec http plugin: the alert's source address, only when it is a literal IP") {
  auto addresses = [](const std::string& source) {
    auto alerts = parse(SourceType::crowdsec, R"([{"scenario":"s","source":)" + source + "}]");
    REQUIRE(alerts.size() == 1);
    return alerts[0].source_addresses;
  };
  using V = std::vector<std::string>;
  CHECK(addresses(R"({"scope":"Ip","ip":"100.64.3.9","value":"100.64.3.9"})") == V{"100.64.3.9"});
  // Canonical form, so the same host reads the same from every source.
  CHECK(addresses(R"({"scope":"Ip","ip":"2001:DB8:0:0::1"})") == V{"2001:db8::1"});
  CHECK(addresses(R"({"scope":"Ip","ip":"::ffff:100.64.3.9"})") == V{"100.64.3.9"});
  // A range's value is a CIDR, and junk is not an address: no hint rather than a wrong one.
  CHECK(addresses(R"({"scope":"Range","value":"100.64.0.0/10","ip":""})").empty());
  CHECK(addresses(R"({"scope":"Ip","ip":"evil\nhost","value":"999.1.1.1"})").empty());
  CHECK(addresses(R"({"scope":"Ip","ip":["100.64.3.9"],"value":7})").empty());
  CHECK(addresses(R"("100.64.3.9")").empty());
  CHECK(addresses(R"({"scope":"Ip","ip":"100.64.3.9","value":"100.64.3.10"})") ==
        V{"100.64.3.9", "100.64.3.10"});
}

TEST_CASE("HEC: concatenated event objects, each one an alert or event") {
  auto src = source(SourceType::hec, true);
  std::string body =
      R"({"time": 1795860001.5, "host": "web01", "source": "auditd", "sourcetype": "linux:audit",)"
      R"( "index": "main", "event": "type=EXECVE a0=curl a1=https://x/tcn-a1b2c3d4e5"})"
      "\n  \r\n"
      R"({"time": "1795860002", "host": "web02", "sourcetype": "edr",)"
      R"( "event": {"rule": "Credential Dumping", "technique": "T1003.001", "severity": "high"},)"
      R"( "fields": {"team": "blue"}})"
      R"({"event": {"msg": "no time"}, "fields": {"rule": "from fields"}})";
  auto alerts = parse_webhook(src, body, kArrival);
  REQUIRE(alerts.size() == 3);
  CHECK(alerts[0].is_event);
  CHECK(alerts[0].source_type == "hec");
  CHECK(alerts[0].host == "web01");
  CHECK(alerts[0].event_ns == kBase + 1'500'000'000);
  CHECK(alerts[0].rule == "linux:audit");  // no rule anywhere: the sourcetype
  CHECK(markers(alerts[0]) == std::vector<std::string>{kM});
  CHECK(alerts[1].rule == "Credential Dumping");
  CHECK(alerts[1].technique == "T1003.001");
  CHECK(alerts[1].severity == "high");
  CHECK(alerts[1].event_ns == kBase + 2 * kSec);
  CHECK(alerts[2].rule == "from fields");
  CHECK(alerts[2].event_ns == 0);
  CHECK(alerts[2].id.empty());

  SUBCASE("errors start with hec: and name the object") {
    struct Case {
      std::string body;
      std::string want;
    } cases[] = {
        {R"({"event":"a"} {"host":"x"})", "hec: object 2: no \"event\" field"},
        {R"({"event":"a"} {"event":null})", "hec: object 2: no \"event\" field"},
        {R"({"event":""})", "hec: object 1: \"event\" is empty"},
        {R"([{"event":"a"}])", "hec: object 1: not a JSON object"},
        {R"({"event":"a"} garbage)", "hec: object 2: not a JSON object"},
        {R"({"event":"a"} {"event":"b")", "hec: object 2: malformed JSON"},
        {R"({"event":"a","time":"soon"})", "hec: object 1: time: 'soon' is not a time"},
        {R"({"event":"a", "x": "}{"} {"event" "b"})", "hec: object 2: malformed JSON"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.body);
      CHECK_THROWS_WITH_AS(parse_webhook(src, c.body, kArrival), doctest::Contains(c.want.c_str()),
                           AlertParseError);
      CHECK(starts_with(parse_error([&] { parse_webhook(src, c.body, kArrival); }), "hec: "));
    }
  }
  SUBCASE("a UTF-8 byte order mark is skipped") {
    CHECK(parse_webhook(src, "\xEF\xBB\xBF{\"event\":\"a\"}", kArrival).size() == 1);
  }
  SUBCASE("braces inside strings do not split an object") {
    auto tricky = parse_webhook(src, R"({"event":"{[\"}\\"} {"event":"]}"})", kArrival);
    CHECK(tricky.size() == 2);
  }
}

TEST_CASE("generic: fields come from the configured paths") {
  auto src = source(SourceType::generic);
  src.fields.id = "alert.id";
  src.fields.host = "alert.host.name";
  src.fields.rule = "rule";
  src.fields.severity = "sev";
  src.fields.event_time = "events[1].ts";
  src.fields.ingest_time = "ingested";
  src.fields.alert_time = "created";
  std::string one = R"({"alert":{"id":77,"host":{"name":"web01"}},"rule":"Download T1105 seen",
      "sev":3,"events":[{"ts":0},{"ts":"2026-11-28T10:00:01Z"}],"ingested":1795860002000,
      "created":"2026-11-28 10:00:03","note":"https://x/tcn-a1b2c3d4e5"})";
  auto alerts = parse_webhook(src, one, kArrival);
  REQUIRE(alerts.size() == 1);
  const auto& a = alerts[0];
  CHECK(a.id == "77");
  CHECK(a.host == "web01");
  CHECK(a.rule == "Download T1105 seen");
  CHECK(a.technique == "T1105");  // unmapped: found in the rule
  CHECK(a.severity == "3");
  CHECK(a.event_ns == kBase + kSec);
  CHECK(a.ingest_ns == kBase + 2 * kSec);
  CHECK(a.created_ns == kBase + 3 * kSec);
  CHECK(markers(a) == std::vector<std::string>{kM});

  SUBCASE("an array of objects is one alert each; missing fields stay empty") {
    auto list =
        parse_webhook(src, R"([{"rule":"a"},{"alert":{"host":{"name":"h"}}},{}])", kArrival);
    REQUIRE(list.size() == 3);
    CHECK(list[0].rule == "a");
    CHECK(list[0].host.empty());
    CHECK(list[1].host == "h");
    CHECK(list[2].event_ns == 0);
    auto blank = parse_webhook(src, R"({"created":"","ingested":null})", kArrival);
    CHECK(blank[0].created_ns == 0);  // blank or null: not given
    CHECK(blank[0].ingest_ns == 0);
  }
  SUBCASE("a mapped time that is there but not a time is an error naming the path") {
    CHECK_THROWS_WITH_AS(parse_webhook(src, R"([{}, {"events":[{}, {"ts":"tuesday"}]}])", kArrival),
                         doctest::Contains("generic: [1].events[1].ts: 'tuesday' is not a time"),
                         AlertParseError);
    CHECK_THROWS_WITH_AS(parse_webhook(src, R"({"created":true})", kArrival),
                         doctest::Contains("generic: created: expected a time, got boolean"),
                         AlertParseError);
  }
  SUBCASE("a mapped string field that holds an object is an error") {
    CHECK_THROWS_WITH_AS(parse_webhook(src, R"({"rule":{"name":"x"}})", kArrival),
                         doctest::Contains("generic: rule: expected a string or number"),
                         AlertParseError);
  }
  SUBCASE("shapes that are not alerts") {
    for (std::string body : {"42", "\"text\"", "null", "[1, 2]", "[[]]"}) {
      CAPTURE(body);
      CHECK_THROWS_AS(parse_webhook(src, body, kArrival), AlertParseError);
    }
  }
  SUBCASE("a field path with literal dots and probing into arrays") {
    json doc = json::parse(R"({"a.b":{"c":1},"list":[{"x":1},{"y":{"z":"deep"}}],"i":[[5,6]]})");
    REQUIRE(json_at_path(doc, "a.b.c") != nullptr);
    CHECK(*json_at_path(doc, "a.b.c") == 1);
    CHECK(*json_at_path(doc, "list.y.z") == "deep");
    CHECK(*json_at_path(doc, "list[1].y.z") == "deep");
    CHECK(*json_at_path(doc, "i[0][1]") == 6);
    CHECK(json_at_path(doc, "i[0][2]") == nullptr);
    CHECK(json_at_path(doc, "missing.key") == nullptr);
    for (const char* bad : {"", "a..b", ".a", "a.", "a[", "a[x]", "a[-1]", "a]b", "a[1]b"}) {
      CAPTURE(std::string(bad));
      CHECK_THROWS_AS(check_field_path(bad), std::invalid_argument);
    }
  }
}

TEST_CASE("malformed JSON is refused by every webhook type with the type named") {
  for (auto type : {SourceType::generic, SourceType::splunk_webhook, SourceType::elastic,
                    SourceType::alertmanager, SourceType::crowdsec, SourceType::hec}) {
    auto name = source_type_name(type);
    CAPTURE(name);
    for (std::string body :
         {"{", "{\"a\":}", "{\"a\":1}}", "{'a':1}", "{\"a\":\"\xff\xfe\"}", "{\"a\":1} trailing"}) {
      CAPTURE(body);
      CHECK(starts_with(parse_error([&] { parse(type, body); }), name + ": "));
    }
    CHECK_THROWS_WITH_AS(parse(type, ""), doctest::Contains("empty body"), AlertParseError);
    CHECK_THROWS_WITH_AS(parse(type, " \r\n"), doctest::Contains("empty body"), AlertParseError);
  }
}

TEST_CASE("nesting deeper than 64 levels is refused, 64 is fine") {
  std::string ok = "{\"a\":" + nested_arrays(63) + "}";
  std::string deep = "{\"a\":" + nested_arrays(64) + "}";
  std::string very_deep = "{\"a\":" + nested_arrays(500000) + "}";
  for (auto type : {SourceType::generic, SourceType::elastic, SourceType::hec}) {
    CAPTURE(source_type_name(type));
    auto with_event = [&](const std::string& b) {
      return type == SourceType::hec ? "{\"event\":1," + b.substr(1) : b;
    };
    CHECK(parse(type, with_event(ok)).size() == 1);
    CHECK_THROWS_WITH_AS(parse(type, with_event(deep)), doctest::Contains("deeper than 64"),
                         AlertParseError);
    CHECK_THROWS_WITH_AS(parse(type, with_event(very_deep)), doctest::Contains("deeper than 64"),
                         AlertParseError);
  }
}

TEST_CASE("more than kMaxAlertsPerRequest items are refused") {
  auto many = [](std::size_t n, const std::string& item, const std::string& sep) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += (i ? sep : "") + item;
    return s;
  };
  std::size_t n = kMaxAlertsPerRequest + 1;
  struct Case {
    SourceType type;
    std::string body;
  } cases[] = {
      {SourceType::generic, "[" + many(n, "{}", ",") + "]"},
      {SourceType::crowdsec, "[" + many(n, "{}", ",") + "]"},
      {SourceType::elastic, "{\"alerts\":[" + many(n, "{}", ",") + "]}"},
      {SourceType::alertmanager, "{\"version\":\"4\",\"alerts\":[" + many(n, "{}", ",") + "]}"},
      {SourceType::hec, many(n, "{\"event\":1}", "\n")},
  };
  for (const auto& c : cases) {
    CAPTURE(source_type_name(c.type));
    CHECK_THROWS_WITH_AS(parse(c.type, c.body), doctest::Contains("more than 10000"),
                         AlertParseError);
  }
  CHECK(parse(SourceType::generic, "[" + many(kMaxAlertsPerRequest, "{}", ",") + "]").size() ==
        kMaxAlertsPerRequest);
}

TEST_CASE("each alert's text is capped, even when the shared context is large") {
  std::string big_label(40000, 'x');
  std::string body = R"({"version":"4","commonLabels":{"big":")" + big_label + R"("},"alerts":[)";
  for (int i = 0; i < 3000; ++i)
    body += std::string(i ? "," : "") + R"({"status":"firing","startsAt":"2026-11-28T10:00:00Z",)" +
            R"("labels":{"alertname":"r","marker":"tcn-a1b2c3d4e5"}})";
  body += "]}";
  auto alerts = parse(SourceType::alertmanager, body);
  REQUIRE(alerts.size() == 3000);
  std::size_t total = 0;
  for (const auto& a : alerts) {
    CHECK(a.text.size() <= kMaxAlertText);
    CHECK(markers(a) == std::vector<std::string>{kM});  // the item's own lines come first
    total += a.text.size();
  }
  CHECK(total <= 16u << 20);
}

TEST_CASE("parse_webhook checks the body size and the source type itself") {
  auto src = source(SourceType::generic);
  src.max_body = 1024;
  CHECK_THROWS_WITH_AS(parse_webhook(src, "{\"a\":\"" + std::string(2000, 'x') + "\"}", 0),
                       doctest::Contains("generic: body of 2008 bytes is over max_body"),
                       AlertParseError);
  CHECK_THROWS_AS(parse_webhook(source(SourceType::syslog), "{}", 0), std::invalid_argument);
  CHECK_THROWS_AS(parse_webhook(source(SourceType::elasticsearch), "{}", 0), std::invalid_argument);
}

TEST_CASE("error messages never echo raw control bytes") {
  for (std::string body : {std::string(R"({"version":"\u001b[2J\u0007","alerts":[]})"),
                           std::string("{\"version\":\"\x1b[2J\x07\",\"alerts\":[]}"),
                           std::string("{\"a\":\x1b\xff}")}) {
    CAPTURE(body);
    try {
      parse(SourceType::alertmanager, body);
      FAIL("expected an AlertParseError");
    } catch (const AlertParseError& e) {
      std::string m = e.what();
      CHECK(std::none_of(m.begin(), m.end(), [](char c) { return c >= 0 && c < 0x20; }));
      CHECK(std::none_of(m.begin(), m.end(), [](char c) { return c < 0; }));
    }
  }
}
