// The tcp_connect probe: how connection errors map to outcomes and verdicts, and real runs
// against loopback listeners and closed ports.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "agent/probes/tcp_connect.hpp"

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;
using tocsin::agent::Allowlist;
using tocsin::agent::classify_connect_error;
using tocsin::agent::ClockState;
using tocsin::agent::ConnectOutcome;
using tocsin::agent::reason_code;
using tocsin::agent::TcpConnectProbe;
using tocsin::agent::TestSpec;
using tocsin::agent::verdict_for;
using tocsin::common::HostPort;
using tocsin::common::ResultBody;

namespace {

const auto kLoopback = asio::ip::make_address("127.0.0.1");

// A TCP listener on 127.0.0.1:<free port> that never accepts: the kernel completes handshakes
// into its backlog, so whether anyone connected can be checked afterwards without waiting.
struct Listener {
  tcp::acceptor acceptor;
  explicit Listener(asio::io_context& io) : acceptor(io, tcp::endpoint(kLoopback, 0)) {}
  std::uint16_t port() const { return acceptor.local_endpoint().port(); }
  // Nothing is queued right now (for checking that no connection was made).
  bool was_contacted() {
    acceptor.non_blocking(true);
    boost::system::error_code ec;
    tcp::socket peer(acceptor.get_executor());
    acceptor.accept(peer, ec);
    return !ec;
  }
  // A connection arrives; the server side of a handshake the client saw complete may still be
  // in flight, so wait for it, bounded so that a bug cannot hang the test.
  bool accepts_connection(asio::io_context& io) {
    bool accepted = false;
    tcp::socket peer(io);
    asio::steady_timer bound(io, 10s);
    acceptor.async_accept(peer, [&](boost::system::error_code ec) {
      accepted = !ec;
      bound.cancel();
    });
    bound.async_wait([&](boost::system::error_code ec) {
      if (!ec) acceptor.cancel();
    });
    io.run();
    io.restart();
    return accepted;
  }
};

// A loopback port with nothing listening: bind to port 0, note the port, close.
std::uint16_t closed_port(asio::io_context& io) {
  tcp::socket s(io);
  s.open(tcp::v4());
  s.bind(tcp::endpoint(kLoopback, 0));
  auto port = s.local_endpoint().port();
  s.close();
  return port;
}

TestSpec make_test(std::vector<HostPort> targets) {
  TestSpec t;
  t.id = "loopback";
  t.probe = "tcp_connect";
  t.timeout = 10s;  // a bound, never reached on loopback
  t.expect_prevent = true;
  t.targets = std::move(targets);
  return t;
}

std::vector<ResultBody> run_probe(asio::io_context& io, const Allowlist& allow, const TestSpec& t,
                                  const ClockState& clock = {}) {
  TcpConnectProbe probe(io.get_executor(), allow, clock);
  std::optional<std::vector<ResultBody>> out;
  std::exception_ptr error;
  asio::co_spawn(io, probe.run(t, "tcn-testmarker"),
                 [&](std::exception_ptr e, std::vector<ResultBody> results) {
                   error = e;
                   if (!e) out = std::move(results);
                 });
  io.run();
  io.restart();
  if (error) std::rethrow_exception(error);
  REQUIRE(out.has_value());
  return *out;
}

}  // namespace

TEST_CASE("classify_connect_error maps each connect error to its outcome") {
  namespace e = asio::error;
  struct Case {
    boost::system::error_code ec;
    bool timed_out;
    ConnectOutcome want;
  } cases[] = {
      {{}, false, ConnectOutcome::connected},
      {e::connection_refused, false, ConnectOutcome::refused},
      {e::connection_reset, false, ConnectOutcome::reset},
      {e::connection_aborted, false, ConnectOutcome::reset},
      {e::timed_out, false, ConnectOutcome::timeout},
      {e::host_unreachable, false, ConnectOutcome::unreachable},
      {e::network_unreachable, false, ConnectOutcome::unreachable},
      {e::network_down, false, ConnectOutcome::unreachable},
      {e::host_not_found, false, ConnectOutcome::dns_failure},
      {e::host_not_found_try_again, false, ConnectOutcome::dns_failure},
      {e::no_data, false, ConnectOutcome::dns_failure},
      {e::no_recovery, false, ConnectOutcome::dns_failure},
      // The watchdog closes the socket: the connect ends aborted, but it was a timeout.
      {e::operation_aborted, true, ConnectOutcome::timeout},
      {e::bad_descriptor, true, ConnectOutcome::timeout},
      {e::operation_aborted, false, ConnectOutcome::error},
      {e::access_denied, false, ConnectOutcome::error},
      {e::address_in_use, false, ConnectOutcome::error},
  };
  for (const auto& c : cases) {
    CAPTURE(c.ec.message());
    CAPTURE(c.timed_out);
    CHECK(reason_code(classify_connect_error(c.ec, c.timed_out)) == reason_code(c.want));
  }
}

