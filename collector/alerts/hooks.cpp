#include "collector/alerts/hooks.hpp"

#include <openssl/crypto.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collector/alerts/webhooks.hpp"

namespace tocsin::collector {

using nlohmann::json;

namespace {

bool is_hec_path(std::string_view path) {
  // HEC clients use the event endpoint with or without the version suffix, or the bare root.
  return path == kHecPath || path == "/services/collector" ||
         path == "/services/collector/event/1.0";
}

std::string_view hook_name(std::string_view path) {
  if (!path.starts_with(kHookPrefix)) return {};
  auto name = path.substr(kHookPrefix.size());
  if (!name.empty() && name.back() == '/') name.remove_suffix(1);
  return name;
}

bool same_secret(std::string_view a, const std::string& b) {
  return !b.empty() && a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> query_token(std::string_view query) {
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (!part.starts_with("token=")) continue;
    std::string out;
    auto v = part.substr(6);
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '%' && i + 2 < v.size() && hex_digit(v[i + 1]) >= 0 && hex_digit(v[i + 2]) >= 0) {
        out += static_cast<char>(hex_digit(v[i + 1]) * 16 + hex_digit(v[i + 2]));
        i += 2;
      } else {
        out += v[i] == '+' ? ' ' : v[i];
      }
    }
    return out;
  }
  return std::nullopt;
}

std::optional<std::string_view> auth_scheme(std::string_view header, std::string_view scheme) {
  if (header.size() <= scheme.size() + 1) return std::nullopt;
  for (std::size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(header[i])) != scheme[i]) return std::nullopt;
  if (header[scheme.size()] != ' ') return std::nullopt;
  return header.substr(scheme.size() + 1);
}

HookReply error_reply(int status, const std::string& message, bool challenge = false) {
  return {status, json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace),
          challenge};
}

HookReply hec_reply(int status, int code, const std::string& text) {
  return {status, json{{"text", text}, {"code", code}}.dump(), status == 401};
}

std::variant<HookAccepted, HookReply> parse(const AlertSourceConfig& src, const HookRequest& req,
                                            AlertSink& sink) {
  bool hec = src.type == SourceType::hec;
  if (req.body.empty()) {
    sink.rejected(src.name, "malformed", "empty body");
    return hec ? hec_reply(400, 5, "No data") : error_reply(400, "empty body: expected JSON");
  }
  try {
    return HookAccepted{&src, parse_webhook(src, req.body, req.arrival_ns)};
  } catch (const AlertParseError& e) {
    sink.rejected(src.name, "malformed", e.what());
    if (hec) return hec_reply(400, 6, std::string("Invalid data format: ") + e.what());
    return error_reply(400, e.what());
  }
}

std::variant<const AlertSourceConfig*, HookReply> authenticate_hec(
    const std::vector<AlertSourceConfig>& sources, const HookRequest& req, AlertSink& sink) {
  std::vector<const AlertSourceConfig*> hec;
  for (const auto& s : sources)
    if (s.type == SourceType::hec) hec.push_back(&s);
  if (hec.empty()) return error_reply(404, "no HEC alert source is configured");
  std::optional<std::string> token;
  if (auto t = auth_scheme(req.authorization, "splunk")) token = std::string(*t);
  if (!token)
    for (auto* s : hec)
      if (s->allow_url_token) token = query_token(req.query);
  auto counted_as = hec.size() == 1 ? hec[0]->name : std::string("hec");
  if (!token) {
    sink.rejected(counted_as, "bad_token", "no 'Authorization: Splunk <token>' header");
    return hec_reply(401, 2, "Token is required");
  }
  for (auto* s : hec)
    if (same_secret(*token, s->token)) return s;
  sink.rejected(counted_as, "bad_token", "unknown HEC token");
  return hec_reply(403, 4, "Invalid token");
}

}  // namespace

bool is_hook_path(std::string_view path) {
  return is_hec_path(path) || path.starts_with(kHookPrefix);
}

std::size_t hook_body_limit(const std::vector<AlertSourceConfig>& sources, std::string_view path) {
  std::size_t limit = 0;
  bool hec = is_hec_path(path);
  auto name = hook_name(path);
  for (const auto& s : sources) {
    if (hec ? s.type == SourceType::hec : (is_webhook(s.type) && s.name == name))
      limit = std::max(limit, s.max_body);
  }
  return limit;
}

std::string hook_source_name(const std::vector<AlertSourceConfig>& sources, std::string_view path) {
  if (is_hec_path(path)) {
    std::string name;
    for (const auto& s : sources)
      if (s.type == SourceType::hec) name = name.empty() ? s.name : "hec";
    return name;
  }
  auto name = hook_name(path);
  for (const auto& s : sources)
    if (is_webhook(s.type) && s.type != SourceType::hec && s.name == name) return s.name;
  return {};
}

std::variant<const AlertSourceConfig*, HookReply> authenticate_hook(
    const std::vector<AlertSourceConfig>& sources, const HookRequest& req, AlertSink& sink) {
  if (is_hec_path(req.path)) return authenticate_hec(sources, req, sink);
  auto name = hook_name(req.path);
  const AlertSourceConfig* src = nullptr;
  for (const auto& s : sources)
    if (is_webhook(s.type) && s.type != SourceType::hec && s.name == name) src = &s;
  if (!src) return error_reply(404, "no webhook alert source named '" + std::string(name) + "'");

  std::optional<std::string> token;
  if (!req.token_header.empty())
    token = std::string(req.token_header);
  else if (auto t = auth_scheme(req.authorization, "bearer"))
    token = std::string(*t);
  else if (src->allow_url_token)
    token = query_token(req.query);
  if (!token) {
    sink.rejected(src->name, "bad_token", "no token presented");
    return error_reply(401,
                       "token required: send it in X-Tocsin-Token or Authorization: Bearer" +
                           std::string(src->allow_url_token ? " or as ?token=" : ""),
                       true);
  }
  if (!same_secret(*token, src->token)) {
    sink.rejected(src->name, "bad_token", "wrong token");
    return error_reply(401, "invalid token for source '" + src->name + "'", true);
  }
  return src;
}

std::variant<HookAccepted, HookReply> prepare_hook(const std::vector<AlertSourceConfig>& sources,
                                                   const HookRequest& req, AlertSink& sink) {
  auto auth = authenticate_hook(sources, req, sink);
  if (auto* refused = std::get_if<HookReply>(&auth)) return *refused;
  return parse(*std::get<const AlertSourceConfig*>(auth), req, sink);
}

HookReply hook_reply(const AlertSourceConfig& source, const SubmitOutcome& outcome) {
  bool hec = source.type == SourceType::hec;
  if (!outcome.error.empty())
    return hec ? hec_reply(503, 9, "Server is busy") : error_reply(503, outcome.error);
  if (hec) return hec_reply(200, 0, "Success");
  // One per alert request: formatted directly, in the key order json::dump would give.
  return {200, fmt::format(R"({{"accepted":{},"duplicates":{},"matched":{}}})", outcome.accepted,
                           outcome.duplicates, outcome.matched)};
}

}  // namespace tocsin::collector
