#include "agent/runtime/uplink.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <random>

#include "agent/runtime/scheduler.hpp"
#include "common/clock.hpp"
#include "common/frame.hpp"
#include "common/log.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;
using Stream = asio::ssl::stream<tcp::socket>;

namespace {
// The collector answered with an error frame: it refused something we sent.
struct Refused : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace

PollAnswer handle_poll_answer(const common::Message& m,
                              const std::function<void(common::Commands)>& dispatch) {
  if (auto* c = std::get_if<common::Commands>(&m)) {
    dispatch(*c);
    return PollAnswer::dispatched;
  }
  if (auto* err = std::get_if<common::ErrorMsg>(&m)) {
    // What collectors before issue 6 answer to a message type they do not know.
    if (err->code == "malformed_message" || err->code == "protocol_error" ||
        err->code == "unexpected_message" || err->code == "unsupported")
      return PollAnswer::unsupported;
    throw Refused("collector refused: " + err->code + ": " + err->message);
  }
  throw std::runtime_error("unexpected '" + common::message_type_name(m) +
                           "' from collector in answer to a command poll");
}

struct Uplink::Impl {
  Impl(asio::any_io_executor ex, asio::ssl::context& tls, common::HostPort server,
       std::string agent_id, common::Ed25519Key key, Outbox& outbox, ClockState& clock,
       UplinkOptions opts)
      : ex(ex), tls(tls), server(std::move(server)), agent_id(std::move(agent_id)),
        key(std::move(key)), outbox(outbox), clock(clock), opts(opts), wake(ex), backoff(ex) {}

  asio::any_io_executor ex;
  asio::ssl::context& tls;
  common::HostPort server;
  std::string agent_id;
  common::Ed25519Key key;
  Outbox& outbox;
  ClockState& clock;
  UplinkOptions opts;
  asio::steady_timer wake;     // a condition variable: cancelled to wake the sender
  asio::steady_timer backoff;  // new results do not cut a reconnect delay short
  bool stopping = false;
  bool notified = false;
  UplinkStats stats;
  std::function<void()> drained;
  std::function<void()> connected;
  std::function<void(common::Commands)> commands;
  bool polling_disabled = false;  // for the life of the process: the collector cannot answer
  std::function<void()> close_socket;
  std::mt19937_64 rng{std::random_device{}()};

  void wake_up() {
    notified = true;
    wake.cancel();
  }

  asio::awaitable<void> sleep_until(std::chrono::steady_clock::time_point t) {
    if (notified || stopping) co_return;
    wake.expires_at(t);
    boost::system::error_code ec;
    co_await wake.async_wait(asio::redirect_error(use_awaitable, ec));
  }

  asio::awaitable<void> run() {
    unsigned attempt = 0;
    while (!stopping) {
      bool was_connected = false;
      try {
        co_await session(was_connected);
      } catch (const std::exception& e) {
        stats.connected = false;
        if (stopping) break;
        bool repeat = stats.last_error == e.what();
        stats.last_error = e.what();
        if (repeat)
          spdlog::debug("collector {}: {}", server.to_string(), e.what());
        else
          spdlog::warn("collector {}: {}", server.to_string(), e.what());
      }
      if (stopping) break;
      if (was_connected) attempt = 0;
      auto delay = full_jitter_backoff(attempt++, opts.backoff_initial, opts.backoff_max, rng);
      spdlog::debug("reconnecting in {} ms ({} results waiting)", delay.count(),
                    outbox.stats().pending);
      backoff.expires_after(delay);
      boost::system::error_code ec;
      co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
    }
  }

  asio::awaitable<common::Message> read_any(Stream& s, common::Watchdog& wd) {
    wd.arm(opts.io_timeout);
    auto payload = co_await common::read_frame(s);
    wd.disarm();
    co_return common::decode_message(payload);
  }

  asio::awaitable<common::Message> read(Stream& s, common::Watchdog& wd) {
    auto m = co_await read_any(s, wd);
    if (auto* err = std::get_if<common::ErrorMsg>(&m))
      throw Refused("collector refused: " + err->code + ": " + err->message);
    co_return m;
  }

  asio::awaitable<void> write(Stream& s, common::Watchdog& wd, const common::Message& m) {
    wd.arm(opts.io_timeout);
    co_await common::write_frame(s, common::frame_message(m));
    wd.disarm();
  }

