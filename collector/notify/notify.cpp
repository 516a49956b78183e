#include "collector/notify/notify.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include <pthread.h>

#include "collector/html/html.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/curl.hpp"

namespace tocsin::collector {
namespace curl = common::curl;
using json = nlohmann::json;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

namespace {

constexpr int kDeliveryFormat = 1;
constexpr std::int64_t kNsPerMs = 1'000'000;
constexpr std::int64_t kNsPerSec = 1'000'000'000;
constexpr std::size_t kEventPage = 200;
constexpr std::size_t kMinWebhookSecret = 16;
constexpr const char* kPagerDutyUrl = "https://events.pagerduty.com/v2/enqueue";
constexpr milliseconds kMaxRetryAfter = 1h;

std::string id_key(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}

std::string pending_key(const std::string& channel, std::uint64_t id) {
  return channel + '\0' + id_key(id);
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// ---- words -----------------------------------------------------------------------------

std::string human_time(std::int64_t ns) {
  if (ns <= 0) return "-";
  std::string t = common::format_time(ns);  // 2026-11-28T00:48:43.123Z
  return t.substr(0, 10) + " " + t.substr(11, 5) + " UTC";
}

std::string human_duration(std::int64_t ns) {
  std::int64_t s = std::llabs(ns) / kNsPerSec;
  char buf[64];
  if (s >= 86400)
    std::snprintf(buf, sizeof buf, "%lldd %02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  else if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh %02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm", static_cast<long long>(s / 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

// "acknowledge: 12m left; resolve: breached 5m ago (paused)"
std::string sla_words(const json& inc) {
  std::vector<std::string> parts;
  for (const auto& [field, name] : {std::pair{"ack_sla", "acknowledge"}, {"resolve_sla", "resolve"}}) {
    const json& t = inc.value(field, json::object());
    if (!t.is_object() || t.value("target_ns", std::int64_t{0}) == 0) continue;
    std::string w = name;
    w += ": ";
    if (!t.value("running", false) && t.value("stopped_ns", std::int64_t{0}) != 0) {
      w += t.value("breached_ns", std::int64_t{0}) ? "met late" : "met";
    } else if (t["remaining_ns"].is_number()) {
      std::int64_t rem = t["remaining_ns"].get<std::int64_t>();
      w += rem >= 0 ? human_duration(rem) + " left" : "breached " + human_duration(rem) + " ago";
    } else {
      w += "not started";
    }
    if (t.value("paused", false)) w += " (paused)";
    parts.push_back(w);
  }
  if (parts.empty()) return "no SLA at this severity";
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "; ") + p;
  return out;
}

std::string event_title(const std::string& ev, const std::string& what) {
  if (what == "reopened") return "Reopened";
  if (ev == "opened") return "Opened";
  if (ev == "acknowledged") return "Acknowledged";
  if (ev == "breached") return "SLA breached";
  if (ev == "escalated") return "Escalated";
  if (ev == "resolved") return what == "closed" || what == "auto_closed" ? "Closed" : "Resolved";
  return "Updated";
}

std::string one_line(std::string s, std::size_t cap = 300) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  if (s.size() > cap) s = s.substr(0, cap - 3) + "...";
  return s;
}

// Slack mrkdwn: only &, < and > are control characters.
std::string slack_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

// A CSV cell: quoted when needed, and a leading = + - @ neutralised so a spreadsheet does not
// run attacker-chosen text (test ids and titles come from agents) as a formula.
std::string csv_cell(std::string s) {
  if (!s.empty() && std::string_view("=+-@\t\r").find(s.front()) != std::string_view::npos)
    s.insert(s.begin(), '\'');
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::int64_t num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
}

std::string incident_link(const NotifyConfig& cfg, std::uint64_t id) {
  if (cfg.link_base.empty()) return "";
  return cfg.link_base + "/api/v1/incidents/" + std::to_string(id);
}

std::string note_words(const json& inc) {
  const json& n = inc.value("latest_note", json());
  if (!n.is_object()) return "none";
  return "\"" + one_line(str(n, "text"), 500) + "\" (" + str(n, "actor") + ", " +
         human_time(num(n, "time_ns")) + ")";
}

// The facts every message about one incident shows, in this order.
std::vector<std::pair<std::string, std::string>> facts(const json& inc, std::int64_t now_ns) {
  std::int64_t since = num(inc, "reopened_ns") ? num(inc, "reopened_ns") : num(inc, "opened_ns");
  std::string owner = str(inc, "owner");
  std::vector<std::pair<std::string, std::string>> f{
      {"Severity", str(inc, "severity")},
      {"Kind", str(inc, "kind")},
      {"State", str(inc, "state")},
      {"Test", str(inc, "test_id").empty() ? "-" : str(inc, "test_id")},
      {"Agent", str(inc, "agent_id").empty() ? "-" : str(inc, "agent_id")},
      {"Failing since", human_time(since) + " (" + human_duration(now_ns - since) + ")"},
      {"Occurrences", std::to_string(num(inc, "occurrences"))},
      {"Owner", owner.empty() ? "unassigned" : owner},
      {"SLA", sla_words(inc)},
      {"Latest note", note_words(inc)},
  };
  if (!str(inc, "marker").empty()) f.insert(f.begin() + 5, {"Marker", str(inc, "marker")});
  if (!str(inc, "resolution").empty()) f.push_back({"Resolution", str(inc, "resolution")});
  return f;
}

std::string incident_headline(const json& inc) {
  return "#" + std::to_string(num(inc, "id")) + " [" + str(inc, "severity") + "] " +
         one_line(str(inc, "title"), 200);
}

std::string ids_words(const std::vector<std::uint64_t>& ids) {
  std::string out;
  for (auto id : ids) out += (out.empty() ? "#" : ", #") + std::to_string(id);
  return out;
}

std::vector<std::uint64_t> ids_of(const json& arr, const char* field) {
  std::vector<std::uint64_t> ids;
  for (const auto& x : arr) ids.push_back(field ? x.value(field, std::uint64_t{0}) : x.get<std::uint64_t>());
  return ids;
}

// ---- config ------------------------------------------------------------------------------

std::optional<ChannelType> parse_channel_type(const std::string& s) {
  for (auto t : {ChannelType::email, ChannelType::slack, ChannelType::teams, ChannelType::pagerduty,
                 ChannelType::webhook, ChannelType::thehive})
    if (channel_type_name(t) == s) return t;
  return std::nullopt;
}

bool valid_address(const std::string& a) {
  static const std::regex re(R"(^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$)");
  return a.size() <= 254 && std::regex_match(a, re);
}

bool starts_with(const std::string& s, std::string_view p) { return s.rfind(p, 0) == 0; }

ChannelConfig load_channel(const common::ConfigNode& n, const std::filesystem::path& base) {
  n.check_keys({"name", "type", "url", "url_file", "severities", "events", "ca_file", "timeout",
                "from", "to", "username", "password", "password_file", "starttls", "secret",
                "secret_file", "routing_key", "routing_key_file", "api_key", "api_key_file"});
  ChannelConfig c;
  c.name = n.str("name");
  static const std::regex name_re("^[A-Za-z0-9_.-]{1,64}$");
  if (!std::regex_match(c.name, name_re))
    n.fail("name", "must be 1-64 letters, digits, '_', '.' or '-'");
  auto type = parse_channel_type(n.str("type"));
  if (!type) n.fail("type", "must be one of email, slack, teams, pagerduty, webhook, thehive");
  c.type = *type;
  auto url = common::config_secret(n, "url", base);
  if (url) c.url = *url;
  if (c.type == ChannelType::pagerduty && c.url.empty()) c.url = kPagerDutyUrl;
  const std::string url_key = n.has("url_file") ? "url_file" : "url";
  if (c.url.empty()) n.fail("url", "is required (or url_file)");
  if (c.type == ChannelType::email) {
    if (!starts_with(c.url, "smtp://") && !starts_with(c.url, "smtps://"))
      n.fail(url_key, "must start with smtp:// (STARTTLS) or smtps:// (TLS from the start)");
  } else if (!starts_with(c.url, "https://") && !starts_with(c.url, "http://")) {
    n.fail(url_key, "must start with https:// (or http:// for a receiver on this host)");
  }
  for (const auto& s : n.str_list("severities")) {
    auto sev = parse_severity(s);
    if (!sev) n.fail("severities", "'" + s + "' is not informational, low, medium, high or critical");
    c.severities.insert(*sev);
  }
  if (c.type == ChannelType::thehive) c.events = {NotifyEvent::opened};
  if (n.has("events")) {
    c.events.clear();
    for (const auto& s : n.str_list("events")) {
      std::optional<NotifyEvent> ev;
      for (auto e : {NotifyEvent::opened, NotifyEvent::acknowledged, NotifyEvent::breached,
                     NotifyEvent::resolved, NotifyEvent::updated, NotifyEvent::escalated,
                     NotifyEvent::approval})
        if (notify_event_name(e) == s) ev = e;
      if (!ev)
        n.fail("events", "'" + s +
                             "' is not opened, acknowledged, breached, resolved, updated, "
                             "escalated or approval");
      c.events.insert(*ev);
    }
    if (c.events.empty()) n.fail("events", "is empty: the channel would never be used");
  }
  if (c.type == ChannelType::thehive && c.events != std::set{NotifyEvent::opened})
    n.fail("events", "a thehive channel takes only 'opened' (TheHive alerts are created, not updated)");
  if (c.type == ChannelType::pagerduty && c.events.count(NotifyEvent::approval))
    n.fail("events", "a pagerduty channel cannot take 'approval' (it pages about incidents); use "
                     "notify.approvals for approvers' mails");
  if (n.has("ca_file")) {
    c.ca_file = common::resolve_path(base, n.str("ca_file"));
    std::error_code ec;
    if (!std::filesystem::is_regular_file(c.ca_file, ec))
      n.fail("ca_file", "file " + c.ca_file.string() + " not found");
  }
  c.timeout = n.duration("timeout", c.timeout);
  if (c.timeout <= 0ms || c.timeout > 5min) n.fail("timeout", "must be between 1ms and 5m");

  auto need_secret = [&](const std::string& key, std::string& into, std::size_t min_len) {
    auto v = common::config_secret(n, key, base);
    if (!v) n.fail(key, "is required for a " + channel_type_name(c.type) + " channel (or " + key + "_file)");
    if (v->size() < min_len)
      n.fail(n.has(key) ? key : key + "_file", "must be at least " + std::to_string(min_len) + " characters");
    into = std::move(*v);
  };
  switch (c.type) {
    case ChannelType::email: {
      c.from = n.str("from");
      if (!valid_address(c.from)) n.fail("from", "'" + c.from + "' is not a mail address");
      c.to = n.str_list("to");
      if (c.to.empty()) n.fail("to", "needs at least one address");
      for (const auto& a : c.to)
        if (!valid_address(a)) n.fail("to", "'" + a + "' is not a mail address");
      c.username = n.str("username", "");
      auto pw = common::config_secret(n, "password", base);
      if (pw) c.password = *pw;
      if (!c.username.empty() && c.password.empty()) n.fail("password", "is required with username (or password_file)");
      std::string tls = n.str("starttls", "required");
      if (tls == "required") c.smtp_tls = SmtpTls::required;
      else if (tls == "optional") c.smtp_tls = SmtpTls::optional;
      else if (tls == "off") c.smtp_tls = SmtpTls::off;
      else n.fail("starttls", "must be required, optional or off");
      if (!c.username.empty() && c.smtp_tls != SmtpTls::required && starts_with(c.url, "smtp://"))
        n.fail("starttls", "must be 'required' when a password is sent (or use smtps://)");
      break;
    }
    case ChannelType::webhook: need_secret("secret", c.secret, kMinWebhookSecret); break;
    case ChannelType::pagerduty: need_secret("routing_key", c.routing_key, 1); break;
    case ChannelType::thehive: need_secret("api_key", c.api_key, 1); break;
    case ChannelType::slack:
    case ChannelType::teams: break;
  }
  for (const char* k : {"from", "to", "username", "password", "password_file", "starttls"})
    if (c.type != ChannelType::email && n.has(k)) n.fail(k, "applies to email channels only");
  return c;
}

// ---- snapshots ---------------------------------------------------------------------------

json incident_summary(const Incident& i, std::int64_t now_ns) {
  json j = incident_json(i, now_ns, false);
  for (auto it = i.timeline.rbegin(); it != i.timeline.rend(); ++it) {
    if (it->what == "noted") {
      j["latest_note"] = {{"time_ns", it->time_ns}, {"actor", it->actor}, {"text", it->detail}};
      break;
    }
  }
  return j;
}

// ---- rendering ---------------------------------------------------------------------------

std::string text_block(const std::vector<std::pair<std::string, std::string>>& f,
                       const std::string& indent) {
  std::string out;
  for (const auto& [k, v] : f) out += indent + k + ": " + v + "\n";
  return out;
}

std::string html_table(const std::vector<std::pair<std::string, std::string>>& f) {
  std::string out = "<table cellpadding=\"3\" style=\"border-collapse:collapse\">\n";
  for (const auto& [k, v] : f)
    out += "<tr><th align=\"left\">" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>\n";
  return out + "</table>\n";
}

const std::vector<std::string> kCsvColumns{
    "id", "severity", "kind", "state", "title", "test_id", "agent_id", "marker", "opened",
    "acknowledged", "owner", "occurrences", "ack_sla_remaining_s", "resolve_sla_remaining_s",
    "latest_note"};

std::string csv_row(const json& inc) {
  auto rem = [&](const char* t) {
    const json& r = inc.value(t, json::object()).value("remaining_ns", json());
    return r.is_number() ? std::to_string(r.get<std::int64_t>() / kNsPerSec) : std::string();
  };
  const json& note = inc.value("latest_note", json());
  std::vector<std::string> cells{std::to_string(num(inc, "id")), str(inc, "severity"), str(inc, "kind"),
                                 str(inc, "state"), str(inc, "title"), str(inc, "test_id"),
                                 str(inc, "agent_id"), str(inc, "marker"), str(inc, "opened"),
                                 str(inc, "acknowledged"), str(inc, "owner"),
                                 std::to_string(num(inc, "occurrences")), rem("ack_sla"),
                                 rem("resolve_sla"), note.is_object() ? str(note, "text") : ""};
  std::string out;
  for (std::size_t k = 0; k < cells.size(); ++k) out += (k ? "," : "") + csv_cell(cells[k]);
  return out + "\r\n";
}

Mail incident_mail(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::int64_t now = num(snap, "time_ns");
  std::string what = event_title(str(ev, "notify"), str(ev, "what"));
  Mail m;
  m.subject = "[Tocsin] " + what + " " + incident_headline(inc);
  std::string happened = str(ev, "what") + " by " + str(ev, "actor") + " at " +
                         human_time(num(ev, "time_ns")) +
                         (str(ev, "detail").empty() ? "" : ": " + one_line(str(ev, "detail"), 500));
  auto f = facts(inc, now);
  f.insert(f.begin(), {"What happened", happened});
  std::string link = incident_link(cfg, num(inc, "id"));
  if (!link.empty()) f.push_back({"Link", link});
  m.text = "Incident " + incident_headline(inc) + "\n\n" + text_block(f, "") +
           "\ntocsin incident show " + std::to_string(num(inc, "id")) + "\n";
  m.html = html_page(m.subject, "<h2>" + html_escape(what + " " + incident_headline(inc)) + "</h2>\n" +
                                    html_table(f));
  return m;
}

Mail status_mail(const json& snap) {
  const json& list = snap.at("incidents");
  std::int64_t now = num(snap, "time_ns");
  std::int64_t since = num(snap, "since_ns");
  auto ids = ids_of(list, "id");
  std::string n = std::to_string(num(snap, "number"));
  Mail m;
  m.subject = "[Tocsin] Major incident status " + n + ": " + std::to_string(ids.size()) +
              " critical open (" + ids_words(ids) + ")";
  std::string intro = "A major incident has been running since " + human_time(since) + " (" +
                      human_duration(now - since) + "). Status update " + n + " at " +
                      human_time(now) + ": " + std::to_string(ids.size()) +
                      " critical incident(s) open.\n\n";
  std::string text = intro, html = "<p>" + html_escape(intro) + "</p>\n";
  std::string detail_html, csv;
  for (const auto& k : kCsvColumns) csv += (csv.empty() ? "" : ",") + k;
  csv += "\r\n";
  for (const auto& inc : list) {
    auto f = facts(inc, now);
    std::vector<std::pair<std::string, std::string>> brief;
    for (const auto& [k, v] : f)
      if (k == "Failing since" || k == "State" || k == "SLA" || k == "Latest note" || k == "Owner")
        brief.push_back({k, v});
    text += incident_headline(inc) + "\n" + text_block(brief, "  ") + "\n";
    html += "<h3>" + html_escape(incident_headline(inc)) + "</h3>\n" + html_table(brief);
    detail_html += "<h2>" + html_escape(incident_headline(inc)) + "</h2>\n" + html_table(f);
    csv += csv_row(inc);
  }
  text += "Details are attached (HTML and CSV). The next update follows on the usual cadence;\n"
          "an all-clear mail follows when the last critical incident is resolved.\n";
  m.text = text;
  m.html = html_page(m.subject, html);
  m.attachments.push_back({"tocsin-status-" + n + ".html", "text/html; charset=utf-8",
                           html_page("Tocsin major incident status " + n,
                                     "<p>" + html_escape(intro) + "</p>\n" + detail_html)});
  m.attachments.push_back({"tocsin-status-" + n + ".csv", "text/csv; charset=utf-8", csv});
  return m;
}

Mail all_clear_mail(const json& snap) {
  auto ids = ids_of(snap.at("incidents"), nullptr);
  std::int64_t now = num(snap, "time_ns"), since = num(snap, "since_ns");
  Mail m;
  m.subject = "[Tocsin] All clear: no critical incident open (was " + ids_words(ids) + ")";
  m.text = "The major incident that began at " + human_time(since) + " is over after " +
           human_duration(now - since) + ": no critical incident is open since " +
           human_time(now) + ".\nIncidents it covered: " + ids_words(ids) +
           ".\nStatus mails stop until the next critical incident opens.\n";
  m.html = html_page(m.subject, "<p>" + html_escape(m.text) + "</p>\n");
  return m;
}

// RFC 2047 for a header holding non-ASCII text; CR/LF never reach a header.
std::string header_text(const std::string& s) {
  std::string clean = one_line(s, 900);
  if (std::all_of(clean.begin(), clean.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return clean;
  std::string b64(4 * ((clean.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()),
                          static_cast<int>(clean.size()));
  b64.resize(static_cast<std::size_t>(n));
  return "=?UTF-8?B?" + b64 + "?=";
}

std::string rfc5322_date(std::int64_t ns) {
  std::time_t t = static_cast<std::time_t>(ns / kNsPerSec);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

std::string pd_severity(const std::string& s) {
  if (s == "critical") return "critical";
  if (s == "high") return "error";
  if (s == "medium") return "warning";
  return "info";
}

int thehive_severity(const std::string& s) {
  if (s == "critical") return 4;
  if (s == "high") return 3;
  if (s == "medium") return 2;
  return 1;
}

json slack_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::string head = event_title(str(ev, "notify"), str(ev, "what")) + " " + incident_headline(inc);
  json fields = json::array();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) {
    if (fields.size() == 10) break;  // Slack's limit per section
    fields.push_back({{"type", "mrkdwn"}, {"text", "*" + k + "*\n" + slack_escape(one_line(v, 1900))}});
  }
  std::string text = slack_escape(head);
  std::string link = incident_link(cfg, num(inc, "id"));
  json blocks = json::array({
      {{"type", "header"}, {"text", {{"type", "plain_text"}, {"text", one_line(head, 150)}}}},
      {{"type", "section"},
       {"text", {{"type", "mrkdwn"},
                 {"text", slack_escape(one_line(str(ev, "what") + " by " + str(ev, "actor") +
                                                (str(ev, "detail").empty() ? "" : ": " + str(ev, "detail")),
                                                2900))}}},
       {"fields", fields}},
  });
  if (!link.empty())
    blocks.push_back({{"type", "context"},
                      {"elements", json::array({{{"type", "mrkdwn"}, {"text", "<" + link + "|Open in Tocsin>"}}})}});
  return {{"text", text}, {"blocks", blocks}};
}

json teams_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  json fact_set = json::array();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) fact_set.push_back({{"title", k}, {"value", v}});
  std::string sev = str(inc, "severity");
  json card = {
      {"$schema", "http://adaptivecards.io/schemas/adaptive-card.json"},
      {"type", "AdaptiveCard"},
      {"version", "1.4"},
      {"body", json::array({
                   {{"type", "TextBlock"}, {"size", "Large"}, {"weight", "Bolder"}, {"wrap", true},
                    {"color", sev == "critical" || sev == "high" ? "Attention" : "Warning"},
                    {"text", event_title(str(ev, "notify"), str(ev, "what")) + " " + incident_headline(inc)}},
                   {{"type", "TextBlock"}, {"wrap", true},
                    {"text", str(ev, "what") + " by " + str(ev, "actor") + " at " + human_time(num(ev, "time_ns")) +
                                 (str(ev, "detail").empty() ? "" : ": " + one_line(str(ev, "detail"), 1000))}},
                   {{"type", "FactSet"}, {"facts", fact_set}},
               })},
  };
  std::string link = incident_link(cfg, num(inc, "id"));
  if (!link.empty())
    card["actions"] = json::array({{{"type", "Action.OpenUrl"}, {"title", "Open in Tocsin"}, {"url", link}}});
  return {{"type", "message"},
          {"attachments", json::array({{{"contentType", "application/vnd.microsoft.card.adaptive"},
                                        {"contentUrl", nullptr},
                                        {"content", card}}})}};
}

json pagerduty_body(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  const json& ev = snap.at("event");
  std::uint64_t id = static_cast<std::uint64_t>(num(inc, "id"));
  std::string notify = str(ev, "notify");
  std::string action = notify == "resolved" ? "resolve" : notify == "acknowledged" ? "acknowledge" : "trigger";
  json body = {{"routing_key", ch.routing_key},
               {"event_action", action},
               {"dedup_key", pagerduty_dedup_key(cfg, id)}};
  if (action != "trigger") return body;
  json details = json::object();
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) details[k] = v;
  details["event"] = str(ev, "what") + (str(ev, "detail").empty() ? "" : ": " + str(ev, "detail"));
  body["payload"] = {{"summary", one_line(incident_headline(inc), 1024)},
                     {"source", str(inc, "agent_id").empty() ? cfg.collector_name : str(inc, "agent_id")},
                     {"severity", pd_severity(str(inc, "severity"))},
                     {"timestamp", common::format_time(num(ev, "time_ns"))},
                     {"component", str(inc, "test_id")},
                     {"group", cfg.collector_name},
                     {"class", str(inc, "kind")},
                     {"custom_details", details}};
  body["client"] = "Tocsin";
  std::string link = incident_link(cfg, id);
  if (!link.empty()) {
    body["client_url"] = link;
    body["links"] = json::array({{{"href", link}, {"text", "Incident #" + std::to_string(id)}}});
  }
  return body;
}

json thehive_body(const json& snap, const NotifyConfig& cfg) {
  const json& inc = snap.at("incident");
  std::uint64_t id = static_cast<std::uint64_t>(num(inc, "id"));
  std::int64_t reopen = num(inc, "reopen_count");
  std::string description;
  for (const auto& [k, v] : facts(inc, num(snap, "time_ns"))) description += "**" + k + "**: " + v + "\n\n";
  json tags = json::array({"tocsin", "kind:" + str(inc, "kind")});
  if (!str(inc, "test_id").empty()) tags.push_back("test:" + str(inc, "test_id"));
  if (!str(inc, "agent_id").empty()) tags.push_back("agent:" + str(inc, "agent_id"));
  json body = {{"type", "tocsin-incident"},
               {"source", "Tocsin:" + cfg.collector_name},
               // TheHive keeps (type, source, sourceRef) unique: a reopened incident is a new alert.
               {"sourceRef", reopen ? std::to_string(id) + "-reopen-" + std::to_string(reopen) : std::to_string(id)},
               {"title", one_line(incident_headline(inc), 512)},
               {"description", description},
               {"severity", thehive_severity(str(inc, "severity"))},
               {"date", num(inc, "opened_ns") / kNsPerMs},
               {"tags", tags},
               {"tlp", 2},
               {"pap", 2}};
  std::string link = incident_link(cfg, id);
  if (!link.empty()) body["externalLink"] = link;
  return body;
}

}  // namespace

// ---- names -------------------------------------------------------------------------------

std::string channel_type_name(ChannelType t) {
  switch (t) {
    case ChannelType::email: return "email";
    case ChannelType::slack: return "slack";
    case ChannelType::teams: return "teams";
    case ChannelType::pagerduty: return "pagerduty";
    case ChannelType::webhook: return "webhook";
    case ChannelType::thehive: return "thehive";
  }
  return "?";
}

std::string notify_event_name(NotifyEvent e) {
  switch (e) {
    case NotifyEvent::opened: return "opened";
    case NotifyEvent::acknowledged: return "acknowledged";
    case NotifyEvent::breached: return "breached";
    case NotifyEvent::resolved: return "resolved";
    case NotifyEvent::updated: return "updated";
    case NotifyEvent::escalated: return "escalated";
    case NotifyEvent::approval: return "approval";
  }
  return "?";
}

std::optional<NotifyEvent> notify_event_of(const std::string& w) {
  if (w == "opened" || w == "reopened") return NotifyEvent::opened;
  if (w == "acknowledged") return NotifyEvent::acknowledged;
  if (w == "sla_breached") return NotifyEvent::breached;
  if (w == "resolved" || w == "auto_resolved" || w == "closed" || w == "auto_closed")
    return NotifyEvent::resolved;
  if (w == "noted" || w == "assigned" || w == "occurrence" || w == "paused" || w == "resumed")
    return NotifyEvent::updated;
  if (w == "escalated") return NotifyEvent::escalated;
  return std::nullopt;
}

std::string delivery_state_name(DeliveryState s) {
  switch (s) {
    case DeliveryState::pending: return "pending";
    case DeliveryState::sent: return "sent";
    case DeliveryState::failed: return "failed";
  }
  return "?";
}

std::optional<DeliveryState> parse_delivery_state(const std::string& s) {
  for (auto st : {DeliveryState::pending, DeliveryState::sent, DeliveryState::failed})
    if (delivery_state_name(st) == s) return st;
  return std::nullopt;
}

milliseconds RetryPolicy::delay(std::uint32_t attempts, milliseconds retry_after) const {
  unsigned shift = std::min<std::uint32_t>(attempts == 0 ? 0 : attempts - 1, 30);
  double d = std::min<double>(static_cast<double>(initial.count()) * std::ldexp(1.0, static_cast<int>(shift)),
                              static_cast<double>(max.count()));
  return std::max(milliseconds(static_cast<std::int64_t>(d)), retry_after);
}

const ChannelConfig* NotifyConfig::channel(const std::string& name) const {
  for (const auto& c : channels)
    if (c.name == name) return &c;
  return nullptr;
}

NotifyConfig NotifyConfig::load(const common::ConfigNode& node, const std::filesystem::path& base_dir) {
  NotifyConfig c;
  if (!node.defined()) return c;
  node.check_keys({"channels", "retry", "status_mail", "approvals", "collector_name", "link_base", "keep"});
  c.keep = node.duration("keep", c.keep);
  if (c.keep < 1h) node.fail("keep", "must be at least 1h");
  c.collector_name = node.str("collector_name", c.collector_name);
  static const std::regex name_re("^[A-Za-z0-9_.-]{1,64}$");
  if (!std::regex_match(c.collector_name, name_re))
    node.fail("collector_name", "must be 1-64 letters, digits, '_', '.' or '-'");
  c.link_base = node.str("link_base", "");
  while (!c.link_base.empty() && c.link_base.back() == '/') c.link_base.pop_back();
  if (!c.link_base.empty() && !starts_with(c.link_base, "https://") && !starts_with(c.link_base, "http://"))
    node.fail("link_base", "must start with https://");
  if (node.has("channels"))
    for (const auto& item : node["channels"].items()) {
      auto ch = load_channel(item, base_dir);
      if (c.channel(ch.name)) item.fail("name", "channel '" + ch.name + "' is defined twice");
      c.channels.push_back(std::move(ch));
    }
  auto r = node["retry"];
  r.check_keys({"initial", "max", "give_up_after"});
  c.retry.initial = r.duration("initial", c.retry.initial);
  c.retry.max = r.duration("max", c.retry.max);
  c.retry.give_up_after = r.duration("give_up_after", c.retry.give_up_after);
  if (c.retry.initial <= 0ms) r.fail("initial", "must be positive");
  if (c.retry.max < c.retry.initial) r.fail("max", "must not be below initial");
  if (c.retry.give_up_after < c.retry.initial) r.fail("give_up_after", "must not be below initial");
  // `channel:` of a section that sends mail: an email channel defined above.
  auto email_channel = [&](const common::ConfigNode& n) {
    auto name = n.str("channel");
    const ChannelConfig* ch = c.channel(name);
    if (!ch) n.fail("channel", "no channel named '" + name + "' under notify.channels");
    if (ch->type != ChannelType::email) n.fail("channel", "'" + name + "' is not an email channel");
    return name;
  };
  auto s = node["status_mail"];
  if (s.defined()) {
    s.check_keys({"channel", "every", "to"});
    StatusMailConfig st;
    st.channel = email_channel(s);
    st.every = s.duration("every", st.every);
    if (st.every < 1s) s.fail("every", "must be at least 1s");
    st.to = s.str_list("to");
    for (const auto& a : st.to)
      if (!valid_address(a)) s.fail("to", "'" + a + "' is not a mail address");
    c.status = std::move(st);
  }
  auto ap = node["approvals"];
  if (ap.defined()) {
    ap.check_keys({"channel", "approvers", "link_ttl"});
    ApprovalMailConfig a;
    a.channel = email_channel(ap);
    a.link_ttl = ap.duration("link_ttl", a.link_ttl);
    if (a.link_ttl < 0ms) ap.fail("link_ttl", "must not be negative");
    if (!ap.has("approvers")) ap.fail("approvers", "is required: who gets approval mails");
    for (const auto& item : ap["approvers"].items()) {
      item.check_keys({"name", "email"});
      Approver who{item.str("name"), item.str("email")};
      if (who.name.empty() || who.name.size() > 64) item.fail("name", "must be 1-64 characters");
      if (who.name == "watchdog" || who.name == "system")
        item.fail("name", "'" + who.name + "' is reserved for the collector itself");
      if (!valid_address(who.email)) item.fail("email", "'" + who.email + "' is not a mail address");
      for (const auto& other : a.approvers)
        if (other.name == who.name) item.fail("name", "approver '" + who.name + "' is listed twice");
      a.approvers.push_back(std::move(who));
    }
    if (a.approvers.empty()) ap.fail("approvers", "needs at least one approver");
    if (c.link_base.empty())
      ap.fail("channel", "approval mails need notify.link_base (the collector's API address the "
                         "links point to)");
    c.approvals = std::move(a);
  }
  return c;
}

// ---- records -----------------------------------------------------------------------------

std::string encode_delivery(const Delivery& d) {
  return dump({{"v", kDeliveryFormat},
               {"id", d.id},
               {"channel", d.channel},
               {"kind", d.kind},
               {"event_seq", d.event_seq},
               {"incident_id", d.incident_id},
               {"event", d.event},
               {"state", delivery_state_name(d.state)},
               {"attempts", d.attempts},
               {"created_ns", d.created_ns},
               {"next_attempt_ns", d.next_attempt_ns},
               {"sent_ns", d.sent_ns},
               {"last_error", d.last_error},
               {"snapshot", d.snapshot}});
}

Delivery decode_delivery(const std::string& s) {
  json j = json::parse(s, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != kDeliveryFormat)
    throw StoreError("corrupt or unknown notification record");
  try {
    Delivery d;
    d.id = j.at("id").get<std::uint64_t>();
    d.channel = j.at("channel").get<std::string>();
    d.kind = j.at("kind").get<std::string>();
    d.event_seq = j.value("event_seq", std::uint64_t{0});
    d.incident_id = j.value("incident_id", std::uint64_t{0});
    d.event = j.value("event", "");
    auto st = parse_delivery_state(j.value("state", ""));
    if (!st) throw StoreError("notification record with unknown state");
    d.state = *st;
    d.attempts = j.value("attempts", std::uint32_t{0});
    d.created_ns = j.value("created_ns", std::int64_t{0});
    d.next_attempt_ns = j.value("next_attempt_ns", std::int64_t{0});
    d.sent_ns = j.value("sent_ns", std::int64_t{0});
    d.last_error = j.value("last_error", "");
    d.snapshot = j.value("snapshot", json::object());
    return d;
  } catch (const json::exception& e) {
    throw StoreError(std::string("corrupt notification record: ") + e.what());
  }
}

json delivery_json(const Delivery& d, bool with_snapshot) {
  json j = json::parse(encode_delivery(d));
  j.erase("v");
  if (!with_snapshot) j.erase("snapshot");
  j["created"] = common::format_time(d.created_ns);
  j["sent"] = d.sent_ns ? json(common::format_time(d.sent_ns)) : json(nullptr);
  j["next_attempt"] = d.state == DeliveryState::pending ? json(common::format_time(d.next_attempt_ns)) : json(nullptr);
  return j;
}

json incident_snapshot(const IncidentEvent& e, const Incident& i, std::int64_t now_ns) {
  auto ev = notify_event_of(e.what);
  return {{"kind", "incident"},
          {"time_ns", now_ns},
          {"event", {{"seq", e.seq}, {"time_ns", e.time_ns}, {"what", e.what},
                     {"notify", ev ? notify_event_name(*ev) : ""}, {"severity", severity_name(e.severity)},
                     {"actor", e.actor}, {"detail", e.detail}}},
          {"incident", incident_summary(i, now_ns)}};
}

json status_snapshot(std::uint64_t number, const std::vector<Incident>& open, std::int64_t since_ns,
                     std::int64_t now_ns) {
  json list = json::array();
  for (const auto& i : open) list.push_back(incident_summary(i, now_ns));
  return {{"kind", "status"}, {"number", number}, {"since_ns", since_ns}, {"time_ns", now_ns},
          {"incidents", list}};
}

json all_clear_snapshot(const std::vector<std::uint64_t>& last_ids, std::int64_t since_ns,
                        std::int64_t now_ns) {
  return {{"kind", "all_clear"}, {"since_ns", since_ns}, {"time_ns", now_ns}, {"incidents", last_ids}};
}

json approval_snapshot(const CommandRecord& c, std::size_t approvals_required, std::int64_t now_ns) {
  json cmd = command_json(c);
  cmd["approvals_required"] = approvals_required;
  return {{"kind", "approval"}, {"time_ns", now_ns}, {"command", std::move(cmd)}};
}

namespace {

// "restart nginx.service on agent web-01"
std::string action_words(const json& cmd) {
  std::string verb = str(cmd, "kind") == "restart_service" ? "restart" : str(cmd, "kind");
  return verb + " " + str(cmd, "target") + " on agent " + str(cmd, "agent_id");
}

std::vector<std::pair<std::string, std::string>> approval_facts(const json& cmd) {
  std::vector<std::pair<std::string, std::string>> f{
      {"What will happen", "The agent " + str(cmd, "agent_id") + " will " +
                               (str(cmd, "kind") == "restart_service" ? "restart the service " : str(cmd, "kind") + " ") +
                               str(cmd, "target") + ", if its own allowlist permits it"},
      {"Requested by", str(cmd, "requester") + " at " + human_time(num(cmd, "requested_ns"))},
      {"Reason", one_line(str(cmd, "reason"), 1000)},
      {"Approvals", std::to_string(cmd.value("approvals", json::array()).size()) + " of " +
                        std::to_string(num(cmd, "approvals_required"))},
      {"Decide before", human_time(num(cmd, "request_expires_ns"))}};
  if (num(cmd, "incident_id")) f.push_back({"Incident", "#" + std::to_string(num(cmd, "incident_id"))});
  if (!str(cmd, "recheck_test").empty())
    f.push_back({"Then", "re-run " + str(cmd, "recheck_test") + " after " +
                             human_duration(num(cmd, "recheck_after_ns"))});
  return f;
}

std::string approval_headline(const json& cmd) {
  return "Approval needed: " + action_words(cmd) + " (" + str(cmd, "command_id") + ")";
}

Mail approval_mail(const json& snap) {
  const json& cmd = snap.at("command");
  std::string id = std::to_string(num(cmd, "id"));
  Mail m;
  m.subject = "[Tocsin] " + approval_headline(cmd);
  auto f = approval_facts(cmd);
  std::string link = str(snap, "link");
  std::string who = str(snap, "approver");
  std::string how = "With the CLI: tocsin approve " + id + "   or   tocsin deny " + id + " \"why\"";
  m.text = approval_headline(cmd) + "\n\n" + text_block(f, "");
  std::string html = "<h2>" + html_escape(approval_headline(cmd)) + "</h2>\n" + html_table(f);
  if (!link.empty()) {
    std::string words = "This link is for " + who +
                        " alone and works once. Opening it shows the request and changes nothing; "
                        "you approve or deny on that page.";
    m.text += "\nReview and decide: " + link + "\n" + words + "\n";
    html += "<p><a href=\"" + html_escape(link) + "\">Review and decide</a></p>\n<p>" +
            html_escape(words) + "</p>\n";
  }
  m.text += "\n" + how + "\n";
  html += "<p>" + html_escape(how) + "</p>\n";
  m.html = html_page(m.subject, html);
  return m;
}

json approval_slack_body(const json& snap) {
  const json& cmd = snap.at("command");
  std::string text = approval_headline(cmd) + ". Requested by " + str(cmd, "requester") + ": " +
                     one_line(str(cmd, "reason"), 500) + ". Approve with `tocsin approve " +
                     std::to_string(num(cmd, "id")) + "` (approvers also get a personal link by mail).";
  return {{"text", slack_escape(text)}};
}

json approval_teams_body(const json& snap) {
  const json& cmd = snap.at("command");
  json facts = json::array();
  for (const auto& [k, v] : approval_facts(cmd)) facts.push_back({{"title", k}, {"value", v}});
  json card = {{"$schema", "http://adaptivecards.io/schemas/adaptive-card.json"},
               {"type", "AdaptiveCard"},
               {"version", "1.4"},
               {"body", json::array({{{"type", "TextBlock"}, {"size", "Large"}, {"weight", "Bolder"},
                                      {"wrap", true}, {"text", approval_headline(cmd)}},
                                     {{"type", "FactSet"}, {"facts", facts}},
                                     {{"type", "TextBlock"}, {"wrap", true},
                                      {"text", "Approve with: tocsin approve " +
                                                   std::to_string(num(cmd, "id"))}}})}};
  return {{"type", "message"},
          {"attachments", json::array({{{"contentType", "application/vnd.microsoft.card.adaptive"},
                                        {"contentUrl", nullptr},
                                        {"content", card}}})}};
}

}  // namespace

Mail render_mail(const json& snapshot, const NotifyConfig& cfg) {
  std::string kind = str(snapshot, "kind");
  if (kind == "status") return status_mail(snapshot);
  if (kind == "all_clear") return all_clear_mail(snapshot);
  if (kind == "approval") return approval_mail(snapshot);
  return incident_mail(snapshot, cfg);
}

std::string webhook_signature(const std::string& secret, std::int64_t timestamp_s, const std::string& body) {
  std::string msg = std::to_string(timestamp_s) + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len))
    throw std::runtime_error("HMAC-SHA256 failed");
  return "sha256=" + common::to_hex({mac, len});
}

