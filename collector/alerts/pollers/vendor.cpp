// The helpers every SIEM reader shares: HTTP outcomes as PollErrors and hostile-JSON field reads.
#include "collector/alerts/pollers/vendor.hpp"

#include <algorithm>

namespace tocsin::collector::detail::pollers {
namespace {

using namespace std::chrono_literals;

constexpr milliseconds kMaxRetryAfter = 10min;  // a hostile Retry-After cannot park us for days

milliseconds parse_retry_after(const std::string& v) {
  return curl::parse_retry_after(v, kMaxRetryAfter);
}

}  // namespace

bool has_control_chars(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

std::string form_encode(std::initializer_list<std::pair<std::string_view, std::string_view>> kv) {
  std::string out;
  for (const auto& [k, v] : kv) {
    if (!out.empty()) out += '&';
    out += percent_encode(k) + "=" + percent_encode(v);
  }
  return out;
}

void expect_2xx(const HttpResponse& r, const std::string& what) {
  if (r.status >= 200 && r.status <= 299) return;
  milliseconds retry =
      (r.status == 429 || r.status == 503) ? parse_retry_after(r.retry_after) : 0ms;
  std::string msg = "HTTP " + std::to_string(r.status) + " from " + what;
  if (r.status == 429) msg += " (rate limited, Retry-After: " + printable(r.retry_after) + ")";
  if (!r.body.empty()) msg += ": " + printable(r.body);
  throw PollError(FailureKind::http, msg, retry);
}

json parse_body(const std::string& body, const std::string& what) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded())
    throw PollError(FailureKind::malformed, "the answer from " + what + " is not valid JSON");
  return j;
}

[[noreturn]] void malformed(const std::string& what, const std::string& problem) {
  throw PollError(FailureKind::malformed, "the answer from " + what + ": " + problem);
}

const json* find_path(const json& j, std::string_view path) {
  if (!j.is_object() || path.empty()) return nullptr;
  auto it = j.find(std::string(path));
  if (it != j.end()) return &*it;
  for (std::size_t dot = path.find('.'); dot != std::string_view::npos;
       dot = path.find('.', dot + 1)) {
    auto head = j.find(std::string(path.substr(0, dot)));
    if (head == j.end() || !head->is_object()) continue;
    if (const json* v = find_path(*head, path.substr(dot + 1))) return v;
  }
  return nullptr;
}

std::string scalar_text(const json& v) {
  if (v.is_string()) return printable(v.get_ref<const std::string&>(), kMaxFieldChars);
  if (v.is_number() || v.is_boolean()) return v.dump();
  return "";
}

bool is_true(const json& j, std::string_view path) {
  const json* v = find_path(j, path);
  return v && v->is_boolean() && v->get<bool>();
}

std::string first_text(const json& j, std::initializer_list<std::string_view> paths) {
  for (auto p : paths)
    if (const json* v = find_path(j, p)) {
      std::string s = scalar_text(*v);
      if (!s.empty()) return s;
    }
  return "";
}

std::int64_t read_time(const json& j, std::initializer_list<std::string_view> paths,
                       const std::string& where, Page& page) {
  for (auto p : paths) {
    const json* v = find_path(j, p);
    if (!v || v->is_null() || (v->is_string() && v->get_ref<const std::string&>().empty()))
      continue;
    try {
      return parse_alert_time(*v, where + "." + std::string(p));
    } catch (const AlertParseError& e) {
      page.note("malformed", e.what());
      return 0;
    }
  }
  return 0;
}

std::string technique_from(const json& j, std::initializer_list<std::string_view> paths,
                           const std::string& text) {
  for (auto p : paths)
    if (const json* v = find_path(j, p)) {
      std::string t =
          find_technique(v->is_string() ? v->get_ref<const std::string&>() : flatten_json(*v));
      if (!t.empty()) return t;
    }
  return find_technique(text);
}

Alert base_alert(const AlertSourceConfig& cfg, const char* type, const json& whole) {
  Alert a;
  a.source = cfg.name;
  a.source_type = type;
  a.is_event = cfg.events;
  a.text = flatten_json(whole);
  return a;
}

}  // namespace tocsin::collector::detail::pollers
