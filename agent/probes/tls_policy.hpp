// tls_policy: outbound, does the egress path stop bad certificates; inbound, what our servers
// accept.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/config.hpp"
#include "common/net.hpp"

namespace tocsin::agent {

struct TlsPolicyParams {
  enum class Mode { outbound, inbound };
  Mode mode = Mode::outbound;
  common::HostPort target;                // the bad server (outbound) or our server (inbound)
  std::optional<common::HostPort> proxy;  // outbound: HTTP CONNECT proxy on the egress path
  std::string server_name;  // SNI and the name a certificate should carry; default: target host
  bool sni_marker = false;  // outbound: SNI "<marker>.<server_name>" (or "<marker>.invalid")
  std::string expect_fingerprint;  // outbound: SHA-256 (lower hex) of the bad server's cert
  std::string expect_issuer;       // outbound: substring of the bad certificate's issuer DN
  std::string ca_file;             // outbound: trust anchors (default: the system store)
  int min_days_left = 30;          // inbound: a certificate closer to expiry is a finding
};

void load_tls_policy(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow);

// ---- What one handshake attempt saw, and the verdicts derived from it (pure, tested). ----

// How an attempt ended: at TCP, at the proxy, or in the TLS handshake.
enum class TlsEnd {
  completed,  // handshake done; a certificate was seen
  dns_failure,
  not_allowlisted,
  refused,  // TCP RST to the SYN
  connect_timeout,
  unreachable,
  connect_error,
  proxy_unreachable,  // the configured proxy did not take the TCP connection
  proxy_status,       // the proxy answered CONNECT with a non-2xx status
  proxy_error,        // the proxy closed, reset or did not answer the CONNECT
  handshake_reset,    // RST after the ClientHello
  handshake_closed,   // EOF after the ClientHello
  handshake_timeout,  // no answer to the ClientHello
  peer_alert,         // the peer sent a fatal TLS alert
  local_error,        // protocol error on our side (not TLS, nothing in common, ...)
};
std::string to_string(TlsEnd e);

// What the presented leaf certificate says (facts only; nothing here trusts it).
struct CertFacts {
  std::string sha256;  // of the DER, lower hex
  std::string subject, issuer, not_after;
  std::int64_t days_left = 0;  // negative once expired
  bool expired = false;
  bool self_signed = false;
  std::optional<bool> name_matches;  // against server_name (or the target's IP literal)
  bool chain_verifies = false;       // against ca_file or the system store, with the name
  std::string verify_error;          // OpenSSL's text when it does not
};

struct TlsVerdict {
  std::string verdict, reason;
};

// Outbound: the egress path lets users reach a server with an invalid certificate
// (not_prevented) or stops/replaces it (prevented); TCP/DNS/proxy failures prove nothing.
TlsVerdict outbound_verdict(TlsEnd end, int proxy_status, const std::optional<CertFacts>& cert,
                            const TlsPolicyParams& p);

// Inbound: one check of the scan (a protocol version or a weak cipher family).
struct ScanCheck {
  enum class State { accepted, refused, untestable, failed };
  std::string name;  // "tls1_0", "tls1_1", "modern", "cipher_null", ...
  State state = State::failed;
  std::string detail;
};
struct InboundVerdict {
  std::string verdict, reason;
  std::vector<std::string> findings;  // all of them, most serious first
};
InboundVerdict inbound_verdict(const std::vector<ScanCheck>& checks,
                               const std::optional<CertFacts>& cert, int min_days_left);

class TlsPolicyProbe : public Probe {
 public:
  TlsPolicyProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