std::string pagerduty_dedup_key(const NotifyConfig& cfg, std::uint64_t incident_id) {
  return "tocsin-" + cfg.collector_name + "-" + std::to_string(incident_id);
}

HttpMessage render_http(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg,
                        std::int64_t now_s) {
  const std::string kind = str(snap, "kind");
  const bool approval = kind == "approval";
  if (kind != "incident" && !(approval && (ch.type == ChannelType::slack || ch.type == ChannelType::teams ||
                                           ch.type == ChannelType::webhook)))
    throw std::invalid_argument("a " + kind + " notification cannot go to " + channel_type_name(ch.type));
  HttpMessage m;
  m.url = ch.url;
  m.headers.push_back("Content-Type: application/json");
  if (approval && ch.type == ChannelType::slack) {
    m.body = dump(approval_slack_body(snap));
    return m;
  }
  if (approval && ch.type == ChannelType::teams) {
    m.body = dump(approval_teams_body(snap));
    return m;
  }
  switch (ch.type) {
    case ChannelType::slack: m.body = dump(slack_body(snap, cfg)); break;
    case ChannelType::teams: m.body = dump(teams_body(snap, cfg)); break;
    case ChannelType::pagerduty: m.body = dump(pagerduty_body(ch, snap, cfg)); break;
    case ChannelType::thehive:
      m.url += "/api/v1/alert";
      m.headers.push_back("Authorization: Bearer " + ch.api_key);
      m.body = dump(thehive_body(snap, cfg));
      break;
    case ChannelType::webhook: {
      json body = snap;
      body["source"] = "tocsin";
      body["collector"] = cfg.collector_name;
      m.body = dump(body);
      m.headers.push_back("X-Tocsin-Timestamp: " + std::to_string(now_s));
      m.headers.push_back("X-Tocsin-Signature: " + webhook_signature(ch.secret, now_s, m.body));
      if (snap.contains("delivery_id"))
        m.headers.push_back("X-Tocsin-Delivery: " + std::to_string(num(snap, "delivery_id")));
      break;
    }
    case ChannelType::email: throw std::invalid_argument("email is not an HTTP channel");
  }
  return m;
}

