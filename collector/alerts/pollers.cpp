#include "collector/alerts/pollers.hpp"

#include <pthread.h>

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "common/curl.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"

namespace tocsin::collector {
namespace curl = common::curl;
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

// A SIEM that answers with more than this is broken or hostile; the transfer is aborted.
constexpr std::size_t kMaxResponseBytes = 16 << 20;
constexpr std::size_t kMaxFieldChars = 1024;  // host, rule, severity, ids
constexpr std::size_t kMaxPageSize = 10000;   // Elasticsearch's default max_result_window
constexpr std::size_t kMaxNotesPerPage = 3;   // bad fields reported per page, not per alert
constexpr milliseconds kMaxBackoff = 5min;
constexpr milliseconds kMaxRetryAfter = 10min;  // a hostile Retry-After cannot park us for days
constexpr milliseconds kSubmitTimeout = 2min;
constexpr milliseconds kMinBackoffBase = 50ms;
constexpr std::int64_t kNsPerMs = 1'000'000;
constexpr const char* kLogAnalyticsScope = "https://api.loganalytics.io/.default";

// ---------------------------------------------------------------------------------------------
// Outcomes of one request or one poll.

enum class FailureKind { transport, http, malformed, store };

struct PollError : std::runtime_error {
  PollError(FailureKind k, const std::string& msg, milliseconds retry = 0ms)
      : std::runtime_error(msg), kind(k), retry_after(retry) {}
  FailureKind kind;
  milliseconds retry_after;  // what the server asked for (429/503 Retry-After); 0: not said
};

// stop() was called: unwinds the poll without counting it as a failure.
struct Stopped {};

using curl::printable;

bool has_control_chars(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

using curl::percent_encode;

std::string form_encode(std::initializer_list<std::pair<std::string_view, std::string_view>> kv) {
  std::string out;
  for (const auto& [k, v] : kv) {
    if (!out.empty()) out += '&';
    out += percent_encode(k) + "=" + percent_encode(v);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// libcurl, one easy handle per poller thread (reused so keep-alive connections are reused).

using curl::HttpRequest;
using curl::HttpResponse;

// The shared client, with its failures in the pollers' terms.
class HttpClient {
 public:
  HttpClient(const AlertSourceConfig& cfg, const std::atomic<bool>& stopping)
      : http_({cfg.ca_file, cfg.timeout, kMaxResponseBytes, &stopping}) {}

  HttpResponse send(const HttpRequest& r) {
    try {
      return http_.send(r);
    } catch (const curl::Aborted&) {
      throw Stopped{};
    } catch (const curl::TransferError& e) {
      throw PollError(FailureKind::transport, e.what());
    }
  }

 private:
  curl::HttpClient http_;
};

milliseconds parse_retry_after(const std::string& v) {
  return curl::parse_retry_after(v, kMaxRetryAfter);
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

// ---------------------------------------------------------------------------------------------
// Reading fields out of hostile JSON.

// `path` is dotted ("host.name"). SIEMs store both nested objects and literal dotted keys
// (Kibana's alert indices hold "kibana.alert.rule.name" as one key), so every split is tried.
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

// Collects bad-field notes for AlertSink::rejected while building one page of alerts.
struct Page {
  std::vector<Alert> alerts;
  bool more = false;  // another page of the same window is waiting
  std::vector<std::pair<std::string, std::string>> notes;  // (reason, detail)
  std::string partial_error;  // the SIEM says the results are incomplete

  void note(std::string reason, std::string detail) {
    if (notes.size() < kMaxNotesPerPage) notes.emplace_back(std::move(reason), std::move(detail));
  }
};

// A time the source did not give is 0; one it gave but garbled is 0 plus a "malformed" note,
// so a single odd field costs that timestamp, not the whole alert.
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

// ---------------------------------------------------------------------------------------------
// Vendors: how one page of one window is asked for and read.

struct Window {
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
};

// A bearer token fetched on demand, cached until shortly before it expires, and fetched again
// once when a request is answered 401 (revoked or expired early). `fetch` returns the token
// and the wall-clock time (ns) until which to reuse it.
class BearerToken {
 public:
  using Fetch = std::function<std::pair<std::string, std::int64_t>(HttpClient&)>;
  explicit BearerToken(Fetch fetch) : fetch_(std::move(fetch)) {}

  HttpResponse send(HttpClient& http, const HttpRequest& req) {
    HttpResponse resp = http.send(with_token(req, get(http)));
    if (resp.status != 401) return resp;
    token_.clear();
    return http.send(with_token(req, get(http)));
  }

 private:
  static HttpRequest with_token(HttpRequest r, const std::string& token) {
    r.headers.push_back("Authorization: Bearer " + token);
    return r;
  }
  const std::string& get(HttpClient& http) {
    if (token_.empty() || common::now_ns() >= valid_until_ns_)
      std::tie(token_, valid_until_ns_) = fetch_(http);
    return token_;
  }

  Fetch fetch_;
  std::string token_;
  std::int64_t valid_until_ns_ = 0;
};

class Vendor {
 public:
  explicit Vendor(const AlertSourceConfig& cfg) : cfg_(cfg) {}
  virtual ~Vendor() = default;
  virtual void restart() {}  // a new window begins: forget any paging position
  virtual Page fetch(HttpClient& http, const Window& w) = 0;

 protected:
  const AlertSourceConfig& cfg_;
};

// Elasticsearch / OpenSearch: POST /<index>/_search with search_after.
//
// Tiebreaker: ES recommends a point in time with the implicit `_shard_doc` tiebreaker, but the
// PIT API differs between Elasticsearch (POST /<index>/_pit) and OpenSearch (POST
// /<index>/_search/point_in_time) and does not exist before ES 7.10. Sorting on `_id` fails
// on ES 8 (no fielddata for _id). So the sort is [time_field, _doc]: valid everywhere, exact
// within a shard; across shards, hits sharing the very same timestamp at a page boundary can
// be skipped or repeated. Repeats are deduplicated by id, and a skipped hit is read again by
// the next poll, whose window overlaps this one by the lookback with different page edges.
class Elasticsearch : public Vendor {
 public:
  using Vendor::Vendor;
  void restart() override { search_after_ = nullptr; }

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = cfg_.url + "/" + cfg_.index + "/_search";
    HttpRequest req;
    req.post = true;
    req.url = cfg_.url + "/" + percent_encode(cfg_.index, "*,:") + "/_search";
    req.headers.push_back("Content-Type: application/json");
    if (!cfg_.api_key.empty()) {
      req.headers.push_back("Authorization: ApiKey " + cfg_.api_key);
    } else if (!cfg_.username.empty()) {
      req.username = cfg_.username;
      req.password = cfg_.password;
    }
    req.body = request_body(w).dump();
    HttpResponse resp = http.send(req);
    expect_2xx(resp, what);
    return read_page(parse_body(resp.body, what), what);
  }

 private:
  json request_body(const Window& w) const {
    json bounds = {{"gte", common::format_time(w.start_ns)},
                   {"lte", common::format_time(w.end_ns)},
                   {"format", "strict_date_optional_time"}};
    json range = json::object();
    range["range"][cfg_.time_field] = bounds;
    json filter = json::array();
    filter.push_back(range);
    if (!cfg_.query.empty()) {
      json qs = json::object();
      qs["query_string"]["query"] = cfg_.query;
      filter.push_back(qs);
    }
    // unmapped_type: an index in the pattern without the field sorts last instead of failing
    // the whole search.
    json by_time = json::object();
    by_time[cfg_.time_field] = {{"order", "asc"}, {"unmapped_type", "date"}};
    json by_doc = json::object();
    by_doc["_doc"]["order"] = "asc";
    json body = json::object();
    body["size"] = cfg_.page_size;
    body["query"]["bool"]["filter"] = filter;
    body["sort"] = json::array({by_time, by_doc});
    body["track_total_hits"] = false;
    if (!search_after_.is_null()) body["search_after"] = search_after_;
    return body;
  }

  Page read_page(const json& j, const std::string& what) {
    const json* hits = j.is_object() ? find_path(j, "hits.hits") : nullptr;
    if (!hits || !hits->is_array()) malformed(what, "no hits.hits array");
    Page page;
    if (is_true(j, "timed_out"))
      page.partial_error = "search timed out on " + what + " (partial results)";
    if (const json* failed = find_path(j, "_shards.failed");
        failed && failed->is_number() && failed->get<double>() > 0)
      page.partial_error = "shard failures on " + what + " (partial results)";
    for (std::size_t i = 0; i < hits->size(); ++i)
      add_hit((*hits)[i], "hits.hits[" + std::to_string(i) + "]", page);
    page.more = !hits->empty() && hits->size() >= cfg_.page_size;
    if (page.more) {
      const json* sort = find_path(hits->back(), "sort");
      if (!sort || !sort->is_array() || sort->empty() || sort->size() > 8)
        malformed(what, "the last hit has no usable sort values for search_after");
      for (const auto& v : *sort)
        if (!v.is_primitive()) malformed(what, "a sort value of the last hit is not a scalar");
      search_after_ = *sort;
    }
    return page;
  }

  void add_hit(const json& hit, const std::string& where, Page& page) const {
    const json* id = hit.is_object() ? find_path(hit, "_id") : nullptr;
    const json* src = hit.is_object() ? find_path(hit, "_source") : nullptr;
    if (!id || !id->is_string() || !src || !src->is_object()) {
      page.note("malformed", where + ": a hit needs a string _id and an object _source");
      return;
    }
    Alert a = base_alert(cfg_, "elasticsearch", *src);
    a.id = printable(first_text(hit, {"_index"}) + "/" + id->get<std::string>(), kMaxFieldChars);
    a.host = first_text(*src, {"host.name", "host.hostname", "agent.name"});
    a.rule = first_text(*src, {"rule.name", "kibana.alert.rule.name", "signal.rule.name"});
    a.severity = first_text(
        *src, {"kibana.alert.severity", "signal.rule.severity", "event.severity", "log.level"});
    a.technique = technique_from(
        *src, {"threat.technique.id", "threat", "kibana.alert.rule.threat", "signal.rule.threat"},
        a.text);
    std::string at = where + "._source";
    // A Kibana alert's @timestamp is when the rule fired; the activity's own time is in
    // original_time, which is what the event timestamp means here.
    a.event_ns = read_time(
        *src, {"kibana.alert.original_time", "signal.original_time", cfg_.time_field, "@timestamp"},
        at, page);
    a.ingest_ns = read_time(*src, {"event.ingested"}, at, page);
    a.created_ns = read_time(*src, {"kibana.alert.start"}, at, page);
    page.alerts.push_back(std::move(a));
  }

  json search_after_;
};

// Splunk: POST /services/search/jobs/export. It streams every result of the window at once
// (no paging); the response cap bounds it.
class SplunkSearch : public Vendor {
 public:
  using Vendor::Vendor;

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = cfg_.url + "/services/search/jobs/export";
    HttpRequest req;
    req.post = true;
    req.url = what;
    req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    if (!cfg_.api_key.empty()) {
      req.headers.push_back("Authorization: Bearer " + cfg_.api_key);
    } else {
      req.username = cfg_.username;
      req.password = cfg_.password;
    }
    std::string earliest = epoch_seconds(w.start_ns), latest = epoch_seconds(w.end_ns);
    req.body = form_encode({{"search", search_text()},
                            {"earliest_time", earliest},
                            {"latest_time", latest},
                            {"output_mode", "json"}});
    HttpResponse resp = http.send(req);
    expect_2xx(resp, what);
    return read_stream(resp.body, what);
  }

 private:
  // The export endpoint runs SPL as given; a bare filter needs the implicit "search" command.
  std::string search_text() const {
    std::string_view q = cfg_.query;
    while (!q.empty() && std::isspace(static_cast<unsigned char>(q.front()))) q.remove_prefix(1);
    bool has_command =
        q.starts_with("|") || (q.starts_with("search") &&
                               (q.size() == 6 || std::isspace(static_cast<unsigned char>(q[6]))));
    return has_command ? std::string(q) : "search " + std::string(q);
  }

  static std::string epoch_seconds(std::int64_t ns) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%lld.%03lld", static_cast<long long>(ns / 1'000'000'000),
                  static_cast<long long>((ns % 1'000'000'000) / kNsPerMs));
    return buf;
  }

  // Newline-delimited JSON objects; read value by value so concatenated objects work too.
  Page read_stream(const std::string& body, const std::string& what) const {
    Page page;
    std::istringstream in(body);
    for (std::size_t n = 0;; ++n) {
      in >> std::ws;
      if (in.peek() == std::char_traits<char>::eof()) break;
      json obj;
      try {
        in >> obj;
      } catch (const json::exception&) {
        malformed(what, "object " + std::to_string(n) + " of the stream is not valid JSON");
      }
      if (!obj.is_object()) malformed(what, "item " + std::to_string(n) + " is not an object");
      read_item(obj, n, page);
    }
    return page;
  }

  void read_item(const json& obj, std::size_t n, Page& page) const {
    if (const json* msgs = find_path(obj, "messages"); msgs && msgs->is_array())
      for (const auto& m : *msgs) {
        std::string type = first_text(m, {"type"});
        if (type == "FATAL" || type == "ERROR")
          page.partial_error = "Splunk search " + type + ": " + first_text(m, {"text"});
      }
    const json* result = find_path(obj, "result");
    if (!result) return;  // lastrow, progress and other framing
    if (!result->is_object()) {
      page.note("malformed", "item " + std::to_string(n) + ": result is not an object");
      return;
    }
    if (is_true(obj, "preview")) return;  // the final copy follows
    add_result(*result, "results[" + std::to_string(n) + "]", page);
  }

  void add_result(const json& r, const std::string& where, Page& page) const {
    Alert a = base_alert(cfg_, "splunk_search", r);
    a.id = result_id(r);
    a.host = first_text(r, {"host"});
    a.rule = first_text(r, {"search_name", "savedsearch_name", "source"});
    a.severity = first_text(r, {"severity", "urgency"});
    a.technique = technique_from(
        r, {"annotations.mitre_attack", "mitre_technique_id", "technique_id"}, a.text);
    a.event_ns = read_time(r, {"_time"}, where, page);
    a.ingest_ns = read_time(r, {"_indextime"}, where, page);
    page.alerts.push_back(std::move(a));
  }

  // _cd (bucket:offset) is unique only within a bucket; _bkt names the index and bucket.
  // Without them (a transforming search) the id hashes the fields that do not change between
  // searches (_serial and _si do), so overlapping windows still deduplicate.
  static std::string result_id(const json& r) {
    std::string cd = first_text(r, {"_cd"});
    if (!cd.empty()) {
      std::string bkt = first_text(r, {"_bkt"});
      return bkt.empty() ? cd : bkt + "/" + cd;
    }
    json stable = json::object();
    for (const auto& [k, v] : r.items())
      if (k != "_serial" && k != "_si") stable[k] = v;
    auto digest = common::sha256(stable.dump());
    return "sha256:" + common::to_hex(digest);
  }
};

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
    HttpResponse resp = send_authorized(http, req);
    expect_2xx(resp, what);
    return read_page(parse_body(resp.body, what), what);
  }

 private:
  std::size_t limit() const {
    std::size_t pages = std::min<std::size_t>(cfg_.max_pages, kMaxAlertsPerRequest);
    return std::min(cfg_.page_size * pages, kMaxAlertsPerRequest);
  }

  // LAPI documents GET /alerts for machines (JWT from /v1/watchers/login); X-Api-Key is the
  // bouncer scheme, used only when no machine login is configured.
  HttpResponse send_authorized(HttpClient& http, const HttpRequest& req) {
    if (cfg_.username.empty()) {
      HttpRequest r = req;
      r.headers.push_back("X-Api-Key: " + cfg_.api_key);
      return http.send(r);
    }
    return bearer_.send(http, req);
  }

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
    a.host = first_text(o, {"machine_id"});
    a.technique = technique_from(o, {"labels"}, a.text);
    a.created_ns = read_time(o, {"created_at"}, where, page);
    a.event_ns = read_time(o, {"start_at"}, where, page);
    page.alerts.push_back(std::move(a));
  }

  BearerToken bearer_{[this](HttpClient& http) { return fetch_token(http); }};
};

// ---------------------------------------------------------------------------------------------
// Configuration checks: fail at start with the field's name, not at the first poll.

void require(bool ok, const AlertSourceConfig& cfg, const std::string& problem) {
  if (!ok) throw std::invalid_argument("alert source '" + cfg.name + "': " + problem);
}

void check_common(const AlertSourceConfig& cfg) {
  require(cfg.url.starts_with("http://") || cfg.url.starts_with("https://"), cfg,
          "url must start with https:// (or http://)");
  require(!has_control_chars(cfg.url) && cfg.url.find(' ') == std::string::npos, cfg,
          "url contains spaces or control characters");
  require(cfg.interval > 0ms, cfg, "interval must be positive");
  require(cfg.timeout > 0ms, cfg, "timeout must be positive");
  require(cfg.lookback >= 0ms, cfg, "lookback must not be negative");
  require(cfg.page_size >= 1 && cfg.page_size <= kMaxPageSize, cfg,
          "page_size must be 1.." + std::to_string(kMaxPageSize));
  require(cfg.max_pages >= 1, cfg, "max_pages must be at least 1");
  // These end up in HTTP headers: a newline would inject headers of its own.
  for (const auto* s : {&cfg.api_key, &cfg.username, &cfg.password, &cfg.client_id})
    require(!has_control_chars(*s), cfg, "credentials contain control characters");
}

void check_vendor(const AlertSourceConfig& cfg) {
  bool basic = !cfg.username.empty();
  switch (cfg.type) {
    case SourceType::elasticsearch:
      require(!cfg.index.empty(), cfg, "elasticsearch needs index");
      require(!cfg.time_field.empty(), cfg, "elasticsearch needs time_field");
      break;
    case SourceType::splunk_search:
      require(!cfg.query.empty(), cfg, "splunk_search needs query");
      require(basic || !cfg.api_key.empty(), cfg, "splunk_search needs username or api_key");
      break;
    case SourceType::sentinel:
      require(!cfg.query.empty(), cfg, "sentinel needs query (KQL)");
      require(!cfg.workspace_id.empty(), cfg, "sentinel needs workspace_id");
      require(!cfg.client_id.empty() && !cfg.client_secret.empty(), cfg,
              "sentinel needs client_id and client_secret");
      require(!cfg.token_url.empty() || !cfg.tenant_id.empty(), cfg,
              "sentinel needs tenant_id or token_url");
      break;
    case SourceType::crowdsec_lapi:
      require(basic || !cfg.api_key.empty(), cfg,
              "crowdsec_lapi needs username/password (machine) or api_key");
      break;
    default:
      require(false, cfg, "type is not a poller");
  }
}

std::unique_ptr<Vendor> make_vendor(const AlertSourceConfig& cfg) {
  switch (cfg.type) {
    case SourceType::elasticsearch:
      return std::make_unique<Elasticsearch>(cfg);
    case SourceType::splunk_search:
      return std::make_unique<SplunkSearch>(cfg);
    case SourceType::sentinel:
      return std::make_unique<Sentinel>(cfg);
    case SourceType::crowdsec_lapi:
      return std::make_unique<CrowdsecLapi>(cfg);
    default:
      return nullptr;
  }
}

// The sink answers on its own thread, possibly after we gave up waiting: the shared state
// outlives whichever side finishes first.
struct SubmitWait {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<SubmitOutcome> outcome;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Poller::Impl {
  Impl(AlertSourceConfig c, AlertSink& s) : cfg(std::move(c)), sink(s) {
    while (cfg.url.ends_with("/")) cfg.url.pop_back();
    check_common(cfg);
    check_vendor(cfg);
    vendor = make_vendor(cfg);
    rng.seed(std::random_device{}());
  }

