#include "agent/probes/tcp_connect.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "agent/probes/tcp_listen.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/net.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::tcp;

std::string reason_code(ConnectOutcome o) {
  switch (o) {
    case ConnectOutcome::connected: return "connected";
    case ConnectOutcome::refused: return "refused";
    case ConnectOutcome::reset: return "reset";
    case ConnectOutcome::timeout: return "timeout";
    case ConnectOutcome::unreachable: return "unreachable";
    case ConnectOutcome::dns_failure: return "dns_failure";
    case ConnectOutcome::not_allowlisted: return "target_not_allowlisted";
    case ConnectOutcome::error: return "error";
  }
  return "error";
}

ConnectOutcome classify_connect_error(const boost::system::error_code& ec, bool timed_out) {
  namespace e = asio::error;
  if (!ec) return ConnectOutcome::connected;
  if (timed_out || ec == e::timed_out) return ConnectOutcome::timeout;
  if (ec == e::connection_refused) return ConnectOutcome::refused;
  if (ec == e::connection_reset || ec == e::connection_aborted) return ConnectOutcome::reset;
  if (ec == e::host_unreachable || ec == e::network_unreachable || ec == e::network_down)
    return ConnectOutcome::unreachable;
  if (ec == e::host_not_found || ec == e::host_not_found_try_again || ec == e::no_data ||
      ec == e::no_recovery)
    return ConnectOutcome::dns_failure;
  return ConnectOutcome::error;
}

std::string verdict_for(ConnectOutcome o) {
  switch (o) {
    case ConnectOutcome::connected: return "not_prevented";
    case ConnectOutcome::refused:
    case ConnectOutcome::reset:
    case ConnectOutcome::timeout: return "prevented";
    case ConnectOutcome::unreachable:
    case ConnectOutcome::dns_failure: return "inconclusive";
    case ConnectOutcome::not_allowlisted: return "not_applicable";
    case ConnectOutcome::error: return "error";
  }
  return "error";
}

HandshakeVerdict handshake_verdict(ConnectOutcome o, const std::string& handshake) {
  if (o != ConnectOutcome::connected) return {verdict_for(o), reason_code(o)};
  if (handshake == "acknowledged") return {"not_prevented", "handshake_confirmed"};
  return {"inconclusive", "handshake_unconfirmed"};
}

