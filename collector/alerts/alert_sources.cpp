#include "collector/alerts/alert_sources.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <stdexcept>
#include <utility>

#include "collector/alerts/webhooks.hpp"
#include "common/crypto.hpp"

namespace tocsin::collector {

using common::ConfigNode;

namespace {

constexpr std::array<std::pair<SourceType, std::string_view>, 11> kTypeNames = {{
    {SourceType::generic, "generic"},
    {SourceType::splunk_webhook, "splunk_webhook"},
    {SourceType::elastic, "elastic"},
    {SourceType::alertmanager, "alertmanager"},
    {SourceType::crowdsec, "crowdsec"},
    {SourceType::hec, "hec"},
    {SourceType::syslog, "syslog"},
    {SourceType::elasticsearch, "elasticsearch"},
    {SourceType::splunk_search, "splunk_search"},
    {SourceType::sentinel, "sentinel"},
    {SourceType::crowdsec_lapi, "crowdsec_lapi"},
}};

constexpr std::size_t kMinTokenLen = 16;
constexpr std::size_t kMaxSecretFile = 64 * 1024;
constexpr std::uint64_t kMinBody = 1024, kMaxBody = 16 << 20;
constexpr std::uint64_t kMinMessage = 1024, kMaxMessage = 1 << 20;
constexpr std::int64_t kMaxPageSize = 10000, kMaxPages = 100000;

std::string type_list() {
  std::string out;
  for (const auto& [t, name] : kTypeNames) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// Each type accepts only its own keys, so a key meant for another type is an error.
std::vector<std::string> allowed_keys(SourceType t) {
  std::vector<std::string> keys = {"name", "type", "delivers"};
  auto add = [&](std::initializer_list<const char*> more) {
    keys.insert(keys.end(), more.begin(), more.end());
  };
  if (is_webhook(t)) add({"token", "token_file", "allow_url_token", "max_body"});
  if (t == SourceType::generic || t == SourceType::elastic) add({"fields"});
  if (t == SourceType::syslog) add({"udp", "tcp", "tls", "tls_cert", "tls_key", "max_message"});
  if (is_poller(t))
    add({"url", "ca_file", "interval", "lookback", "timeout", "page_size", "max_pages"});
  const std::initializer_list<const char*> basic_auth = {"username", "password", "password_file",
                                                         "api_key", "api_key_file"};
  switch (t) {
    case SourceType::elasticsearch:
      add(basic_auth);
      add({"index", "query", "time_field"});
      break;
    case SourceType::splunk_search:
      add(basic_auth);
      add({"query"});
      break;
    case SourceType::sentinel:
      add({"query", "tenant_id", "client_id", "client_secret", "client_secret_file", "workspace_id",
           "token_url"});
      break;
    case SourceType::crowdsec_lapi:
      // api_key is refused with its own reason (see load_crowdsec_lapi), not as unknown;
      // username is the older spelling of machine_id.
      add(basic_auth);
      add({"machine_id"});
      break;
    default:
      break;
  }
  return keys;
}

bool valid_name(const std::string& s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

bool has_control(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

using common::resolve_path;

// A path that must exist now, so a typo fails at start rather than at the first connection.
std::filesystem::path existing_path(const ConfigNode& n, const std::string& key,
                                    const std::filesystem::path& base_dir) {
  auto p = resolve_path(base_dir, n.str(key));
  std::error_code ec;
  if (!std::filesystem::is_regular_file(p, ec)) n.fail(key, "file " + p.string() + " not found");
  return p;
}

std::optional<std::string> secret(const ConfigNode& n, const std::string& key,
                                  const std::filesystem::path& base_dir) {
  return common::config_secret(n, key, base_dir, kMaxSecretFile);
}

void load_token(const ConfigNode& n, const std::filesystem::path& base_dir, AlertSourceConfig& c) {
  auto token = secret(n, "token", base_dir);
  if (!token) n.fail("token", "is required (or token_file)");
  const std::string used = n.has("token") ? "token" : "token_file";
  if (token->size() < kMinTokenLen)
    n.fail(used, "must be at least " + std::to_string(kMinTokenLen) + " characters");
  if (token->find(' ') != std::string::npos) n.fail(used, "must not contain spaces");
  c.token = std::move(*token);
}

void load_fields(const ConfigNode& f, FieldMap& m) {
  std::pair<const char*, std::string*> slots[] = {{"id", &m.id},
                                                  {"host", &m.host},
                                                  {"rule", &m.rule},
                                                  {"technique", &m.technique},
                                                  {"severity", &m.severity},
                                                  {"event_time", &m.event_time},
                                                  {"ingest_time", &m.ingest_time},
                                                  {"alert_time", &m.alert_time}};
  std::vector<std::string> known;
  for (const auto& [key, slot] : slots) known.push_back(key);
  f.check_keys(known);
  for (const auto& [key, slot] : slots) {
    if (!f.has(key)) continue;
    *slot = f.str(key);
    try {
      check_field_path(*slot);
    } catch (const std::invalid_argument& e) {
      f.fail(key, e.what());
    }
  }
}

void load_webhook(const ConfigNode& n, const std::filesystem::path& base_dir,
                  AlertSourceConfig& c) {
  load_token(n, base_dir, c);
  c.allow_url_token = n.boolean("allow_url_token", false);
  c.max_body = n.size("max_body", c.max_body);
  if (c.max_body < kMinBody || c.max_body > kMaxBody)
    n.fail("max_body", "must be between 1KiB and 16MiB");
  load_fields(n["fields"], c.fields);
}

std::optional<common::HostPort> listen_address(const ConfigNode& n, const std::string& key) {
  if (!n.has(key)) return std::nullopt;
  try {
    return common::parse_host_port(n.str(key));
  } catch (const std::invalid_argument& e) {
    n.fail(key, e.what());
  }
}

void load_syslog(const ConfigNode& n, const std::filesystem::path& base_dir, AlertSourceConfig& c) {
  c.udp = listen_address(n, "udp");
  c.tcp = listen_address(n, "tcp");
  c.tls = listen_address(n, "tls");
  if (!c.udp && !c.tcp && !c.tls) n.fail("", "needs at least one of udp, tcp, tls");
  if (n.has("tls_cert") != n.has("tls_key"))
    n.fail(n.has("tls_cert") ? "tls_cert" : "tls_key", "tls_cert and tls_key go together");
  if (n.has("tls_cert") && !c.tls) n.fail("tls_cert", "is only used with a tls: listener");
  if (n.has("tls_cert")) {
    c.tls_cert = existing_path(n, "tls_cert", base_dir);
    c.tls_key = existing_path(n, "tls_key", base_dir);
  }
  c.max_message = n.size("max_message", c.max_message);
  if (c.max_message < kMinMessage || c.max_message > kMaxMessage)
    n.fail("max_message", "must be between 1KiB and 1MiB");
}

// http(s)://host[...]; a trailing slash is dropped so pollers can append "/path".
std::string load_url(const ConfigNode& n, const std::string& key,
                     std::optional<std::string> def = std::nullopt) {
  std::string url = n.str(key, def);
  auto scheme_end = url.find("://");
  std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") n.fail(key, "must start with http:// or https://");
  if (url.size() == scheme_end + 3 || url[scheme_end + 3] == '/') n.fail(key, "has no host");
  if (url.size() > 2048) n.fail(key, "is too long");
  if (has_control(url) || url.find(' ') != std::string::npos)
    n.fail(key, "contains spaces or control characters");
  while (url.size() > scheme_end + 4 && url.back() == '/') url.pop_back();
  return url;
}

// Identifiers that end up inside URLs (tenant, workspace) must not be able to change them.
std::string load_url_part(const ConfigNode& n, const std::string& key) {
  std::string v = n.str(key);
  bool ok = !v.empty() && v.size() <= 128 && std::all_of(v.begin(), v.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.';
  });
  if (!ok) n.fail(key, "must be letters, digits, '-' or '.'");
  return v;
}

void load_basic_auth(const ConfigNode& n, const std::filesystem::path& base_dir,
                     AlertSourceConfig& c) {
  c.api_key = secret(n, "api_key", base_dir).value_or("");
  c.username = n.str("username", "");
  c.password = secret(n, "password", base_dir).value_or("");
  if (!c.username.empty() && c.password.empty()) n.fail("password", "is required with username");
  if (c.username.empty() && !c.password.empty()) n.fail("username", "is required with password");
  if (!c.api_key.empty() && !c.username.empty())
    n.fail("api_key", "use either api_key or username and password, not both");
}

// CrowdSec's GET /v1/alerts answers machines (watchers) only: a bouncer key, which older
// versions of this page suggested, gets 403 there, so it is an error at start, not at the poll.
void load_crowdsec_lapi(const ConfigNode& n, const std::filesystem::path& base_dir,
                        AlertSourceConfig& c) {
  for (const char* key : {"api_key", "api_key_file"})
    if (n.has(key))
      n.fail(key,
             "a CrowdSec bouncer key cannot read alerts (LAPI refuses bouncers on /v1/alerts); "
             "use machine_id and password (or password_file) of a machine added with "
             "'cscli machines add'");
  if (n.has("machine_id") && n.has("username"))
    n.fail("username", "is the older name of machine_id: give only machine_id");
  const std::string id_key = n.has("username") ? "username" : "machine_id";
  c.username = n.str(id_key, "");
  c.password = secret(n, "password", base_dir).value_or("");
  if (c.username.empty()) n.fail(id_key, "is required: alerts need a CrowdSec machine login");
  if (has_control(c.username)) n.fail(id_key, "contains control characters");
  if (c.password.empty()) n.fail("password", "is required with machine_id (or password_file)");
}

void load_poll_timing(const ConfigNode& n, AlertSourceConfig& c) {
  c.interval = n.duration("interval", c.interval);
  c.lookback = n.duration("lookback", c.lookback);
  c.timeout = n.duration("timeout", c.timeout);
  if (c.interval.count() <= 0) n.fail("interval", "must be positive");
  if (c.timeout.count() <= 0) n.fail("timeout", "must be positive");
  auto page_size = n.integer("page_size", static_cast<std::int64_t>(c.page_size));
  if (page_size < 1 || page_size > kMaxPageSize) n.fail("page_size", "must be between 1 and 10000");
  auto max_pages = n.integer("max_pages", static_cast<std::int64_t>(c.max_pages));
  if (max_pages < 1 || max_pages > kMaxPages) n.fail("max_pages", "must be between 1 and 100000");
  c.page_size = static_cast<std::size_t>(page_size);
  c.max_pages = static_cast<std::size_t>(max_pages);
}

void load_sentinel(const ConfigNode& n, const std::filesystem::path& base_dir,
                   AlertSourceConfig& c) {
  c.tenant_id = load_url_part(n, "tenant_id");
  c.client_id = n.str("client_id");
  if (has_control(c.client_id)) n.fail("client_id", "contains control characters");
  auto client_secret = secret(n, "client_secret", base_dir);
  if (!client_secret) n.fail("client_secret", "is required (or client_secret_file)");
  c.client_secret = std::move(*client_secret);
  c.workspace_id = load_url_part(n, "workspace_id");
  c.url = load_url(n, "url", "https://api.loganalytics.io");
  c.token_url = load_url(n, "token_url",
                         "https://login.microsoftonline.com/" + c.tenant_id + "/oauth2/v2.0/token");
}

void load_poller(const ConfigNode& n, const std::filesystem::path& base_dir, AlertSourceConfig& c) {
  load_poll_timing(n, c);
  if (n.has("ca_file")) c.ca_file = existing_path(n, "ca_file", base_dir);
  c.query = n.str("query", "");
  switch (c.type) {
    case SourceType::elasticsearch:
      c.url = load_url(n, "url");
      c.index = n.str("index");
      if (c.index.empty() || has_control(c.index)) n.fail("index", "must be an index pattern");
      c.time_field = n.str("time_field", c.time_field);
      load_basic_auth(n, base_dir, c);
      break;
    case SourceType::splunk_search:
      c.url = load_url(n, "url");
      c.query = n.str("query");
      load_basic_auth(n, base_dir, c);
      break;
    case SourceType::crowdsec_lapi:
      c.url = load_url(n, "url");
      load_crowdsec_lapi(n, base_dir, c);
      break;
    default:
      load_sentinel(n, base_dir, c);
      break;
  }
}

AlertSourceConfig load_source(const ConfigNode& n, const std::filesystem::path& base_dir) {
  n.keys();  // fails with file:line unless the item is a map
  AlertSourceConfig c;
  c.name = n.str("name");
  if (!valid_name(c.name)) n.fail("name", "must be 1-64 of a-z, 0-9, '_', '-'");
  auto type = parse_source_type(n.str("type"));
  if (!type) n.fail("type", "unknown type '" + n.str("type") + "' (one of " + type_list() + ")");
  c.type = *type;
  n.check_keys(allowed_keys(c.type));
  auto delivers = n.str("delivers", "alerts");
  if (delivers != "alerts" && delivers != "events") n.fail("delivers", "must be alerts or events");
  c.events = delivers == "events";
  if (is_webhook(c.type)) load_webhook(n, base_dir, c);
  if (c.type == SourceType::syslog) load_syslog(n, base_dir, c);
  if (is_poller(c.type)) load_poller(n, base_dir, c);
  return c;
}

}  // namespace

std::string source_type_name(SourceType t) {
  for (const auto& [type, name] : kTypeNames)
    if (type == t) return std::string(name);
  throw std::logic_error("unknown SourceType");
}

std::optional<SourceType> parse_source_type(const std::string& s) {
  for (const auto& [type, name] : kTypeNames)
    if (name == s) return type;
  return std::nullopt;
}

// HEC counts: it arrives over the same HTTPS listener and is authenticated by a token.
bool is_webhook(SourceType t) {
  switch (t) {
    case SourceType::generic:
    case SourceType::splunk_webhook:
    case SourceType::elastic:
    case SourceType::alertmanager:
    case SourceType::crowdsec:
    case SourceType::hec:
      return true;
    default:
      return false;
  }
}

bool is_poller(SourceType t) {
  return t == SourceType::elasticsearch || t == SourceType::splunk_search ||
         t == SourceType::sentinel || t == SourceType::crowdsec_lapi;
}

std::vector<AlertSourceConfig> load_alert_sources(const ConfigNode& root,
                                                  const std::filesystem::path& base_dir) {
  std::vector<AlertSourceConfig> out;
  std::map<std::string, std::string> seen;  // name -> path of the item that has it
  for (const auto& item : root["alert_sources"].items()) {
    auto c = load_source(item, base_dir);
    auto [it, fresh] = seen.emplace(c.name, item.path());
    if (!fresh)
      item.fail("name", "duplicate source name '" + c.name + "' (also " + it->second + ")");
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace tocsin::collector