  AlertSourceConfig cfg;
  AlertSink& sink;
  std::unique_ptr<Vendor> vendor;
  std::thread thread;
  std::atomic<bool> stopping{false};

  mutable std::mutex mu;  // guards status, stop_requested, current_submit
  std::condition_variable cv;
  bool stop_requested = false;
  PollerStatus stat;
  std::shared_ptr<SubmitWait> current_submit;

  // Owned by the poller thread.
  std::mt19937_64 rng;
  std::int64_t cursor_ns = 0;     // end of the last fully read window
  std::optional<Window> pending;  // a window whose remaining pages wait for the next poll
  unsigned consecutive_failures = 0;

  void run();
  milliseconds poll_once(HttpClient& http);
  std::size_t read_window(HttpClient& http, const Window& w, bool& finished);
  std::size_t submit(std::vector<Alert> alerts);
  std::size_t submit_chunk(std::vector<Alert> chunk);
  void report(const Page& page);
  void succeeded(std::size_t accepted);
  milliseconds failed(const PollError& e, std::size_t accepted);
  milliseconds backoff(milliseconds retry_after);
  bool sleep_for(milliseconds d);
  void request_stop();
};

void Poller::Impl::run() {
  try {
    HttpClient http(cfg, stopping);
    while (true) {
      auto started = std::chrono::steady_clock::now();
      milliseconds delay = poll_once(http);
      // Polls keep their cadence however long one took (osquery-style drift compensation).
      auto next = started + delay;
      auto now = std::chrono::steady_clock::now();
      if (next < now) next = now + std::min(delay, cfg.interval);
      if (!sleep_for(std::chrono::duration_cast<milliseconds>(next - now))) return;
    }
  } catch (const Stopped&) {
  } catch (const std::exception& e) {
    spdlog::error("poller {}: stopped by an unexpected error: {}", cfg.name, e.what());
    std::lock_guard lock(mu);
    stat.last_error = std::string("poller stopped: ") + e.what();
  }
}

milliseconds Poller::Impl::poll_once(HttpClient& http) {
  std::int64_t now = common::now_ns();
  {
    std::lock_guard lock(mu);
    stat.last_attempt_ns = now;
  }
  // Until a window completes, the first attempt's time stands in for "the last window end",
  // so a first poll that fails is retried from the same start, not from a later one.
  if (cursor_ns == 0) cursor_ns = now;
  Window w = pending ? *pending : Window{cursor_ns - cfg.lookback.count() * kNsPerMs, now};
  if (!pending) vendor->restart();
  std::size_t accepted = 0;
  try {
    bool finished = false;
    accepted = read_window(http, w, finished);
    if (finished) {
      cursor_ns = w.end_ns;
      pending.reset();
    } else {
      pending = w;  // max_pages reached: the next poll continues where this one stopped
    }
    succeeded(accepted);
    return cfg.interval;
  } catch (const PollError& e) {
    pending.reset();  // the retry re-reads the whole window; the sink drops the repeats
    return failed(e, accepted);
  } catch (const nlohmann::json::exception& e) {
    pending.reset();
    return failed(PollError(FailureKind::malformed, cfg.url + ": " + e.what()), accepted);
  } catch (const std::exception& e) {
    pending.reset();
    return failed(PollError(FailureKind::transport, e.what()), accepted);
  }
}

std::size_t Poller::Impl::read_window(HttpClient& http, const Window& w, bool& finished) {
  std::size_t accepted = 0;
  for (std::size_t i = 0; i < cfg.max_pages; ++i) {
    Page page = vendor->fetch(http, w);
    report(page);
    if (!page.alerts.empty()) accepted += submit(std::move(page.alerts));
    if (!page.partial_error.empty()) throw PollError(FailureKind::http, page.partial_error);
    if (!page.more) {
      finished = true;
      return accepted;
    }
  }
  return accepted;
}

void Poller::Impl::report(const Page& page) {
  for (const auto& [reason, detail] : page.notes) sink.rejected(cfg.name, reason, detail);
}

std::size_t Poller::Impl::submit(std::vector<Alert> alerts) {
  std::size_t accepted = 0;
  for (std::size_t off = 0; off < alerts.size(); off += kMaxAlertsPerRequest) {
    std::size_t end = std::min(alerts.size(), off + kMaxAlertsPerRequest);
    std::vector<Alert> chunk(std::make_move_iterator(alerts.begin() + off),
                             std::make_move_iterator(alerts.begin() + end));
    accepted += submit_chunk(std::move(chunk));
  }
  return accepted;
}

// Blocks until the sink has stored the alerts: only then may the window move forward.
std::size_t Poller::Impl::submit_chunk(std::vector<Alert> chunk) {
  auto wait = std::make_shared<SubmitWait>();
  {
    std::lock_guard lock(mu);
    if (stop_requested) throw Stopped{};
    current_submit = wait;
  }
  std::int64_t arrival = common::now_ns();
  for (auto& a : chunk) a.arrival_ns = arrival;
  sink.submit(std::move(chunk), [wait](SubmitOutcome o) {
    std::lock_guard lock(wait->mu);
    wait->outcome = std::move(o);
    wait->cv.notify_all();
  });
  std::unique_lock lock(wait->mu);
  bool answered = wait->cv.wait_for(lock, kSubmitTimeout,
                                    [&] { return wait->outcome.has_value() || stopping.load(); });
  if (!wait->outcome && stopping.load()) throw Stopped{};
  if (!answered)
    throw PollError(FailureKind::store, "the alert store did not answer within " +
                                            std::to_string(kSubmitTimeout.count() / 1000) + " s");
  if (!wait->outcome->error.empty())
    throw PollError(FailureKind::store,
                    "the alert store refused the alerts: " + wait->outcome->error);
  return wait->outcome->accepted;
}

void Poller::Impl::succeeded(std::size_t accepted) {
  consecutive_failures = 0;
  std::lock_guard lock(mu);
  stat.last_success_ns = common::now_ns();
  stat.polls += 1;
  stat.alerts += accepted;
}

milliseconds Poller::Impl::failed(const PollError& e, std::size_t accepted) {
  ++consecutive_failures;
  {
    std::lock_guard lock(mu);
    stat.polls += 1;
    stat.failures += 1;
    stat.alerts += accepted;
    stat.last_error = e.what();
  }
  sink.rejected(cfg.name, e.kind == FailureKind::malformed ? "malformed" : "poll_failed", e.what());
  return backoff(e.retry_after);
}

// Exponential from the poll interval, capped, with "equal jitter" (half fixed, half random) so
// many pollers that failed together do not retry together; never sooner than Retry-After.
milliseconds Poller::Impl::backoff(milliseconds retry_after) {
  milliseconds base = std::max(cfg.interval, kMinBackoffBase);
  unsigned shift = std::min(consecutive_failures - 1, 20u);
  double exp = std::min<double>(static_cast<double>(base.count()) * std::ldexp(1.0, shift),
                                static_cast<double>(kMaxBackoff.count()));
  std::uniform_real_distribution<double> jitter(0.0, exp / 2);
  milliseconds delay(static_cast<std::int64_t>(exp / 2 + jitter(rng)));
  return std::max(delay, retry_after);
}

bool Poller::Impl::sleep_for(milliseconds d) {
  std::unique_lock lock(mu);
  cv.wait_for(lock, d, [&] { return stop_requested; });
  return !stop_requested;
}

void Poller::Impl::request_stop() {
  std::shared_ptr<SubmitWait> waiting;
  {
    std::lock_guard lock(mu);
    stop_requested = true;
    stopping.store(true);
    waiting = current_submit;
  }
  cv.notify_all();
  if (waiting) {
    std::lock_guard lock(waiting->mu);  // the waiter checks `stopping` under this mutex
    waiting->cv.notify_all();
  }
}

Poller::Poller(AlertSourceConfig cfg, AlertSink& sink)
    : impl_(std::make_unique<Impl>(std::move(cfg), sink)) {}

Poller::~Poller() {
  stop();
}

void Poller::start() {
  if (impl_->thread.joinable() || impl_->stopping.load())
    throw std::logic_error("poller '" + impl_->cfg.name + "' was already started or stopped");
  impl_->thread = std::thread([impl = impl_.get()] {
    pthread_setname_np(pthread_self(), "poller");
    impl->run();
  });
}

void Poller::stop() {
  impl_->request_stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

PollerStatus Poller::status() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stat;
}

}  // namespace tocsin::collector
