#include "collector/ingest/ingest.hpp"

#include <openssl/ssl.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <unordered_map>
#include <unordered_set>

#include "collector/ingest/chain.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/frame.hpp"
#include "common/log.hpp"
#include "common/net.hpp"
#include "common/wire.hpp"
#include "common/x509.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using Stream = asio::ssl::stream<tcp::socket>;

namespace {

// Completes when the store's committer has durably written `ws` (or failed to).
template <class Token>
auto async_commit(Store& store, WriteSet ws, asio::any_io_executor ex, Token&& token) {
  return asio::async_initiate<Token, void(std::string)>(
      [&store, ex](auto handler, WriteSet ws) {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        store.commit_async(std::move(ws), [h, ex](std::string err) {
          asio::post(ex, [h, err = std::move(err)]() mutable { (*h)(std::move(err)); });
        });
      },
      token, std::move(ws));
}

// Live, in-memory view of one agent's chain. `head` runs ahead of the disk by the batches
// in flight (`pending`); a new connection waits until pending is zero before it tells the
// agent what is stored, so an agent never drops a result that is not yet durable.
struct AgentLive {
  ChainHead head;
  std::optional<common::Ed25519Key> key;
  std::string fingerprint;
  std::uint64_t pending = 0;
  std::uint64_t generation = 0;
  std::function<void()> close_current;
};

// The peer violated the protocol or the chain: the reason is recorded and the connection ends.
struct Refusal : std::runtime_error {
  Refusal(std::string code, const std::string& detail)
      : std::runtime_error(detail), code(std::move(code)) {}
  std::string code;
};

}  // namespace

