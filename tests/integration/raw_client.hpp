// A hand-driven agent connection for tests that must send what an honest agent never would.
#pragma once

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "common/crypto.hpp"
#include "common/frame.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"

namespace tocsin::test {

struct Timeout : std::runtime_error {
  Timeout() : std::runtime_error("timed out") {}
};

class RawClient {
 public:
  // state_dir holds key.pem/cert.pem/ca.pem of an enrolled agent.
  RawClient(std::uint16_t port, const std::filesystem::path& state_dir)
      : ctx_(common::make_client_context(
            {state_dir / "ca.pem", state_dir / "cert.pem", state_dir / "key.pem"})),
        s_(io_, ctx_) {
    boost::asio::ip::tcp::endpoint ep(boost::asio::ip::make_address("127.0.0.1"), port);
    s_.lowest_layer().connect(ep);
    common::set_expected_peer_name(s_.native_handle(), "127.0.0.1");
    s_.handshake(boost::asio::ssl::stream_base::client);
  }

  void send_raw(const std::string& bytes) { boost::asio::write(s_, boost::asio::buffer(bytes)); }
  void send(const common::Message& m) { send_raw(common::frame_message(m)); }

  // The next message, or Timeout; throws boost::system::system_error when the peer closed.
  common::Message recv(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    std::optional<std::string> payload;
    std::exception_ptr err;
    boost::asio::co_spawn(io_, common::read_frame(s_), [&](std::exception_ptr e, std::string p) {
      err = e;
      if (!e) payload = std::move(p);
    });
    io_.restart();
    io_.run_for(timeout);
    if (!payload && !err) {
      close();
      io_.restart();
      io_.run();
      throw Timeout();
    }
    if (err) std::rethrow_exception(err);
    return common::decode_message(*payload);
  }

  // True when the collector ends the connection (EOF or reset) within `timeout`.
  bool closed_by_peer(std::chrono::milliseconds timeout) {
    try {
      for (;;) recv(timeout);  // drain any error frame first
    } catch (const Timeout&) {
      return false;
    } catch (const std::exception&) {
      return true;
    }
  }

  void close() {
    boost::system::error_code ec;
    s_.lowest_layer().close(ec);
  }

 private:
  boost::asio::io_context io_;
  boost::asio::ssl::context ctx_;
  boost::asio::ssl::stream<boost::asio::ip::tcp::socket> s_;
};

// Builds chained, signed batches for one agent identity, honest or not.
class ChainBuilder {
 public:
  ChainBuilder(std::string agent_id, common::Ed25519Key key)
      : agent_id_(std::move(agent_id)), key_(std::move(key)) {}

  common::ResultRecord next(const std::string& test_id = "raw") {
    common::ResultBody b;
    b.test_id = test_id;
    b.probe = "tcp_connect";
    b.verdict = "prevented";
    b.reason = "refused";
    b.marker = "tcn-" + common::random_id(10);
    common::ResultRecord r{agent_id_, seq_ + 1, head_, {}, common::encode_body(b)};
    r.hash = common::compute_result_hash(r.agent_id, r.seq, r.prev_hash, r.body);
    seq_ = r.seq;
    head_ = r.hash;
    return r;
  }
  common::Batch batch(std::vector<common::ResultRecord> rs, const common::Ed25519Key* signer = nullptr) {
    common::Batch b{agent_id_, std::move(rs), {}};
    const auto& last = b.results.back();
    b.signature = (signer ? *signer : key_).sign(
        common::batch_signing_bytes(agent_id_, last.seq, last.hash));
    return b;
  }
  // Rewinds the chain to (seq, hash), e.g. to build a fork.
  void rewind(std::uint64_t seq, const common::Digest& hash) {
    seq_ = seq;
    head_ = hash;
  }

 private:
  std::string agent_id_;
  common::Ed25519Key key_;
  std::uint64_t seq_ = 0;
  common::Digest head_{};
};

}  // namespace tocsin::test
