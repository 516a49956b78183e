#include "collector/alerts/syslog_listener.hpp"

#include <pthread.h>

#include <utility>  // before Asio's awaitable.hpp (Boost 1.74 trap)

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "collector/alerts/syslog.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/net.hpp"
#include "common/tls.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using asio::ip::udp;
using namespace std::chrono_literals;

namespace {

constexpr auto kHandshakeTimeout = 10s;
// Long, because some senders notice a connection we closed only by losing the next message
// they write; bounded, so vanished peers do not hold connection slots for ever.
constexpr auto kIdleTimeout = 1h;
constexpr auto kFrameTimeout = 30s;  // once a frame has started, the rest must follow
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kMaxDatagram = 65536;  // above the largest UDP payload
constexpr std::size_t kUdpBatch = 64;        // datagrams already queued, drained into one submit
constexpr std::size_t kMaxInFlight = 10000;  // UDP alerts with the sink and not yet stored

// Lets the sink's thread hand a completion to our io_context, or drop it once we are gone.
struct Gate {
  std::mutex mu;
  asio::io_context* io = nullptr;
};

// A submission a TCP connection waits for before reading on: backpressure on the sender. The
// timer, set to never expire, is the condition variable.
struct Pending {
  explicit Pending(const asio::any_io_executor& ex)
      : timer(ex, asio::steady_timer::time_point::max()) {}
  asio::steady_timer timer;
  bool done = false;
};

template <class Endpoint>
std::string endpoint_text(const Endpoint& ep) {
  return common::HostPort{ep.address().to_string(), ep.port()}.to_string();
}

template <class Protocol>
typename Protocol::endpoint resolve_listen(asio::io_context& io, const common::HostPort& hp) {
  typename Protocol::resolver resolver(io);
  auto results =
      resolver.resolve(hp.host, std::to_string(hp.port),
                       Protocol::resolver::passive | Protocol::resolver::numeric_service);
  return results.begin()->endpoint();  // resolve() throws rather than return nothing
}

}  // namespace

struct SyslogListener::Impl {
  Impl(const AlertSourceConfig& cfg, AlertSink& sink, const std::filesystem::path& default_cert,
       const std::filesystem::path& default_key)
      : cfg_(cfg), sink_(sink), label_("syslog source '" + cfg.name + "'") {
    gate_->io = &io_;
    if (cfg_.tls) {
      common::ServerTlsFiles files{cfg_.tls_cert.empty() ? default_cert : cfg_.tls_cert,
                                   cfg_.tls_key.empty() ? default_key : cfg_.tls_key,
                                   {}};
      try {
        tls_ctx_.emplace(common::make_server_context(files, false));  // no client certificates
      } catch (const std::exception& e) {
        throw std::runtime_error(label_ + ": " + e.what());
      }
    }
    if (cfg_.udp) bind_udp(*cfg_.udp);
    if (cfg_.tcp) tcp_.emplace(listen_tcp(*cfg_.tcp, "tcp"));
    if (cfg_.tls) tls_.emplace(listen_tcp(*cfg_.tls, "tls"));
  }

  [[noreturn]] void cannot_listen(const char* proto, const common::HostPort& hp,
                                  const boost::system::system_error& e) {
    // Boost 1.74's system_error is not a std::system_error; keep the header's promise.
    throw std::system_error(std::error_code(e.code()),
                            label_ + " cannot listen on " + proto + " " + hp.to_string());
  }

  void bind_udp(const common::HostPort& hp) {
    try {
      auto ep = resolve_listen<udp>(io_, hp);
      udp_.emplace(io_);
      udp_->open(ep.protocol());
      udp_->bind(ep);
      boost::system::error_code ignored;  // a bigger buffer absorbs bursts; best effort
      udp_->set_option(asio::socket_base::receive_buffer_size(1 << 20), ignored);
      udp_->non_blocking(true);  // for draining queued datagrams; async reads are unaffected
      udp_port_ = udp_->local_endpoint().port();
    } catch (const boost::system::system_error& e) {
      cannot_listen("udp", hp, e);
    }
  }

  tcp::acceptor listen_tcp(const common::HostPort& hp, const char* proto) {
    try {
      auto ep = resolve_listen<tcp>(io_, hp);
      tcp::acceptor acceptor(io_);
      acceptor.open(ep.protocol());
      acceptor.set_option(asio::socket_base::reuse_address(true));
      acceptor.bind(ep);
      acceptor.listen(asio::socket_base::max_listen_connections);
      (std::string_view(proto) == "tcp" ? tcp_port_ : tls_port_) = acceptor.local_endpoint().port();
      return acceptor;
    } catch (const boost::system::system_error& e) {
      cannot_listen(proto, hp, e);
    }
  }

