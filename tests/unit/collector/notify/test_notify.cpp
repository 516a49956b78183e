// Notifications against real receivers started by the test: Debian's aiosmtpd (plain, STARTTLS
// with AUTH, SMTPS) and a local HTTP server (tests/peers/siem_mock.py) standing in for Slack,
// Teams, PagerDuty and TheHive, which cannot run here; the payloads are checked against the
// shapes those vendors document. Mails are parsed by Python's email package, not by our code.
// The incident engine and the notifier share an injected clock: retries, give-up and the
// 30-minute status cadence are driven without waiting.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collector/audit/audit.hpp"
#include "collector/notify/notify.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/peers.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::test::PortPeer;
using tocsin::test::run;
using tocsin::test::SmtpSink;
using tocsin::test::SiemMock;
using tocsin::test::TempDir;
using tocsin::test::wait_until;
using json = nlohmann::json;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kMin = 60 * kSec;
constexpr std::int64_t kStart = 1'800'000'000LL * kSec;

NotifyConfig load(const std::string& yaml, const std::filesystem::path& base = ".") {
  auto root = tocsin::common::ConfigNode::load_string(yaml, "collector.yaml");
  return NotifyConfig::load(root["notify"], base);
}

// A store, an engine and a notifier over it, all on one clock the test moves.
struct Fixture {
  TempDir dir{"notify"};
  std::unique_ptr<Store> store = Store::open(dir / "db");
  std::int64_t now = kStart;
  std::unique_ptr<IncidentEngine> engine =
      std::make_unique<IncidentEngine>(*store, IncidentPolicy{}, [this] { return now; });
  std::unique_ptr<Notifier> notifier;

  void start(NotifyConfig cfg) {
    notifier = std::make_unique<Notifier>(*store, *engine, std::move(cfg), [this] { return now; });
  }
  Incident open(const std::string& test = "eicar-drop-tmp", Severity sev = Severity::critical,
                const std::string& agent = "web-01") {
    Signal s;
    s.kind = IncidentKind::prevention_failed;
    s.key = dedup_key(s.kind, test, agent);
    s.severity = sev;
    s.title = "EICAR drop not prevented on " + agent + " (" + test + ")";
    s.test_id = test;
    s.agent_id = agent;
    s.marker = "tcn-m1";
    s.detail = "not_prevented: written";
    s.time_ns = now;
    auto i = engine->apply(s);
    REQUIRE(i);
    return *i;
  }
  // One dispatcher round and one round of every channel.
  void round() {
    notifier->poll_once();
    for (const auto& c : notifier->config().channels) notifier->send_once(c.name);
  }
};

std::string hmac_hex(const std::string& key, const std::string& msg) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  REQUIRE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
               reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len));
  return tocsin::common::to_hex({mac, len});
}

std::string header(const json& req, const std::string& name) {
  return req["headers"].value(name, "");
}

// A self-signed certificate for 127.0.0.1, made with the openssl command.
std::filesystem::path make_cert(const TempDir& dir) {
  run("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
      "-addext subjectAltName=IP:127.0.0.1 -keyout " + (dir / "key.pem").string() + " -out " +
      (dir / "cert.pem").string() + " 2>/dev/null");
  return dir / "cert.pem";
}

const json* part(const json& mail, const std::string& type, bool attachment) {
  for (const auto& p : mail["parts"])
    if (p["type"] == type && (p.value("disposition", json()) == "attachment") == attachment) return &p;
  return nullptr;
}

// A loopback port nothing listens on: bound, then closed again.
int closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