// ---- sending -----------------------------------------------------------------------------

namespace {

struct MimeDeleter {
  void operator()(curl_mime* m) const { curl_mime_free(m); }
};
using MimePtr = std::unique_ptr<curl_mime, MimeDeleter>;

void mime_ok(CURLcode rc) {
  if (rc != CURLE_OK) throw Notifier::SendError(std::string("cannot build the mail: ") + curl_easy_strerror(rc));
}

curl_mimepart* text_part(curl_mime* m, const std::string& data, const char* type) {
  curl_mimepart* p = curl_mime_addpart(m);
  if (!p) throw std::bad_alloc();
  mime_ok(curl_mime_data(p, data.data(), data.size()));
  mime_ok(curl_mime_type(p, type));
  mime_ok(curl_mime_encoder(p, "quoted-printable"));
  return p;
}

int abort_on_stop(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::atomic<bool>*>(user)->load() ? 1 : 0;
}

std::string ehlo_name() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0 || !host[0]) return "tocsin.localdomain";
  return host;
}

void send_mail(const ChannelConfig& ch, const std::vector<std::string>& to, const Mail& m,
               const std::string& message_id, std::int64_t now_ns, const std::atomic<bool>& stopping) {
  curl::global_init();
  char errbuf[CURL_ERROR_SIZE] = {0};  // before the handle: libcurl may use it until cleanup
  curl::EasyPtr easy(curl_easy_init());
  if (!easy) throw std::runtime_error("cannot create a libcurl handle");
  CURL* c = easy.get();
  // The URL's path is the name we greet the server with (EHLO); without one libcurl would
  // invent it.
  std::string url = ch.url;
  if (url.find('/', url.find("://") + 3) == std::string::npos) url += "/" + ehlo_name();
  curl::set(c, CURLOPT_URL, url.c_str());
  curl::set(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
  curl::set(c, CURLOPT_ERRORBUFFER, errbuf);
  curl::set(c, CURLOPT_NOSIGNAL, 1L);
  curl::set(c, CURLOPT_TIMEOUT_MS, static_cast<long>(ch.timeout.count()));
  curl::set(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(ch.timeout.count()));
  curl::set(c, CURLOPT_USE_SSL, static_cast<long>(ch.smtp_tls == SmtpTls::required ? CURLUSESSL_ALL
                                                  : ch.smtp_tls == SmtpTls::optional ? CURLUSESSL_TRY
                                                                                      : CURLUSESSL_NONE));
  if (!ch.ca_file.empty()) curl::set(c, CURLOPT_CAINFO, ch.ca_file.c_str());
  curl::set(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl::set(c, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!ch.username.empty()) {
    curl::set(c, CURLOPT_USERNAME, ch.username.c_str());
    curl::set(c, CURLOPT_PASSWORD, ch.password.c_str());
  }
  std::string from = "<" + ch.from + ">";
  curl::set(c, CURLOPT_MAIL_FROM, from.c_str());
  curl::SlistPtr rcpt;
  std::string to_header;
  for (const auto& a : to) {
    curl::append(rcpt, "<" + a + ">");
    to_header += (to_header.empty() ? "" : ", ") + a;
  }
  curl::set(c, CURLOPT_MAIL_RCPT, rcpt.get());
  curl::SlistPtr headers;
  curl::append(headers, "Date: " + rfc5322_date(now_ns));
  curl::append(headers, "From: Tocsin <" + ch.from + ">");
  curl::append(headers, "To: " + to_header);
  curl::append(headers, "Subject: " + header_text(m.subject));
  curl::append(headers, "Message-ID: " + message_id);
  curl::append(headers, "Auto-Submitted: auto-generated");
  curl::set(c, CURLOPT_HTTPHEADER, headers.get());

  MimePtr top(curl_mime_init(c));
  MimePtr alt(curl_mime_init(c));
  if (!top || !alt) throw std::bad_alloc();
  text_part(alt.get(), m.text, "text/plain; charset=utf-8");
  text_part(alt.get(), m.html, "text/html; charset=utf-8");
  curl_mimepart* body = curl_mime_addpart(top.get());
  if (!body) throw std::bad_alloc();
  mime_ok(curl_mime_subparts(body, alt.get()));
  (void)alt.release();  // owned by `top` now
  mime_ok(curl_mime_type(body, "multipart/alternative"));
  curl::SlistPtr inline_hdr;
  curl::append(inline_hdr, "Content-Disposition: inline");
  mime_ok(curl_mime_headers(body, inline_hdr.release(), 1));
  for (const auto& a : m.attachments) {
    curl_mimepart* p = curl_mime_addpart(top.get());
    if (!p) throw std::bad_alloc();
    mime_ok(curl_mime_data(p, a.data.data(), a.data.size()));
    mime_ok(curl_mime_type(p, a.content_type.c_str()));
    mime_ok(curl_mime_filename(p, a.filename.c_str()));
    mime_ok(curl_mime_encoder(p, "base64"));
  }
  curl::set(c, CURLOPT_MIMEPOST, top.get());
  curl::set(c, CURLOPT_NOPROGRESS, 0L);
  curl::set(c, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
  curl::set(c, CURLOPT_XFERINFODATA, &stopping);
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK)
    throw Notifier::SendError("mail to " + curl::url_origin(ch.url) + " failed: " +
                              (errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc)));
}

}  // namespace