  // --- parsing and handing over -------------------------------------------------------------

  void parse_into(std::string_view message, std::int64_t arrival, const std::string& remote,
                  std::vector<Alert>& out) {
    try {
      out.push_back(parse_syslog(message, cfg_, arrival));
    } catch (const AlertParseError& e) {
      sink_.rejected(cfg_.name, "malformed", remote + ": " + e.what());
    } catch (const std::exception& e) {  // a parser bug must not stop the listener
      spdlog::error("{}: cannot parse a message from {}: {}", label_, remote, e.what());
      sink_.rejected(cfg_.name, "malformed", remote + ": " + e.what());
    }
  }

  void submit_udp(std::vector<Alert> batch) {
    if (batch.empty()) return;
    auto n = batch.size();
    // UDP cannot slow the sender down; past the cap, dropping and counting is all there is.
    if (in_flight_->load() + n > kMaxInFlight) {
      sink_.rejected(cfg_.name, "overloaded",
                     std::to_string(n) + " datagrams dropped: " + std::to_string(kMaxInFlight) +
                         " alerts already wait to be stored");
      return;
    }
    *in_flight_ += n;
    sink_.submit(std::move(batch), [in_flight = in_flight_, n, label = label_](SubmitOutcome out) {
      *in_flight -= n;
      if (!out.error.empty()) spdlog::warn("{}: alerts not stored: {}", label, out.error);
    });
  }

  // Submits in pieces the sink accepts, each awaited before the next and before more is read.
  awaitable<void> submit_and_wait(std::vector<Alert> alerts) {
    for (std::size_t from = 0; from < alerts.size(); from += kMaxAlertsPerRequest) {
      auto to = std::min(alerts.size(), from + kMaxAlertsPerRequest);
      std::vector<Alert> part(std::make_move_iterator(alerts.begin() + static_cast<long>(from)),
                              std::make_move_iterator(alerts.begin() + static_cast<long>(to)));
      auto pending = std::make_shared<Pending>(io_.get_executor());
      std::weak_ptr<Pending> weak = pending;
      sink_.submit(std::move(part), [gate = gate_, weak, label = label_](SubmitOutcome out) {
        if (!out.error.empty()) spdlog::warn("{}: alerts not stored: {}", label, out.error);
        std::lock_guard lock(gate->mu);
        if (!gate->io) return;
        // Only a weak reference crosses threads: if the connection is gone, nothing is woken.
        asio::post(*gate->io, [weak] {
          if (auto p = weak.lock()) {
            p->done = true;
            p->timer.cancel();
          }
        });
      });
      while (!pending->done) {
        boost::system::error_code ec;
        co_await pending->timer.async_wait(asio::redirect_error(use_awaitable, ec));
      }
    }
  }

  // --- UDP ------------------------------------------------------------------------------------

  void take_datagram(std::string_view bytes, const udp::endpoint& from, std::vector<Alert>& batch) {
    auto arrival = common::now_ns();
    auto remote = endpoint_text(from);
    if (bytes.size() > cfg_.max_message) {
      sink_.rejected(cfg_.name, "oversized",
                     remote + ": datagram of " + std::to_string(bytes.size()) +
                         " bytes exceeds max_message " + std::to_string(cfg_.max_message));
      return;
    }
    parse_into(bytes, arrival, remote, batch);
  }