TEST_CASE("verdict_for and reason_code cover every outcome") {
  struct Case {
    ConnectOutcome o;
    const char* verdict;
    const char* reason;
  } cases[] = {
      {ConnectOutcome::connected, "not_prevented", "connected"},
      {ConnectOutcome::refused, "prevented", "refused"},
      {ConnectOutcome::reset, "prevented", "reset"},
      {ConnectOutcome::timeout, "prevented", "timeout"},
      {ConnectOutcome::unreachable, "inconclusive", "unreachable"},
      {ConnectOutcome::dns_failure, "inconclusive", "dns_failure"},
      {ConnectOutcome::not_allowlisted, "not_applicable", "target_not_allowlisted"},
      {ConnectOutcome::error, "error", "error"},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.reason));
    CHECK(verdict_for(c.o) == c.verdict);
    CHECK(reason_code(c.o) == c.reason);
  }
}

TEST_CASE("a listening loopback port is not_prevented/connected") {
  asio::io_context io;
  Listener l(io);
  auto allow = Allowlist::parse({"127.0.0.1"});
  ClockState clock{12345, 678};
  auto t = make_test({{"127.0.0.1", l.port()}});
  auto rs = run_probe(io, allow, t, clock);
  REQUIRE(rs.size() == 1);
  const auto& r = rs[0];
  CHECK(r.verdict == "not_prevented");
  CHECK(r.reason == "connected");
  CHECK(r.test_id == "loopback");
  CHECK(r.probe == "tcp_connect");
  CHECK(r.target == "127.0.0.1:" + std::to_string(l.port()));
  CHECK(r.marker == "tcn-testmarker");
  CHECK(r.expect_prevent);
  CHECK(r.evidence.at("address") == "127.0.0.1");
  CHECK(r.evidence.at("timeout_ms") == "10000");
  CHECK(r.started_ns > 0);
  CHECK(r.finished_ns >= r.started_ns);
  CHECK(r.clock_offset_ns == 12345);
  CHECK(r.clock_error_ns == 678);
  CHECK(l.accepts_connection(io));
}

TEST_CASE("a closed loopback port is prevented/refused") {
  asio::io_context io;
  auto port = closed_port(io);
  auto allow = Allowlist::parse({"127.0.0.1"});
  auto rs = run_probe(io, allow, make_test({{"127.0.0.1", port}}));
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "prevented");
  CHECK(rs[0].reason == "refused");
  CHECK(rs[0].evidence.at("address") == "127.0.0.1");
}

TEST_CASE("several targets give one result each, in order") {
  asio::io_context io;
  Listener open(io);
  auto closed = closed_port(io);
  auto allow = Allowlist::parse({"127.0.0.1"});
  auto rs = run_probe(io, allow, make_test({{"127.0.0.1", closed}, {"127.0.0.1", open.port()}}));
  REQUIRE(rs.size() == 2);
  CHECK(rs[0].reason == "refused");
  CHECK(rs[1].reason == "connected");
}

TEST_CASE("a name whose resolved address is not allowlisted is not contacted") {
  asio::io_context io;
  Listener l(io);
  // "localhost" resolves to 127.0.0.1; only 127.0.0.2 is allowed, and not by name.
  auto allow = Allowlist::parse({"127.0.0.2"});
  auto rs = run_probe(io, allow, make_test({{"localhost", l.port()}}));
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "not_applicable");
  CHECK(rs[0].reason == "target_not_allowlisted");
  CHECK(rs[0].evidence.at("address") == "127.0.0.1");
  CHECK_FALSE(l.was_contacted());
}

TEST_CASE("a name on the allowlist by name is contacted at its resolved address") {
  asio::io_context io;
  Listener l(io);
  auto allow = Allowlist::parse({"localhost"});
  auto rs = run_probe(io, allow, make_test({{"localhost", l.port()}}));
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].reason == "connected");
  CHECK(l.accepts_connection(io));
}