// ---- the notifier ------------------------------------------------------------------------

struct Notifier::Impl {
  struct StatusState {
    bool active = false;
    std::int64_t since_ns = 0, last_ns = 0;
    std::uint64_t number = 0;
    std::vector<std::uint64_t> ids;  // every critical incident of this major incident
  };
  struct Channel {
    const ChannelConfig* cfg;
    std::unique_ptr<curl::HttpClient> http;  // HTTP channels
    std::thread thread;
  };

  Impl(Store& s, IncidentEngine& e, NotifyConfig c, Clock n, milliseconds p)
      : store(s), engine(e), cfg(std::move(c)), now(n ? std::move(n) : Clock(common::now_ns)), period(p) {
    for (const auto& ch : cfg.channels) {
      Channel x{&ch, nullptr, {}};
      if (ch.type != ChannelType::email)
        x.http = std::make_unique<curl::HttpClient>(
            curl::HttpClient::Options{ch.ca_file, ch.timeout, 1 << 20, &stopping});
      channels.emplace(ch.name, std::move(x));
    }
    load_state();
  }

  Store& store;
  IncidentEngine& engine;
  NotifyConfig cfg;
  Clock now;
  milliseconds period;
  std::atomic<bool> stopping{false};
  std::mutex poll_mu;  // one dispatcher round at a time
  std::mutex wake_mu;
  std::condition_variable wake;
  bool stop_requested = false;
  std::uint64_t wake_gen = 0;
  std::thread dispatcher;
  std::map<std::string, Channel> channels;
  std::atomic<std::uint64_t> next_id{1};
  std::uint64_t cursor = 1;
  StatusState status;
  CommandEngine* commands = nullptr;  // approval requests (with audit)
  const AuditLog* audit = nullptr;
  std::uint64_t audit_cursor = 1;  // the next audit entry to look at

