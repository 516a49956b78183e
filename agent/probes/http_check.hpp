// http_check: is a service healthy (status, body, content hash, certificate, response time)?
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/config.hpp"

namespace tocsin::agent {

struct HttpCheckParams {
  std::string url;
  bool https = false;
  std::string host;  // without brackets
  std::uint16_t port = 0;
  int status_lo = 200, status_hi = 299;  // expect_status: 200 or "2xx"
  std::string body_regex_text;           // empty: no body check
  std::optional<std::regex> body_regex;
  std::string expect_sha256;   // lower hex; empty: no fixed hash
  bool track_changes = false;  // remember the last hash (in memory) and report a change
  std::string ca_file;         // trust anchors for https; default: the system store
  int cert_min_days = 14;      // https: fewer days left is unhealthy
  std::optional<std::chrono::milliseconds> max_response_time;
  std::uint64_t max_body = 1 << 20;  // read (and hash) at most this much
};

void load_http_check(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow);

// What one request saw (filled by the transfer, judged by evaluate_http).
struct HttpObservation {
  // The transfer's failure, as a reason code ("" when a response arrived):
  // dns_failure, connect_failed, timeout, cert_expired, cert_invalid, tls_failed,
  // transfer_failed, target_not_allowlisted, libcurl_unavailable (the agent could not load it).
  std::string failure;
  std::string detail;
  long status = 0;
  std::int64_t total_us = 0;
  std::optional<std::int64_t> cert_days_left;
  std::string body_sha256;
  bool body_truncated = false;
  std::optional<bool> body_matches;  // set when a regex was given
};

struct HttpVerdict {
  std::string verdict, reason;
  std::vector<std::string> problems;  // every check that failed, the first is the reason
};

// healthy / unhealthy (not_applicable off the allowlist). `previous_sha256` is the hash the
// last run of the same test saw (track_changes), if any.
HttpVerdict evaluate_http(const HttpObservation& o, const HttpCheckParams& p,
                          const std::optional<std::string>& previous_sha256);

class HttpCheckProbe : public Probe {
 public:
  HttpCheckProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
  std::mutex hashes_mutex_;
  std::map<std::string, std::string> last_hash_;  // test id -> body SHA-256 of its last run
};

}  // namespace tocsin::agent