TEST_CASE("a failed control makes every target inconclusive and contacts none of them") {
  asio::io_context io;
  Listener target_a(io), target_b(io);
  auto allow = Allowlist::parse({"127.0.0.1"});
  auto t = make_test({{"127.0.0.1", target_a.port()}, {"127.0.0.1", target_b.port()}});
  t.control = HostPort{"127.0.0.1", closed_port(io)};
  auto rs = run_probe(io, allow, t);
  REQUIRE(rs.size() == 2);
  for (const auto& r : rs) {
    CHECK(r.verdict == "inconclusive");
    CHECK(r.reason == "control_failed");
    CHECK(r.evidence.at("control") == t.control->to_string());
    CHECK(r.evidence.at("control_reason") == "refused");
  }
  CHECK_FALSE(target_a.was_contacted());
  CHECK_FALSE(target_b.was_contacted());
}

TEST_CASE("a working control lets the targets be judged on their own") {
  asio::io_context io;
  Listener control(io);
  auto allow = Allowlist::parse({"127.0.0.1"});
  auto t = make_test({{"127.0.0.1", closed_port(io)}});
  t.control = HostPort{"127.0.0.1", control.port()};
  auto rs = run_probe(io, allow, t);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "prevented");
  CHECK(rs[0].reason == "refused");
  CHECK(rs[0].evidence.at("control").ends_with("connected"));
  CHECK(control.accepts_connection(io));
}

TEST_CASE("a name that cannot resolve is inconclusive/dns_failure") {
  asio::io_context io;
  // RFC 6761: names under .invalid never resolve.
  auto allow = Allowlist::parse({"*.invalid"});
  auto rs = run_probe(io, allow, make_test({{"nonexistent.invalid", 80}}));
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "inconclusive");
  CHECK(rs[0].reason == "dns_failure");
  CHECK(rs[0].target == "nonexistent.invalid:80");
}

// ---- the marker handshake between tcp_connect and tcp_listen ----

#include <boost/asio/write.hpp>

#include "agent/probes/tcp_listen.hpp"

using tocsin::agent::ack_line;
using tocsin::agent::handshake_verdict;
using tocsin::agent::hello_line;
using tocsin::agent::parse_ack;
using tocsin::agent::parse_hello;
using tocsin::agent::TcpListenProbe;

TEST_CASE("handshake lines: only well-formed lines with real markers parse") {
  CHECK(hello_line("tcn-abcdefghij") == "TOCSIN-HELLO tcn-abcdefghij\n");
  CHECK(parse_hello("TOCSIN-HELLO tcn-abcdefghij") == "tcn-abcdefghij");
  CHECK_FALSE(parse_hello("TOCSIN-HELLO tcn-ABCDEFGHIJ"));
  CHECK_FALSE(parse_hello("TOCSIN-HELLO tcn-abc"));
  CHECK_FALSE(parse_hello("TOCSIN-HELLO tcn-abcdefghij extra"));
  CHECK_FALSE(parse_hello("GET / HTTP/1.1"));
  CHECK_FALSE(parse_hello(""));
  auto ack = ack_line("tcn-abcdefghij", "tcn-0123456789");
  CHECK(ack == "TOCSIN-ACK tcn-abcdefghij tcn-0123456789\n");
  CHECK(parse_ack(ack.substr(0, ack.size() - 1), "tcn-abcdefghij") == "tcn-0123456789");
  CHECK_FALSE(parse_ack(ack.substr(0, ack.size() - 1), "tcn-zzzzzzzzzz"));  // someone else's
  CHECK_FALSE(parse_ack("TOCSIN-ACK tcn-abcdefghij", "tcn-abcdefghij"));
  CHECK_FALSE(parse_ack("TOCSIN-ACK tcn-abcdefghij tcn-bad", "tcn-abcdefghij"));
  CHECK_FALSE(parse_ack("HTTP/1.1 400 Bad Request", "tcn-abcdefghij"));
}

TEST_CASE("handshake_verdict: only an acknowledged handshake confirms the path") {
  struct Case {
    ConnectOutcome o;
    std::string handshake, verdict, reason;
  } cases[] = {
      {ConnectOutcome::connected, "acknowledged", "not_prevented", "handshake_confirmed"},
      {ConnectOutcome::connected, "no_answer", "inconclusive", "handshake_unconfirmed"},
      {ConnectOutcome::connected, "wrong_answer", "inconclusive", "handshake_unconfirmed"},
      {ConnectOutcome::refused, "", "prevented", "refused"},
      {ConnectOutcome::timeout, "", "prevented", "timeout"},
      {ConnectOutcome::dns_failure, "", "inconclusive", "dns_failure"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.handshake);
    auto v = handshake_verdict(c.o, c.handshake);
    CHECK(v.verdict == c.verdict);
    CHECK(v.reason == c.reason);
  }
}