  template <class T>
  asio::awaitable<T> expect(Stream& s, common::Watchdog& wd) {
    for (;;) {
      auto m = co_await read(s, wd);
      if (auto* v = std::get_if<T>(&m)) co_return std::move(*v);
      throw std::runtime_error("unexpected '" + common::message_type_name(m) + "' from collector");
    }
  }

  // t1 and t4 are frame times (common::process_frame), like every stamp: the offset maps the
  // frame, not the wall clock, to the collector's clock, and a wall step changes neither.
  asio::awaitable<void> sync_clock(Stream& s, common::Watchdog& wd) {
    const auto& frame = common::process_frame();
    auto t1 = frame.at(clock.observe().mono_ns);  // a step seen here came before the exchange
    auto steps_before = clock.steps();
    common::TimeReq req{t1};
    co_await write(s, wd, req);
    auto resp = co_await expect<common::TimeResp>(s, wd);
    auto at = clock.observe();
    auto t4 = frame.at(at.mono_ns);
    if (resp.t1 != req.t1) throw std::runtime_error("clock exchange answered another request");
    auto sample = common::clock_sample(resp.t1, resp.t2, resp.t3, t4);
    if (clock.steps() != steps_before) {
      // A step inside the exchange may have been the monotonic clock's: the round trip is not
      // to be trusted. The step left resync_wanted set: the session loop asks again.
      spdlog::debug("clock exchange discarded: the clock stepped during it");
      co_return;
    }
    bool after_step = clock.resync_wanted();
    clock.synchronised(sample, at);
    spdlog::log(after_step ? spdlog::level::info : spdlog::level::debug,
                "clock offset to collector {:.3f} ms ± {:.3f} ms{}", sample.offset_ns / 1e6,
                sample.error_ns / 1e6,
                after_step ? " (re-synchronised after a wall-clock step)" : "");
  }

  bool polling() const {
    return commands && !polling_disabled && opts.command_poll_interval.count() > 0;
  }

  // False when the collector does not know the poll: it closes the session after its error,
  // so the caller ends the session quietly and reconnects without polling.
  asio::awaitable<bool> poll_commands(Stream& s, common::Watchdog& wd) {
    common::CommandPoll poll;
    co_await write(s, wd, poll);
    auto m = co_await read_any(s, wd);
    if (handle_poll_answer(m, commands) == PollAnswer::unsupported) {
      polling_disabled = stats.command_polling_disabled = true;
      auto& err = std::get<common::ErrorMsg>(m);
      spdlog::warn("collector {} does not support command polling ({}: {}); remote commands "
                   "are off until the agent restarts",
                   server.to_string(), err.code, err.message);
      co_return false;
    }
    ++stats.command_polls;
    co_return true;
  }