  awaitable<void> udp_loop() {
    std::vector<char> buf(kMaxDatagram);
    udp::endpoint from;
    asio::steady_timer backoff(io_);
    for (;;) {
      boost::system::error_code ec;
      std::size_t n = co_await udp_->async_receive_from(asio::buffer(buf), from,
                                                        asio::redirect_error(use_awaitable, ec));
      if (stopping_ || !udp_->is_open() || ec == asio::error::operation_aborted) co_return;
      if (ec) {  // e.g. an ICMP error for an earlier packet; pause rather than spin
        spdlog::debug("{}: UDP receive failed: {}", label_, ec.message());
        backoff.expires_after(100ms);
        co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      std::vector<Alert> batch;
      take_datagram(std::string_view(buf.data(), n), from, batch);
      for (std::size_t k = 1; k < kUdpBatch; ++k) {  // what already waits joins this submit
        n = udp_->receive_from(asio::buffer(buf), from, 0, ec);
        if (ec) break;  // would_block: the queue is empty
        take_datagram(std::string_view(buf.data(), n), from, batch);
      }
      submit_udp(std::move(batch));
    }
  }

  // --- TCP and TLS ----------------------------------------------------------------------------

  // A connection's entry in sessions_, so stop() can close it; removed with its coroutine.
  struct SessionSlot {
    SessionSlot(Impl& impl, std::function<void()> close) : impl_(impl), id_(impl.next_session_++) {
      impl_.sessions_.emplace(id_, std::move(close));
    }
    ~SessionSlot() { impl_.sessions_.erase(id_); }
    SessionSlot(const SessionSlot&) = delete;
    SessionSlot& operator=(const SessionSlot&) = delete;
    Impl& impl_;
    std::uint64_t id_;
  };

  awaitable<void> accept_loop(tcp::acceptor* acceptor, bool tls) {
    asio::steady_timer backoff(io_);
    for (;;) {
      boost::system::error_code ec;
      tcp::socket sock = co_await acceptor->async_accept(asio::redirect_error(use_awaitable, ec));
      if (stopping_ || !acceptor->is_open()) co_return;
      if (ec) {  // typically EMFILE: pause instead of spinning on an error that persists
        spdlog::warn("{}: accept failed: {}; pausing 100 ms", label_, ec.message());
        backoff.expires_after(100ms);
        co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      auto ep = sock.remote_endpoint(ec);
      std::string remote = ec ? std::string("unknown peer") : endpoint_text(ep);
      if (sessions_.size() >= SyslogListener::kMaxConnections) {
        sink_.rejected(
            cfg_.name, "too_many_connections",
            remote + ": " + std::to_string(SyslogListener::kMaxConnections) + " connections open");
        sock.close(ec);
        continue;
      }
      sock.set_option(asio::socket_base::keep_alive(true), ec);
      auto done = common::log_if_failed(label_ + ": connection from " + remote);
      if (tls)
        asio::co_spawn(io_, tls_session(std::move(sock), remote), std::move(done));
      else
        asio::co_spawn(io_, tcp_session(std::move(sock), remote), std::move(done));
    }
  }

  awaitable<void> tcp_session(tcp::socket sock, std::string remote) {
    auto close = [&sock] {
      boost::system::error_code ignored;
      sock.close(ignored);
    };
    SessionSlot slot(*this, close);
    common::Watchdog wd(io_.get_executor(), close);
    co_await read_stream(sock, wd, remote);
  }

  awaitable<void> tls_session(tcp::socket sock, std::string remote) {
    using TlsStream = asio::ssl::stream<tcp::socket>;
    TlsStream stream(std::move(sock), *tls_ctx_);
    auto close = [&stream] {
      boost::system::error_code ignored;
      stream.lowest_layer().close(ignored);
    };
    SessionSlot slot(*this, close);
    common::Watchdog wd(io_.get_executor(), close);
    boost::system::error_code ec;
    wd.arm(kHandshakeTimeout);
    co_await stream.async_handshake(TlsStream::server, asio::redirect_error(use_awaitable, ec));
    wd.disarm();
    if (ec) {
      if (!stopping_)
        sink_.rejected(cfg_.name, "tls_handshake",
                       remote + ": " + (wd.fired() ? std::string("timed out") : ec.message()));
      co_return;
    }
    co_await read_stream(stream, wd, remote);
  }

  // Reads messages until the peer leaves, the stream cannot be framed, or it stalls.
  template <class Stream>
  awaitable<void> read_stream(Stream& s, common::Watchdog& wd, std::string remote) {
    SyslogFramer framer(cfg_.max_message);
    std::vector<char> buf(kReadChunk);
    for (;;) {
      bool mid_frame = framer.buffered() > 0;
      wd.arm(mid_frame ? std::chrono::steady_clock::duration(kFrameTimeout) : kIdleTimeout);
      boost::system::error_code ec;
      std::size_t n =
          co_await s.async_read_some(asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
      wd.disarm();
      auto arrival = common::now_ns();
      SyslogFramer::Result r;
      if (n > 0) r = framer.feed(std::string_view(buf.data(), n));
      bool orderly = ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
      if (ec && orderly && r.error.empty()) {  // a last line may lack its newline
        auto last = framer.finish();
        for (auto& m : last.messages) r.messages.push_back(std::move(m));
        r.reason = std::move(last.reason);
        r.error = std::move(last.error);
      }
      std::vector<Alert> alerts;
      for (const auto& m : r.messages) parse_into(m, arrival, remote, alerts);
      if (!r.error.empty()) sink_.rejected(cfg_.name, r.reason, remote + ": " + r.error);
      if (!alerts.empty()) co_await submit_and_wait(std::move(alerts));
      if (!r.error.empty()) co_return;  // no frame boundary is left to trust
      if (ec) {
        if (wd.fired() && framer.buffered() > 0)
          sink_.rejected(cfg_.name, "malformed",
                         remote + ": frame not completed within 30 s; connection closed");
        else if (!stopping_)
          spdlog::debug("{}: connection from {} ended: {}", label_, remote,
                        wd.fired() ? std::string("idle") : ec.message());
        co_return;
      }
    }
  }

  AlertSourceConfig cfg_;
  AlertSink& sink_;
  std::string label_;  // "syslog source 'name'"
  std::shared_ptr<Gate> gate_ = std::make_shared<Gate>();
  std::shared_ptr<std::atomic<std::size_t>> in_flight_ =
      std::make_shared<std::atomic<std::size_t>>(0);
  std::unordered_map<std::uint64_t, std::function<void()>> sessions_;  // id -> close its socket
  std::uint64_t next_session_ = 0;
  std::atomic<bool> stopping_{false};
  std::optional<asio::ssl::context> tls_ctx_;
  // After everything a coroutine touches: destroying the io_context destroys the coroutine
  // frames still suspended in it, and their destructors use the members above.
  asio::io_context io_;
  std::optional<udp::socket> udp_;
  std::optional<tcp::acceptor> tcp_, tls_;
  std::uint16_t udp_port_ = 0, tcp_port_ = 0, tls_port_ = 0;
  std::thread thread_;
  bool started_ = false;
};

SyslogListener::SyslogListener(const AlertSourceConfig& cfg, AlertSink& sink,
                               const std::filesystem::path& default_cert,
                               const std::filesystem::path& default_key)
    : impl_(std::make_unique<Impl>(cfg, sink, default_cert, default_key)) {}

SyslogListener::~SyslogListener() {
  stop();
  std::lock_guard lock(impl_->gate_->mu);
  impl_->gate_->io = nullptr;  // completions the sink still holds are dropped from now on
}

void SyslogListener::start() {
  auto& i = *impl_;
  if (i.started_) return;
  i.started_ = true;
  if (i.udp_)
    asio::co_spawn(i.io_, i.udp_loop(), common::log_if_failed(i.label_ + ": UDP listener stopped"));
  if (i.tcp_)
    asio::co_spawn(i.io_, i.accept_loop(&*i.tcp_, false),
                   common::log_if_failed(i.label_ + ": TCP listener stopped"));
  if (i.tls_)
    asio::co_spawn(i.io_, i.accept_loop(&*i.tls_, true),
                   common::log_if_failed(i.label_ + ": TLS listener stopped"));
  spdlog::info("{}: listening on{}{}{}", i.label_,
               i.udp_ ? " udp:" + std::to_string(i.udp_port_) : "",
               i.tcp_ ? " tcp:" + std::to_string(i.tcp_port_) : "",
               i.tls_ ? " tls:" + std::to_string(i.tls_port_) : "");
  i.thread_ = std::thread([&io = i.io_, label = i.label_] {
    pthread_setname_np(pthread_self(), "syslog");
    try {
      io.run();
    } catch (const std::exception& e) {
      spdlog::critical("{}: listener thread failed: {}", label, e.what());
    }
  });
}

void SyslogListener::stop() {
  auto& i = *impl_;
  i.stopping_ = true;
  i.io_.stop();  // prompt: nothing waits for peers, sinks or TLS goodbyes
  if (i.thread_.joinable() && i.thread_.get_id() != std::this_thread::get_id()) i.thread_.join();
  // The io thread is gone, so touching its objects from here is safe. Suspended coroutines
  // are destroyed with the io_context; the sockets are closed now so peers see it at once.
  boost::system::error_code ec;
  if (i.udp_) i.udp_->close(ec);
  if (i.tcp_) i.tcp_->close(ec);
  if (i.tls_) i.tls_->close(ec);
  auto sessions = i.sessions_;
  for (auto& [id, close] : sessions) close();
}

std::uint16_t SyslogListener::udp_port() const {
  return impl_->udp_port_;
}
std::uint16_t SyslogListener::tcp_port() const {
  return impl_->tcp_port_;
}
std::uint16_t SyslogListener::tls_port() const {
  return impl_->tls_port_;
}

}  // namespace tocsin::collector