  static constexpr const char* kCursorKey = "cursor";
  static constexpr const char* kStatusKey = "status";
  static constexpr const char* kApprovalsKey = "approvals_cursor";

  void set_commands(CommandEngine* c, const AuditLog* a) {
    commands = c;
    audit = a;
    if (!commands || !audit) return;
    if (auto v = store.get(Table::notify_state, kApprovalsKey); v && v->size() == 8) {
      audit_cursor = get_be64(v->data());
    } else {  // first start: requests made before approvals were notified are not announced
      audit_cursor = audit->head_seq() + 1;
      WriteSet ws;
      ws.put(Table::notify_state, kApprovalsKey, id_key(audit_cursor));
      store.commit(std::move(ws));
    }
  }

  // Approval requests: the audit log's command_requested entries, in order.
  std::size_t approvals_round() {
    if (!commands || !audit) return 0;
    bool wanted = cfg.approvals.has_value();
    for (const auto& ch : cfg.channels) wanted = wanted || ch.events.count(NotifyEvent::approval);
    std::size_t created = 0;
    for (;;) {
      auto entries = audit->list(audit_cursor, 0, kEventPage);
      if (entries.empty()) break;
      WriteSet ws;
      std::uint64_t id = next_id, c = audit_cursor;
      std::int64_t t = now();
      for (const auto& e : entries) {
        c = e.seq + 1;
        if (!wanted || e.action != "command_requested" || e.subject.rfind("cmd-", 0) != 0) continue;
        std::optional<CommandRecord> cmd;
        try {
          cmd = commands->get(std::stoull(e.subject.substr(4)));
        } catch (const std::exception&) {
        }
        if (!cmd || cmd->state != CommandState::awaiting_approval) continue;  // decided already
        json snap = approval_snapshot(*cmd, commands->policy().approvals_required, t);
        auto add = [&](const std::string& channel, const std::string& approver, const std::string& email) {
          Delivery d = make(channel, "approval", t, id++);
          d.event = "approval";
          d.snapshot = snap;
          d.snapshot["delivery_id"] = d.id;
          if (!approver.empty()) {
            d.snapshot["approver"] = approver;
            d.snapshot["to"] = json::array({email});
          }
          put(ws, d);
        };
        if (cfg.approvals)
          for (const auto& a : cfg.approvals->approvers)
            if (a.name != cmd->requester) add(cfg.approvals->channel, a.name, a.email);
        for (const auto& ch : cfg.channels)
          if (ch.events.count(NotifyEvent::approval)) add(ch.name, "", "");
      }
      ws.put(Table::notify_state, kApprovalsKey, id_key(c));
      store.commit(std::move(ws));
      created += id - next_id;
      next_id = id;
      audit_cursor = c;
    }
    return created;
  }

