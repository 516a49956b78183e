// web_download: fetch a payload through the egress proxy; blocked, delivered, or a policy gap.
// Also home of the libcurl fetch that http_beacon shares (one place decides what a failed
// transfer means, so both probes tell a block from a broken path the same way).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/config.hpp"
#include "common/net.hpp"

namespace tocsin::agent {

// ---- URLs -----------------------------------------------------------------------------------

// The run's marker replaces this text wherever it appears in a URL or User-Agent template.
inline constexpr std::string_view kMarkerPlaceholder = "{marker}";

// An http(s) URL split into the parts the probes rewrite. No user info, no fragment.
struct HttpUrl {
  std::string scheme;      // "http" or "https"
  std::string host;        // as written, IPv6 without brackets; may end with '.'
  std::uint16_t port = 0;  // explicit, or the scheme's default
  bool explicit_port = false;
  std::string path = "/";  // always starts with '/'
  std::string query;       // without the '?'
  bool has_query = false;
  std::string str() const;
  // The host as the allowlist knows it: one trailing dot removed (same FQDN).
  std::string allowlist_host() const;
  bool host_is_ip() const;
};
HttpUrl parse_http_url(std::string_view url);  // throws std::invalid_argument
std::string replace_marker(std::string text, const std::string& marker);

// ---- the shared fetch -----------------------------------------------------------------------

struct FetchRequest {
  std::string url;
  std::optional<common::HostPort> proxy;  // an HTTP proxy; none: direct
  std::string user_agent;
  std::vector<std::string> headers;  // "Name: value"
  std::string ca_file;         // trust these CAs for https instead of the system's; empty: system
  std::string method = "GET";  // GET or POST
  std::string body;            // for POST
  std::chrono::milliseconds timeout{10000};
  std::uint64_t max_bytes = 16u << 20;  // the body is hashed, never kept, beyond this the
                                        // transfer stops (over_cap)
};

// How the transfer ended below HTTP, in the reason codes of DESIGN.md.
enum class Transport {
  ok,
  dns_failure,
  proxy_unreachable,
  origin_unreachable,
  reset,
  timeout,
  tls_error,
  not_allowlisted,
  libcurl_unavailable,  // libcurl.so.4 could not be loaded (see common/curl_loader.hpp)
  error
};
std::string transport_code(Transport t);

struct FetchResult {
  Transport transport = Transport::error;
  int curl_code = 0;
  std::string curl_error;
  long status = 0;          // the final HTTP status; 0: no response
  long connect_status = 0;  // the proxy's answer to CONNECT (https through a proxy)
  std::map<std::string, std::string> headers;  // the last response's, names lower case
  std::uint64_t bytes = 0;
  bool over_cap = false;
  std::string sha256;                // hex, over the body bytes received
  std::string snippet;               // the first bytes of the body, printable ASCII only
  std::string page_title;            // an HTML body's <title> (block pages say why there)
  std::string address;               // the address actually connected to ("ip:port")
  std::vector<std::string> refused;  // addresses not contacted: off the allowlist
  double elapsed_ms = 0;
};

// Maps a libcurl result to a Transport (pure; table-tested). `vetoed_all`: every address was
// refused by the allowlist; `connected`: a TCP connection was made at some point.
Transport classify_curl(int curl_code, bool via_proxy, bool vetoed_all, bool connected,
                        bool over_cap);

// One blocking libcurl transfer, bounded by req.timeout; run it with run_blocking. Redirects
// are not followed (a Location may point anywhere); the path is sent exactly as given. Every
// address libcurl is about to connect to (the proxy's, or the origin's when direct) is checked
// against `allow` unless `connect_host_named` (the host is on the allowlist by name).
FetchResult http_fetch(const FetchRequest& req, const Allowlist& allow, bool connect_host_named);

// What a proxy said about itself in an error response: squid's X-Squid-Error or an RFC 9209
// Proxy-Status error. Distinguishes a policy refusal from the proxy failing to reach the origin.
enum class ProxyPage { none, denied, upstream_failure };
ProxyPage proxy_page(const std::map<std::string, std::string>& headers);

// Status, address, selected headers, size, hash and timing of one fetch, as evidence.
void add_fetch_evidence(std::map<std::string, std::string>& ev, const FetchResult& r,
                        const std::string& prefix = "");

// ---- loading and checking, shared with http_beacon -----------------------------------------

// `key` as an http(s) URL whose host:port is on the allowlist; fails with file:line otherwise.
HttpUrl load_url_param(const common::ConfigNode& params, const std::string& key,
                       const Allowlist& allow);
// `proxy:` ("host:port" or "http://host:port"), allowlisted; none when absent.
std::optional<common::HostPort> load_proxy_param(const common::ConfigNode& params,
                                                 const Allowlist& allow);
// `ca_file:` an absolute path to an existing PEM file, or empty when absent.
std::string load_ca_file_param(const common::ConfigNode& params);
// `user_agent:` (printable, at most 512 characters) or `def`; " {marker}" is appended when the
// template has no {marker}, so a detector always sees it.
std::string load_user_agent_param(const common::ConfigNode& params, const std::string& def);
// The run-time gate before anything is contacted. Through a proxy the agent never resolves the
// origin, so its name must be on the allowlist as written; the addresses actually connected
// to are checked again inside http_fetch. Empty when allowed, else why not.
std::string off_allowlist(const HttpUrl& url, const std::optional<common::HostPort>& proxy,
                          const Allowlist& allow);
// Whether http_fetch may skip the per-address check: the host it connects to is listed by name.
bool connect_host_named(const HttpUrl& url, const std::optional<common::HostPort>& proxy,
                        const Allowlist& allow);

// ---- web_download ---------------------------------------------------------------------------

struct WebDownloadParams {
  std::string url;  // may contain {marker}
  std::optional<common::HostPort> proxy;
  std::string sha256;  // lower-case hex of the known payload; empty: any 2xx body counts
  bool variants = true;
  std::string user_agent;  // template; contains {marker}
  std::uint64_t max_bytes = 16u << 20;
  std::string ca_file;  // CAs for an https url (e.g. the collector's /payloads/); empty: system
};

void load_web_download(const common::ConfigNode& test, const common::ConfigNode& params,
                       TestSpec& s, const Allowlist& allow);

struct Verdict {
  std::string verdict;
  std::string reason;
  bool operator==(const Verdict&) const = default;
};

// Verdict of a transfer that got no HTTP answer, shared by web_download and http_beacon: a
// reset is a block; DNS, unreachable proxy or origin, timeout and TLS failures prove nothing.
Verdict transport_verdict(Transport t);
// Verdict of one download attempt (pure; table-tested).
Verdict download_verdict(const FetchResult& r, const std::string& expected_sha256);

// The bypass rewrites of a blocked URL that still name the same origin: a query string, the
// last segment in upper case, its last character or its dot percent-encoded, a trailing slash,
// and (for DNS names) the host with a trailing dot.
struct UrlVariant {
  std::string name;
  std::string url;
};
std::vector<UrlVariant> bypass_variants(const std::string& url);

class WebDownloadProbe : public Probe {
 public:
  WebDownloadProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
