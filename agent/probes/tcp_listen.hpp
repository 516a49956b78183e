// tcp_listen: the receiving end of tcp_connect. Run on the host a connection should (or should
// not) reach, it accepts for a window and answers tcp_connect's marker handshake, so a path is
// confirmed from both ends: the sender's result names the receiver's marker and the
// receiver's names the sender's.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"

namespace tocsin::agent {

// The handshake, one line each way, ASCII:
//   sender:   "TOCSIN-HELLO <sender marker>\n"
//   receiver: "TOCSIN-ACK <sender marker> <receiver marker>\n"
inline constexpr std::string_view kHelloPrefix = "TOCSIN-HELLO ";
inline constexpr std::string_view kAckPrefix = "TOCSIN-ACK ";
inline constexpr std::size_t kHandshakeLineMax = 128;

bool is_marker(std::string_view s);  // "tcn-" + 10 of [a-z0-9]
std::string hello_line(const std::string& marker);
std::string ack_line(const std::string& sender_marker, const std::string& receiver_marker);
// The sender marker of a hello line (without its '\n'), or nullopt.
std::optional<std::string> parse_hello(std::string_view line);
// The receiver marker of an ack line answering `sender_marker`, or nullopt.
std::optional<std::string> parse_ack(std::string_view line, const std::string& sender_marker);

class TcpListenProbe : public Probe {
 public:
  TcpListenProbe(boost::asio::any_io_executor ex, const ClockState& clock)
      : ex_(std::move(ex)), clock_(clock) {}
  // One result per listen address: `not_prevented: handshake_received` with every sender
  // marker that arrived; `inconclusive: nothing_arrived` (from this end a blocked path and a
  // sender that never ran look the same); `error: bind_failed`.
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
