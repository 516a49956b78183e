#include "agent/probes/web_download.hpp"

#include <sys/socket.h>

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/curl_loader.hpp"
#include "common/text.hpp"

namespace tocsin::agent {

namespace {

using namespace std::chrono_literals;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

std::string trim(std::string s) {
  auto b = s.find_first_not_of(" \t\r\n");
  auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

bool is_ip(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  return !ec;
}

std::string host_port_text(const std::string& host, std::uint16_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

}  // namespace

// ---- URLs -----------------------------------------------------------------------------------

std::string HttpUrl::str() const {
  std::string out =
      scheme + "://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host);
  if (explicit_port) out += ":" + std::to_string(port);
  out += path;
  if (has_query) out += "?" + query;
  return out;
}

std::string HttpUrl::allowlist_host() const {
  if (host.size() > 1 && host.back() == '.' && !host_is_ip())
    return host.substr(0, host.size() - 1);
  return host;
}

bool HttpUrl::host_is_ip() const {
  return is_ip(host);
}

HttpUrl parse_http_url(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("'" + std::string(text) + "': " + why);
  };
  for (unsigned char c : text)
    if (c <= 0x20 || c >= 0x7f) throw bad("spaces and control characters are not allowed");
  HttpUrl u;
  auto sep = text.find("://");
  if (sep == std::string_view::npos) throw bad("expected http://host/path or https://host/path");
  u.scheme = lower(std::string(text.substr(0, sep)));
  if (u.scheme != "http" && u.scheme != "https") throw bad("only http and https are supported");
  auto rest = text.substr(sep + 3);
  if (auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  auto auth_end = rest.find_first_of("/?");
  auto authority = std::string(rest.substr(0, auth_end));
  rest = auth_end == std::string_view::npos ? std::string_view() : rest.substr(auth_end);
  if (authority.find('@') != std::string::npos) throw bad("credentials in URLs are not allowed");
  std::string port;
  if (!authority.empty() && authority[0] == '[') {
    auto close = authority.find(']');
    if (close == std::string::npos) throw bad("missing ']'");
    u.host = authority.substr(1, close - 1);
    if (!is_ip(u.host)) throw bad("'" + u.host + "' is not an IPv6 address");
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') throw bad("expected ':' after ']'");
      port = authority.substr(close + 2);
      u.explicit_port = true;
    }
  } else {
    auto colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) {
      port = authority.substr(colon + 1);
      u.explicit_port = true;
    }
    if (u.host.empty()) throw bad("no host");
    if (u.host.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
        std::string::npos)
      throw bad("host '" + u.host + "' has characters a DNS name cannot have");
  }
  if (u.explicit_port) {
    if (port.empty() || port.size() > 5 ||
        port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) < 1 ||
        std::stoul(port) > 65535)
      throw bad("bad port");
    u.port = static_cast<std::uint16_t>(std::stoul(port));
  } else {
    u.port = u.scheme == "https" ? 443 : 80;
  }
  auto q = rest.find('?');
  u.path = std::string(rest.substr(0, q));
  if (u.path.empty()) u.path = "/";
  if (q != std::string_view::npos) {
    u.has_query = true;
    u.query = std::string(rest.substr(q + 1));
  }
  return u;
}

std::string replace_marker(std::string text, const std::string& marker) {
  for (auto pos = text.find(kMarkerPlaceholder); pos != std::string::npos;
       pos = text.find(kMarkerPlaceholder, pos + marker.size()))
    text.replace(pos, kMarkerPlaceholder.size(), marker);
  return text;
}

// ---- the shared fetch -----------------------------------------------------------------------

std::string transport_code(Transport t) {
  switch (t) {
    case Transport::ok:
      return "ok";
    case Transport::dns_failure:
      return "dns_failure";
    case Transport::proxy_unreachable:
      return "proxy_unreachable";
    case Transport::origin_unreachable:
      return "origin_unreachable";
    case Transport::reset:
      return "connection_reset";
    case Transport::timeout:
      return "timeout";
    case Transport::tls_error:
      return "tls_error";
    case Transport::not_allowlisted:
      return "target_not_allowlisted";
    case Transport::libcurl_unavailable:
      return "libcurl_unavailable";
    case Transport::error:
      return "error";
  }
  return "error";
}

