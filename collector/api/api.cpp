// ApiServer's life: bind, accept, deal connections to the serving threads, stop (see session.cpp).
#include "collector/api/api.hpp"

#include <utility>  // before awaitable.hpp (Boost 1.74 on some targets)

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

#include "collector/api/detail.hpp"
#include "common/log.hpp"

namespace tocsin::collector {

namespace detail::api {
namespace {

using asio::use_awaitable;
using namespace std::chrono_literals;

constexpr std::size_t kMaxConnections = 512;

void log_session_end(const std::string& remote, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    spdlog::error("api: connection from {} failed: {}", remote, x.what());
  } catch (...) {
    spdlog::error("api: connection from {} failed with a non-standard exception", remote);
  }
}

awaitable<void> accept_loop(std::shared_ptr<State> st) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer backoff(ex);
  for (;;) {
    boost::system::error_code ec;
    // Accepted on `io` (this frame may outlive the serving contexts), then handed over.
    tcp::socket socket(st->io);
    co_await st->acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
    if (st->stopping || !st->acceptor.is_open()) co_return;
    if (ec) {
      // Typically EMFILE: pause instead of spinning on an error that persists.
      spdlog::warn("api: accept failed: {}", ec.message());
      backoff.expires_after(100ms);
      co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    std::size_t open_now = 0;
    {
      std::lock_guard lk(st->conns_mu);
      open_now = st->conns.size();
    }
    if (open_now >= kMaxConnections) {
      spdlog::warn("api: {} connections open, refusing another", open_now);
      socket.close(ec);
      continue;
    }
    std::string remote;
    auto ep = socket.remote_endpoint(ec);
    if (!ec) remote = ep.address().to_string();
    asio::io_context& serving = st->session_ios.empty()
                                    ? st->io
                                    : *st->session_ios[st->next_session_io++ % st->session_ios.size()];
    if (&serving != &st->io) {  // the descriptor moves to the serving context's reactor
      auto protocol = ep.protocol();
      tcp::socket moved(serving);
      auto fd = socket.release(ec);
      if (!ec) {
        moved.assign(protocol, fd, ec);
        if (ec) ::close(fd);
      }
      if (ec) {
        spdlog::warn("api: cannot hand a connection from {} to a serving thread: {}", remote,
                     ec.message());
        continue;
      }
      socket = std::move(moved);
    }
    asio::co_spawn(serving, run_session(st, std::move(socket), serving),
                   [remote](std::exception_ptr e) { log_session_end(remote, e); });
  }
}

// Closes the idle connections served on `serving`; runs on that context's thread, the only
// one that touches those sockets (and that unregisters them, so a registered one is alive).
void close_idle(const std::shared_ptr<State>& st, asio::io_context* serving) {
  boost::system::error_code ec;
  std::lock_guard lk(st->conns_mu);
  for (auto* c : st->conns)
    if (c->io == serving && !c->busy) c->socket->close(ec);
}

void stop_state(const std::shared_ptr<State>& st) {
  if (st->stop_done) return;  // `stopping` alone may have been set by wait()
  st->stop_done = true;
  st->stopping = true;
  boost::system::error_code ec;
  st->acceptor.close(ec);
  // Idle keep-alive connections would otherwise hold their io_context until their timeout.
  if (st->session_ios.empty()) close_idle(st, &st->io);
  for (auto* sio : st->session_ios) asio::post(*sio, [st, sio] { close_idle(st, sio); });
}

}  // namespace
}  // namespace detail::api

namespace asio = boost::asio;
using asio::ip::tcp;
using detail::api::accept_loop;
using detail::api::close_idle;
using detail::api::log_session_end;
using detail::api::State;
using detail::api::stop_state;

struct ApiServer::Impl {
  std::shared_ptr<State> state;  // first: destroyed after the contexts below
  std::vector<std::unique_ptr<asio::io_context>> ios;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::vector<std::thread> threads;
};

ApiServer::ApiServer(asio::io_context& io, asio::ssl::context& tls, const common::HostPort& listen,
                     Store& store, Registry& registry, ApiAlerting alerting,
                     std::size_t threads)
    : impl_(std::make_unique<Impl>()) {
  auto st = std::make_shared<State>(io, tls, store, registry, alerting);
  for (std::size_t i = 0; i < threads; ++i) {
    impl_->ios.push_back(std::make_unique<asio::io_context>(1));
    st->session_ios.push_back(impl_->ios.back().get());
  }
  try {
    tcp::resolver resolver(io);
    auto endpoints = resolver.resolve(listen.host, std::to_string(listen.port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service);
    tcp::endpoint ep = endpoints.begin()->endpoint();  // resolve() throws rather than give none
    st->acceptor.open(ep.protocol());
    st->acceptor.set_option(asio::socket_base::reuse_address(true));
    st->acceptor.bind(ep);
    st->acceptor.listen(asio::socket_base::max_listen_connections);
    st->port = st->acceptor.local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    // Boost 1.74's system_error is not a std::system_error; keep the promise of api.hpp.
    throw std::system_error(std::error_code(e.code()),
                            "API cannot listen on " + listen.to_string());
  }
  impl_->state = std::move(st);
}

// The acceptor belongs to the io_context's thread: closing it is posted there. Coroutines hold
// the state, so it lives until the last of them ends.
ApiServer::~ApiServer() {
  stop();
  wait();
}

std::uint16_t ApiServer::port() const {
  return impl_->state->port;
}

void ApiServer::start() {
  auto& st = impl_->state;
  spdlog::info("api: listening on https://{} ({} serving thread{})",
               st->acceptor.local_endpoint().address().to_string() + ":" + std::to_string(st->port),
               std::max<std::size_t>(1, impl_->ios.size()), impl_->ios.size() > 1 ? "s" : "");
  if (impl_->threads.empty())
    for (std::size_t i = 0; i < impl_->ios.size(); ++i) {
      auto& ctx = *impl_->ios[i];
      impl_->guards.push_back(asio::make_work_guard(ctx));
      impl_->threads.emplace_back([&ctx, i] {
        pthread_setname_np(pthread_self(), ("api-" + std::to_string(i)).c_str());
        try {
          ctx.run();
        } catch (const std::exception& e) {  // sessions catch their own; this is a bug
          spdlog::critical("api: serving thread {} failed: {}; exiting", i, e.what());
          std::_Exit(70);
        }
      });
    }
  asio::co_spawn(st->io, accept_loop(st),
                 [](std::exception_ptr e) { log_session_end("accept loop", e); });
}

void ApiServer::stop() {
  asio::post(impl_->state->io, [st = impl_->state] { stop_state(st); });
}

void ApiServer::wait() {
  if (impl_->threads.empty()) return;
  // stop() closes them too, but only once `io` runs its post: a caller whose `io` has stopped
  // still gets its idle connections closed here (new ones may still be accepted until then).
  auto& st = impl_->state;
  st->stopping = true;
  for (auto* sio : st->session_ios) asio::post(*sio, [st, sio] { close_idle(st, sio); });
  impl_->guards.clear();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace tocsin::collector