  void load_state() {
    if (auto last = store.last_key(Table::notifications); last && last->size() == 8)
      next_id = get_be64(last->data()) + 1;
    if (auto v = store.get(Table::notify_state, kCursorKey); v && v->size() == 8) {
      cursor = get_be64(v->data());
    } else {
      // First start: what happened before notifications were configured is not announced.
      auto last = store.last_key(Table::incident_events);
      cursor = last && last->size() == 8 ? get_be64(last->data()) + 1 : 1;
      WriteSet ws;
      ws.put(Table::notify_state, kCursorKey, id_key(cursor));
      store.commit(std::move(ws));
    }
    if (auto v = store.get(Table::notify_state, kStatusKey)) {
      json j = json::parse(*v, nullptr, false);
      if (j.is_object()) {
        status.active = j.value("active", false);
        status.since_ns = j.value("since_ns", std::int64_t{0});
        status.last_ns = j.value("last_ns", std::int64_t{0});
        status.number = j.value("number", std::uint64_t{0});
        status.ids = j.value("ids", std::vector<std::uint64_t>{});
      }
    }
  }

  static std::string encode_status(const StatusState& s) {
    return dump({{"active", s.active}, {"since_ns", s.since_ns}, {"last_ns", s.last_ns},
                 {"number", s.number}, {"ids", s.ids}});
  }

