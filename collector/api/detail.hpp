// What the API's parts share: server state, request types, HttpError and the request helpers.
#pragma once

#include <utility>  // before awaitable.hpp (Boost 1.74 on some targets)

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "collector/api/api.hpp"

namespace tocsin::collector::detail::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::ip::tcp;
using nlohmann::json;

constexpr std::size_t kBodyLimit = 64 * 1024;

// Lets the parsing helpers abort one request with a precise status and message without
// threading error values through every handler; it never leaves handle_request().
struct HttpError : std::runtime_error {
  HttpError(http::status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
  http::status status;
};

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using Params = std::map<std::string, std::string>;

// Shared with every coroutine, so a connection finishing after ~ApiServer never touches
// freed memory. The accept loop and stop_state run on `io`; each connection runs on one
// io_context driven by one thread (`io` itself, or one of `session_ios`), so a connection's
// own state needs no lock. What connections share: `conns` (under conns_mu), `stopping`
// (atomic), and the store, registry and engines, which are safe to use from any thread.
struct State {
  State(asio::io_context& io, asio::ssl::context& tls, Store& store, Registry& registry,
        ApiAlerting alerting)
      : io(io), tls(tls), acceptor(io), store(store), registry(registry), alerting(alerting) {
    if (alerting.sources)
      for (const auto& src : *alerting.sources) max_body = std::max(max_body, src.max_body);
  }
  struct Conn {
    tcp::socket* socket;
    asio::io_context* io;  // the context (and so the thread) serving it
    bool busy = false;     // between a complete request and its answer; touched on `io` only
  };
  asio::io_context& io;
  asio::ssl::context& tls;
  tcp::acceptor acceptor;
  Store& store;
  Registry& registry;
  ApiAlerting alerting;
  std::size_t max_body = kBodyLimit;   // the largest body any endpoint accepts
  std::vector<asio::io_context*> session_ios;  // empty: connections are served on `io`
  std::size_t next_session_io = 0;             // round robin; accept loop only
  std::mutex conns_mu;
  std::set<Conn*> conns;
  std::atomic<bool> stopping{false};
  bool stop_done = false;  // stop_state ran (on `io`)
  std::uint16_t port = 0;
  // Incident requests run here (see handle_offloaded). Declared last: destroyed (joined) first.
  asio::thread_pool workers{1};
};

// ---- json.cpp: answers, and reading what a request asks for ---------------------------------

std::string dump_json(const json& j);
Response make_response(http::status status, const json& body, const Request* req);
Response error_response(http::status status, const std::string& message, const Request* req);

std::string percent_decode(std::string_view s);
Params parse_query(std::string_view query, const std::vector<std::string>& known);
std::string param(const Params& p, const std::string& key, const std::string& def);
std::int64_t since_param(const Params& p, const std::string& def);
std::size_t limit_param(const Params& p);
// The number in /api/v1/<what>s/N.
std::uint64_t id_param(std::string_view text, const std::string& what = "incident");

json parse_body_object(const Request& req, const std::vector<std::string>& known);
std::optional<std::string> string_field(const json& body, const std::string& key);
std::string required_body_text(const json& body, const std::string& key);

json time_or_null(std::int64_t ns);
double ns_to_ms(std::int64_t ns);
json error_ms_or_null(std::int64_t ns);

// ---- routes.cpp: access and the frame of every dispatcher ------------------------------------

ApiToken authorize(State& st, const Request& req, Role min_role);

// 405 for `path`, naming the methods it accepts in the message and the Allow header.
Response method_not_allowed(const Request& req, std::string_view path,
                            const std::vector<http::verb>& allowed);

// <base>[/<first>[/<action>]] -> {first, action}; nullopt when the path is not under base.
std::optional<std::pair<std::string_view, std::string_view>> resource_path(std::string_view path,
                                                                           std::string_view base);

// The frame shared by the resources whose id is part of the path (incidents, commands), matched
// by prefix rather than through the route table: nullopt when `path` is not under `base`, 405
// when the method is not among allowed(first, action), and any EngineError that
// handle(first, action) throws as 409 (the engines throw it only to refuse a change; reads
// report their failures otherwise). handle authorizes and returns the status and body.
template <class EngineError>
std::optional<Response> dispatch_resource(
    const Request& req, std::string_view path, std::string_view base,
    const std::function<std::vector<http::verb>(std::string_view, std::string_view)>& allowed,
    const std::function<std::pair<http::status, json>(std::string_view, std::string_view)>&
        handle) {
  auto parts = resource_path(path, base);
  if (!parts) return std::nullopt;
  auto [first, action] = *parts;
  auto methods = allowed(first, action);
  if (std::find(methods.begin(), methods.end(), req.method()) == methods.end())
    return method_not_allowed(req, path, methods);
  try {
    auto [status, out] = handle(first, action);
    return make_response(status, out, &req);
  } catch (const EngineError& e) {
    throw HttpError(http::status::conflict, e.what());
  }
}

// ---- session.cpp ------------------------------------------------------------------------------

// Serves one accepted connection (TLS handshake, requests, shutdown) until it ends.
awaitable<void> run_session(std::shared_ptr<State> st, tcp::socket socket,
                            asio::io_context& serving);

}  // namespace tocsin::collector::detail::api