asio::awaitable<TcpConnectProbe::Attempt> TcpConnectProbe::attempt(
    common::HostPort target, std::chrono::milliseconds timeout,
    const std::string* handshake_marker) {
  Attempt a;
  auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                 t0)
        .count();
  };
  boost::system::error_code ec;
  // Timer handlers may run after this frame moved on, so what they touch is shared.
  struct Dns {
    explicit Dns(asio::any_io_executor ex) : resolver(ex) {}
    tcp::resolver resolver;
    bool timed_out = false;
  };
  auto dns = std::make_shared<Dns>(ex_);
  asio::steady_timer dns_timer(ex_);
  dns_timer.expires_after(timeout);
  dns_timer.async_wait([dns](boost::system::error_code e) {
    if (!e) {
      dns->timed_out = true;
      dns->resolver.cancel();
    }
  });
  auto results = co_await dns->resolver.async_resolve(
      target.host, std::to_string(target.port), asio::redirect_error(asio::use_awaitable, ec));
  dns_timer.cancel();
  if (ec || results.empty()) {
    a.outcome = ConnectOutcome::dns_failure;
    a.detail = dns->timed_out ? "name resolution timed out" : ec ? ec.message() : "no addresses";
    a.elapsed_us = elapsed();
    co_return a;
  }
  bool name_allowed = allow_.allows_name(target.host, target.port);
  bool tried = false;
  for (const auto& entry : results) {
    auto ep = entry.endpoint();
    if (!name_allowed && !allow_.allows_address(ep.address(), target.port)) {
      if (!tried) {  // keep a real outcome from an earlier address if there is one
        a.outcome = ConnectOutcome::not_allowlisted;
        a.address = ep.address().to_string();
        a.detail = "resolved address " + a.address + " is not on the allowlist; not contacted";
      }
      continue;
    }
    struct Conn {
      explicit Conn(asio::any_io_executor ex) : sock(ex) {}
      tcp::socket sock;
      bool timed_out = false;
    };
    auto conn = std::make_shared<Conn>(ex_);
    asio::steady_timer timer(ex_);
    timer.expires_after(timeout);
    timer.async_wait([conn](boost::system::error_code e) {
      if (!e) {
        conn->timed_out = true;
        boost::system::error_code ignored;
        conn->sock.close(ignored);
      }
    });
    ec = {};
    tried = true;
    co_await conn->sock.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
    timer.cancel();
    a.address = ep.address().to_string();
    a.outcome = classify_connect_error(ec, conn->timed_out);
    a.detail = a.outcome == ConnectOutcome::connected ? "TCP handshake completed"
               : conn->timed_out ? "no answer within " + common::format_duration(timeout)
                                 : ec.message();
    if (a.outcome == ConnectOutcome::connected && handshake_marker) {
      // One line each way, within the same timeout; whatever answers is only read, bounded.
      timer.expires_after(timeout);
      timer.async_wait([conn](boost::system::error_code e) {
        if (!e) {
          boost::system::error_code ignored;
          conn->sock.close(ignored);
        }
      });
      auto hello = hello_line(*handshake_marker);
      co_await asio::async_write(conn->sock, asio::buffer(hello),
                                 asio::redirect_error(asio::use_awaitable, ec));
      asio::streambuf buf(kHandshakeLineMax);
      std::size_t n = 0;
      if (!ec)
        n = co_await asio::async_read_until(conn->sock, buf, '\n',
                                            asio::redirect_error(asio::use_awaitable, ec));
      timer.cancel();
      std::optional<std::string> receiver;
      if (!ec && n > 0)
        receiver = parse_ack(std::string(asio::buffers_begin(buf.data()),
                                         asio::buffers_begin(buf.data()) + n - 1),
                             *handshake_marker);
      a.handshake = receiver ? "acknowledged" : ec ? "no_answer" : "wrong_answer";
      if (receiver) a.receiver_marker = *receiver;
    }
    boost::system::error_code ignored;
    conn->sock.close(ignored);
    if (a.outcome != ConnectOutcome::unreachable) break;  // try the next address otherwise
  }
  a.elapsed_us = elapsed();
  co_return a;
}

asio::awaitable<std::vector<common::ResultBody>> TcpConnectProbe::run(const TestSpec& test,
                                                                      std::string marker) {
  std::vector<common::ResultBody> out;
  std::optional<Attempt> control;
  if (test.control) control = co_await attempt(*test.control, test.timeout);
  for (const auto& target : test.targets) {
    // One run per target, each with its own marker: a SIEM alert names one connection, and
    // the collector keys runs by marker.
    auto b = start_result(test, out.empty() ? marker : new_marker());
    b.target = target.to_string();
    if (control && control->outcome != ConnectOutcome::connected) {
      b.verdict = "inconclusive";
      b.reason = "control_failed";
      b.evidence = {{"control", test.control->to_string()},
                    {"control_reason", reason_code(control->outcome)},
                    {"control_detail", control->detail}};
    } else {
      auto a = co_await attempt(target, test.timeout, test.handshake ? &b.marker : nullptr);
      auto v = test.handshake ? handshake_verdict(a.outcome, a.handshake)
                              : HandshakeVerdict{verdict_for(a.outcome), reason_code(a.outcome)};
      b.verdict = v.verdict;
      b.reason = v.reason;
      b.evidence = {{"address", a.address},
                    {"detail", a.detail},
                    {"elapsed_ms", std::to_string(a.elapsed_us / 1000.0)},
                    {"timeout_ms", std::to_string(test.timeout.count())}};
      if (!a.handshake.empty()) b.evidence["handshake"] = a.handshake;
      if (!a.receiver_marker.empty()) b.evidence["receiver_marker"] = a.receiver_marker;
      if (control) b.evidence["control"] = test.control->to_string() + " connected";
    }
    finish_result(b, clock_);
    out.push_back(std::move(b));
  }
  co_return out;
}

}  // namespace tocsin::agent