  Delivery make(const std::string& channel, const std::string& kind, std::int64_t t, std::uint64_t id) {
    Delivery d;
    d.id = id;
    d.channel = channel;
    d.kind = kind;
    d.created_ns = t;
    d.next_attempt_ns = t;
    return d;
  }

  static void put(WriteSet& ws, const Delivery& d) {
    ws.put(Table::notifications, id_key(d.id), encode_delivery(d));
    if (d.state == DeliveryState::pending) ws.put(Table::notify_pending, pending_key(d.channel, d.id), "");
    else ws.erase(Table::notify_pending, pending_key(d.channel, d.id));
  }

  std::size_t poll_once() {
    std::lock_guard lock(poll_mu);
    std::size_t created = 0;
    for (;;) {
      auto events = list_incident_events(store, cursor, kEventPage);
      if (events.empty()) break;
      WriteSet ws;
      std::uint64_t id = next_id, c = cursor;
      std::int64_t t = now();
      for (const auto& e : events) {
        c = e.seq + 1;
        auto ev = notify_event_of(e.what);
        if (!ev) continue;
        std::optional<Incident> inc;
        for (const auto& ch : cfg.channels) {
          if (!ch.routes(e.severity, *ev)) continue;
          if (!inc && !(inc = engine.get(e.incident_id))) break;
          Delivery d = make(ch.name, "incident", t, id++);
          d.event_seq = e.seq;
          d.incident_id = e.incident_id;
          d.event = notify_event_name(*ev);
          d.snapshot = incident_snapshot(e, *inc, t);
          d.snapshot["delivery_id"] = d.id;
          put(ws, d);
        }
      }
      ws.put(Table::notify_state, kCursorKey, id_key(c));
      store.commit(std::move(ws));
      created += id - next_id;
      next_id = id;
      cursor = c;
    }
    created += approvals_round();
    created += status_round();
    if (now() - last_prune_ns >= 3600 * kNsPerSec) {
      last_prune_ns = now();
      prune_once();
    }
    if (created) poke();
    return created;
  }

  std::vector<Incident> open_criticals() {
    std::vector<Incident> out;
    for (auto st : {IncidentState::open, IncidentState::acknowledged})
      for (auto& i : engine.list({st, Severity::critical}, 10000)) out.push_back(std::move(i));
    std::sort(out.begin(), out.end(), [](const Incident& a, const Incident& b) { return a.id < b.id; });
    return out;
  }

  std::int64_t last_prune_ns = 0;

  std::size_t prune_once() {
    const std::int64_t cutoff = now() - cfg.keep.count() * kNsPerMs;
    std::size_t removed = 0;
    for (;;) {
      WriteSet ws;
      std::size_t batch = 0;
      bool done = false;
      store.scan(Table::notifications, "", [&](std::string_view k, std::string_view v) {
        Delivery d;
        try {
          d = decode_delivery(std::string(v));
        } catch (const StoreError&) {
          ws.erase(Table::notifications, std::string(k));  // unreadable and old enough to go
          return ++batch < 500;
        }
        if (d.created_ns >= cutoff || d.state == DeliveryState::pending) {
          done = true;  // ids grow with time: everything after is as new or newer
          return false;
        }
        ws.erase(Table::notifications, std::string(k));
        return ++batch < 500;
      });
      if (batch == 0) break;
      store.commit(std::move(ws));
      removed += batch;
      if (done) break;
    }
    if (removed) spdlog::info("notify: deleted {} delivery record(s) older than {}", removed,
                              common::format_duration(std::chrono::duration_cast<milliseconds>(cfg.keep)));
    return removed;
  }

  std::size_t status_round() {
    if (!cfg.status) return 0;
    auto open = open_criticals();
    std::int64_t t = now();
    std::int64_t every = cfg.status->every.count() * kNsPerMs;
    StatusState next = status;
    std::optional<json> snap;
    if (!open.empty()) {
      for (const auto& i : open)
        if (std::find(next.ids.begin(), next.ids.end(), i.id) == next.ids.end()) next.ids.push_back(i.id);
      if (!next.active) {
        next = {true, t, t, 1, next.ids};
        snap = status_snapshot(1, open, t, t);
      } else if (t - next.last_ns >= every) {
        next.number += 1;
        // A fixed cadence; after a long stop, start counting again from now instead of bursting.
        next.last_ns = t - next.last_ns >= 2 * every ? t : next.last_ns + every;
        snap = status_snapshot(next.number, open, next.since_ns, t);
      }
    } else if (next.active) {
      snap = all_clear_snapshot(next.ids, next.since_ns, t);
      next = {};
    }
    if (!snap && next.ids == status.ids) return 0;
    WriteSet ws;
    std::uint64_t id = next_id;
    if (snap) {
      Delivery d = make(cfg.status->channel, (*snap)["kind"].get<std::string>(), t, id++);
      d.event = d.kind;
      d.snapshot = std::move(*snap);
      d.snapshot["delivery_id"] = d.id;
      put(ws, d);
    }
    ws.put(Table::notify_state, kStatusKey, encode_status(next));
    store.commit(std::move(ws));
    next_id = id;
    status = next;
    return snap ? 1 : 0;
  }

  void deliver(Channel& ch, const Delivery& d) {
    const ChannelConfig& c = *ch.cfg;
    if (c.type == ChannelType::email) {
      std::vector<std::string> to = c.to;
      json snap = d.snapshot;
      if ((d.kind == "status" || d.kind == "all_clear") && cfg.status && !cfg.status->to.empty())
        to = cfg.status->to;
      if (d.kind == "approval" && commands) {
        auto id = static_cast<std::uint64_t>(num(snap["command"], "id"));
        auto now_cmd = commands->get(id);
        if (!now_cmd || now_cmd->state != CommandState::awaiting_approval) {
          SendError obsolete("not sent: cmd-" + std::to_string(id) + " was decided before the mail went out (" +
                             (now_cmd ? command_state_name(now_cmd->state) : std::string("gone")) + ")");
          obsolete.permanent = true;
          throw obsolete;
        }
      }
      if (d.kind == "approval" && snap.contains("approver")) {
        to = snap.value("to", std::vector<std::string>{});
        // The link is minted now (the same one on every retry) and never stored.
        if (commands && !cfg.link_base.empty())
          snap["link"] = cfg.link_base + "/approve/" +
                         commands->approval_link(static_cast<std::uint64_t>(num(snap["command"], "id")),
                                                 str(snap, "approver"), "d" + std::to_string(d.id),
                                                 cfg.approvals ? cfg.approvals->link_ttl : 0ms);
      }
      send_mail(c, to, render_mail(snap, cfg),
                "<tocsin-" + std::to_string(d.id) + "." + std::to_string(d.created_ns) + "@" +
                    cfg.collector_name + ">",
                now(), stopping);
      return;
    }
    HttpMessage m = render_http(c, d.snapshot, cfg, now() / kNsPerSec);
    curl::HttpResponse r;
    try {
      r = ch.http->send({true, m.url, m.headers, m.body, "", ""});
    } catch (const curl::TransferError& e) {
      throw SendError(e.what());
    } catch (const curl::Aborted&) {
      throw SendError("stopped while sending");  // send_once sees `stopping` and leaves it pending
    }
    if (r.status >= 200 && r.status <= 299) return;
    std::string msg = "HTTP " + std::to_string(r.status) + " from " + c.name;
    if (!r.body.empty()) msg += ": " + curl::printable(r.body, 200);
    // TheHive keeps sourceRef unique: an answer saying the alert exists means an earlier attempt
    // got through and only its answer was lost.
    if (c.type == ChannelType::thehive && r.status == 400 && r.body.find("already exists") != std::string::npos)
      return;
    bool retryable = r.status >= 500 || r.status == 408 || r.status == 429 || r.status == 425;
    SendError err(msg + (retryable ? "" : " (rejected: not retried; check the channel's configuration)"),
                  r.status == 429 || r.status == 503 ? curl::parse_retry_after(r.retry_after, kMaxRetryAfter) : 0ms);
    err.permanent = !retryable;
    throw err;
  }