Transport classify_curl(int code, bool via_proxy, bool vetoed_all, bool connected, bool over_cap) {
  switch (static_cast<CURLcode>(code)) {
    case CURLE_OK:
      return Transport::ok;
    case CURLE_WRITE_ERROR:
      return over_cap ? Transport::ok : Transport::error;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
      return Transport::dns_failure;
    case CURLE_COULDNT_CONNECT:
      if (vetoed_all) return Transport::not_allowlisted;
      return via_proxy ? Transport::proxy_unreachable : Transport::origin_unreachable;
    case CURLE_OPERATION_TIMEDOUT:
      if (!connected)
        return via_proxy ? Transport::proxy_unreachable : Transport::origin_unreachable;
      return Transport::timeout;
    // The stream was cut after it was open: what an IPS or a proxy's scanner does.
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return connected ? Transport::reset : Transport::error;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return Transport::tls_error;
    default:
      return Transport::error;
  }
}

namespace {

constexpr std::size_t kHeadBytes = 4096;  // kept for the snippet and a block page's title

// The <title> of an HTML page (a block page names its reason there), printable, or empty.
std::string html_title(const std::string& head) {
  auto l = lower(head);
  auto open = l.find("<title");
  if (open == std::string::npos) return {};
  open = l.find('>', open);
  auto close = l.find("</title>", open);
  if (open == std::string::npos || close == std::string::npos) return {};
  // A title often spans lines: its whitespace is layout, not content.
  std::string title = head.substr(open + 1, close - open - 1);
  for (char& c : title)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return common::quote_hostile(trim(std::move(title)), 200);
}

struct Transfer {
  const Allowlist* allow = nullptr;
  bool named = false;
  int opened = 0;  // sockets libcurl was allowed to open
  std::vector<std::string> refused;
  std::map<std::string, std::string> headers;
  common::Sha256 hash;
  std::uint64_t bytes = 0;
  std::uint64_t max_bytes = 0;
  bool over_cap = false;
  std::string head;  // the first bytes of the body, for the snippet
};

curl_socket_t open_socket(void* p, curlsocktype, curl_sockaddr* a) {
  auto* t = static_cast<Transfer*>(p);
  boost::asio::ip::address addr;
  std::uint16_t port = 0;
  if (a->family == AF_INET && a->addrlen >= sizeof(sockaddr_in)) {
    sockaddr_in sin{};
    std::memcpy(&sin, &a->addr, sizeof sin);
    addr = boost::asio::ip::address_v4(ntohl(sin.sin_addr.s_addr));
    port = ntohs(sin.sin_port);
  } else if (a->family == AF_INET6 && a->addrlen >= sizeof(sockaddr_in6)) {
    sockaddr_in6 sin6{};
    std::memcpy(&sin6, &a->addr, sizeof sin6);
    boost::asio::ip::address_v6::bytes_type b;
    std::memcpy(b.data(), &sin6.sin6_addr, b.size());
    addr = boost::asio::ip::address_v6(b);
    port = ntohs(sin6.sin6_port);
  } else {
    return CURL_SOCKET_BAD;
  }
  if (!t->named && !t->allow->allows_address(addr, port)) {
    t->refused.push_back(host_port_text(addr.to_string(), port));
    return CURL_SOCKET_BAD;  // libcurl moves on to the next address, if any
  }
  ++t->opened;
  return ::socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* p) {
  auto* t = static_cast<Transfer*>(p);
  std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {
    t->headers.clear();  // a new response (after CONNECT or 100-continue): keep the last
  } else if (auto colon = line.find(':'); colon != std::string_view::npos && colon > 0) {
    auto name = lower(std::string(line.substr(0, colon)));
    auto value = trim(std::string(line.substr(colon + 1)));
    auto& slot = t->headers[name];
    if (slot.size() < 1024) slot += (slot.empty() ? "" : ", ") + value.substr(0, 512);
  }
  return size * n;
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* p) {
  auto* t = static_cast<Transfer*>(p);
  std::size_t len = size * n;
  if (t->bytes + len > t->max_bytes) {
    t->over_cap = true;
    return 0;  // stops the transfer with CURLE_WRITE_ERROR
  }
  t->hash.update(std::string_view(data, len));
  if (t->head.size() < kHeadBytes)
    t->head.append(data, std::min<std::size_t>(len, kHeadBytes - t->head.size()));
  t->bytes += len;
  return len;
}

}  // namespace

