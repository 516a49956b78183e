// Microsoft Sentinel alerts: the Log Analytics query API with OAuth2 client credentials.
#include "collector/alerts/pollers/vendor.hpp"

#include <algorithm>
#include <cctype>

#include "common/clock.hpp"

namespace tocsin::collector::detail::pollers {
namespace {

constexpr const char* kLogAnalyticsScope = "https://api.loganalytics.io/.default";

// Microsoft Sentinel through the Log Analytics query API, OAuth2 client credentials.
class Sentinel : public Vendor {
 public:
  using Vendor::Vendor;
  void restart() override { next_link_.clear(); }

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = next_link_.empty()
                           ? cfg_.url + "/v1/workspaces/" + cfg_.workspace_id + "/query"
                           : next_link_;
    HttpRequest req;
    req.url = next_link_.empty()
                  ? cfg_.url + "/v1/workspaces/" + percent_encode(cfg_.workspace_id) + "/query"
                  : next_link_;
    if (next_link_.empty()) {
      req.post = true;
      req.headers.push_back("Content-Type: application/json");
      req.body =
          json{{"query", cfg_.query},
               {"timespan", common::format_time(w.start_ns) + "/" + common::format_time(w.end_ns)}}
              .dump();
    }
    HttpResponse resp = send_authorized(http, req);
    expect_2xx(resp, what);
    return read_page(parse_body(resp.body, what), what);
  }

 private:
  HttpResponse send_authorized(HttpClient& http, const HttpRequest& req) {
    return bearer_.send(http, req);
  }

  std::pair<std::string, std::int64_t> fetch_token(HttpClient& http) {
    std::string url = token_url();
    HttpRequest req;
    req.post = true;
    req.url = url;
    req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    req.body = form_encode({{"grant_type", "client_credentials"},
                            {"client_id", cfg_.client_id},
                            {"client_secret", cfg_.client_secret},
                            {"scope", kLogAnalyticsScope}});
    HttpResponse resp = http.send(req);
    expect_2xx(resp, "the token endpoint " + url);
    json j = parse_body(resp.body, url);
    const json* tok = find_path(j, "access_token");
    if (!tok || !tok->is_string() || tok->get_ref<const std::string&>().empty() ||
        has_control_chars(tok->get_ref<const std::string&>()))
      malformed(url, "no usable access_token");
    return {tok->get<std::string>(),
            common::now_ns() + std::chrono::nanoseconds(lifetime(j)).count()};
  }

  // Azure AD v2 sends expires_in as a number, v1 as a string. Renew a minute early (or at half
  // life for short tokens) so a token never expires between check and use.
  static std::chrono::seconds lifetime(const json& j) {
    std::int64_t secs = 300;
    const json* e = find_path(j, "expires_in");
    if (e && e->is_number_integer()) secs = e->get<std::int64_t>();
    if (e && e->is_string()) {
      const auto& s = e->get_ref<const std::string&>();
      if (!s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), ::isdigit))
        secs = std::stoll(s);
    }
    secs = std::clamp<std::int64_t>(secs, 0, 24 * 3600);
    return std::chrono::seconds(secs - std::min<std::int64_t>(60, secs / 2));
  }

  std::string token_url() const {
    if (!cfg_.token_url.empty()) return cfg_.token_url;
    return "https://login.microsoftonline.com/" + percent_encode(cfg_.tenant_id) +
           "/oauth2/v2.0/token";
  }

  Page read_page(const json& j, const std::string& what) {
    const json* tables = j.is_object() ? find_path(j, "tables") : nullptr;
    if (!tables || !tables->is_array()) malformed(what, "no tables array");
    Page page;
    if (const json* err = find_path(j, "error"); err && err->is_object())
      page.partial_error =
          "partial result from " + what + ": " + first_text(*err, {"message", "code"});
    const json* table = primary_table(*tables);
    if (table) read_table(*table, what, page);
    follow_next_link(j, page);
    return page;
  }

  static const json* primary_table(const json& tables) {
    for (const auto& t : tables)
      if (first_text(t, {"name"}) == "PrimaryResult") return &t;
    return tables.empty() ? nullptr : &tables[0];
  }

  void read_table(const json& table, const std::string& what, Page& page) const {
    const json* cols = find_path(table, "columns");
    const json* rows = find_path(table, "rows");
    if (!cols || !cols->is_array() || !rows || !rows->is_array())
      malformed(what, "the result table needs columns and rows arrays");
    std::vector<std::string> names;
    for (const auto& c : *cols) {
      const json* n = c.is_object() ? find_path(c, "name") : nullptr;
      if (!n || !n->is_string()) malformed(what, "a column has no name");
      names.push_back(n->get<std::string>());
    }
    for (std::size_t i = 0; i < rows->size(); ++i) {
      const json& row = (*rows)[i];
      std::string where = "rows[" + std::to_string(i) + "]";
      if (!row.is_array() || row.size() != names.size()) {
        page.note("malformed", where + ": not an array of " + std::to_string(names.size()));
        continue;
      }
      json obj = json::object();
      for (std::size_t c = 0; c < names.size(); ++c) obj[names[c]] = row[c];
      add_row(obj, where, page);
    }
  }

  void add_row(const json& r, const std::string& where, Page& page) const {
    Alert a = base_alert(cfg_, "sentinel", r);
    a.id = first_text(r, {"SystemAlertId", "AlertId", "_ItemId"});
    a.host = first_text(r, {"CompromisedEntity", "HostName", "Computer", "DeviceName"});
    a.rule = first_text(r, {"AlertName", "DisplayName"});
    a.severity = first_text(r, {"AlertSeverity", "Severity"});
    // Techniques is a JSON array serialised into a string ("[\"T1105\"]"); the text search
    // reads it either way.
    a.technique = technique_from(r, {"Techniques", "Tactics"}, a.text);
    a.event_ns = read_time(r, {"StartTime", "StartTimeUtc"}, where, page);
    a.created_ns = read_time(r, {"TimeGenerated"}, where, page);
    a.ingest_ns = read_time(r, {"_TimeReceived", "IngestionTime", "TimeGenerated"}, where, page);
    page.alerts.push_back(std::move(a));
  }

  // The query API documents no paging; if a nextLink-style field appears anyway it is followed,
  // but only to our own configured origin: the bearer token goes wherever the link points.
  void follow_next_link(const json& j, Page& page) {
    next_link_.clear();
    std::string link = first_text(j, {"@odata.nextLink", "nextLink"});
    if (link.empty()) return;
    if (!link.starts_with(cfg_.url + "/") || has_control_chars(link)) {
      page.note("malformed", "ignored a nextLink outside " + cfg_.url);
      return;
    }
    next_link_ = link;
    page.more = true;
  }

  BearerToken bearer_{[this](HttpClient& http) { return fetch_token(http); }};
  std::string next_link_;
};

}  // namespace

std::unique_ptr<Vendor> make_sentinel(const AlertSourceConfig& cfg) {
  return std::make_unique<Sentinel>(cfg);
}

}  // namespace tocsin::collector::detail::pollers
