// tcp_connect: can this host open a TCP connection to a target (lateral movement, egress)?
#pragma once

#include <boost/system/error_code.hpp>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"

namespace tocsin::agent {

// How a single connection attempt ended, in the reason codes of DESIGN.md.
enum class ConnectOutcome {
  connected, refused, reset, timeout, unreachable, dns_failure, not_allowlisted, error
};
std::string reason_code(ConnectOutcome o);
ConnectOutcome classify_connect_error(const boost::system::error_code& ec, bool timed_out);
// Verdict for one target: a block (refused, reset, timeout) is `prevented`; a success is
// `not_prevented`; unreachable and DNS failures prove nothing, so they are `inconclusive`;
// an address off the allowlist is never contacted: `not_applicable`.
std::string verdict_for(ConnectOutcome o);
// A connection the test wanted confirmed by the handshake that nobody answered reached
// *something* (a middlebox, another service), not the receiver: `inconclusive`.
struct HandshakeVerdict {
  std::string verdict, reason;
};
HandshakeVerdict handshake_verdict(ConnectOutcome o, const std::string& handshake);

class TcpConnectProbe : public Probe {
 public:
  TcpConnectProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

  struct Attempt {
    ConnectOutcome outcome = ConnectOutcome::error;
    std::string address;  // the address tried last
    std::string detail;
    std::int64_t elapsed_us = 0;
    // With a handshake marker, once connected: "acknowledged" (a tcp_listen receiver answered;
    // its marker in receiver_marker), "no_answer" or "wrong_answer" (something else accepted).
    std::string handshake, receiver_marker;
  };
  boost::asio::awaitable<Attempt> attempt(common::HostPort target,
                                          std::chrono::milliseconds timeout,
                                          const std::string* handshake_marker = nullptr);

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
