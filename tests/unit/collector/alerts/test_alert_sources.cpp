// `alert_sources:` in collector.yaml: every type's keys, secrets from files, and errors that
// point at the file, the line and the key.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "collector/alerts/alert_sources.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::common::ConfigError;
using tocsin::common::ConfigNode;
using tocsin::test::TempDir;

namespace {

const std::string kToken = "0123456789abcdef0123";

std::vector<AlertSourceConfig> load(const TempDir& dir, const std::string& yaml) {
  auto file = dir / "collector.yaml";
  tocsin::common::write_file_atomic(file, yaml);
  return load_alert_sources(ConfigNode::load_file(file), dir.path());
}

// The message of the ConfigError loading `yaml` throws; fails the test if it loads.
std::string load_error(const TempDir& dir, const std::string& yaml) {
  try {
    load(dir, yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError for:\n" << yaml);
  return {};
}

// A one-source config of `type` with extra lines (each indented under the item).
std::string source(const std::string& type, const std::string& extra) {
  return "alert_sources:\n  - name: src\n    type: " + type + "\n" + extra;
}

}  // namespace

TEST_CASE("every source type name round-trips and is a webhook or a poller as documented") {
  struct Case {
    SourceType type;
    const char* name;
    bool webhook, poller;
  } cases[] = {
      {SourceType::generic, "generic", true, false},
      {SourceType::splunk_webhook, "splunk_webhook", true, false},
      {SourceType::elastic, "elastic", true, false},
      {SourceType::alertmanager, "alertmanager", true, false},
      {SourceType::crowdsec, "crowdsec", true, false},
      {SourceType::hec, "hec", true, false},
      {SourceType::syslog, "syslog", false, false},
      {SourceType::elasticsearch, "elasticsearch", false, true},
      {SourceType::splunk_search, "splunk_search", false, true},
      {SourceType::sentinel, "sentinel", false, true},
      {SourceType::crowdsec_lapi, "crowdsec_lapi", false, true},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.name));
    CHECK(source_type_name(c.type) == c.name);
    CHECK(parse_source_type(c.name) == c.type);
    CHECK(is_webhook(c.type) == c.webhook);
    CHECK(is_poller(c.type) == c.poller);
  }
  CHECK_FALSE(parse_source_type("Generic").has_value());
  CHECK_FALSE(parse_source_type("").has_value());
}

TEST_CASE("a config without alert_sources has none") {
  TempDir dir;
  CHECK(load(dir, "data_dir: /tmp\n").empty());
  CHECK(load(dir, "alert_sources: []\n").empty());
}

