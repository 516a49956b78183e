#include "agent/probes/http_check.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "agent/probes/web_download.hpp"
#include "common/crypto.hpp"
#include "common/curl_loader.hpp"
#include "common/x509.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// The body regex looks at this much of the body: libstdc++'s regex recurses per character, and
// `.*` over a 32 KiB line already overflows an 8 MiB thread stack (it crashed the agent in a
// review); 8 KiB keeps a wide margin. Health pages put what matters near the top.
constexpr std::size_t kRegexWindow = 8 * 1024;

}  // namespace

void load_http_check(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow) {
  params.check_keys({"url", "expect_status", "body_regex", "expect_sha256", "track_changes",
                     "ca_file", "cert_min_days", "max_response_time", "max_body"});
  auto p = std::make_shared<HttpCheckParams>();
  p->url = params.str("url");
  HttpUrl u;
  try {
    u = parse_http_url(p->url);
  } catch (const std::invalid_argument& e) {
    params.fail("url", std::string("not a valid URL: ") + e.what());
  }
  p->https = u.scheme == "https";
  p->host = u.host;
  p->port = u.port;
  if (!allow.allows_name(p->host, p->port))
    params.fail("url", p->host + ":" + std::to_string(p->port) +
                           " is not on the allowlist (add it under allowlist.network)");

  auto status = params.str("expect_status", "2xx");
  if (status.size() == 3 && status[0] >= '1' && status[0] <= '5' && status.substr(1) == "xx") {
    p->status_lo = (status[0] - '0') * 100;
    p->status_hi = p->status_lo + 99;
  } else if (status.size() == 3 && status.find_first_not_of("0123456789") == std::string::npos &&
             status[0] >= '1' && status[0] <= '5') {
    p->status_lo = p->status_hi = std::stoi(status);
  } else {
    params.fail("expect_status", "'" + status + "' is not a status like 200 or a class like 2xx");
  }
  p->body_regex_text = params.str("body_regex", "");
  if (!p->body_regex_text.empty()) {
    try {
      p->body_regex.emplace(p->body_regex_text, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      params.fail("body_regex", std::string("not a valid regular expression: ") + e.what());
    }
  }
  p->expect_sha256 = params.str("expect_sha256", "");
  std::transform(p->expect_sha256.begin(), p->expect_sha256.end(), p->expect_sha256.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (!p->expect_sha256.empty() &&
      (p->expect_sha256.size() != 64 ||
       p->expect_sha256.find_first_not_of("0123456789abcdef") != std::string::npos))
    params.fail("expect_sha256", "must be a SHA-256 in hex (64 digits)");
  p->track_changes = params.boolean("track_changes", false);
  p->ca_file = params.str("ca_file", "");
  if (!p->ca_file.empty() && !std::filesystem::path(p->ca_file).is_absolute())
    params.fail("ca_file", "must be an absolute path");
  auto days = params.integer("cert_min_days", 14);
  if (days < 0 || days > 3650) params.fail("cert_min_days", "must be between 0 and 3650");
  p->cert_min_days = static_cast<int>(days);
  if (params.has("max_response_time")) {
    p->max_response_time = params.duration("max_response_time");
    if (*p->max_response_time <= 0ms) params.fail("max_response_time", "must be positive");
  }
  p->max_body = params.size("max_body", p->max_body);
  if (p->max_body == 0 || p->max_body > (64u << 20))
    params.fail("max_body", "must be between 1 byte and 64MiB");
  if (!test.has("timeout"))
    s.timeout = p->max_response_time
                    ? std::max<std::chrono::milliseconds>(2 * *p->max_response_time, 10s)
                    : 10s;
  s.summary = p->url;
  s.http_check = std::move(p);
}

HttpVerdict evaluate_http(const HttpObservation& o, const HttpCheckParams& p,
                          const std::optional<std::string>& previous_sha256) {
  HttpVerdict v;
  if (o.failure == "target_not_allowlisted") return {"not_applicable", o.failure, {o.failure}};
  // The agent could not make the request: that says nothing about the service.
  if (o.failure == "libcurl_unavailable") return {"error", o.failure, {o.failure}};
  if (!o.failure.empty()) return {"unhealthy", o.failure, {o.failure}};
  if (o.status < p.status_lo || o.status > p.status_hi) v.problems.push_back("status_mismatch");
  if (o.body_matches == false) v.problems.push_back("body_mismatch");
  if (!p.expect_sha256.empty()
          ? o.body_sha256 != p.expect_sha256
          : p.track_changes && previous_sha256 && *previous_sha256 != o.body_sha256)
    v.problems.push_back("content_changed");
  if (p.https && o.cert_days_left && *o.cert_days_left < p.cert_min_days)
    v.problems.push_back("cert_expiring");
  if (p.max_response_time && o.total_us > p.max_response_time->count() * 1000)
    v.problems.push_back("slow_response");
  if (v.problems.empty()) return {"healthy", "checks_passed", {}};
  v.verdict = "unhealthy";
  v.reason = v.problems.front();
  return v;
}

namespace {

// What the TLS verification saw of the leaf certificate (filled on the transfer's thread).
// The callbacks run inside libcurl's OpenSSL, on its objects: they call only `openssl`, the
// functions of that copy (curl_loader.hpp, CurlOpenSsl), never the agent's own.
struct CertCapture {
  const common::curl::loaded::CurlOpenSsl* openssl = nullptr;
  std::optional<std::int64_t> days_left;
  std::string not_after;
  long verify_error = X509_V_OK;
};

int verify_and_capture(X509_STORE_CTX* store, void* arg) {
  auto* cap = static_cast<CertCapture*>(arg);
  const auto& o = *cap->openssl;
  int ok = o.x509_verify_cert(store);
  if (X509* leaf = o.x509_store_ctx_get0_cert(store)) {
    const ASN1_TIME* not_after = o.x509_get0_notAfter(leaf);
    int days = 0, secs = 0;
    if (o.asn1_time_diff(&days, &secs, nullptr, not_after) == 1)
      cap->days_left = common::whole_days(days, secs);
    struct tm tm {};
    if (o.asn1_time_to_tm(not_after, &tm) == 1) cap->not_after = common::utc_text(tm);
  }
  if (ok != 1) cap->verify_error = o.x509_store_ctx_get_error(store);
  return ok == 1 ? 1 : 0;
}

CURLcode on_ssl_ctx(CURL*, void* ssl_ctx, void* arg) {
  auto* cap = static_cast<CertCapture*>(arg);
  cap->openssl->ssl_ctx_set_cert_verify_callback(static_cast<SSL_CTX*>(ssl_ctx), verify_and_capture,
                                                 arg);
  return CURLE_OK;
}

struct BodySink {
  std::string data;
  std::uint64_t max = 0;
  bool truncated = false;
};

std::size_t on_body(char* ptr, std::size_t size, std::size_t n, void* arg) {
  auto* sink = static_cast<BodySink*>(arg);
  std::size_t len = size * n;
  std::size_t room = sink->max - sink->data.size();
  if (len > room) {
    sink->data.append(ptr, room);
    sink->truncated = true;
    return 0;  // stop the transfer: what is needed has arrived
  }
  sink->data.append(ptr, len);
  return len;
}

struct Fetched {
  HttpObservation obs;
  std::string primary_ip, content_type, error_text;
  std::int64_t connect_us = 0, tls_us = 0, first_byte_us = 0;
  std::uint64_t body_bytes = 0;
  std::string not_after;
};

std::string failure_for(CURLcode rc, const CertCapture& cap) {
  if (cap.verify_error != X509_V_OK)
    return cap.verify_error == X509_V_ERR_CERT_HAS_EXPIRED ? "cert_expired" : "cert_invalid";
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
      return "dns_failure";
    case CURLE_COULDNT_CONNECT:
      return "connect_failed";
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    case CURLE_PEER_FAILED_VERIFICATION:
      return "cert_invalid";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
      return "tls_failed";
    default:
      return "transfer_failed";
  }
}

// One GET with libcurl, blocking (run on the blocking pool); only `addrs` are connected to.
Fetched fetch(const HttpCheckParams& p, const std::string& marker,
              const std::vector<asio::ip::address>& addrs, std::chrono::milliseconds budget) {
  namespace curl = common::curl::loaded;
  Fetched f;
  const curl::Api* api = nullptr;
  try {
    api = &curl::api();
  } catch (const curl::Unavailable& e) {
    f.obs.failure = "libcurl_unavailable";
    f.obs.detail = e.what();
    return f;
  }
  char errbuf[CURL_ERROR_SIZE] = {0};  // declared first: libcurl may write to it until cleanup
  curl::Easy h = curl::make_easy(*api);
  CURL* c = h.get();
  BodySink sink;
  sink.max = p.max_body;
  CertCapture cap;
  cap.openssl = &api->openssl;
  curl::Slist headers = curl::make_slist(*api);
  curl::append(*api, headers, "X-Tocsin-Marker: " + marker);
  curl::Slist resolve = curl::make_slist(*api);
  boost::system::error_code ec;
  (void)asio::ip::make_address(p.host, ec);
  if (ec) {  // a name: pin it to the addresses the allowlist was checked against
    std::string entry = p.host + ":" + std::to_string(p.port) + ":";
    for (std::size_t i = 0; i < addrs.size(); ++i)
      entry += (i ? "," : "") +
               (addrs[i].is_v6() ? "[" + addrs[i].to_string() + "]" : addrs[i].to_string());
    curl::append(*api, resolve, entry);
    api->easy_setopt(c, CURLOPT_RESOLVE, resolve.get());
  }
  std::string ua = "Tocsin-http_check/1 (" + marker + ")";
  api->easy_setopt(c, CURLOPT_URL, p.url.c_str());
  api->easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  api->easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect is an answer to report
  api->easy_setopt(c, CURLOPT_PROXY, "");           // straight to the service, never via env
  api->easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  api->easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
  api->easy_setopt(c, CURLOPT_SSL_SESSIONID_CACHE, 0L);  // a full handshake shows the cert
  api->easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(budget.count()));
  api->easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(budget.count()));
  api->easy_setopt(c, CURLOPT_USERAGENT, ua.c_str());
  api->easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  api->easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  api->easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  api->easy_setopt(c, CURLOPT_WRITEDATA, &sink);
  if (p.https) {
    if (!p.ca_file.empty()) api->easy_setopt(c, CURLOPT_CAINFO, p.ca_file.c_str());
    api->easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
    api->easy_setopt(c, CURLOPT_SSL_CTX_DATA, &cap);
  }
  CURLcode rc = api->easy_perform(c);
  auto info_us = [&](CURLINFO what) {
    curl_off_t v = 0;
    api->easy_getinfo(c, what, &v);
    return static_cast<std::int64_t>(v);
  };
  f.obs.total_us = info_us(CURLINFO_TOTAL_TIME_T);
  f.connect_us = info_us(CURLINFO_CONNECT_TIME_T);
  f.tls_us = info_us(CURLINFO_APPCONNECT_TIME_T);
  f.first_byte_us = info_us(CURLINFO_STARTTRANSFER_TIME_T);
  char* ip = nullptr;
  if (api->easy_getinfo(c, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip) f.primary_ip = ip;
  char* ct = nullptr;
  if (api->easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct) f.content_type = ct;
  f.obs.cert_days_left = cap.days_left;
  f.not_after = cap.not_after;
  if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && sink.truncated)) {
    f.obs.failure = failure_for(rc, cap);
    f.obs.detail = errbuf[0] ? errbuf : api->easy_strerror(rc);
    if (cap.verify_error != X509_V_OK)
      f.obs.detail += std::string(" (") + X509_verify_cert_error_string(cap.verify_error) + ")";
    return f;
  }
  api->easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f.obs.status);
  auto digest = common::sha256(sink.data);
  f.obs.body_sha256 = common::to_hex(digest);
  f.obs.body_truncated = sink.truncated;
  f.body_bytes = sink.data.size();
  if (p.body_regex) {
    std::string_view window(sink.data.data(), std::min(sink.data.size(), kRegexWindow));
    f.obs.body_matches = std::regex_search(window.begin(), window.end(), *p.body_regex);
  }
  return f;
}