FetchResult http_fetch(const FetchRequest& req, const Allowlist& allow, bool connect_host_named) {
  namespace curl = common::curl::loaded;
  FetchResult r;
  const curl::Api* api = nullptr;
  try {
    api = &curl::api();
  } catch (const curl::Unavailable& e) {
    r.transport = Transport::libcurl_unavailable;
    r.curl_error = e.what();
    return r;
  }
  char errbuf[CURL_ERROR_SIZE] = {};  // declared first: libcurl may write to it until cleanup
  curl::Easy h(api->easy_init(), curl::EasyDeleter{api});
  if (!h) {
    r.curl_error = "curl_easy_init failed";
    return r;
  }
  Transfer t;
  t.allow = &allow;
  t.named = connect_host_named;
  t.max_bytes = req.max_bytes;
  curl::Slist headers = curl::make_slist(*api);
  for (const auto& line : req.headers) curl::append(*api, headers, line);
  std::string proxy =
      req.proxy ? "http://" + host_port_text(req.proxy->host, req.proxy->port) : std::string();
  long timeout_ms = std::max<long>(1, static_cast<long>(req.timeout.count()));
  auto* c = h.get();
  api->easy_setopt(c, CURLOPT_URL, req.url.c_str());
  api->easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  api->easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  api->easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);  // the variants must reach the proxy as written
  api->easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  api->easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  api->easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  // An empty proxy and an empty no-proxy list: the environment's *_proxy settings never
  // silently change which path is being tested.
  api->easy_setopt(c, CURLOPT_PROXY, proxy.c_str());
  api->easy_setopt(c, CURLOPT_NOPROXY, "");
  if (!req.ca_file.empty()) api->easy_setopt(c, CURLOPT_CAINFO, req.ca_file.c_str());
  api->easy_setopt(c, CURLOPT_USERAGENT, req.user_agent.c_str());
  api->easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  if (req.method == "POST") {
    api->easy_setopt(c, CURLOPT_POSTFIELDS, req.body.c_str());
    api->easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.body.size()));
  }
  api->easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  api->easy_setopt(c, CURLOPT_OPENSOCKETDATA, &t);
  api->easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  api->easy_setopt(c, CURLOPT_HEADERDATA, &t);
  api->easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  api->easy_setopt(c, CURLOPT_WRITEDATA, &t);
  api->easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  auto code = api->easy_perform(c);

  r.curl_code = static_cast<int>(code);
  if (code != CURLE_OK) r.curl_error = errbuf[0] ? errbuf : api->easy_strerror(code);
  api->easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  api->easy_getinfo(c, CURLINFO_HTTP_CONNECTCODE, &r.connect_status);
  char* ip = nullptr;
  long port = 0;
  api->easy_getinfo(c, CURLINFO_PRIMARY_IP, &ip);
  api->easy_getinfo(c, CURLINFO_PRIMARY_PORT, &port);
  curl_off_t connect_us = 0, total_us = 0;
  api->easy_getinfo(c, CURLINFO_CONNECT_TIME_T, &connect_us);
  api->easy_getinfo(c, CURLINFO_TOTAL_TIME_T, &total_us);
  bool connected = connect_us > 0 || r.status > 0 || r.connect_status > 0;
  if (ip && *ip && connected) r.address = host_port_text(ip, static_cast<std::uint16_t>(port));
  r.elapsed_ms = static_cast<double>(total_us) / 1000.0;
  r.transport = classify_curl(r.curl_code, req.proxy.has_value(),
                              t.opened == 0 && !t.refused.empty(), connected, t.over_cap);
  r.headers = std::move(t.headers);
  r.bytes = t.bytes;
  r.over_cap = t.over_cap;
  auto digest = t.hash.finish();
  r.sha256 = common::to_hex(digest);
  r.snippet = common::quote_hostile(t.head, 300);
  r.page_title = html_title(t.head);
  r.refused = std::move(t.refused);
  return r;
}

