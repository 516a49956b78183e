// Internals shared by the pollers: the interface each SIEM's reader implements, the HTTP client
// in the pollers' failure terms, and the tools for reading fields out of hostile JSON.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/alert_sources.hpp"
#include "common/clock.hpp"
#include "common/curl.hpp"

// Its own namespace inside detail, as every subsystem's internals have: names like kNsPerMs or
// Page must never meet another subsystem's at link time.
namespace tocsin::collector::detail::pollers {
namespace curl = common::curl;

using json = nlohmann::json;
using std::chrono::milliseconds;

// A SIEM that answers with more than this is broken or hostile; the transfer is aborted.
inline constexpr std::size_t kMaxResponseBytes = 16 << 20;
inline constexpr std::size_t kMaxFieldChars = 1024;  // host, rule, severity, ids
inline constexpr std::size_t kMaxNotesPerPage = 3;   // bad fields reported per page, not per alert
inline constexpr std::int64_t kNsPerMs = 1'000'000;
inline constexpr const char* kUserAgentHeader = "User-Agent: tocsin-collector/" TOCSIN_VERSION;

// ---------------------------------------------------------------------------------------------
// Outcomes of one request or one poll.

enum class FailureKind { transport, http, malformed, store };

struct PollError : std::runtime_error {
  PollError(FailureKind k, const std::string& msg, milliseconds retry = milliseconds::zero())
      : std::runtime_error(msg), kind(k), retry_after(retry) {}
  FailureKind kind;
  milliseconds retry_after;  // what the server asked for (429/503 Retry-After); 0: not said
};

// stop() was called: unwinds the poll without counting it as a failure.
struct Stopped {};

using curl::printable;

bool has_control_chars(std::string_view s);

using curl::percent_encode;

std::string form_encode(std::initializer_list<std::pair<std::string_view, std::string_view>> kv);

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
      return http_.send(with_user_agent(r));
    } catch (const curl::Aborted&) {
      throw Stopped{};
    } catch (const curl::TransferError& e) {
      throw PollError(FailureKind::transport, e.what());
    }
  }

 private:
  // libcurl sends no User-Agent by default, and some SIEMs refuse a request without one:
  // CrowdSec's LAPI answers a machine login 401 "incorrect Username or Password" unless the
  // agent reads "name/version".
  static HttpRequest with_user_agent(HttpRequest r) {
    r.headers.push_back(kUserAgentHeader);
    return r;
  }

  curl::HttpClient http_;
};

// Throws PollError (kind http, with the server's Retry-After on 429/503) unless 2xx.
void expect_2xx(const HttpResponse& r, const std::string& what);
json parse_body(const std::string& body, const std::string& what);
[[noreturn]] void malformed(const std::string& what, const std::string& problem);

// ---------------------------------------------------------------------------------------------
// Reading fields out of hostile JSON.

// `path` is dotted ("host.name"). SIEMs store both nested objects and literal dotted keys
// (Kibana's alert indices hold "kibana.alert.rule.name" as one key), so every split is tried.
const json* find_path(const json& j, std::string_view path);
std::string scalar_text(const json& v);
bool is_true(const json& j, std::string_view path);
std::string first_text(const json& j, std::initializer_list<std::string_view> paths);

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
                       const std::string& where, Page& page);
std::string technique_from(const json& j, std::initializer_list<std::string_view> paths,
                           const std::string& text);
Alert base_alert(const AlertSourceConfig& cfg, const char* type, const json& whole);

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

// One per vendor file; `cfg` must outlive the vendor.
std::unique_ptr<Vendor> make_elasticsearch(const AlertSourceConfig& cfg);
std::unique_ptr<Vendor> make_splunk_search(const AlertSourceConfig& cfg);
std::unique_ptr<Vendor> make_sentinel(const AlertSourceConfig& cfg);
std::unique_ptr<Vendor> make_crowdsec_lapi(const AlertSourceConfig& cfg);

}  // namespace tocsin::collector::detail::pollers