TEST_CASE("a full alert_sources list loads with every field") {
  TempDir dir;
  tocsin::common::write_file_atomic(dir / "hec.token", kToken + "\n");
  tocsin::common::write_file_atomic(dir / "es.pass", "hunter2\r\n");
  tocsin::common::write_file_atomic(dir / "ca.pem", "-----BEGIN CERTIFICATE-----\n");
  tocsin::common::write_file_atomic(dir / "syslog.pem", "cert");
  tocsin::common::write_file_atomic(dir / "syslog.key", "key");
  auto sources = load(dir, R"(alert_sources:
  - name: siem
    type: generic
    token: )" + kToken + R"(
    allow_url_token: true
    max_body: 64KiB
    fields:
      id: alert.id
      host: alert.host.name
      rule: rule
      technique: threat.technique
      severity: sev
      event_time: events[0].ts
      ingest_time: ingested
      alert_time: created
  - name: hec-in
    type: hec
    delivers: events
    token_file: hec.token
  - name: syslog_1
    type: syslog
    udp: 127.0.0.1:5514
    tls: "[::1]:6514"
    tls_cert: syslog.pem
    tls_key: syslog.key
    max_message: 8KiB
  - name: es
    type: elasticsearch
    url: https://es.example:9200/
    index: .alerts-security.alerts-*
    username: tocsin
    password_file: es.pass
    ca_file: ca.pem
    time_field: kibana.alert.start
    interval: 15s
    lookback: 0s
    timeout: 5s
    page_size: 1000
    max_pages: 3
  - name: az
    type: sentinel
    tenant_id: 11111111-2222-3333-4444-555555555555
    client_id: app-id
    client_secret: very-secret
    workspace_id: 66666666-7777-8888-9999-000000000000
    query: SecurityAlert
  - name: lapi
    type: crowdsec_lapi
    url: http://127.0.0.1:8080
    machine_id: tocsin
    password: machine-pass
  - name: spl
    type: splunk_search
    url: https://splunk:8089
    query: search index=notable
    api_key: splunk-token
)");
  REQUIRE(sources.size() == 7);

  const auto& g = sources[0];
  CHECK(g.name == "siem");
  CHECK(g.type == SourceType::generic);
  CHECK_FALSE(g.events);
  CHECK(g.token == kToken);
  CHECK(g.allow_url_token);
  CHECK(g.max_body == 64 * 1024);
  CHECK(g.fields.id == "alert.id");
  CHECK(g.fields.host == "alert.host.name");
  CHECK(g.fields.technique == "threat.technique");
  CHECK(g.fields.event_time == "events[0].ts");
  CHECK(g.fields.alert_time == "created");

  const auto& h = sources[1];
  CHECK(h.type == SourceType::hec);
  CHECK(h.events);
  CHECK(h.token == kToken);  // trailing newline stripped
  CHECK_FALSE(h.allow_url_token);
  CHECK(h.max_body == 1024 * 1024);

  const auto& s = sources[2];
  REQUIRE(s.udp.has_value());
  CHECK(s.udp->port == 5514);
  CHECK_FALSE(s.tcp.has_value());
  REQUIRE(s.tls.has_value());
  CHECK(s.tls->host == "::1");
  CHECK(s.tls_cert == dir / "syslog.pem");
  CHECK(s.tls_key == dir / "syslog.key");
  CHECK(s.max_message == 8 * 1024);

  const auto& es = sources[3];
  CHECK(es.url == "https://es.example:9200");  // trailing slash dropped
  CHECK(es.index == ".alerts-security.alerts-*");
  CHECK(es.username == "tocsin");
  CHECK(es.password == "hunter2");
  CHECK(es.ca_file == dir / "ca.pem");
  CHECK(es.time_field == "kibana.alert.start");
  CHECK(es.interval == 15s);
  CHECK(es.lookback == 0ms);
  CHECK(es.timeout == 5s);
  CHECK(es.page_size == 1000);
  CHECK(es.max_pages == 3);

  const auto& az = sources[4];
  CHECK(az.url == "https://api.loganalytics.io");
  CHECK(az.token_url ==
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token");
  CHECK(az.client_secret == "very-secret");
  CHECK(az.query == "SecurityAlert");
  CHECK(az.interval == 30s);
  CHECK(az.lookback == 10min);

  CHECK(sources[5].username == "tocsin");
  CHECK(sources[5].password == "machine-pass");
  CHECK(sources[5].api_key.empty());
  CHECK(sources[5].url == "http://127.0.0.1:8080");
  CHECK(sources[6].query == "search index=notable");
}

TEST_CASE("config errors name the file, the line and the key") {
  TempDir dir;
  const std::string file = (dir / "collector.yaml").string();
  struct Case {
    std::string yaml;
    std::string want;  // after "<file>:"
  } cases[] = {
      {"alert_sources:\n  - name: a\n    type: generic\n    token: " + kToken +
           "\n  - name: b\n    type: generic\n    token: short\n",
       "7: key 'alert_sources[1].token': must be at least 16 characters"},
      {"alert_sources:\n  - name: a\n    type: generic\n    token: " + kToken +
           "\n  - name: a\n    type: hec\n    token: " + kToken + "\n",
       "5: key 'alert_sources[1].name': duplicate source name 'a' (also alert_sources[0])"},
      {source("generic", "    token: " + kToken + "\n    url: https://x\n"),
       "5: key 'alert_sources[0].url': unknown key"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    token: " + kToken + "\n"),
       "6: key 'alert_sources[0].token': unknown key"},
      {source("alertmanager", "    token: " + kToken + "\n    fields: {host: h}\n"),
       "5: key 'alert_sources[0].fields': unknown key"},
      {source("syslog", "    udp: 127.0.0.1:514\n    interval: 5s\n"),
       "5: key 'alert_sources[0].interval': unknown key"},
      {source("splunk_search", "    url: https://s\n    query: q\n    time_field: x\n"),
       "6: key 'alert_sources[0].time_field': unknown key"},
      {source("hec", "    token: " + kToken + "\n    fields: {host: h}\n"),
       "5: key 'alert_sources[0].fields': unknown key"},
      {source("generic", "    token: " + kToken + "\n    fields:\n      hostname: h\n"),
       "6: key 'alert_sources[0].fields.hostname': unknown key"},
      {source("generic", "    token: " + kToken + "\n    fields:\n      host: a..b\n"),
       "6: key 'alert_sources[0].fields.host': empty name in path"},
      {source("generic", "    token: " + kToken + "\n    fields:\n      host: a[x]\n"),
       "6: key 'alert_sources[0].fields.host': '[x]' is not an array index"},
      {source("generic", ""), "2: key 'alert_sources[0].token': is required"},
      {source("generic", "    token: " + kToken + "\n    token_file: t\n"),
       "5: key 'alert_sources[0].token_file': use either 'token' or 'token_file', not both"},
      {source("generic", "    token: \"" + kToken + " x\"\n"),
       "4: key 'alert_sources[0].token': must not contain spaces"},
      {source("generic", "    token: " + kToken + "\n    max_body: 512\n"),
       "5: key 'alert_sources[0].max_body': must be between 1KiB and 16MiB"},
      {source("generic", "    token: " + kToken + "\n    max_body: 17MiB\n"),
       "5: key 'alert_sources[0].max_body': must be between 1KiB and 16MiB"},
      {source("generic", "    token: " + kToken + "\n    delivers: logs\n"),
       "5: key 'alert_sources[0].delivers': must be alerts or events"},
      {"alert_sources:\n  - name: Bad Name\n    type: generic\n",
       "2: key 'alert_sources[0].name': must be 1-64 of"},
      {"alert_sources:\n  - name: x\n    type: splunk\n",
       "3: key 'alert_sources[0].type': unknown type 'splunk' (one of generic, splunk_webhook"},
      {"alert_sources:\n  - type: generic\n", "2: key 'alert_sources[0].name': is required"},
      {"alert_sources:\n  name: x\n", "2: key 'alert_sources': must be a list"},
      {"alert_sources:\n  - just-a-string\n", "2: key 'alert_sources[0]': must be a map"},
      {source("syslog", "    max_message: 4KiB\n"),
       "2: key 'alert_sources[0]': needs at least one of udp, tcp, tls"},
      {source("syslog", "    udp: nowhere\n"),
       "4: key 'alert_sources[0].udp': 'nowhere' is not host:port"},
      {source("syslog", "    tls: 0.0.0.0:6514\n    tls_cert: c.pem\n"),
       "5: key 'alert_sources[0].tls_cert': tls_cert and tls_key go together"},
      {source("syslog", "    udp: 0.0.0.0:514\n    tls_cert: c.pem\n    tls_key: k.pem\n"),
       "5: key 'alert_sources[0].tls_cert': is only used with a tls: listener"},
      {source("syslog", "    tls: 0.0.0.0:6514\n    tls_cert: c.pem\n    tls_key: k.pem\n"),
       "5: key 'alert_sources[0].tls_cert': file "},
      {source("elasticsearch", "    url: https://es\n"),
       "2: key 'alert_sources[0].index': is required"},
      {source("elasticsearch", "    index: a\n"), "2: key 'alert_sources[0].url': is required"},
      {source("elasticsearch", "    url: ftp://es\n    index: a\n"),
       "4: key 'alert_sources[0].url': must start with http:// or https://"},
      {source("elasticsearch", "    url: https://\n    index: a\n"),
       "4: key 'alert_sources[0].url': has no host"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    username: u\n"),
       "2: key 'alert_sources[0].password': is required with username"},
      {source(
           "elasticsearch",
           "    url: https://es\n    index: a\n    api_key: k\n    username: u\n    password: p\n"),
       "6: key 'alert_sources[0].api_key': use either api_key or username and password"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    interval: 0s\n"),
       "6: key 'alert_sources[0].interval': must be positive"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    timeout: 0ms\n"),
       "6: key 'alert_sources[0].timeout': must be positive"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    page_size: 0\n"),
       "6: key 'alert_sources[0].page_size': must be between 1 and 10000"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    page_size: 10001\n"),
       "6: key 'alert_sources[0].page_size': must be between 1 and 10000"},
      {source("elasticsearch", "    url: https://es\n    index: a\n    ca_file: none.pem\n"),
       "6: key 'alert_sources[0].ca_file': file "},
      {source("splunk_search", "    url: https://s\n"),
       "2: key 'alert_sources[0].query': is required"},
      {source("sentinel", "    tenant_id: t\n    client_id: c\n    client_secret: s\n"),
       "2: key 'alert_sources[0].workspace_id': is required"},
      {source("sentinel", "    tenant_id: t\n    client_id: c\n    workspace_id: w\n"),
       "2: key 'alert_sources[0].client_secret': is required"},
      {source(
           "sentinel",
           "    tenant_id: t/../x\n    client_id: c\n    client_secret: s\n    workspace_id: w\n"),
       "4: key 'alert_sources[0].tenant_id': must be letters, digits"},
      {source("crowdsec_lapi", "    url: https://lapi\n"),
       "2: key 'alert_sources[0].machine_id': is required: alerts need a CrowdSec machine login"},
      {source("crowdsec_lapi", "    url: https://lapi\n    api_key: bouncer-key\n"),
       "5: key 'alert_sources[0].api_key': a CrowdSec bouncer key cannot read alerts"},
      {source("crowdsec_lapi", "    url: https://lapi\n    machine_id: tocsin\n"),
       "2: key 'alert_sources[0].password': is required with machine_id"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.yaml);
    CHECK(load_error(dir, c.yaml).rfind(file + ":" + c.want, 0) == 0);
  }
}

TEST_CASE("secrets can come from files next to the config") {
  TempDir dir;
  auto token = [&](const std::string& content) {
    tocsin::common::write_file_atomic(dir / "tok", content);
    return load(dir, source("hec", "    token_file: tok\n"))[0].token;
  };
  SUBCASE("a trailing newline is stripped, in any line-ending style") {
    CHECK(token(kToken) == kToken);
    CHECK(token(kToken + "\n") == kToken);
    CHECK(token(kToken + "\r\n") == kToken);
    CHECK(token(kToken + "\n\n") == kToken);
  }
  SUBCASE("an absolute path works too") {
    tocsin::common::write_file_atomic(dir / "abs", kToken + "\n");
    auto src = load(dir, source("generic", "    token_file: " + (dir / "abs").string() + "\n"));
    CHECK(src[0].token == kToken);
  }
  SUBCASE("a missing, short, empty or multi-line file is an error at the token_file key") {
    const std::string where =
        (dir / "collector.yaml").string() + ":4: key 'alert_sources[0].token_file': ";
    auto error_for = [&](const std::string& content) {
      tocsin::common::write_file_atomic(dir / "tok", content);
      return load_error(dir, source("hec", "    token_file: tok\n"));
    };
    CHECK(error_for("short\n").rfind(where + "must be at least 16 characters", 0) == 0);
    CHECK(error_for("\n").rfind(where + "is empty", 0) == 0);
    CHECK(error_for(kToken + "\nsecond-line\n").rfind(where + "contains control characters", 0) ==
          0);
    auto missing = load_error(dir, source("hec", "    token_file: nope\n"));
    CHECK(missing.rfind(where + "cannot read", 0) == 0);
  }
  SUBCASE("poller secrets from files") {
    tocsin::common::write_file_atomic(dir / "key", "machine-pass\n");
    tocsin::common::write_file_atomic(dir / "cs", "azure-secret\n");
    auto lapi =
        load(dir, source("crowdsec_lapi",
                         "    url: https://lapi\n    machine_id: tocsin\n    password_file: key\n"));
    CHECK(lapi[0].username == "tocsin");
    CHECK(lapi[0].password == "machine-pass");
    auto az = load(dir, source("sentinel",
                               "    tenant_id: contoso.onmicrosoft.com\n    client_id: c\n"
                               "    client_secret_file: cs\n    workspace_id: w\n"));
    CHECK(az[0].client_secret == "azure-secret");
  }
}