ProxyPage proxy_page(const std::map<std::string, std::string>& headers) {
  if (auto it = headers.find("x-squid-error"); it != headers.end()) {
    // Squid names its error page; these say the proxy could not do its job, not that a rule
    // refused the request (ERR_ACCESS_DENIED, ERR_TOO_BIG, ... are refusals).
    static const char* kFailures[] = {
        "ERR_CONNECT_FAIL",        "ERR_DNS_FAIL",       "ERR_READ_TIMEOUT",
        "ERR_LIFETIME_EXP",        "ERR_READ_ERROR",     "ERR_WRITE_ERROR",
        "ERR_ZERO_SIZE_OBJECT",    "ERR_CANNOT_FORWARD", "ERR_GATEWAY_FAILURE",
        "ERR_SHUTTING_DOWN",       "ERR_SOCKET_FAILURE", "ERR_INVALID_RESP",
        "ERR_SECURE_CONNECT_FAIL", "ERR_INVALID_URL",    "ERR_INVALID_REQ",
        "ERR_UNSUP_REQ",           "ERR_TOO_BIG_REQ"};
    auto code = it->second.substr(0, it->second.find(' '));
    for (const char* f : kFailures)
      if (code == f) return ProxyPage::upstream_failure;
    return ProxyPage::denied;
  }
  if (auto it = headers.find("proxy-status"); it != headers.end()) {
    auto v = lower(it->second);
    auto e = v.find("error=");
    if (e != std::string::npos) {
      auto err = v.substr(e + 6, v.find_first_of(";, ", e + 6) - (e + 6));
      if (err == "http_request_denied" || err == "destination_ip_prohibited")
        return ProxyPage::denied;
      return ProxyPage::upstream_failure;
    }
  }
  return ProxyPage::none;
}

void add_fetch_evidence(std::map<std::string, std::string>& ev, const FetchResult& r,
                        const std::string& prefix) {
  auto put = [&](const std::string& k, const std::string& v) {
    if (!v.empty()) ev[prefix + k] = v;
  };
  if (r.status) put("status", std::to_string(r.status));
  if (r.connect_status) put("connect_status", std::to_string(r.connect_status));
  put("address", r.address);
  if (r.curl_code) put("curl_code", std::to_string(r.curl_code));
  put("curl_error", r.curl_error);  // also why libcurl could not be loaded
  if (r.transport != Transport::ok) put("transport", transport_code(r.transport));
  for (const char* h : {"server", "via", "x-squid-error", "proxy-status", "content-type",
                        "content-length", "location", "x-cache"})
    if (auto it = r.headers.find(h); it != r.headers.end())
      put("header." + std::string(h), it->second);
  if (r.status || r.bytes) {
    put("bytes", std::to_string(r.bytes));
    put("sha256", r.sha256);
  }
  if (r.over_cap) put("over_cap", "true");
  // A block page says who blocked and why; a delivered payload is never copied into evidence
  // (an EICAR body in the collector's store would get the store quarantined).
  if (r.status >= 300 || r.connect_status >= 300) {
    put("page_title", r.page_title);
    put("body_snippet", r.snippet);
  }
  if (!r.refused.empty()) {
    std::string list;
    for (const auto& a : r.refused) list += (list.empty() ? "" : ",") + a;
    put("not_contacted", list);
  }
  put("elapsed_ms", std::to_string(r.elapsed_ms));
}

