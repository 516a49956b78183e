// One connection: TLS handshake, each request under limits and a watchdog, its answer written.
#include <utility>  // before awaitable.hpp (Boost 1.74 on some targets)

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "collector/alerts/hooks.hpp"
#include "collector/api/handlers.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/net.hpp"

namespace tocsin::collector::detail::api {

using asio::use_awaitable;
using namespace std::chrono_literals;

constexpr std::uint32_t kHeaderLimit = 16 * 1024;
constexpr auto kHandshakeTimeout = 10s;
constexpr auto kRequestTimeout = 30s;  // a whole request must arrive within this
constexpr auto kWriteTimeout = 30s;
constexpr auto kShutdownTimeout = 5s;

namespace {

// Answer for a request that could not even be parsed; the connection is closed after it.
Response parse_error_response(const boost::system::error_code& ec,
                              std::size_t body_limit = kBodyLimit) {
  if (ec == http::error::body_limit)
    return error_response(http::status::payload_too_large,
                                  "request body exceeds " + std::to_string(body_limit) + " bytes",
                                  nullptr);
  if (ec == http::error::header_limit)
    return error_response(
        http::status::request_header_fields_too_large,
        "request headers exceed " + std::to_string(kHeaderLimit) + " bytes", nullptr);
  return error_response(http::status::bad_request,
                                "malformed HTTP request: " + ec.message(), nullptr);
}

using TlsStream = asio::ssl::stream<tcp::socket>;

// The response as it goes on the wire. Every response here has its Content-Length set
// (prepare_payload) and is never chunked, so the header is written field by field: Beast's
// serializer through an ostringstream cost several allocations per alert.
std::string serialize(const Response& res) {
  std::string out;
  out.reserve(256 + res.body().size());
  out += res.version() == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  out += std::to_string(res.result_int());
  out += ' ';
  auto reason = res.reason();
  out.append(reason.data(), reason.size());
  out += "\r\n";
  for (const auto& f : res) {
    auto name = f.name_string();
    auto value = f.value();
    out.append(name.data(), name.size());
    out += ": ";
    out.append(value.data(), value.size());
    out += "\r\n";
  }
  out += "\r\n";
  out += res.body();
  return out;
}

// Incident requests may wait for the engine's lock (the feed holds it while it commits a batch)
// and make a synced write of their own: they run on the API's worker thread, so ingest and the
// other endpoints on the io thread never wait for them. The engine has its own mutex, and the
// registry and the store are safe to use from any thread.
awaitable<Response> handle_offloaded(State& st, const Request& req, const std::string& remote) {
  auto ex = co_await asio::this_coro::executor;
  auto wake =
      std::make_shared<asio::steady_timer>(ex, std::chrono::steady_clock::time_point::max());
  auto out = std::make_shared<Response>();
  auto job = [&st, req, remote, wake, out, ex] {
    auto res = handle_request(st, req, remote);
    asio::post(ex, [wake, out, res = std::move(res)]() mutable {
      *out = std::move(res);
      wake->cancel();
    });
  };
  asio::post(st.workers, std::move(job));
  boost::system::error_code ec;
  co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  co_return std::move(*out);
}

// Incidents, notifications (a scan of the delivery records) and the audit log (verify walks
// all of it) run on the worker thread.
bool is_offloaded_path(std::string_view target) {
  for (std::string_view base :
       {"/api/v1/incidents", "/api/v1/silences", "/api/v1/notifications", "/api/v1/audit",
        "/api/v1/commands", "/approve"})
    if (target.substr(0, base.size()) == base &&
        (target.size() == base.size() || target[base.size()] == '/' || target[base.size()] == '?'))
      return true;
  return false;
}

bool alerting_enabled(const State& st) {
  return st.alerting.sources && st.alerting.correlator;
}

awaitable<void> serve_requests(State& st, TlsStream& stream, State::Conn& conn,
                               common::Watchdog& watchdog, const std::string& remote) {
  beast::flat_buffer buffer;
  while (!st.stopping) {
    http::request_parser<http::string_body> parser;
    // Beast checks a Content-Length against the limit while it reads the header, so the header
    // is read with the largest limit any endpoint has; the endpoint's own is enforced below.
    parser.body_limit(st.max_body);
    parser.header_limit(kHeaderLimit);
    boost::system::error_code ec;
    watchdog.arm(kRequestTimeout);
    co_await http::async_read_header(stream, buffer, parser,
                                     asio::redirect_error(use_awaitable, ec));
    auto arrival_ns = common::now_ns();
    std::string hook_source;  // non-empty: an alert source's request
    bool hook = false;
    std::size_t limit = kBodyLimit;
    if (!ec) {
      std::string_view target(parser.get().target().data(), parser.get().target().size());
      auto path = target.substr(0, target.find('?'));
      hook = alerting_enabled(st) && is_hook_path(path);
      if (hook) {
        hook_source = hook_source_name(*st.alerting.sources, path);
        if (auto l = hook_body_limit(*st.alerting.sources, path)) limit = l;
      }
      parser.body_limit(limit);  // chunked bodies are checked as they arrive
      std::optional<HookReply> refused;
      if (hook) {  // no body buffer for a sender without the token
        auto auth = authenticate_hook(*st.alerting.sources, hook_request(parser.get(), arrival_ns),
                                      *st.alerting.correlator);
        if (auto* r = std::get_if<HookReply>(&auth)) refused = *r;
      }
      if (refused) {
        auto res = hook_response(parser.get(), *refused);
        res.keep_alive(false);  // the unread body makes the connection unusable
        watchdog.arm(kWriteTimeout);
        std::string wire = serialize(res);
        co_await asio::async_write(stream, asio::buffer(wire),
                                   asio::redirect_error(use_awaitable, ec));
        co_return;
      }
      if (parser.content_length() && *parser.content_length() > limit)
        ec = http::error::body_limit;  // refused before reading a byte of it
      else if (!parser.is_done())
        co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    } else if (ec == http::error::body_limit && alerting_enabled(st)) {
      // Over even the largest limit, found while reading the header: still say whose it was.
      std::string_view target(parser.get().target().data(), parser.get().target().size());
      auto path = target.substr(0, target.find('?'));
      if ((hook = is_hook_path(path))) {
        hook_source = hook_source_name(*st.alerting.sources, path);
        if (auto l = hook_body_limit(*st.alerting.sources, path)) limit = l;
      }
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::ssl::error::stream_truncated || ec == asio::error::connection_reset ||
        ec == asio::error::eof || watchdog.fired() || !stream.lowest_layer().is_open())
      co_return;  // the peer left (or timed out): nobody to answer
    bool parsed = !ec;
    if (!parsed) spdlog::info("api: bad request from {}: {}", remote, ec.message());
    if (!parsed && hook && !hook_source.empty())
      st.alerting.correlator->rejected(
          hook_source, ec == http::error::body_limit ? "oversized" : "malformed",
          "from " + remote + ": " +
              (ec == http::error::body_limit
                   ? "body larger than max_body (" + std::to_string(limit) + " bytes)"
                   : ec.message()));
    conn.busy = true;
    Response res;
    if (!parsed)
      res = parse_error_response(ec, limit);
    else if (hook)
      res = co_await handle_hook(st, parser.get(), arrival_ns);
    else if (is_offloaded_path(std::string_view(parser.get().target().data(),
                                               parser.get().target().size())))
      res = co_await handle_offloaded(st, parser.get(), remote);
    else
      res = handle_request(st, parser.get(), remote);
    if (st.stopping) res.keep_alive(false);
    watchdog.arm(kWriteTimeout);
    // One buffer, so TLS sends one record and the kernel one segment: Beast's serializer hands
    // the SSL stream header and body separately, which costs a record and a syscall each.
    std::string wire = serialize(res);
    co_await asio::async_write(stream, asio::buffer(wire), asio::redirect_error(use_awaitable, ec));
    conn.busy = false;
    // Stopping may have begun while this answer was written (and skipped us as busy).
    if (ec || !parsed || !res.keep_alive() || st.stopping) co_return;
  }
}

}  // namespace

awaitable<void> run_session(std::shared_ptr<State> st, tcp::socket socket,
                            asio::io_context& serving) {
  std::string remote = "unknown";
  boost::system::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  if (!ec) remote = ep.address().to_string() + ":" + std::to_string(ep.port());

  TlsStream stream(std::move(socket), st->tls);
  State::Conn conn{&stream.next_layer(), &serving};
  {
    std::lock_guard lk(st->conns_mu);
    st->conns.insert(&conn);
  }
  struct Unregister {
    State& st;
    State::Conn* c;
    ~Unregister() {
      std::lock_guard lk(st.conns_mu);
      st.conns.erase(c);
    }
  } unregister{*st, &conn};
  auto ex = co_await asio::this_coro::executor;
  // Asio 1.18 has no per-operation timeout: closing the socket aborts whatever is pending.
  common::Watchdog watchdog(ex, [&stream] {
    boost::system::error_code ignored;
    stream.lowest_layer().close(ignored);
  });

  watchdog.arm(kHandshakeTimeout);
  co_await stream.async_handshake(asio::ssl::stream_base::server,
                                  asio::redirect_error(use_awaitable, ec));
  if (ec) {
    spdlog::info("api: TLS handshake with {} failed: {}", remote,
                 watchdog.fired() ? "timed out" : ec.message());
    co_return;
  }
  co_await serve_requests(*st, stream, conn, watchdog, remote);
  if (watchdog.fired()) spdlog::debug("api: connection from {} timed out", remote);
  if (!stream.lowest_layer().is_open()) co_return;
  watchdog.arm(kShutdownTimeout);
  // A peer that just drops the connection (stream_truncated) is normal for HTTP clients.
  co_await stream.async_shutdown(asio::redirect_error(use_awaitable, ec));
  watchdog.disarm();
  stream.lowest_layer().close(ec);
}

}  // namespace tocsin::collector::detail::api