TEST_CASE("notify config: channels load with their secrets, and mistakes name the key") {
  TempDir dir("notify-cfg");
  std::ofstream(dir / "hook.secret") << "0123456789abcdef-secret\n";
  std::ofstream(dir / "pd.key") << "R0UT1NGKEY\n";
  auto cfg = load(R"(notify:
  collector_name: soc-1
  link_base: https://soc.example:7444/
  retry: {initial: 1s, max: 1m, give_up_after: 1h}
  channels:
    - {name: mail, type: email, url: "smtp://mail.example:587", from: fd@example.com, to: [a@example.com, b@example.com]}
    - {name: hook, type: webhook, url: "https://hooks.example/x", secret_file: hook.secret, severities: [critical, high]}
    - {name: pd, type: pagerduty, routing_key_file: pd.key, events: [opened, acknowledged, resolved]}
    - {name: hive, type: thehive, url: "https://hive.example:9000", api_key: k}
  status_mail: {channel: mail, every: 30m}
)", dir.path());
  REQUIRE(cfg.channels.size() == 4);
  CHECK(cfg.link_base == "https://soc.example:7444");
  CHECK(cfg.channels[0].smtp_tls == SmtpTls::required);  // the safe default
  CHECK(cfg.channels[1].secret == "0123456789abcdef-secret");
  CHECK(cfg.channels[1].routes(Severity::high, NotifyEvent::opened));
  CHECK_FALSE(cfg.channels[1].routes(Severity::medium, NotifyEvent::opened));
  CHECK_FALSE(cfg.channels[1].routes(Severity::critical, NotifyEvent::acknowledged));
  CHECK(cfg.channels[2].url == "https://events.pagerduty.com/v2/enqueue");
  CHECK(cfg.channels[2].routing_key == "R0UT1NGKEY");
  CHECK(cfg.channels[3].events == std::set{NotifyEvent::opened});
  REQUIRE(cfg.status);
  CHECK(cfg.status->every == 30min);
  CHECK(cfg.retry.delay(1, 0ms) == 1s);
  CHECK(cfg.retry.delay(3, 0ms) == 4s);
  CHECK(cfg.retry.delay(30, 0ms) == 1min);
  CHECK(cfg.retry.delay(1, 90s) == 90s);  // never sooner than Retry-After

  auto fails = [&](const std::string& channel, const std::string& words) {
    try {
      load("notify:\n  channels:\n    - " + channel + "\n", dir.path());
      FAIL("accepted: " << channel);
    } catch (const std::exception& e) {
      std::string msg = e.what();
      CHECK_MESSAGE(msg.find(words) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find("collector.yaml:") != std::string::npos, msg);
    }
  };
  fails("{name: x, type: fax, url: \"https://a\"}", "must be one of email");
  fails("{name: x, type: slack, url: \"ftp://a\"}", "must start with https://");
  fails("{name: x, type: email, url: \"http://a\", from: a@b.c, to: [x@y.z]}", "smtp://");
  fails("{name: x, type: email, url: \"smtp://a\", from: a@b.c, to: []}", "at least one address");
  fails("{name: x, type: email, url: \"smtp://a\", from: a@b.c, to: [\"x@y.z\\r\\nBcc: evil@e.vil\"]}",
        "not a mail address");
  fails("{name: x, type: email, url: \"smtp://a\", from: a@b.c, to: [x@y.z], username: u, password: p, "
        "starttls: off}", "must be 'required' when a password is sent");
  fails("{name: x, type: webhook, url: \"https://a\"}", "is required for a webhook channel");
  fails("{name: x, type: webhook, url: \"https://a\", secret: short}", "at least 16");
  fails("{name: x, type: pagerduty}", "routing_key");
  fails("{name: x, type: thehive, url: \"https://a\", api_key: k, events: [resolved]}", "only 'opened'");
  fails("{name: x, type: slack, url: \"https://a\", events: [opened, sometimes]}", "'sometimes'");
  fails("{name: x, type: slack, url: \"https://a\", to: [a@b.c]}", "email channels only");
  fails("{name: x, type: slack, url: \"https://a\", colour: red}", "colour");
  try {
    load("notify:\n  channels:\n    - {name: s, type: slack, url: \"https://a\"}\n"
         "  status_mail: {channel: s}\n");
    FAIL("a status mail to a slack channel was accepted");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find("not an email channel") != std::string::npos);
  }
}

TEST_CASE("notify config: approval mails name email approvers and need link_base") {
  auto cfg = load(R"(notify:
  link_base: https://soc.example:7444
  channels:
    - {name: mail, type: email, url: "smtp://mail.example:587", from: fd@example.com, to: [soc@example.com]}
    - {name: chat, type: slack, url: "https://hooks.example/x", events: [approval, escalated]}
  approvals:
    channel: mail
    approvers: [{name: anna, email: anna@example.com}, {name: ben, email: ben@example.com}]
    link_ttl: 30m
)");
  REQUIRE(cfg.approvals);
  CHECK(cfg.approvals->approvers.size() == 2);
  CHECK(cfg.approvals->approvers[1].email == "ben@example.com");
  CHECK(cfg.approvals->link_ttl == 30min);
  CHECK(cfg.channels[1].routes(Severity::low, NotifyEvent::approval));
  CHECK(cfg.channels[0].routes(Severity::high, NotifyEvent::escalated));  // a default event

  auto fails = [&](const std::string& yaml, const std::string& words) {
    try {
      load(yaml);
      FAIL("accepted: " << yaml);
    } catch (const std::exception& e) {
      CHECK_MESSAGE(std::string(e.what()).find(words) != std::string::npos, e.what());
    }
  };
  const std::string mail =
      "notify:\n  link_base: https://soc.example\n  channels:\n"
      "    - {name: mail, type: email, url: \"smtp://m\", from: a@b.c, to: [x@y.z]}\n"
      "    - {name: s, type: slack, url: \"https://a\"}\n";
  fails(mail + "  approvals: {channel: s, approvers: [{name: a, email: a@b.c}]}\n", "not an email channel");
  fails(mail + "  approvals: {channel: mail}\n", "approvers");
  fails(mail + "  approvals: {channel: mail, approvers: [{name: a, email: \"a@b.c\\r\\nBcc: x@y.z\"}]}\n",
        "not a mail address");
  fails(mail + "  approvals: {channel: mail, approvers: [{name: a, email: a@b.c}, {name: a, email: c@d.e}]}\n",
        "listed twice");
  fails("notify:\n  channels:\n    - {name: mail, type: email, url: \"smtp://m\", from: a@b.c, to: [x@y.z]}\n"
        "  approvals: {channel: mail, approvers: [{name: a, email: a@b.c}]}\n",
        "link_base");
  fails("notify:\n  channels:\n    - {name: p, type: pagerduty, routing_key: k, events: [approval]}\n",
        "cannot take 'approval'");
}

