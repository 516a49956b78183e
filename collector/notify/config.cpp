// Loads the `notify:` config section and checks it, so a mistake is named at start-up.
#include <algorithm>
#include <cmath>
#include <regex>
#include <set>
#include <string_view>
#include <system_error>

#include "collector/notify/notify.hpp"
#include "common/config.hpp"

namespace tocsin::collector {
using std::chrono::milliseconds;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kMinWebhookSecret = 16;
constexpr const char* kPagerDutyUrl = "https://events.pagerduty.com/v2/enqueue";

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

}  // namespace

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
  // "reopened_by": a person undid an accepted risk; the incident is live again.
  if (w == "opened" || w == "reopened" || w == "reopened_by") return NotifyEvent::opened;
  if (w == "acknowledged") return NotifyEvent::acknowledged;
  if (w == "sla_breached") return NotifyEvent::breached;
  if (w == "resolved" || w == "auto_resolved" || w == "closed" || w == "auto_closed" ||
      w == "risk_accepted")
    return NotifyEvent::resolved;
  // "suppressed" (a failure under accepted risk), "silenced" and "facet_cleared" are on the
  // timeline and notify nobody: that is what accepting or silencing asked for.
  if (w == "noted" || w == "assigned" || w == "occurrence" || w == "paused" || w == "resumed")
    return NotifyEvent::updated;
  if (w == "escalated") return NotifyEvent::escalated;
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

}  // namespace tocsin::collector
