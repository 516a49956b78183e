// http_beacon: a C2-like HTTP(S) request with the marker in path, User-Agent and a header.
#pragma once

#include <optional>
#include <string>

#include "agent/probes/probe.hpp"
#include "agent/probes/web_download.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/config.hpp"

namespace tocsin::agent {

struct HttpBeaconParams {
  std::string url;  // may contain {marker}; without it the marker is appended as a path segment
  std::optional<common::HostPort> proxy;
  std::string method = "GET";           // GET or POST (body "id=<marker>")
  std::string header = "X-Request-ID";  // carries the marker
  std::string user_agent;               // template; contains {marker}
  std::string ca_file;                  // CAs for an https url; empty: the system's
};

// Reads the test's `params:` (and may default `timeout` if the test did not set it); fails
// with file:line for unknown keys, bad values and targets off the allowlist. Sets
// s.http_beacon and s.summary.
void load_http_beacon(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                      const Allowlist& allow);

// The URL the beacon requests: {marker} replaced, or the marker appended as the last path
// segment when the template has none (the origin's answer to any path proves it was reached).
std::string beacon_url(const std::string& url_template, const std::string& marker);

// Verdict of one beacon (pure; table-tested): the proxy's refusal or a reset is `prevented`;
// any answer from the origin, whatever its status, is `not_prevented`; a path that never
// worked (DNS, proxy down, TLS) is `inconclusive`.
Verdict beacon_verdict(const FetchResult& r, bool via_proxy);

class HttpBeaconProbe : public Probe {
 public:
  HttpBeaconProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