// ---- loading and checking -------------------------------------------------------------------

HttpUrl load_url_param(const common::ConfigNode& params, const std::string& key,
                       const Allowlist& allow) {
  auto text = params.str(key);
  HttpUrl u;
  try {
    u = parse_http_url(text);
  } catch (const std::invalid_argument& e) {
    params.fail(key, e.what());
  }
  if (!allow.allows_name(u.allowlist_host(), u.port))
    params.fail(key, "target " + host_port_text(u.allowlist_host(), u.port) +
                         " is not on the allowlist (add it under allowlist.network)");
  return u;
}

std::optional<common::HostPort> load_proxy_param(const common::ConfigNode& params,
                                                 const Allowlist& allow) {
  if (!params.has("proxy")) return std::nullopt;
  auto text = params.str("proxy");
  if (text.starts_with("http://")) text = text.substr(7);
  if (!text.empty() && text.back() == '/') text.pop_back();
  common::HostPort hp;
  try {
    hp = common::parse_host_port(text);
  } catch (const std::invalid_argument& e) {
    params.fail("proxy", std::string(e.what()) + " (expected host:port or http://host:port)");
  }
  if (hp.port == 0) params.fail("proxy", "port 0 is not a proxy port");
  if (!allow.allows_name(hp.host, hp.port))
    params.fail("proxy", "proxy " + hp.to_string() +
                             " is not on the allowlist (add it under allowlist.network)");
  return hp;
}

std::string off_allowlist(const HttpUrl& url, const std::optional<common::HostPort>& proxy,
                          const Allowlist& allow) {
  if (proxy && !allow.allows_name(url.allowlist_host(), url.port))
    return "origin " + host_port_text(url.allowlist_host(), url.port) +
           " is not on the allowlist; nothing was contacted";
  return {};
}

bool connect_host_named(const HttpUrl& url, const std::optional<common::HostPort>& proxy,
                        const Allowlist& allow) {
  // A literal address is never "named": allows_name would only check the address again, and
  // http_fetch does that on what it actually connects to.
  if (proxy) return !is_ip(proxy->host) && allow.allows_name(proxy->host, proxy->port);
  return !url.host_is_ip() && allow.allows_name(url.allowlist_host(), url.port);
}

// ---- web_download ---------------------------------------------------------------------------

std::string load_ca_file_param(const common::ConfigNode& params) {
  if (!params.has("ca_file")) return {};
  std::filesystem::path f = params.str("ca_file");
  if (!f.is_absolute()) params.fail("ca_file", "must be an absolute path");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(f, ec))
    params.fail("ca_file", "no such file: " + f.string());
  return f.string();
}

std::string load_user_agent_param(const common::ConfigNode& params, const std::string& def) {
  auto ua = params.str("user_agent", def);
  for (unsigned char c : ua)
    if (c < 0x20 || c >= 0x7f) params.fail("user_agent", "must be printable ASCII");
  if (ua.size() > 512) params.fail("user_agent", "longer than 512 characters");
  // The marker must be where a detector can see it: added if the template forgot it.
  if (ua.find(kMarkerPlaceholder) == std::string::npos) ua += " " + std::string(kMarkerPlaceholder);
  return ua;
}

void load_web_download(const common::ConfigNode& test, const common::ConfigNode& params,
                       TestSpec& s, const Allowlist& allow) {
  params.check_keys({"url", "proxy", "sha256", "variants", "user_agent", "max_bytes", "ca_file"});
  auto p = std::make_shared<WebDownloadParams>();
  auto u = load_url_param(params, "url", allow);
  p->url = params.str("url");
  p->proxy = load_proxy_param(params, allow);
  p->sha256 = lower(params.str("sha256", ""));
  if (!p->sha256.empty() && (p->sha256.size() != 64 ||
                             p->sha256.find_first_not_of("0123456789abcdef") != std::string::npos))
    params.fail("sha256", "must be 64 hex digits (the SHA-256 of the payload)");
  p->variants = params.boolean("variants", true);
  p->user_agent =
      load_user_agent_param(params, "Mozilla/5.0 (compatible; Tocsin/1.0; {marker})");
  p->max_bytes = params.size("max_bytes", p->max_bytes);
  if (p->max_bytes < 1 || p->max_bytes > (1ull << 30))
    params.fail("max_bytes", "must be 1 to 1GiB");
  p->ca_file = load_ca_file_param(params);
  if (!test.has("timeout")) s.timeout = 30s;
  s.summary = u.str() + (p->proxy ? " via " + p->proxy->to_string() : " direct");
  s.web_download = std::move(p);
}