  asio::awaitable<void> session(bool& was_connected) {
    Stream s(ex, tls);
    common::Watchdog wd(ex, [&s] {
      boost::system::error_code ignored;
      s.lowest_layer().close(ignored);
    });
    close_socket = [&s] {
      boost::system::error_code ignored;
      s.lowest_layer().close(ignored);
    };
    struct Reset {
      std::function<void()>& f;
      ~Reset() { f = nullptr; }
    } reset{close_socket};

    wd.arm(opts.connect_timeout);
    tcp::resolver resolver(ex);
    try {
      auto eps = co_await resolver.async_resolve(server.host, std::to_string(server.port),
                                                 use_awaitable);
      // Closing the socket does not cancel a resolve: check, then bound the connect anew.
      if (wd.fired()) throw std::runtime_error("name resolution timed out");
      wd.arm(opts.connect_timeout);
      co_await asio::async_connect(s.lowest_layer(), eps, use_awaitable);
    } catch (const boost::system::system_error& e) {
      throw std::runtime_error("cannot connect: " +
                               (wd.fired() ? std::string("timed out") : e.code().message()));
    }
    wd.arm(opts.connect_timeout);  // and the handshake gets its own bound
    boost::system::error_code ec;
    s.lowest_layer().set_option(tcp::no_delay(true), ec);
    common::set_expected_peer_name(s.native_handle(), server.host);
    try {
      co_await s.async_handshake(Stream::client, use_awaitable);
    } catch (const boost::system::system_error& e) {
      long vr = SSL_get_verify_result(s.native_handle());
      throw std::runtime_error(
          vr != X509_V_OK ? std::string("refusing collector: certificate does not verify against "
                                        "the pinned CA (") +
                                X509_verify_cert_error_string(vr) + ")"
                          : "TLS handshake failed: " + (wd.fired() ? std::string("timed out")
                                                                   : e.code().message()));
    }
    wd.disarm();
    common::Hello hello{agent_id, TOCSIN_VERSION, common::kProtocolVersion};
    co_await write(s, wd, hello);
    auto ack = co_await expect<common::HelloAck>(s, wd);
    if (auto err = outbox.reconcile(ack.next_seq, ack.head_hash); !err.empty())
      throw std::runtime_error("chain mismatch, not sending: " + err);
    co_await sync_clock(s, wd);
    stats.connected = true;
    ++stats.connects;
    if (!stats.last_error.empty())
      spdlog::info("connected to collector {} ({} results waiting)", server.to_string(),
                   outbox.stats().pending);
    stats.last_error.clear();
    if (connected) connected();
    auto next_sync = std::chrono::steady_clock::now() + opts.clock_sync_interval;
    auto next_poll = std::chrono::steady_clock::now();  // the first poll right after connecting

    while (!stopping) {
      if (std::chrono::steady_clock::now() >= next_sync || clock.resync_wanted()) {
        co_await sync_clock(s, wd);
        next_sync = std::chrono::steady_clock::now() + opts.clock_sync_interval;
      }
      notified = false;
      auto records = outbox.pending(opts.batch_max_results, opts.batch_max_bytes);
      if (records.empty()) {
        was_connected = true;  // a healthy session: the next reconnect starts a fresh backoff
        if (drained) drained();
        if (polling() && std::chrono::steady_clock::now() >= next_poll) {
          bool supported = co_await poll_commands(s, wd);
          if (!supported) {
            stats.connected = false;
            co_return;
          }
          next_poll = std::chrono::steady_clock::now() + opts.command_poll_interval;
          continue;  // the commands may have added results
        }
        co_await sleep_until(polling() ? std::min(next_sync, next_poll) : next_sync);
        continue;
      }
      common::Batch b;
      b.agent_id = agent_id;
      b.results = std::move(records);
      const auto& last = b.results.back();
      b.signature = key.sign(common::batch_signing_bytes(agent_id, last.seq, last.hash));
      auto last_seq = last.seq;
      co_await write(s, wd, b);
      auto a = co_await expect<common::Ack>(s, wd);
      if (a.seq != last_seq)
        throw std::runtime_error("collector acked seq " + std::to_string(a.seq) + ", expected " +
                                 std::to_string(last_seq));
      outbox.ack(a.seq);
      ++stats.batches_acked;
      was_connected = true;
    }
  }
};

Uplink::Uplink(asio::any_io_executor ex, asio::ssl::context& tls, common::HostPort server,
               std::string agent_id, common::Ed25519Key key, Outbox& outbox, ClockState& clock,
               UplinkOptions opts)
    : impl_(std::make_shared<Impl>(ex, tls, std::move(server), std::move(agent_id), std::move(key),
                                   outbox, clock, opts)) {}

Uplink::~Uplink() {
  stop();
  impl_->clock.on_step(nullptr);
}

void Uplink::start() {
  // A step seen by any stamper, on any thread, wakes the sender to re-synchronise at once.
  impl_->clock.on_step([w = std::weak_ptr<Impl>(impl_)] {
    if (auto impl = w.lock())
      asio::post(impl->ex, [w] {
        if (auto i = w.lock()) i->wake_up();
      });
  });
  // The handler holds the state alive for as long as the coroutine may touch it.
  asio::co_spawn(impl_->ex, impl_->run(),
                 [impl = impl_, log = common::log_if_failed("uplink stopped")](
                     std::exception_ptr e) { log(e); });
}

void Uplink::stop() {
  impl_->stopping = true;
  impl_->wake.cancel();
  impl_->backoff.cancel();
  if (impl_->close_socket) impl_->close_socket();
}

void Uplink::notify() { impl_->wake_up(); }
void Uplink::on_drained(std::function<void()> fn) { impl_->drained = std::move(fn); }
void Uplink::on_connected(std::function<void()> fn) { impl_->connected = std::move(fn); }
void Uplink::on_commands(std::function<void(common::Commands)> fn) {
  impl_->commands = std::move(fn);
}
UplinkStats Uplink::stats() const { return impl_->stats; }

}  // namespace tocsin::agent