TEST_CASE("the signed webhook: HMAC over timestamp and body, retried after 500s, never lost") {
  SiemMock hook({{"POST /hook", {{{"status", 500}, {"body", "down"}},
                                 {{"status", 503}, {"body", "still down"}},
                                 {{"status", 202}, {"json", {{"ok", true}}}}}}});
  Fixture f;
  auto cfg = load("notify:\n  retry: {initial: 10s, max: 1m}\n  channels:\n"
                  "    - {name: hook, type: webhook, url: \"" + hook.url() + "/hook\", "
                  "secret: 0123456789abcdef-secret}\n");
  f.start(cfg);
  auto inc = f.open();
  CHECK(f.notifier->poll_once() == 1);
  CHECK(f.notifier->poll_once() == 0);  // the cursor moved: nothing twice
  CHECK(f.notifier->send_once("hook") == 0);
  auto d = f.notifier->list(std::nullopt, 10);
  REQUIRE(d.size() == 1);
  CHECK(d[0].state == DeliveryState::pending);
  CHECK(d[0].attempts == 1);
  CHECK(d[0].last_error.find("HTTP 500") != std::string::npos);
  CHECK(d[0].next_attempt_ns == f.now + 10 * kSec);
  CHECK(f.notifier->send_once("hook") == 0);  // not due yet: no request
  CHECK(hook.requests("POST", "/hook").size() == 1);
  f.now += 10 * kSec;
  CHECK(f.notifier->send_once("hook") == 0);
  CHECK(f.notifier->get(d[0].id)->next_attempt_ns == f.now + 20 * kSec);  // doubled
  f.now += 20 * kSec;
  CHECK(f.notifier->send_once("hook") == 1);
  auto sent = f.notifier->get(d[0].id);
  CHECK(sent->state == DeliveryState::sent);
  CHECK(sent->attempts == 3);

  auto reqs = hook.requests("POST", "/hook");
  REQUIRE(reqs.size() == 3);
  for (const auto& r : reqs) {
    std::string ts = header(r, "x-tocsin-timestamp");
    std::string body = r["body"];
    CHECK(header(r, "x-tocsin-signature") == "sha256=" + hmac_hex("0123456789abcdef-secret", ts + "." + body));
    CHECK(header(r, "content-type") == "application/json");
    CHECK(header(r, "x-tocsin-delivery") == std::to_string(d[0].id));
    json j = json::parse(body);
    CHECK(j["kind"] == "incident");
    CHECK(j["event"]["what"] == "opened");
    CHECK(j["incident"]["id"] == inc.id);
    CHECK(j["incident"]["test_id"] == "eicar-drop-tmp");
    CHECK(j["source"] == "tocsin");
  }
  // A tampered body no longer matches its signature.
  std::string ts = header(reqs[2], "x-tocsin-timestamp");
  CHECK(header(reqs[2], "x-tocsin-signature") !=
        "sha256=" + hmac_hex("0123456789abcdef-secret", ts + "." + std::string(reqs[2]["body"]) + " "));
}