Verdict transport_verdict(Transport t) {
  switch (t) {
    case Transport::reset:
      return {"prevented", "connection_reset"};
    case Transport::dns_failure:
      return {"inconclusive", "dns_failure"};
    case Transport::proxy_unreachable:
      return {"inconclusive", "proxy_unreachable"};
    case Transport::origin_unreachable:
      return {"inconclusive", "origin_unreachable"};
    case Transport::timeout:
      return {"inconclusive", "timeout"};
    case Transport::tls_error:
      return {"inconclusive", "tls_error"};
    case Transport::libcurl_unavailable:
      return {"error", "libcurl_unavailable"};  // nothing was sent: the agent cannot test this
    default:
      return {"error", "fetch_failed"};
  }
}

Verdict download_verdict(const FetchResult& r, const std::string& expected_sha256) {
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
    if (status >= 200 && status < 300) {
      if (r.transport == Transport::reset) return {"prevented", "connection_reset"};
      if (r.transport == Transport::timeout) return {"inconclusive", "timeout"};
      if (r.transport != Transport::ok) return {"error", "fetch_failed"};
      if (expected_sha256.empty()) return {"not_prevented", "payload_received"};
      if (r.over_cap) return {"inconclusive", "payload_over_cap"};
      return r.sha256 == expected_sha256 ? Verdict{"not_prevented", "payload_received"}
                                         : Verdict{"prevented", "content_altered"};
    }
    if (status >= 300 && status < 400) return {"inconclusive", "redirected"};
    if (status == 404 || status == 410) return {"inconclusive", "payload_not_found"};
    if (status == 502 || status == 503 || status == 504)
      return {"inconclusive", "upstream_failure"};
    if (status == 429) return {"inconclusive", "rate_limited"};
    // A refusal is a 4xx; a server error is a failure, not a block.
    if (status >= 400 && status < 500) return {"prevented", "blocked_status"};
    if (status >= 500 && status < 600) return {"inconclusive", "upstream_failure"};
    return {"error", "unexpected_status"};
  }
  return transport_verdict(r.transport);
}

std::vector<UrlVariant> bypass_variants(const std::string& url) {
  auto u = parse_http_url(url);
  std::vector<UrlVariant> out;
  auto add = [&](const std::string& name, const HttpUrl& v) {
    auto s = v.str();
    if (s != u.str()) out.push_back({name, s});
  };
  auto with_path = [&](std::string path) {
    auto v = u;
    v.path = std::move(path);
    return v;
  };
  auto slash = u.path.rfind('/');
  auto dir = u.path.substr(0, slash + 1);
  auto last = u.path.substr(slash + 1);

  auto q = u;
  q.query = u.has_query ? u.query + "&x=1" : "x=1";
  q.has_query = true;
  add("query_string", q);
  if (!last.empty()) {
    add("upper_case", with_path(dir + upper(last)));
    unsigned char end = static_cast<unsigned char>(last.back());
    if (std::isalnum(end)) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      std::string enc = {'%', kHex[end >> 4], kHex[end & 15]};
      add("percent_encoded", with_path(dir + last.substr(0, last.size() - 1) + enc));
    }
    if (auto dot = last.rfind('.'); dot != std::string::npos && dot > 0)
      add("percent_encoded_dot",
          with_path(dir + last.substr(0, dot) + "%2E" + last.substr(dot + 1)));
    add("trailing_slash", with_path(u.path + "/"));
  }
  // The same FQDN, so the same allowlisted origin; a literal address has no such form.
  if (!u.host_is_ip() && u.host.back() != '.') {
    auto d = u;
    d.host += ".";
    add("trailing_dot_host", d);
  }
  return out;
}