struct IngestServer::Impl {
  Impl(asio::io_context& io, asio::ssl::context& tls, const CollectorConfig& cfg, Store& store,
       Registry& registry, Correlator* correlator, CommandEngine* commands)
      : io_(io),
        tls_(tls),
        cfg_(cfg),
        store_(store),
        registry_(registry),
        correlator_(correlator),
        commands_(commands),
        acceptor_(io) {
    tcp::resolver resolver(io);
    auto ep = *resolver
                   .resolve(cfg.agent_listen.host, std::to_string(cfg.agent_listen.port),
                            tcp::resolver::numeric_service)
                   .begin();
    acceptor_.open(ep.endpoint().protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(ep.endpoint());
    acceptor_.listen();
  }

  asio::io_context& io_;
  asio::ssl::context& tls_;
  const CollectorConfig& cfg_;
  Store& store_;
  Registry& registry_;
  Correlator* correlator_;
  CommandEngine* commands_;
  tcp::acceptor acceptor_;
  std::unordered_map<std::string, AgentLive> agents_;
  std::unordered_map<std::uint64_t, std::function<void()>> sessions_;  // id -> close socket
  // Markers of runs in writes not yet durable: a second batch must not claim them meanwhile.
  std::unordered_set<std::string> staged_markers_;
  std::uint64_t next_session_ = 0;
  IngestStats stats_;
  bool stopping_ = false;

  void security_event(const std::string& kind, const std::string& agent, const std::string& remote,
                      const std::string& detail) {
    spdlog::warn("security event {}: agent={} remote={} {}", kind, agent.empty() ? "-" : agent,
                 remote, detail);
    ++stats_.security_events;
    WriteSet ws;
    ws.put_security_event({common::now_ns(), kind, agent, remote, detail});
    store_.commit_async(std::move(ws), [](std::string err) {
      if (!err.empty()) spdlog::error("could not store security event: {}", err);
    });
  }

  awaitable<void> record_security_event(std::string kind, std::string agent, std::string remote,
                                        std::string detail) {
    spdlog::warn("security event {}: agent={} remote={} {}", kind, agent.empty() ? "-" : agent,
                 remote, detail);
    ++stats_.security_events;
    WriteSet ws;
    ws.put_security_event({common::now_ns(), kind, agent, remote, detail});
    auto err = co_await async_commit(store_, std::move(ws), io_.get_executor(), use_awaitable);
    if (!err.empty()) spdlog::error("could not store security event: {}", err);
  }

  awaitable<void> accept_loop() {
    while (!stopping_) {
      boost::system::error_code ec;
      tcp::socket sock = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (stopping_ || ec == asio::error::operation_aborted) co_return;
        spdlog::warn("accept failed: {}; pausing 100 ms", ec.message());
        asio::steady_timer pause(io_, std::chrono::milliseconds(100));  // e.g. EMFILE: no spin
        co_await pause.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      if (sessions_.size() >= cfg_.max_connections) {
        spdlog::warn("refusing connection: {} connections open (limits.max_connections)",
                     sessions_.size());
        continue;  // socket closes as it goes out of scope
      }
      asio::co_spawn(io_, session(std::move(sock)), asio::detached);
    }
  }

  awaitable<void> session(tcp::socket sock) {
    boost::system::error_code ec;
    auto rep = sock.remote_endpoint(ec);
    std::string remote =
        ec ? "unknown" : rep.address().to_string() + ":" + std::to_string(rep.port());
    sock.set_option(tcp::no_delay(true), ec);
    Stream stream(std::move(sock), tls_);
    auto id = next_session_++;
    auto close = [&stream] {
      boost::system::error_code ignored;
      stream.lowest_layer().close(ignored);
    };
    sessions_.emplace(id, close);
    ++stats_.connections;
    struct Unregister {  // whatever happens below, the session leaves the table with its socket
      Impl& self;
      std::uint64_t id;
      ~Unregister() {
        self.sessions_.erase(id);
        --self.stats_.connections;
      }
    } unregister{*this, id};
    common::Watchdog wd(io_.get_executor(), close);
    std::string agent_id;
    std::optional<Refusal> refusal;
    try {
      wd.arm(cfg_.handshake_timeout);
      co_await stream.async_handshake(Stream::server, asio::redirect_error(use_awaitable, ec));
      if (ec) {
        handshake_failed(stream, ec, remote, wd.fired());
      } else {
        common::X509Ptr peer(SSL_get1_peer_certificate(stream.native_handle()));
        if (!peer)
          co_await enrollment(stream, wd, remote);
        else
          co_await agent_session(stream, wd, remote, peer.get(), agent_id);
      }
    } catch (const Refusal& r) {
      refusal = r;
    } catch (const boost::system::system_error& e) {
      // An agent that exits or restarts simply drops the connection; not worth an info line.
      bool quiet = e.code() == asio::error::eof || e.code() == asio::ssl::error::stream_truncated ||
                   e.code() == asio::error::connection_reset;
      if (wd.fired())
        spdlog::info("connection {} ({}) closed: timed out waiting for the peer", remote,
                     agent_id.empty() ? "unauthenticated" : agent_id);
      else if (!stopping_)
        spdlog::log(quiet ? spdlog::level::debug : spdlog::level::info,
                    "connection {} ({}) closed: {}", remote,
                    agent_id.empty() ? "unauthenticated" : agent_id, e.what());
    } catch (const std::exception& e) {
      if (wd.fired())
        spdlog::info("connection {} ({}) closed: timed out waiting for the peer", remote,
                     agent_id.empty() ? "unauthenticated" : agent_id);
      else if (!stopping_)
        spdlog::info("connection {} ({}) closed: {}", remote,
                     agent_id.empty() ? "unauthenticated" : agent_id, e.what());
    }
    if (refusal) {  // co_await is not allowed inside a handler
      try {
        // Recorded durably before the peer hears of it, so the refusal is never unrecorded.
        co_await record_security_event(refusal->code, agent_id, remote, refusal->what());
        co_await send_error(stream, wd, refusal->code, refusal->what());
      } catch (const std::exception& e) {
        spdlog::error("connection {}: could not record or report a refusal: {}", remote, e.what());
      }
    }
    wd.disarm();
    close();
  }

  void handshake_failed(Stream& stream, const boost::system::error_code& ec,
                        const std::string& remote, bool timed_out) {
    if (timed_out) {
      spdlog::info("TLS handshake from {} timed out after {}", remote,
                   common::format_duration(cfg_.handshake_timeout));
      return;
    }
    long vr = SSL_get_verify_result(stream.native_handle());
    if (vr != X509_V_OK) {
      security_event(
          "bad_certificate", "", remote,
          std::string("client certificate rejected: ") + X509_verify_cert_error_string(vr));
    } else {
      spdlog::info("TLS handshake from {} failed: {}", remote, ec.message());
    }
  }

  // Reads one frame: the first byte may take idle_timeout, the rest must follow within
  // frame_timeout, so a peer that starts a frame and stalls is cut off quickly.
  // Before a peer has proven anything (enrollment, hello) its frames are small: it must not be
  // able to make us hold a megabyte per connection.
  static constexpr std::size_t kPreAuthFrameBytes = 64 * 1024;

  awaitable<std::string> read_frame(Stream& s, common::Watchdog& wd,
                                    std::size_t cap = common::kMaxFrameBytes) {
    std::array<std::uint8_t, 4> hdr{};
    wd.arm(cfg_.idle_timeout);
    co_await asio::async_read(s, asio::buffer(hdr.data(), 1), use_awaitable);
    wd.arm(cfg_.frame_timeout);
    co_await asio::async_read(s, asio::buffer(hdr.data() + 1, 3), use_awaitable);
    std::size_t n = 0;
    try {
      n = common::decode_frame_length(hdr, cap);
    } catch (const common::ProtocolError& e) {
      throw Refusal("oversized_frame", e.what());
    }
    std::string payload(n, '\0');
    co_await asio::async_read(s, asio::buffer(payload), use_awaitable);
    wd.disarm();
    co_return payload;
  }

  awaitable<void> write_message(Stream& s, common::Watchdog& wd, const common::Message& m) {
    auto bytes = common::frame_message(m);
    wd.arm(cfg_.frame_timeout);
    co_await asio::async_write(s, asio::buffer(bytes), use_awaitable);
    wd.disarm();
  }

  common::Message decode(const std::string& payload) {
    try {
      return common::decode_message(payload);
    } catch (const common::ProtocolError& e) {
      throw Refusal("malformed_message", e.what());
    }
  }

  awaitable<void> send_error(Stream& s, common::Watchdog& wd, std::string code,
                             std::string message) {
    try {
      common::ErrorMsg err{std::move(code), std::move(message)};
      co_await write_message(s, wd, err);
      co_await shutdown(s, wd);
    } catch (const std::exception&) {
      // The peer may already be gone; the refusal is recorded either way.
    }
  }

  awaitable<void> shutdown(Stream& s, common::Watchdog& wd) {
    boost::system::error_code ec;
    wd.arm(std::chrono::seconds(2));
    co_await s.async_shutdown(asio::redirect_error(use_awaitable, ec));
    wd.disarm();
  }

  awaitable<void> enrollment(Stream& s, common::Watchdog& wd, const std::string& remote) {
    auto msg = decode(co_await read_frame(s, wd, kPreAuthFrameBytes));
    auto* req = std::get_if<common::EnrollReq>(&msg);
    if (!req)
      throw Refusal("certificate_required",
                    "'" + common::message_type_name(msg) +
                        "' without a client certificate; only enrollment is allowed");
    auto outcome = registry_.enroll(*req, remote);
    if (!outcome.error_code.empty()) {
      spdlog::warn("enrollment from {} refused: {}", remote, outcome.message);
      co_await send_error(s, wd, outcome.error_code, outcome.message);
      co_return;
    }
    spdlog::info("enrolled agent {} (host {}, {}) from {}", outcome.agent_id, req->hostname,
                 req->os, remote);
    common::EnrollResp resp{outcome.agent_id, outcome.cert_pem,
                            commands_ ? commands_->key_pem() : std::string()};
    co_await write_message(s, wd, resp);
    co_await shutdown(s, wd);
  }

  AgentLive& live_agent(const AgentRecord& rec) {
    if (auto it = agents_.find(rec.agent_id); it != agents_.end()) return it->second;
    AgentLive live;  // complete before it enters the table
    live.head = {rec.next_seq, rec.head_hash};
    std::array<std::uint8_t, 32> raw{};
    if (!common::from_hex(rec.public_key_hex, raw))
      throw std::runtime_error("stored public key of " + rec.agent_id + " is corrupt");
    live.key = common::Ed25519Key::from_public_raw(raw);
    live.fingerprint = rec.cert_fingerprint;
    return agents_.emplace(rec.agent_id, std::move(live)).first->second;
  }

  awaitable<void> agent_session(Stream& s, common::Watchdog& wd, const std::string& remote,
                                X509* peer, std::string& agent_id) {
    agent_id = common::cert_common_name(peer);
    auto rec = store_.get_agent(agent_id);
    if (!rec || rec->revoked || rec->cert_fingerprint != common::cert_fingerprint_hex(peer))
      throw Refusal("unknown_agent", "certificate for '" + agent_id +
                                         "' is not a current enrollment" +
                                         (rec && rec->revoked ? " (revoked)" : ""));
    AgentLive& live = live_agent(*rec);
    if (live.close_current) {
      spdlog::info("agent {} reconnected from {}; closing its previous connection", agent_id,
                   remote);
      live.close_current();
    }
    auto gen = ++live.generation;
    live.close_current = [&s] {
      boost::system::error_code ignored;
      s.lowest_layer().close(ignored);
    };
    struct Release {  // the slot is ours until a newer connection of this agent takes it
      AgentLive& l;
      std::uint64_t g;
      ~Release() {
        if (l.generation == g) l.close_current = nullptr;
      }
    } release{live, gen};

    auto first = decode(co_await read_frame(s, wd, kPreAuthFrameBytes));
    if (!std::holds_alternative<common::Hello>(first))
      throw Refusal("protocol_error", "expected hello, got " + common::message_type_name(first));
    asio::steady_timer settle(io_);
    while (live.pending > 0 && live.generation == gen) {  // let in-flight writes land first
      settle.expires_after(std::chrono::milliseconds(2));
      co_await settle.async_wait(use_awaitable);
    }
    if (live.generation != gen) co_return;
    // The correlator's host hint for alerts that name a source address (CrowdSec's source.ip):
    // where this authenticated agent connects from. Written while nothing else of this agent's
    // is in flight, and only when it changed.
    if (auto addr = remote.substr(0, remote.rfind(':')); addr != "unknown" && !addr.empty()) {
      if (auto cur = store_.get_agent(agent_id); cur && cur->last_address != addr) {
        cur->last_address = addr;
        WriteSet ws;
        ws.put_agent(*cur);
        ++live.pending;
        auto err = co_await async_commit(store_, std::move(ws), io_.get_executor(), use_awaitable);
        --live.pending;
        if (!err.empty()) {
          spdlog::critical("{}; exiting so a restart recovers from the database", err);
          std::_Exit(70);
        }
        if (live.generation != gen) co_return;
      }
    }
    // Nothing of ours in flight: the store is the truth (another collector may have advanced
    // this agent's chain since we cached it).
    if (auto fresh = store_.get_agent(agent_id)) live.head = {fresh->next_seq, fresh->head_hash};
    common::HelloAck ack{live.head.next_seq, live.head.head_hash};
    co_await write_message(s, wd, ack);
    spdlog::debug("agent {} connected from {}; next seq {}", agent_id, remote, live.head.next_seq);

    for (;;) {
      auto payload = co_await read_frame(s, wd);
      auto t2 = common::now_ns();
      if (live.generation != gen) co_return;
      auto msg = decode(payload);
      if (auto* tr = std::get_if<common::TimeReq>(&msg)) {
        common::TimeResp resp{tr->t1, t2, common::now_ns()};
        co_await write_message(s, wd, resp);
      } else if (auto* b = std::get_if<common::Batch>(&msg)) {
        auto acked = co_await ingest_batch(*b, live, agent_id);
        if (live.generation != gen) co_return;
        common::Ack a{acked};
        co_await write_message(s, wd, a);
      } else if (std::holds_alternative<common::CommandPoll>(msg) && commands_) {
        // Rare store writes (a command marked delivered) on the io thread: acceptable.
        co_await write_message(s, wd, commands_->poll(agent_id));
      } else {
        throw Refusal("protocol_error",
                      "unexpected '" + common::message_type_name(msg) + "' in a session");
      }
    }
  }

  // The runs these results describe go into the same write, so a run exists iff its result
  // does. A marker that already names another run is refused as a run (the result is still
  // stored: its chain and signature are valid) and recorded: it could steal that run's alerts.
  std::vector<Run> stage_runs(WriteSet& ws, const std::vector<common::ResultRecord>& rs,
                              std::size_t first,
                              const std::vector<std::optional<common::ResultBody>>& bodies,
                              const AgentRecord& rec, std::int64_t now) {
    std::vector<Run> runs;
    std::unordered_set<std::string> seen;
    for (std::size_t i = first; i < rs.size(); ++i) {
      const auto& body = bodies[i - first];
      if (!body) continue;  // undecodable (logged): such a result simply has no run
      auto run = run_from_result(rs[i], *body, rec, now, cfg_.correlation);
      if (!run) continue;
      if (!seen.insert(run->marker).second || staged_markers_.count(run->marker) ||
          store_.get(Table::runs, run->marker)) {
        auto detail = "seq " + std::to_string(rs[i].seq) + " reuses marker " + run->marker +
                      "; stored, but not correlated";
        spdlog::warn("security event marker_reuse: agent={} {}", rec.agent_id, detail);
        ws.put_security_event({now, "marker_reuse", rec.agent_id, "", detail});
        ++stats_.security_events;
        continue;
      }
      put_run(ws, *run);
      runs.push_back(std::move(*run));
    }
    for (const auto& r : runs) staged_markers_.insert(r.marker);  // until their write lands
    return runs;
  }

  awaitable<std::uint64_t> ingest_batch(const common::Batch& b, AgentLive& live,
                                        const std::string& agent_id) {
    auto check = check_batch(live.head, agent_id, b, *live.key, [&](std::uint64_t seq) {
      auto r = store_.get_result(agent_id, seq);
      return r ? std::optional(r->record.hash) : std::nullopt;
    });
    if (check.outcome != BatchOutcome::accepted)
      throw Refusal(outcome_name(check.outcome), check.detail);

    auto now = common::now_ns();
    const auto& rs = b.results;
    WriteSet ws;
    for (std::size_t i = check.first_fresh; i < rs.size(); ++i)
      ws.put_result({rs[i], rs.back().seq, now});
    StoredBatch sb{agent_id, rs[check.first_fresh].seq, rs.back().seq, rs.back().hash, b.signature,
                   now};
    ws.put_batch(sb);
    auto rec = store_.get_agent(agent_id).value_or(AgentRecord{});
    rec.next_seq = rs.back().seq + 1;
    rec.head_hash = rs.back().hash;
    rec.last_seen_ns = now;
    // Each body decoded once: for its run, and the last one for the agent's clock figures.
    std::vector<std::optional<common::ResultBody>> bodies(rs.size() - check.first_fresh);
    for (std::size_t i = check.first_fresh; i < rs.size(); ++i) {
      try {
        bodies[i - check.first_fresh] = common::decode_body(rs[i].body);
      } catch (const common::ProtocolError& e) {
        // The chain and signature are valid, so the result is stored as sent; it only has
        // no run (and, if it is the last, the agent summary misses its clock figures).
        spdlog::warn("agent {} seq {}: undecodable body: {}", agent_id, rs[i].seq, e.what());
      }
    }
    // The agent's clock figures: from the newest body that has a confirmed mapping. One made
    // before any exchange knows nothing, and one stamped after a step until the next exchange
    // carries the step in its bound (runs borrowing it would inherit that bound).
    for (auto it = bodies.rbegin(); it != bodies.rend(); ++it) {
      if (*it && (*it)->clock_error_ns >= 0 && !(*it)->clock_stepped) {
        rec.clock_offset_ns = (*it)->clock_offset_ns;
        rec.clock_error_ns = (*it)->clock_error_ns;
        break;
      }
    }
    auto runs = stage_runs(ws, rs, check.first_fresh, bodies, rec, now);
    ws.put_agent(rec);
    live.head = {rec.next_seq, rec.head_hash};
    ++live.pending;
    auto err = co_await async_commit(store_, std::move(ws), io_.get_executor(), use_awaitable);
    --live.pending;
    if (!err.empty()) {
      // The in-memory head is now ahead of the disk; carrying on could ack lost results.
      spdlog::critical("{}; exiting so a restart recovers from the database", err);
      std::_Exit(70);
    }
    for (const auto& r : runs) staged_markers_.erase(r.marker);
    if (correlator_ && !runs.empty()) correlator_->runs_stored(std::move(runs));
    if (commands_) {
      std::vector<common::ResultBody> outcomes;
      for (auto& b : bodies)
        if (b && b->kind == "command") outcomes.push_back(std::move(*b));
      try {
        if (!outcomes.empty()) commands_->results_stored(agent_id, outcomes);
      } catch (const std::exception& e) {
        // The results are stored and acked either way; the command's record says what it can.
        spdlog::error("agent {}: recording command outcomes failed: {}", agent_id, e.what());
      }
    }
    stats_.results_stored += rs.size() - check.first_fresh;
    ++stats_.batches_stored;
    co_return check.ack_seq;
  }
};

IngestServer::IngestServer(asio::io_context& io, asio::ssl::context& tls,
                           const CollectorConfig& config, Store& store, Registry& registry,
                           Correlator* correlator, CommandEngine* commands)
    : impl_(std::make_unique<Impl>(io, tls, config, store, registry, correlator, commands)) {}

IngestServer::~IngestServer() = default;

std::uint16_t IngestServer::port() const {
  return impl_->acceptor_.local_endpoint().port();
}

void IngestServer::start() {
  asio::co_spawn(impl_->io_, impl_->accept_loop(), common::log_if_failed("agent listener stopped"));
}

void IngestServer::stop() {
  impl_->stopping_ = true;
  boost::system::error_code ec;
  impl_->acceptor_.close(ec);
  auto sessions = impl_->sessions_;  // closing runs no handler inline, but copy to be safe
  for (auto& [id, close] : sessions) close();
}

IngestStats IngestServer::stats() const {
  return impl_->stats_;
}

}  // namespace tocsin::collector
