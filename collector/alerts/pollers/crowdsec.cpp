// CrowdSec alerts: the Local API's GET /v1/alerts, logged in as a machine (watcher, JWT).
#include "collector/alerts/pollers/vendor.hpp"

#include <algorithm>

#include "collector/alerts/pollers/crowdsec_fields.hpp"
#include "common/clock.hpp"

namespace tocsin::collector::detail::pollers {
namespace {

// CrowdSec Local API: GET /v1/alerts. LAPI has no offset or cursor, so one request asks for
// up to page_size * max_pages alerts (newest first, LAPI's default order) and a full answer
// is reported as truncated; frequent polls with overlapping windows keep that rare.
class CrowdsecLapi : public Vendor {
 public:
  using Vendor::Vendor;

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = cfg_.url + "/v1/alerts";
    // `since` is a duration back from LAPI's own now; rounding up keeps the window whole.
    std::int64_t back_ns = std::max<std::int64_t>(common::now_ns() - w.start_ns, 0);
    std::int64_t since_s = std::max<std::int64_t>(1, (back_ns + 999'999'999) / 1'000'000'000);
    HttpRequest req;
    req.url = what + "?since=" + std::to_string(since_s) + "s&limit=" + std::to_string(limit());
    HttpResponse resp = bearer_.send(http, req);
    expect_2xx(resp, what);
    return read_page(parse_body(resp.body, what), what);
  }

 private:
  std::size_t limit() const {
    std::size_t pages = std::min<std::size_t>(cfg_.max_pages, kMaxAlertsPerRequest);
    return std::min(cfg_.page_size * pages, kMaxAlertsPerRequest);
  }

  // GET /v1/alerts answers only a machine (watcher): a bouncer's X-Api-Key is refused there,
  // so the config demands machine_id/password. The JWT is renewed a minute before `expire`
  // and once more on a 401 (LAPI restarted with a new secret, or the token expired early).
  std::pair<std::string, std::int64_t> fetch_token(HttpClient& http) {
    std::string url = cfg_.url + "/v1/watchers/login";
    HttpRequest req;
    req.post = true;
    req.url = url;
    req.headers.push_back("Content-Type: application/json");
    req.body = json{{"machine_id", cfg_.username}, {"password", cfg_.password}}.dump();
    HttpResponse resp = http.send(req);
    expect_2xx(resp, url);
    json j = parse_body(resp.body, url);
    const json* tok = find_path(j, "token");
    if (!tok || !tok->is_string() || tok->get_ref<const std::string&>().empty() ||
        has_control_chars(tok->get_ref<const std::string&>()))
      malformed(url, "no usable token");
    return {tok->get<std::string>(), expiry_ns(j)};
  }

  // Renew a minute before `expire`; an unreadable expiry is trusted for five minutes.
  static std::int64_t expiry_ns(const json& j) {
    std::int64_t now = common::now_ns();
    std::int64_t fallback = now + 5 * 60 * 1'000'000'000LL;
    const json* e = find_path(j, "expire");
    if (!e || !e->is_string()) return fallback;
    try {
      std::int64_t t = parse_alert_time(*e, "expire") - 60 * 1'000'000'000LL;
      return t > now ? t : fallback;
    } catch (const AlertParseError&) {
      return fallback;
    }
  }

  Page read_page(const json& j, const std::string& what) const {
    // LAPI answers "null" rather than [] when nothing matched.
    if (j.is_null()) return {};
    if (!j.is_array()) malformed(what, "expected a JSON array of alerts");
    Page page;
    for (std::size_t i = 0; i < j.size(); ++i) add_alert(j[i], "[" + std::to_string(i) + "]", page);
    if (j.size() >= limit())
      page.note("truncated", "LAPI returned the maximum of " + std::to_string(limit()) +
                                 " alerts; older alerts in the window may be missing");
    return page;
  }

  void add_alert(const json& o, const std::string& where, Page& page) const {
    const json* id = o.is_object() ? find_path(o, "id") : nullptr;
    if (!id || !(id->is_number_integer() || id->is_string())) {
      page.note("malformed", where + ": an alert needs an id");
      return;
    }
    Alert a = base_alert(cfg_, "crowdsec_lapi", o);
    a.id = scalar_text(*id);
    a.rule = first_text(o, {"scenario"});
    a.host = first_text(o, {"machine_id"});  // the CrowdSec agent that raised it
    a.source_addresses = crowdsec::source_addresses(o);
    a.technique = technique_from(o, {"labels"}, a.text);
    a.created_ns = read_time(o, {"created_at"}, where, page);
    a.event_ns = read_time(o, {"start_at"}, where, page);
    page.alerts.push_back(std::move(a));
  }

  BearerToken bearer_{[this](HttpClient& http) { return fetch_token(http); }};
};

}  // namespace

std::unique_ptr<Vendor> make_crowdsec_lapi(const AlertSourceConfig& cfg) {
  return std::make_unique<CrowdsecLapi>(cfg);
}

}  // namespace tocsin::collector::detail::pollers