std::string ms_text(std::int64_t us) {
  return std::to_string(us / 1000.0);
}

}  // namespace

asio::awaitable<std::vector<common::ResultBody>> HttpCheckProbe::run(const TestSpec& test,
                                                                     std::string marker) {
  const auto& p = *test.http_check;
  auto b = start_result(test, marker);
  b.target = p.url;
  auto t0 = Clock::now();
  auto resolved = co_await resolve_allowed(ex_, allow_, p.host, p.port, test.timeout);
  Fetched f;
  if (!resolved.failure.empty()) {
    f.obs.failure = resolved.failure;
    f.obs.detail = resolved.detail;
  } else {
    auto budget = std::max<std::chrono::milliseconds>(
        test.timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0),
        1ms);
    auto job = [params = test.http_check, marker, addrs = resolved.addrs, budget] {
      return fetch(*params, marker, addrs, budget);
    };
    f = co_await run_blocking(job);
  }
  std::optional<std::string> previous;
  if (p.track_changes && f.obs.failure.empty()) {
    std::lock_guard lock(hashes_mutex_);
    auto it = last_hash_.find(test.id);
    if (it != last_hash_.end()) previous = it->second;
    last_hash_[test.id] = f.obs.body_sha256;
  }
  auto v = evaluate_http(f.obs, p, previous);
  b.verdict = v.verdict;
  b.reason = v.reason;
  auto& ev = b.evidence;
  std::string problems;
  for (const auto& x : v.problems) problems += (problems.empty() ? "" : ",") + x;
  if (!problems.empty()) ev["problems"] = problems;
  ev["url"] = p.url;
  ev["expect_status"] = p.status_lo == p.status_hi ? std::to_string(p.status_lo)
                                                   : std::to_string(p.status_lo / 100) + "xx";
  ev["timeout_ms"] = std::to_string(test.timeout.count());
  if (!f.obs.detail.empty()) ev["detail"] = f.obs.detail;
  if (!f.primary_ip.empty()) ev["address"] = f.primary_ip;
  if (f.obs.total_us) ev["response_time_ms"] = ms_text(f.obs.total_us);
  if (f.connect_us) ev["connect_ms"] = ms_text(f.connect_us);
  if (f.tls_us) ev["tls_ms"] = ms_text(f.tls_us);
  if (p.max_response_time)
    ev["max_response_time_ms"] = std::to_string(p.max_response_time->count());
  if (f.obs.cert_days_left) {
    ev["cert_days_left"] = std::to_string(*f.obs.cert_days_left);
    ev["cert_not_after"] = f.not_after;
    ev["cert_min_days"] = std::to_string(p.cert_min_days);
  }
  if (f.obs.failure.empty()) {
    ev["status"] = std::to_string(f.obs.status);
    ev["body_sha256"] = f.obs.body_sha256;
    ev["body_bytes"] = std::to_string(f.body_bytes);
    if (f.obs.body_truncated) ev["body_truncated"] = "true";
    if (!f.content_type.empty()) ev["content_type"] = f.content_type;
    if (p.body_regex) ev["body_regex"] = p.body_regex_text;
    if (previous) ev["previous_sha256"] = *previous;
    if (!p.expect_sha256.empty()) ev["expected_sha256"] = p.expect_sha256;
  }
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
