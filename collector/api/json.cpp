// Reading a request's parameters and body, writing JSON answers; bad input is a 400 naming it.
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "collector/api/detail.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"

namespace tocsin::collector::detail::api {

constexpr std::size_t kDefaultLimit = 1000;
constexpr std::size_t kMaxLimit = 10000;
// Beyond this a relative "since" would overflow nanoseconds; nobody needs more than a century.
constexpr std::int64_t kMaxSinceMs = 100LL * 365 * 24 * 3600 * 1000;

// Hostile bytes (an agent's hostname, a probe's evidence) may not be valid UTF-8; replacing
// them keeps one bad record from turning a whole listing into a 500.
std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Response make_response(http::status status, const json& body, const Request* req) {
  Response res{status, req ? req->version() : 11};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");  // answers may carry fresh secrets
  res.keep_alive(req ? req->keep_alive() : false);
  res.body() = dump_json(body);
  res.prepare_payload();
  return res;
}

Response error_response(http::status status, const std::string& message, const Request* req) {
  return make_response(status, json{{"error", message}}, req);
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      int hi = i + 2 < s.size() ? hex_value(s[i + 1]) : -1;
      int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
      if (lo < 0)
        throw HttpError(http::status::bad_request,
                        "malformed query string: bad percent-encoding in '" + std::string(s) + "'");
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Unknown or repeated parameters are rejected so a typo never silently falls back to a default.
Params parse_query(std::string_view query, const std::vector<std::string>& known) {
  Params out;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    std::string key = percent_decode(part.substr(0, eq));
    std::string value = eq == std::string_view::npos ? "" : percent_decode(part.substr(eq + 1));
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw HttpError(http::status::bad_request, "unknown query parameter '" + key + "' (known: " +
                                                     (list.empty() ? "none" : list) + ")");
    }
    if (!out.emplace(key, value).second)
      throw HttpError(http::status::bad_request, "query parameter '" + key + "' given twice");
  }
  return out;
}

std::string param(const Params& p, const std::string& key, const std::string& def) {
  auto it = p.find(key);
  return it == p.end() ? def : it->second;
}

std::int64_t since_param(const Params& p, const std::string& def) {
  std::string text = param(p, "since", def);
  try {
    // parse_since computes nanoseconds without overflow checks; keep its input in range.
    if (text.find('T') == std::string::npos) {
      if (common::parse_duration(text).count() > kMaxSinceMs)
        throw std::invalid_argument("'" + text + "' reaches back more than 100 years");
    } else if (text.size() < 4 || text.find_first_not_of("0123456789") < 4 ||
               text.compare(0, 4, "1970") < 0 || text.compare(0, 4, "2200") > 0) {
      throw std::invalid_argument("'" + text + "' is not an RFC 3339 UTC time from 1970 to 2200");
    }
    return common::parse_since(text, common::now_ns());
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, std::string("invalid 'since': ") + e.what());
  }
}

std::size_t limit_param(const Params& p) {
  std::string text = param(p, "limit", std::to_string(kDefaultLimit));
  std::string bad =
      "'limit' must be an integer from 1 to " + std::to_string(kMaxLimit) + ", got '" + text + "'";
  if (text.empty() || text.size() > 6 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, bad);
  std::size_t n = std::stoul(text);
  if (n < 1 || n > kMaxLimit) throw HttpError(http::status::bad_request, bad);
  return n;
}

json parse_body_object(const Request& req, const std::vector<std::string>& known) {
  if (req.body().empty()) return json::object();
  json j;
  try {
    j = json::parse(req.body());
  } catch (const json::parse_error& e) {
    throw HttpError(http::status::bad_request,
                    std::string("request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object())
    throw HttpError(http::status::bad_request, "request body must be a JSON object");
  for (const auto& [key, value] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      throw HttpError(http::status::bad_request, "unknown field '" + key + "' in request body");
  return j;
}

std::optional<std::string> string_field(const json& body, const std::string& key) {
  if (!body.contains(key)) return std::nullopt;
  if (!body[key].is_string())
    throw HttpError(http::status::bad_request, "'" + key + "' must be a string");
  return body[key].get<std::string>();
}

std::uint64_t id_param(std::string_view text, const std::string& what) {
  if (text.empty() || text.size() > 18 ||
      text.find_first_not_of("0123456789") != std::string_view::npos)
    throw HttpError(http::status::bad_request,
                    "'" + std::string(text) + "' is not " + (what == "incident" ? "an " : "a ") + what + " number");
  auto id = std::stoull(std::string(text));
  if (id == 0) throw HttpError(http::status::bad_request, what + " numbers start at 1");
  return id;
}

std::string required_body_text(const json& body, const std::string& key) {
  auto v = string_field(body, key);
  if (!v || v->empty()) throw HttpError(http::status::bad_request, "'" + key + "' is required");
  return *v;
}

json time_or_null(std::int64_t ns) {
  return ns == 0 ? json(nullptr) : json(common::format_time(ns));
}
double ns_to_ms(std::int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}
json error_ms_or_null(std::int64_t ns) {
  return ns < 0 ? json(nullptr) : json(ns_to_ms(ns));
}

}  // namespace tocsin::collector::detail::api