TEST_CASE("PagerDuty Events v2: trigger, acknowledge and resolve share one dedup_key") {
  SiemMock pd({{"POST /v2/enqueue",
                {{{"status", 202},
                  {"json", {{"status", "success"}, {"message", "Event processed"}, {"dedup_key", "x"}}}}}}});
  Fixture f;
  f.start(load("notify:\n  collector_name: soc-1\n  link_base: https://soc.example:7444\n  channels:\n"
               "    - {name: pd, type: pagerduty, url: \"" + pd.url() + "/v2/enqueue\", routing_key: "
               "R0UT1NG, events: [opened, acknowledged, resolved]}\n"));
  auto inc = f.open();
  f.round();
  f.engine->ack(inc.id, "alice");
  f.round();
  f.engine->resolve(inc.id, "alice", "AV signatures updated");
  f.round();
  auto reqs = pd.requests("POST", "/v2/enqueue");
  REQUIRE(reqs.size() == 3);
  std::vector<std::string> actions;
  for (const auto& r : reqs) {
    json j = json::parse(std::string(r["body"]));
    actions.push_back(j["event_action"]);
    CHECK(j["routing_key"] == "R0UT1NG");
    CHECK(j["dedup_key"] == "tocsin-soc-1-" + std::to_string(inc.id));
  }
  CHECK(actions == std::vector<std::string>{"trigger", "acknowledge", "resolve"});
  json trigger = json::parse(std::string(reqs[0]["body"]));
  const json& p = trigger["payload"];
  CHECK(p["summary"].get<std::string>().find("EICAR drop not prevented") != std::string::npos);
  CHECK(p["source"] == "web-01");
  CHECK(p["severity"] == "critical");  // one of critical, error, warning, info
  CHECK(p["component"] == "eicar-drop-tmp");
  CHECK(p["class"] == "prevention_failed");
  CHECK(p["timestamp"].get<std::string>().size() == 24);  // ISO 8601 with ms and Z
  CHECK(p["custom_details"]["Agent"] == "web-01");
  CHECK(trigger["links"][0]["href"] == "https://soc.example:7444/api/v1/incidents/" + std::to_string(inc.id));
  // acknowledge and resolve carry only what PagerDuty needs.
  CHECK_FALSE(json::parse(std::string(reqs[2]["body"])).contains("payload"));
}

TEST_CASE("a resolve never overtakes its trigger while the trigger waits for a retry") {
  SiemMock pd({{"POST /v2/enqueue", {{{"status", 500}, {"body", "busy"}}, {{"status", 202}, {"body", "{}"}}}}});
  Fixture f;
  f.start(load("notify:\n  retry: {initial: 10s}\n  channels:\n"
               "    - {name: pd, type: pagerduty, url: \"" + pd.url() + "/v2/enqueue\", routing_key: R}\n"));
  auto inc = f.open();
  f.round();  // the trigger fails and waits 10 s
  f.engine->resolve(inc.id, "alice", "fixed");
  f.round();
  CHECK(pd.requests("POST", "/v2/enqueue").size() == 1);  // the resolve is held back
  f.now += 10 * kSec;
  f.round();
  auto reqs = pd.requests("POST", "/v2/enqueue");
  REQUIRE(reqs.size() == 3);
  CHECK(json::parse(std::string(reqs[1]["body"]))["event_action"] == "trigger");
  CHECK(json::parse(std::string(reqs[2]["body"]))["event_action"] == "resolve");
}

