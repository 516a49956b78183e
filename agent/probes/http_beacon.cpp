#include "agent/probes/http_beacon.hpp"

#include <algorithm>

namespace tocsin::agent {

using namespace std::chrono_literals;

void load_http_beacon(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                      const Allowlist& allow) {
  params.check_keys({"url", "proxy", "method", "header", "user_agent", "ca_file"});
  auto p = std::make_shared<HttpBeaconParams>();
  auto u = load_url_param(params, "url", allow);
  p->url = params.str("url");
  p->proxy = load_proxy_param(params, allow);
  p->method = params.str("method", p->method);
  if (p->method != "GET" && p->method != "POST") params.fail("method", "must be GET or POST");
  p->header = params.str("header", p->header);
  if (p->header.empty() || p->header.size() > 64 ||
      p->header.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != std::string::npos)
    params.fail("header", "must be an HTTP header name (letters, digits, '-')");
  // Looks like a common implant's default, with the marker a detector can key on.
  p->user_agent = load_user_agent_param(
      params, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Tocsin-Beacon/1.0 {marker}");
  p->ca_file = load_ca_file_param(params);
  if (!test.has("timeout")) s.timeout = 10s;
  s.summary = p->method + " " + u.str() + (p->proxy ? " via " + p->proxy->to_string() : " direct");
  s.http_beacon = std::move(p);
}

std::string beacon_url(const std::string& url_template, const std::string& marker) {
  if (url_template.find(kMarkerPlaceholder) != std::string::npos)
    return replace_marker(url_template, marker);
  auto u = parse_http_url(url_template);
  u.path += (u.path.back() == '/' ? "" : "/") + marker;
  return u.str();
}

Verdict beacon_verdict(const FetchResult& r, bool via_proxy) {
  if (r.transport == Transport::not_allowlisted)
    return {"not_applicable", "target_not_allowlisted"};
  long status = r.connect_status >= 300 ? r.connect_status : r.status;
  if (status > 0) {
    switch (proxy_page(r.headers)) {
      case ProxyPage::denied:
        return {"prevented", "blocked_by_proxy"};
      case ProxyPage::upstream_failure:
        return {"inconclusive", "proxy_upstream_failure"};
      case ProxyPage::none:
        break;
    }
    if (status == 407) return {"inconclusive", "proxy_auth_required"};
    // A proxy that cannot reach the origin says so with 502/503/504: that is no block, and the
    // origin was not reached either.
    if (via_proxy && (r.connect_status >= 500 || status == 502 || status == 503 || status == 504))
      return {"inconclusive", "proxy_upstream_failure"};
    // A refusal to CONNECT can only come from the proxy; a 403/451 through a proxy that does
    // not name itself is taken as its refusal too (the evidence keeps the Server header).
    if (r.connect_status >= 300) return {"prevented", "blocked_by_proxy"};
    if (via_proxy && (status == 403 || status == 451)) return {"prevented", "blocked_status"};
    return {"not_prevented", "origin_responded"};
  }
  return transport_verdict(r.transport);
}

boost::asio::awaitable<std::vector<common::ResultBody>> HttpBeaconProbe::run(const TestSpec& test,
                                                                             std::string marker) {
  auto b = start_result(test, marker);
  const HttpBeaconParams p = *test.http_beacon;  // a copy: the run may outlive a reload
  auto timeout = test.timeout;
  auto url_text = beacon_url(p.url, marker);
  b.target = url_text;
  b.evidence["url"] = url_text;
  b.evidence["proxy"] = p.proxy ? p.proxy->to_string() : "direct";
  b.evidence["method"] = p.method;
  FetchRequest req;
  req.url = url_text;
  req.proxy = p.proxy;
  req.method = p.method;
  req.user_agent = replace_marker(p.user_agent, marker);
  req.headers = {p.header + ": " + marker, "Accept: */*"};
  if (p.method == "POST") req.body = "id=" + marker;
  req.timeout = timeout;
  req.ca_file = p.ca_file;
  req.max_bytes = 1u << 20;  // the answer only proves the origin was reached
  b.evidence["user_agent"] = req.user_agent;
  b.evidence["request_header"] = p.header + ": " + marker;
  auto url = parse_http_url(url_text);
  if (auto why = off_allowlist(url, p.proxy, allow_); !why.empty()) {
    b.verdict = "not_applicable";
    b.reason = "target_not_allowlisted";
    b.evidence["detail"] = why;
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }
  const Allowlist* allow = &allow_;
  bool named = connect_host_named(url, p.proxy, allow_);
  // The job captures only pointers (see WebDownloadProbe::run): `req` and `r` live in this
  // frame until it is done.
  FetchResult r;
  auto job = [rq = &req, out = &r, allow, named] {
    *out = http_fetch(*rq, *allow, named);
    return true;
  };
  co_await run_blocking(job);
  auto v = beacon_verdict(r, p.proxy.has_value());
  b.verdict = v.verdict;
  b.reason = v.reason;
  add_fetch_evidence(b.evidence, r);
  if (r.over_cap) b.evidence.erase("over_cap");  // the answer was cut on purpose
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