boost::asio::awaitable<std::vector<common::ResultBody>> WebDownloadProbe::run(const TestSpec& test,
                                                                              std::string marker) {
  auto b = start_result(test, marker);
  const WebDownloadParams p = *test.web_download;  // a copy: the run may outlive a reload
  auto url_text = replace_marker(p.url, marker);
  b.target = url_text;
  b.evidence["url"] = url_text;
  b.evidence["proxy"] = p.proxy ? p.proxy->to_string() : "direct";
  auto ua = replace_marker(p.user_agent, marker);
  b.evidence["user_agent"] = ua;
  if (!p.sha256.empty()) b.evidence["expected_sha256"] = p.sha256;
  if (p.url.find(kMarkerPlaceholder) == std::string::npos)
    b.evidence["marker_in_url"] = "no: the url has no {marker}; User-Agent and X-Request-ID only";
  HttpUrl url = parse_http_url(url_text);  // validated at load; the marker is [a-z0-9-]
  if (auto why = off_allowlist(url, p.proxy, allow_); !why.empty()) {
    b.verdict = "not_applicable";
    b.reason = "target_not_allowlisted";
    b.evidence["detail"] = why;
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }

  auto deadline = std::chrono::steady_clock::now() + test.timeout;
  FetchRequest req;
  req.proxy = p.proxy;
  req.user_agent = ua;
  req.headers = {"X-Request-ID: " + marker};
  req.max_bytes = p.max_bytes;
  req.ca_file = p.ca_file;
  // Sets req for `u` within what is left of the run's timeout; false when nothing is left.
  auto prepare = [&](const std::string& u) {
    req.url = u;
    req.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return req.timeout >= 1ms;
  };
  // The job handed to the blocking pool captures pointers into this frame, which stays
  // suspended (and so alive) until the job is done.
  const Allowlist* allow = &allow_;
  auto fetch_job = [allow, &p](const FetchRequest* rq, FetchResult* out) {
    bool named = connect_host_named(parse_http_url(rq->url), p.proxy, *allow);
    return [rq, out, allow, named] {
      *out = http_fetch(*rq, *allow, named);
      return true;
    };
  };

  FetchResult plain;
  prepare(url_text);
  auto plain_job = fetch_job(&req, &plain);
  co_await run_blocking(plain_job);
  auto v = download_verdict(plain, p.sha256);
  add_fetch_evidence(b.evidence, plain);
  b.verdict = v.verdict;
  b.reason = v.reason;

  if (v.verdict == "prevented" && p.variants) {
    // The plain request was refused: does the rule still hold for the forms of the same URL
    // that careless edits leave open?
    std::string tried, through;
    for (const auto& variant : bypass_variants(url_text)) {
      if (!prepare(variant.url)) {
        b.evidence["variants_skipped"] = "time budget (timeout) used up";
        break;
      }
      FetchResult r;
      auto job = fetch_job(&req, &r);
      co_await run_blocking(job);
      auto vv = download_verdict(r, p.sha256);
      tried += (tried.empty() ? "" : ",") + variant.name;
      b.evidence["variant." + variant.name] = variant.url + " -> " +
                                              (r.status ? std::to_string(r.status) + " " : "") +
                                              vv.verdict + "/" + vv.reason;
      if (vv.verdict == "not_prevented" && through.empty()) {
        through = variant.name;
        b.verdict = "not_prevented";
        b.reason = "policy_gap_bypass";
        b.evidence["variant"] = variant.url;
        b.evidence["variant_name"] = variant.name;
        add_fetch_evidence(b.evidence, r, "variant_");
      }
    }
    b.evidence["variants_tried"] = tried;
  }
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