TEST_CASE("Slack, Teams and TheHive receive their documented shapes, routes filter severities") {
  SiemMock peer({{"POST /slack", {{{"status", 200}, {"body", "ok"}}}},
                 {"POST /teams", {{{"status", 200}, {"body", "1"}}}},
                 {"POST /api/v1/alert", {{{"status", 201}, {"json", {{"_id", "~123"}}}}}}});
  Fixture f;
  f.start(load("notify:\n  link_base: https://soc.example\n  channels:\n"
               "    - {name: slack, type: slack, url: \"" + peer.url() + "/slack\", severities: [critical]}\n"
               "    - {name: teams, type: teams, url: \"" + peer.url() + "/teams\"}\n"
               "    - {name: hive, type: thehive, url: \"" + peer.url() + "\", api_key: HIVEKEY}\n"));
  auto crit = f.open();
  f.open("encoded-command", Severity::low);  // Slack routes critical only
  f.round();

  auto slack = peer.requests("POST", "/slack");
  REQUIRE(slack.size() == 1);
  json s = json::parse(std::string(slack[0]["body"]));
  CHECK(s["text"].get<std::string>().find("#" + std::to_string(crit.id)) != std::string::npos);
  REQUIRE(s["blocks"].is_array());
  CHECK(s["blocks"][0]["type"] == "header");
  CHECK(s["blocks"][0]["text"]["type"] == "plain_text");
  CHECK(s["blocks"][0]["text"]["text"].get<std::string>().size() <= 150);
  CHECK(s["blocks"][1]["type"] == "section");
  CHECK(s["blocks"][1]["fields"].size() <= 10);
  CHECK(s["blocks"][1]["fields"][0]["type"] == "mrkdwn");
  CHECK(s["blocks"][2]["elements"][0]["text"].get<std::string>().find("<https://soc.example/api/v1/incidents/") == 0);

  auto teams = peer.requests("POST", "/teams");
  REQUIRE(teams.size() == 2);
  json t = json::parse(std::string(teams[0]["body"]));
  CHECK(t["type"] == "message");
  const json& a = t["attachments"][0];
  CHECK(a["contentType"] == "application/vnd.microsoft.card.adaptive");
  CHECK(a["contentUrl"].is_null());
  CHECK(a["content"]["type"] == "AdaptiveCard");
  CHECK(a["content"]["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json");
  CHECK(a["content"]["version"] == "1.4");
  CHECK(a["content"]["body"][2]["type"] == "FactSet");
  CHECK(a["content"]["actions"][0]["type"] == "Action.OpenUrl");

  auto hive = peer.requests("POST", "/api/v1/alert");
  REQUIRE(hive.size() == 2);
  CHECK(header(hive[0], "authorization") == "Bearer HIVEKEY");
  json h = json::parse(std::string(hive[0]["body"]));
  CHECK(h["sourceRef"] == std::to_string(crit.id));
  CHECK(h["type"] == "tocsin-incident");
  CHECK(h["source"] == "Tocsin:tocsin");
  CHECK(h["severity"] == 4);  // TheHive: 1 low .. 4 critical
  CHECK(h["date"] == kStart / 1'000'000);  // epoch milliseconds
  CHECK(h["title"].is_string());
  CHECK(h["description"].get<std::string>().find("eicar-drop-tmp") != std::string::npos);
  CHECK(std::find(h["tags"].begin(), h["tags"].end(), "agent:web-01") != h["tags"].end());
  CHECK(json::parse(std::string(hive[1]["body"]))["severity"] == 1);

  // A receiver that rejects the message (401) is not retried: the record says why.
  SiemMock refuses({{"POST /slack", {{{"status", 401}, {"body", "invalid_token"}}}}});
  Fixture g;
  g.start(load("notify:\n  channels:\n    - {name: slack, type: slack, url: \"" + refuses.url() + "/slack\"}\n"));
  g.open();
  g.round();
  auto d = g.notifier->list(DeliveryState::failed, 10);
  REQUIRE(d.size() == 1);
  CHECK(d[0].attempts == 1);
  CHECK(d[0].last_error.find("HTTP 401") != std::string::npos);
  CHECK(d[0].last_error.find("not retried") != std::string::npos);
}

TEST_CASE("email over STARTTLS with AUTH: recipients, subject, text and HTML parts") {
  TempDir certs("smtp-cert");
  auto cert = make_cert(certs);
  SmtpSink sink({"--tls-cert", cert.string(), "--tls-key", (certs / "key.pem").string(), "--user",
                 "tocsin", "--password", "s3cret-pw"});
  Fixture f;
  f.start(load("notify:\n  link_base: https://soc.example\n  channels:\n"
               "    - name: mail\n      type: email\n      url: \"" + sink.url() + "\"\n"
               "      from: tocsin@soc.example\n      to: [soc@soc.example, lead@soc.example]\n"
               "      username: tocsin\n      password: s3cret-pw\n      ca_file: " + cert.string() + "\n"));
  auto inc = f.open();
  f.round();
  REQUIRE(sink.count() == 1);
  json meta = sink.meta(1);
  CHECK(meta["tls"] == true);
  CHECK(meta["auth"] == true);
  CHECK(meta["mail_from"] == "tocsin@soc.example");
  CHECK(meta["rcpt_tos"] == json::array({"soc@soc.example", "lead@soc.example"}));
  json m = sink.mail(1);
  CHECK(m["defects"].empty());
  CHECK(m["subject"].get<std::string>().find("[Tocsin] Opened #" + std::to_string(inc.id) + " [critical]") == 0);
  CHECK(m["to"] == "soc@soc.example, lead@soc.example");
  CHECK(m["content_type"] == "multipart/mixed");
  const json* text = part(m, "text/plain", false);
  const json* html = part(m, "text/html", false);
  REQUIRE(text);
  REQUIRE(html);
  CHECK(text->value("text", "").find("Agent: web-01") != std::string::npos);
  CHECK(text->value("text", "").find("https://soc.example/api/v1/incidents/") != std::string::npos);
  CHECK(html->value("text", "").find("<th align=\"left\">Test</th><td>eicar-drop-tmp</td>") != std::string::npos);

  // Without TLS the sink refuses the mail (530): the attempt is recorded and retried.
  SmtpSink strict({"--tls-cert", cert.string(), "--tls-key", (certs / "key.pem").string()});
  Fixture g;
  g.start(load("notify:\n  channels:\n    - {name: mail, type: email, url: \"" + strict.url() +
               "\", starttls: off, from: a@b.example, to: [c@d.example]}\n"));
  g.open();
  g.round();
  auto d = g.notifier->list(DeliveryState::pending, 10);
  REQUIRE(d.size() == 1);
  CHECK(d[0].attempts == 1);
  CHECK(d[0].last_error.find("mail to smtp://127.0.0.1") != std::string::npos);
  CHECK(strict.count() == 0);
}

TEST_CASE("email over SMTPS (TLS from the first byte)") {
  TempDir certs("smtps-cert");
  auto cert = make_cert(certs);
  SmtpSink sink({"--tls-cert", cert.string(), "--tls-key", (certs / "key.pem").string(), "--smtps"});
  Fixture f;
  f.start(load("notify:\n  channels:\n    - {name: mail, type: email, url: \"" + sink.url("smtps") +
               "\", from: a@b.example, to: [c@d.example], ca_file: \"" + cert.string() + "\"}\n"));
  f.open();
  f.round();
  REQUIRE(sink.count() == 1);
  CHECK(sink.meta(1)["rcpt_tos"] == json::array({"c@d.example"}));
}

TEST_CASE("major-incident status mails: at once, every 30 minutes with attachments, then all clear") {
  SmtpSink sink;
  Fixture f;
  f.start(load("notify:\n  channels:\n    - {name: mail, type: email, url: \"" + sink.url() +
               "\", starttls: off, from: fd@soc.example, to: [soc@soc.example], events: [breached]}\n"
               "  status_mail: {channel: mail, every: 30m, to: [manager@soc.example, cio@soc.example]}\n"));
  f.round();
  f.open("low-noise", Severity::low);
  f.round();
  CHECK(sink.count() == 0);  // no critical open: nothing at all

  auto first = f.open();
  f.round();
  REQUIRE(sink.count() == 1);
  CHECK(sink.meta(1)["rcpt_tos"] == json::array({"manager@soc.example", "cio@soc.example"}));
  json m1 = sink.mail(1);
  std::string id1 = std::to_string(first.id);
  CHECK(m1["subject"] == "[Tocsin] Major incident status 1: 1 critical open (#" + id1 + ")");

  f.now += 10 * kMin;
  f.engine->note(first.id, "alice", "AV team paged, signatures rolling out");
  f.round();
  CHECK(sink.count() == 1);  // not yet 30 minutes

  f.now += 20 * kMin;
  auto second = f.open("encoded-command", Severity::critical, "db-02");
  f.round();
  REQUIRE(sink.count() == 2);
  json m2 = sink.mail(2);
  std::string id2 = std::to_string(second.id);
  CHECK(m2["subject"] == "[Tocsin] Major incident status 2: 2 critical open (#" + id1 + ", #" + id2 + ")");
  const json* text = part(m2, "text/plain", false);
  REQUIRE(text);
  std::string body = text->value("text", "");
  CHECK(body.find("running since") != std::string::npos);
  CHECK(body.find("Failing since: ") != std::string::npos);
  CHECK(body.find("AV team paged, signatures rolling out") != std::string::npos);  // latest note
  CHECK(body.find("acknowledge: breached 15m ago") != std::string::npos);  // 30 min, 15 min SLA
  const json* csv = part(m2, "text/csv", true);
  const json* html = part(m2, "text/html", true);
  REQUIRE(csv);
  REQUIRE(html);
  CHECK(csv->value("filename", "") == "tocsin-status-2.csv");
  std::string csv_text = csv->value("text", "");
  CHECK(csv_text.find("id,severity,kind,state,title") == 0);
  CHECK(csv_text.find("\r\n" + id1 + ",critical,prevention_failed,open,") != std::string::npos);
  CHECK(csv_text.find("\r\n" + id2 + ",critical,") != std::string::npos);
  CHECK(html->value("filename", "") == "tocsin-status-2.html");
  CHECK(html->value("text", "").find("db-02") != std::string::npos);

  // The SLA breach mail (events: [breached]) and the next status follow the cadence.
  f.now += 30 * kMin;
  f.engine->tick();
  f.round();
  CHECK(sink.count() >= 4);

  std::size_t before = sink.count();
  f.engine->resolve(first.id, "alice", "fixed");
  f.engine->resolve(second.id, "bob", "fixed");
  f.round();
  REQUIRE(sink.count() == before + 1);
  json clear = sink.mail(static_cast<int>(before + 1));
  CHECK(clear["subject"] == "[Tocsin] All clear: no critical incident open (was #" + id1 + ", #" + id2 + ")");

  f.now += 2 * 60 * kMin;
  f.round();
  CHECK(sink.count() == before + 1);  // none open: silence
}

TEST_CASE("a dead receiver stalls nothing, is given up on in time, and a restart resumes") {
  Fixture f;
  const std::string dead = "http://127.0.0.1:" + std::to_string(closed_port()) + "/hook";
  auto cfg = load("notify:\n  retry: {initial: 1m, max: 10m, give_up_after: 1h}\n  channels:\n"
                  "    - {name: hook, type: webhook, url: \"" + dead + "\", "
                  "secret: 0123456789abcdef-secret, timeout: 2s}\n");
  f.start(cfg);
  f.open();
  f.round();
  // The engine keeps working while the channel fails.
  auto other = f.open("encoded-command");
  CHECK(other.id == 2);
  f.round();
  auto pending = f.notifier->list(DeliveryState::pending, 10);
  REQUIRE(pending.size() == 2);
  // The error names the receiver's origin, never its path (a webhook URL can be a credential).
  CHECK(pending[0].last_error.find("cannot reach http://127.0.0.1:") != std::string::npos);
  CHECK(pending[0].last_error.find("/hook") == std::string::npos);

  // A restart (new notifier on the same store) neither loses nor duplicates anything.
  f.notifier.reset();
  f.start(cfg);
  CHECK(f.notifier->poll_once() == 0);
  CHECK(f.notifier->list(std::nullopt, 10).size() == 2);

  for (int i = 0; i < 20; ++i) {
    f.now += 10 * kMin;
    f.notifier->send_once("hook");
  }
  auto failed = f.notifier->list(DeliveryState::failed, 10);
  REQUIRE(failed.size() == 2);
  CHECK(failed[0].attempts >= 3);
  CHECK(failed[0].last_error.find("cannot reach") != std::string::npos);
  CHECK(f.notifier->list(DeliveryState::pending, 10).empty());
}

TEST_CASE("the notifier's threads deliver on their own and stop promptly") {
  SiemMock hook({{"POST /hook", {{{"status", 200}, {"body", "ok"}}}}});
  TempDir dir("notify-threads");
  auto store = Store::open(dir / "db");
  IncidentEngine engine(*store);
  Notifier n(*store, engine,
             load("notify:\n  channels:\n    - {name: hook, type: webhook, url: \"" + hook.url() +
                  "/hook\", secret: 0123456789abcdef-secret}\n"),
             {}, 50ms);
  n.start();
  Signal s;
  s.kind = IncidentKind::health_failed;
  s.key = dedup_key(s.kind, "wordpress-health", "web-01");
  s.severity = Severity::high;
  s.title = "wordpress-health unhealthy on web-01";
  s.test_id = "wordpress-health";
  s.agent_id = "web-01";
  engine.apply(s);
  CHECK(wait_until([&] { return !hook.requests("POST", "/hook").empty(); }));
  CHECK(wait_until([&] { return n.list(DeliveryState::sent, 10).size() == 1; }));
  n.stop();
}

TEST_CASE("approval mails: one per approver but the requester, a link of their own never stored, no repeats") {
  SmtpSink sink;
  Fixture f;
  {
    AgentRecord a;
    a.agent_id = "web-01";
    WriteSet ws;
    ws.put_agent(a);
    f.store->commit(std::move(ws));
  }
  AuditLog audit(*f.store, tocsin::common::Ed25519Key::generate(), [&] { return f.now; });
  auto command_key = tocsin::common::Ed25519Key::generate();
  CommandEngine commands(*f.store, tocsin::common::Ed25519Key::from_private_pem(command_key.private_pem()),
                         CommandPolicy{}, &audit, [&] { return f.now; });
  auto request = [&](const std::string& who) {
    CommandRequest r;
    r.agent_id = "web-01";
    r.target = "nginx.service";
    r.requester = who;
    r.reason = "wordpress-health failing";
    return commands.request(r);
  };
  request("olivia");  // before approvals were notified: never announced
  const std::string yaml = "notify:\n  link_base: https://soc.example:7444\n  channels:\n"
                           "    - {name: mail, type: email, url: \"" + sink.url() +
                           "\", starttls: off, from: fd@soc.example, to: [soc@soc.example]}\n"
                           "  approvals:\n    channel: mail\n    approvers:\n"
                           "      - {name: anna, email: anna@soc.example}\n"
                           "      - {name: ben, email: ben@soc.example}\n";
  f.start(load(yaml));
  f.notifier->set_commands(&commands, &audit);
  f.round();
  CHECK(sink.count() == 0);

  auto c = request("anna");  // an approver asks: only ben is asked to approve
  f.round();
  REQUIRE(sink.count() == 1);
  CHECK(sink.meta(1)["rcpt_tos"] == json::array({"ben@soc.example"}));
  auto m = sink.mail(1);
  CHECK(m["subject"] == "[Tocsin] Approval needed: restart nginx.service on agent web-01 (cmd-" +
                            std::to_string(c.id) + ")");
  std::string text = part(m, "text/plain", false)->value("text", "");
  auto at = text.find("https://soc.example:7444/approve/");
  REQUIRE_MESSAGE(at != std::string::npos, text);
  auto token = text.substr(at + 33, text.find('\n', at) - at - 33);
  auto link = commands.check_link(token);
  CHECK(link.approver == "ben");
  CHECK(link.command_id == c.id);
  CHECK(text.find("Requested by: anna") != std::string::npos);
  auto stored = f.notifier->list(std::nullopt, 10);
  REQUIRE(stored.size() == 1);
  CHECK(stored[0].kind == "approval");
  CHECK_FALSE(stored[0].snapshot.contains("link"));  // a credential: minted at send time only
  CHECK(encode_delivery(stored[0]).find(token) == std::string::npos);

  // A restarted notifier neither repeats it nor misses the next one.
  f.start(load(yaml));
  f.notifier->set_commands(&commands, &audit);
  f.round();
  CHECK(sink.count() == 1);
  auto c2 = request("olivia");
  commands.deny(c2.id, "anna", "decided before the mail went out");
  f.round();
  CHECK(sink.count() == 1);  // nothing asks for a decision already made
  request("olivia");
  f.round();
  CHECK(sink.count() == 3);  // anna and ben
  CHECK(commands.approve_by_link(token).approvals[0].first == "ben");
}

TEST_CASE("delivery records older than notify.keep are deleted, pending ones never") {
  SmtpSink sink;
  Fixture f;
  const std::string yaml = "notify:\n  keep: 30d\n  retry: {initial: 1s, max: 1s, give_up_after: 1h}\n  channels:\n"
                           "    - {name: mail, type: email, url: \"" + sink.url() +
                           "\", starttls: off, from: fd@soc.example, to: [soc@soc.example]}\n"
                           "    - {name: dead, type: webhook, url: \"http://127.0.0.1:" +
                           std::to_string(closed_port()) + "/x\", secret: 0123456789abcdef-secret}\n";
  f.start(load(yaml));
  f.open("old-test");
  f.round();
  REQUIRE(f.notifier->list(std::nullopt, 10).size() == 2);  // mail sent, webhook pending
  f.now += 31LL * 24 * 3600 * kSec;
  CHECK(f.notifier->prune_once() == 1);  // the sent mail; the pending webhook stays
  auto left = f.notifier->list(std::nullopt, 10);
  REQUIRE(left.size() == 1);
  CHECK(left[0].channel == "dead");
  f.round();  // now given up on (failed), and a new incident's records are young
  f.open("new-test");
  f.round();
  CHECK(f.notifier->prune_once() == 1);  // the failed webhook only
  CHECK(f.notifier->list(std::nullopt, 10).size() == 2);
}

TEST_CASE("three collector restarts re-raise nothing: no reopen, no new occurrence, no webhook") {
  // Issue 18: the feed re-reads the minute before its security-event cursor, and what it had
  // processed lived only in memory, so each restart turned one refused connection into
  // another occurrence, reopened the resolved incident and sent another "opened".
  SiemMock hook({{"POST /hook", {{{"status", 202}, {"json", {{"ok", true}}}}}}});
  Fixture f;
  auto cfg = load("notify:\n  channels:\n"
                  "    - {name: hook, type: webhook, url: \"" + hook.url() + "/hook\", "
                  "secret: 0123456789abcdef-secret}\n");
  IncidentPolicy policy;
  policy.agent_silent_after = 0ms;  // no agent records here to be silent
  auto restart = [&](std::unique_ptr<IncidentFeed>& feed) {
    feed.reset();
    f.notifier.reset();
    f.engine.reset();
    f.store.reset();
    f.store = Store::open(f.dir / "db");  // the same RocksDB on disk
    f.engine = std::make_unique<IncidentEngine>(*f.store, policy, [&f] { return f.now; });
    f.start(cfg);
    feed = std::make_unique<IncidentFeed>(*f.engine, *f.store);
  };
  std::unique_ptr<IncidentFeed> feed;
  restart(feed);
  CHECK(feed->poll_once() == 0);  // the cursors start at the current ends

  WriteSet ws;
  ws.put_security_event({f.now + kSec, "connection_refused", "web-01", "127.0.0.1:5555",
                         "peer closed the handshake"});
  std::string seq;
  put_be64(seq, 1);
  ws.put(Table::detection_events, seq,
         json{{"time_ns", f.now}, {"marker", "tcn-m1"}, {"agent_id", "web-01"},
              {"test_id", "eicar-drop-tmp"}, {"from", "pending"}, {"to", "missed"}, {"detail", ""}}
             .dump());
  f.store->commit(std::move(ws));
  f.now += 2 * kSec;
  CHECK(feed->poll_once() == 2);
  f.round();
  auto all = f.engine->list({}, 10);
  REQUIRE(all.size() == 2);
  for (const auto& i : all) f.engine->resolve(i.id, "analyst", "looked into it: benign");
  f.round();
  auto sent = hook.requests("POST", "/hook").size();
  CHECK(sent == 4);  // two opened, two resolved
  auto events = list_incident_events(*f.store, 0, 1000).size();

  for (int n = 0; n < 3; ++n) {
    CAPTURE(n);
    restart(feed);
    f.now += 5 * kSec;  // well inside the re-read margin
    CHECK(feed->poll_once() == 0);
    f.round();
    CHECK(f.notifier->poll_once() == 0);
  }
  for (const auto& i : f.engine->list({}, 10)) {
    CHECK(i.state == IncidentState::resolved);
    CHECK(i.occurrences == 1);
    CHECK(i.reopen_count == 0);
  }
  CHECK(list_incident_events(*f.store, 0, 1000).size() == events);
  CHECK(hook.requests("POST", "/hook").size() == sent);  // the sink stayed silent
  CHECK(f.notifier->list(std::nullopt, 100).size() == 4);
}