TEST_CASE("tcp_connect and tcp_listen confirm a path from both ends") {
  asio::io_context io;
  auto allow = Allowlist::parse({"127.0.0.1"});
  auto listen_port = closed_port(io);
  auto quiet_port = closed_port(io);
  auto other_port = closed_port(io);

  // Something else listening: accepts, answers like a web server, closes.
  tcp::acceptor other(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), other_port));
  other.async_accept([&](boost::system::error_code ec, tcp::socket s) {
    if (ec) return;
    auto sp = std::make_shared<tcp::socket>(std::move(s));
    asio::async_write(*sp, asio::buffer(std::string("HTTP/1.1 400 Bad Request\r\n\r\n")),
                      [sp](boost::system::error_code, std::size_t) {});
  });

  TestSpec receiver;
  receiver.id = "dmz-receiver";
  receiver.probe = "tcp_listen";
  receiver.listen = {{"127.0.0.1", listen_port}, {"127.0.0.1", quiet_port}};
  receiver.window = 1500ms;
  ClockState clock;
  TcpListenProbe listener(io.get_executor(), clock);
  std::vector<ResultBody> rx;
  asio::co_spawn(io, listener.run(receiver, "tcn-receiver01"),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   REQUIRE_FALSE(e);
                   rx = std::move(r);
                 });

  TestSpec sender = make_test({{"127.0.0.1", listen_port}, {"127.0.0.1", other_port}});
  sender.handshake = true;
  sender.timeout = 1s;
  TcpConnectProbe prober(io.get_executor(), allow, clock);
  std::vector<ResultBody> tx;
  asio::steady_timer later(io, 200ms);  // the receiver is bound by then (bind is synchronous)
  later.async_wait([&](boost::system::error_code) {
    asio::co_spawn(io, prober.run(sender, "tcn-sender0001"),
                   [&](std::exception_ptr e, std::vector<ResultBody> r) {
                     REQUIRE_FALSE(e);
                     tx = std::move(r);
                   });
  });
  io.run();

  REQUIRE(tx.size() == 2);
  CHECK(tx[0].verdict == "not_prevented");
  CHECK(tx[0].reason == "handshake_confirmed");
  CHECK(tx[0].evidence.at("handshake") == "acknowledged");
  REQUIRE(rx.size() == 2);
  CHECK(tx[0].evidence.at("receiver_marker") == rx[0].marker);
  CHECK(tx[1].verdict == "inconclusive");  // connected, but not to a Tocsin receiver
  CHECK(tx[1].reason == "handshake_unconfirmed");
  CHECK(tx[1].evidence.at("handshake") == "wrong_answer");

  CHECK(rx[0].verdict == "not_prevented");
  CHECK(rx[0].reason == "handshake_received");
  CHECK(rx[0].evidence.at("handshakes") == "1");
  CHECK(rx[0].evidence.at("received").find(tx[0].marker + " from 127.0.0.1:") == 0);
  CHECK(rx[1].verdict == "inconclusive");
  CHECK(rx[1].reason == "nothing_arrived");
  CHECK(rx[0].marker != rx[1].marker);
}

TEST_CASE("tcp_listen reports a port it cannot bind as error: bind_failed") {
  asio::io_context io;
  tcp::acceptor taken(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  TestSpec t;
  t.id = "busy";
  t.probe = "tcp_listen";
  t.listen = {{"127.0.0.1", taken.local_endpoint().port()}};
  t.window = 100ms;
  ClockState clock;
  TcpListenProbe probe(io.get_executor(), clock);
  std::vector<ResultBody> rx;
  asio::co_spawn(io, probe.run(t, "tcn-receiver01"),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   REQUIRE_FALSE(e);
                   rx = std::move(r);
                 });
  io.run();
  REQUIRE(rx.size() == 1);
  CHECK(rx[0].verdict == "error");
  CHECK(rx[0].reason == "bind_failed");
  CHECK(rx[0].evidence.at("detail").find("in use") != std::string::npos);
}