  std::size_t send_once(const std::string& name) {
    auto it = channels.find(name);
    if (it == channels.end()) throw std::invalid_argument("no channel named " + name);
    Channel& ch = it->second;
    std::vector<std::uint64_t> ids;
    const std::string prefix = name + '\0';
    store.scan(Table::notify_pending, prefix, [&](std::string_view k, std::string_view) {
      if (k.substr(0, prefix.size()) != prefix) return false;
      if (k.size() == prefix.size() + 8) ids.push_back(get_be64(k.data() + prefix.size()));
      return true;
    });
    std::size_t sent = 0;
    // Per incident, messages go out in the order they were made: while an earlier one waits
    // for its retry, later ones for the same incident wait too (a PagerDuty resolve must not
    // overtake its trigger).
    std::set<std::uint64_t> held;
    for (auto id : ids) {
      if (stopping) break;
      auto v = store.get(Table::notifications, id_key(id));
      if (!v) continue;
      Delivery d;
      try {
        d = decode_delivery(*v);
      } catch (const StoreError& e) {
        // One bad record must not block the channel: it is failed, with the reason.
        spdlog::error("notify: message {} on {} is unreadable, failing it: {}", id, name, e.what());
        WriteSet ws;
        ws.erase(Table::notify_pending, pending_key(name, id));
        store.commit(std::move(ws));
        continue;
      }
      if (d.state != DeliveryState::pending) continue;
      if (d.incident_id && held.count(d.incident_id)) continue;
      if (d.next_attempt_ns > now()) {
        if (d.incident_id) held.insert(d.incident_id);
        continue;
      }
      d.attempts += 1;
      try {
        deliver(ch, d);
        d.state = DeliveryState::sent;
        d.sent_ns = now();
        d.last_error.clear();
        ++sent;
        spdlog::info("notify: message {} ({}) sent to {} after {} attempt(s)", d.id, about(d), name,
                     d.attempts);
      } catch (const SendError& e) {
        if (stopping) break;  // an aborted transfer is not the receiver's failure
        failed(d, e.what(), e.retry_after, e.permanent);
      } catch (const std::exception& e) {
        failed(d, e.what(), 0ms, true);
      }
      if (d.state == DeliveryState::pending && d.incident_id) held.insert(d.incident_id);
      WriteSet ws;
      put(ws, d);
      store.commit(std::move(ws));
    }
    return sent;
  }

  static std::string about(const Delivery& d) {
    if (d.kind == "incident") return "incident #" + std::to_string(d.incident_id) + " " + d.event;
    if (d.kind == "approval")
      return "approval request cmd-" + std::to_string(num(d.snapshot.value("command", json::object()), "id")) +
             (d.snapshot.contains("approver") ? " for " + str(d.snapshot, "approver") : std::string());
    return d.kind == "status" ? "status mail " + std::to_string(d.snapshot.value("number", 0))
                              : "all-clear mail";
  }

  void failed(Delivery& d, const std::string& why, milliseconds retry_after, bool permanent) {
    std::int64_t t = now();
    d.last_error = why;
    if (!permanent && t - d.created_ns < cfg.retry.give_up_after.count() * kNsPerMs) {
      d.next_attempt_ns = t + cfg.retry.delay(d.attempts, retry_after).count() * kNsPerMs;
      spdlog::warn("notify: message {} ({}) to {} failed (attempt {}), retrying at {}: {}", d.id,
                   about(d), d.channel, d.attempts, common::format_time(d.next_attempt_ns), why);
      return;
    }
    d.state = DeliveryState::failed;
    spdlog::error("notify: message {} ({}) to {} given up after {} attempt(s): {}", d.id, about(d),
                  d.channel, d.attempts, why);
  }

  void poke() {
    std::lock_guard lock(wake_mu);
    ++wake_gen;
    wake.notify_all();
  }

  // Waits for `d`, a stop, or (when `on_poke`) new work; false when stopping.
  bool wait(milliseconds d, bool on_poke) {
    std::unique_lock lock(wake_mu);
    std::uint64_t gen = wake_gen;
    wake.wait_for(lock, d, [&] { return stop_requested || (on_poke && wake_gen != gen); });
    return !stop_requested;
  }

  void run_dispatcher() {
    do {
      try {
        poll_once();
      } catch (const std::exception& e) {
        spdlog::error("notify: reading incident events failed: {}", e.what());
      }
    } while (wait(period, false));
  }

  void run_sender(const std::string& name) {
    do {
      try {
        send_once(name);
      } catch (const std::exception& e) {
        spdlog::error("notify: channel {}: {}", name, e.what());
      } catch (...) {
        spdlog::error("notify: channel {}: unexpected failure", name);
      }
    } while (wait(period, true));
  }
};

Notifier::Notifier(Store& store, IncidentEngine& engine, NotifyConfig cfg, Clock now, milliseconds period)
    : impl_(std::make_unique<Impl>(store, engine, std::move(cfg), std::move(now), period)) {}

Notifier::~Notifier() { stop(); }

void Notifier::start() {
  impl_->dispatcher = std::thread([this] {
    pthread_setname_np(pthread_self(), "notify");
    impl_->run_dispatcher();
  });
  for (auto& [name, ch] : impl_->channels) {
    const std::string n = name;
    ch.thread = std::thread([this, n] { impl_->run_sender(n); });
  }
}

void Notifier::stop() {
  {
    std::lock_guard lock(impl_->wake_mu);
    impl_->stop_requested = true;
  }
  impl_->stopping = true;
  impl_->wake.notify_all();
  if (impl_->dispatcher.joinable()) impl_->dispatcher.join();
  for (auto& [name, ch] : impl_->channels)
    if (ch.thread.joinable()) ch.thread.join();
}

void Notifier::set_commands(CommandEngine* commands, const AuditLog* audit) {
  impl_->set_commands(commands, audit);
}
std::size_t Notifier::poll_once() { return impl_->poll_once(); }
std::size_t Notifier::send_once(const std::string& channel) { return impl_->send_once(channel); }
std::size_t Notifier::prune_once() {
  std::lock_guard lock(impl_->poll_mu);
  return impl_->prune_once();
}
const NotifyConfig& Notifier::config() const { return impl_->cfg; }

std::optional<Delivery> Notifier::get(std::uint64_t id) const {
  auto v = impl_->store.get(Table::notifications, id_key(id));
  if (!v) return std::nullopt;
  return decode_delivery(*v);
}

std::vector<Delivery> Notifier::list(std::optional<DeliveryState> state, std::size_t limit) const {
  std::vector<Delivery> out;
  // Newest first: walk backwards in pages of ids (the table is keyed by increasing id).
  std::uint64_t hi = impl_->next_id.load();
  constexpr std::uint64_t kPage = 256;
  while (hi > 1 && out.size() < limit) {
    std::uint64_t lo = hi > kPage ? hi - kPage : 1;
    std::vector<Delivery> page;
    impl_->store.scan(Table::notifications, id_key(lo), [&](std::string_view k, std::string_view v) {
      if (k.size() != 8 || get_be64(k.data()) >= hi) return false;
      Delivery d = decode_delivery(std::string(v));
      if (!state || d.state == *state) page.push_back(std::move(d));
      return true;
    });
    for (auto it = page.rbegin(); it != page.rend() && out.size() < limit; ++it) out.push_back(std::move(*it));
    hi = lo;
  }
  return out;
}

}  // namespace tocsin::collector
