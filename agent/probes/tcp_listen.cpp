#include "agent/probes/tcp_listen.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <memory>

#include "common/config.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

bool is_marker(std::string_view s) {
  return s.size() == 14 && s.substr(0, 4) == "tcn-" &&
         s.substr(4).find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") == std::string_view::npos;
}

std::string hello_line(const std::string& marker) {
  return std::string(kHelloPrefix) + marker + "\n";
}

std::string ack_line(const std::string& sender_marker, const std::string& receiver_marker) {
  return std::string(kAckPrefix) + sender_marker + " " + receiver_marker + "\n";
}

std::optional<std::string> parse_hello(std::string_view line) {
  if (line.substr(0, kHelloPrefix.size()) != kHelloPrefix) return std::nullopt;
  auto m = line.substr(kHelloPrefix.size());
  if (!is_marker(m)) return std::nullopt;
  return std::string(m);
}

std::optional<std::string> parse_ack(std::string_view line, const std::string& sender_marker) {
  if (line.substr(0, kAckPrefix.size()) != kAckPrefix) return std::nullopt;
  auto rest = line.substr(kAckPrefix.size());
  if (rest.substr(0, sender_marker.size()) != sender_marker) return std::nullopt;
  rest = rest.substr(sender_marker.size());
  if (rest.empty() || rest[0] != ' ' || !is_marker(rest.substr(1))) return std::nullopt;
  return std::string(rest.substr(1));
}

namespace {

struct Received {
  std::string sender_marker, peer;
};

// Shared by the accept loop, the connection handlers and the run: handlers may still be
// reading when the window closes.
// A port scan or a connect flood must not exhaust the agent's descriptors or memory: at most
// this many connections are answered at once (more are closed at once and counted), and the
// first kMaxRecorded handshakes are kept (all are counted).
constexpr std::size_t kMaxAnswering = 64;
constexpr std::size_t kMaxRecorded = 100;

struct Listener {
  explicit Listener(asio::any_io_executor ex) : acceptor(ex) {}
  tcp::acceptor acceptor;
  std::vector<Received> received;
  std::size_t handshakes = 0;
  std::size_t other_connections = 0;  // accepted, but no valid hello
  std::size_t answering = 0;
  std::size_t turned_away = 0;  // closed unanswered: kMaxAnswering were in progress
};

asio::awaitable<void> answer(std::shared_ptr<Listener> l, tcp::socket sock, std::string marker) {
  boost::system::error_code ec;
  auto peer = sock.remote_endpoint(ec);
  auto peer_text = ec ? std::string("?") : peer.address().to_string() + ":" + std::to_string(peer.port());
  // Bounded: a line of at most 128 bytes within 2 s, then the socket is closed either way.
  auto sp = std::make_shared<tcp::socket>(std::move(sock));
  asio::steady_timer timer(sp->get_executor(), 2s);
  timer.async_wait([sp](boost::system::error_code e) {
    if (!e) {
      boost::system::error_code ignored;
      sp->close(ignored);
    }
  });
  asio::streambuf buf(kHandshakeLineMax);
  ec = {};
  auto n = co_await asio::async_read_until(*sp, buf, '\n', asio::redirect_error(asio::use_awaitable, ec));
  std::optional<std::string> sender;
  if (!ec && n > 0) {
    std::string line(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + n - 1);
    sender = parse_hello(line);
  }
  if (!sender) {
    ++l->other_connections;
  } else {
    if (++l->handshakes <= kMaxRecorded) l->received.push_back({*sender, peer_text});
    auto reply = ack_line(*sender, marker);
    co_await asio::async_write(*sp, asio::buffer(reply), asio::redirect_error(asio::use_awaitable, ec));
  }
  timer.cancel();
  sp->shutdown(tcp::socket::shutdown_both, ec);
  sp->close(ec);
  --l->answering;
}

asio::awaitable<void> accept_loop(std::shared_ptr<Listener> l, std::string marker) {
  for (;;) {
    boost::system::error_code ec;
    auto sock = co_await l->acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !l->acceptor.is_open()) co_return;
    if (ec) continue;  // a connection reset before accept: nothing to answer
    if (l->answering >= kMaxAnswering) {
      ++l->turned_away;
      sock.close(ec);
      continue;
    }
    ++l->answering;
    asio::co_spawn(l->acceptor.get_executor(), answer(l, std::move(sock), marker), asio::detached);
  }
}

}  // namespace

asio::awaitable<std::vector<common::ResultBody>> TcpListenProbe::run(const TestSpec& test,
                                                                     std::string marker) {
  std::vector<std::shared_ptr<Listener>> listeners;
  std::vector<common::ResultBody> out;
  for (const auto& addr : test.listen) {
    auto b = start_result(test, out.empty() ? marker : new_marker());
    b.target = addr.to_string();
    auto l = std::make_shared<Listener>(ex_);
    boost::system::error_code ec;
    auto ip = asio::ip::make_address(addr.host, ec);
    if (!ec) {
      tcp::endpoint ep(ip, addr.port);
      l->acceptor.open(ep.protocol(), ec);
      if (!ec) l->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
      if (!ec) l->acceptor.bind(ep, ec);
      if (!ec) l->acceptor.listen(64, ec);
    }
    if (ec) {
      b.verdict = "error";
      b.reason = "bind_failed";
      b.evidence = {{"detail", "cannot listen on " + addr.to_string() + ": " + ec.message()}};
      l.reset();
    } else {
      asio::co_spawn(ex_, accept_loop(l, b.marker), asio::detached);
    }
    listeners.push_back(l);
    out.push_back(std::move(b));
  }
  asio::steady_timer window(ex_, test.window);
  co_await window.async_wait(asio::use_awaitable);
  for (std::size_t i = 0; i < out.size(); ++i) {
    auto& l = listeners[i];
    auto& b = out[i];
    if (!l) {
      finish_result(b, clock_);
      continue;
    }
    boost::system::error_code ignored;
    l->acceptor.close(ignored);
    std::string from;
    for (const auto& r : l->received)
      from += (from.empty() ? "" : ", ") + r.sender_marker + " from " + r.peer;
    b.evidence = {{"window", common::format_duration(test.window)},
                  {"handshakes", std::to_string(l->handshakes)},
                  {"other_connections", std::to_string(l->other_connections)}};
    if (l->turned_away) b.evidence["turned_away"] = std::to_string(l->turned_away);
    if (l->handshakes > 0) {
      b.verdict = "not_prevented";
      b.reason = "handshake_received";
      b.evidence["received"] = from.substr(0, 2048);
    } else {
      b.verdict = "inconclusive";
      b.reason = "nothing_arrived";
      b.evidence["detail"] =
          "no handshake arrived; from this end a blocked path and a sender that did not run look "
          "the same: read it with the sender's result";
    }
    finish_result(b, clock_);
  }
  co_return out;
}

}  // namespace tocsin::agent
