// The uplink's command polling against a small fake collector on loopback (mutual TLS with a
// real collector CA): the poll right after connecting and then on the interval, and an older
// collector that answers the poll with an error turning polling off without breaking delivery;
// and enrollment storing the collector's command key.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <sys/stat.h>

#include "agent/probes/probe.hpp"
#include "agent/runtime/identity.hpp"
#include "agent/runtime/outbox.hpp"
#include "agent/runtime/uplink.hpp"
#include "collector/ingest/ca.hpp"
#include "common/clock.hpp"
#include "common/frame.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"
#include "common/x509.hpp"
#include "tests/unit/temp_dir.hpp"

namespace asio = boost::asio;
namespace common = tocsin::common;
using namespace std::chrono_literals;
using asio::ip::tcp;
using tocsin::agent::ClockState;
using tocsin::agent::Outbox;
using tocsin::agent::Uplink;
using tocsin::agent::UplinkOptions;
using tocsin::test::TempDir;

namespace {

const std::string kAgent = "agent-7";

// A collector CA, its server certificate and one agent's client certificate in a temp dir.
struct Pki {
  TempDir tmp{"uplink-commands"};
  common::Ed25519Key agent_key = common::Ed25519Key::generate();
  Pki() {
    tocsin::collector::CertificateAuthority::initialize(tmp.path(), {"127.0.0.1"});
    auto ca = tocsin::collector::CertificateAuthority::load(tmp / "ca.pem", tmp / "ca.key");
    auto cert = ca.issue_agent_cert(common::make_csr_pem(agent_key, kAgent), kAgent, 24h);
    common::write_file_atomic(tmp / "agent.pem", cert);
    common::write_file_atomic(tmp / "agent.key", agent_key.private_pem());
  }
};

// Answers hello, clock exchanges and command polls, one connection at a time. `old` answers a
// poll the way a collector before issue 6 does: an error, then it closes the connection.
struct FakeCollector {
  using Stream = asio::ssl::stream<tcp::socket>;
  FakeCollector(asio::io_context& io, const Pki& pki, bool old)
      : tls(common::make_server_context(
            {pki.tmp / "server.pem", pki.tmp / "server.key", pki.tmp / "ca.pem"},
            false)),  // enrollment comes without a client certificate
        acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        old(old),
        pki(&pki) {}

  asio::ssl::context tls;
  tcp::acceptor acceptor;
  bool old;
  // EnrollResp::command_key_pem for each enrollment in turn (set before serving: the test
  // enrolls from another thread).
  std::vector<std::string> enroll_keys;
  std::size_t enrolls = 0;
  const Pki* pki = nullptr;
  int sessions = 0, polls = 0, clock_exchanges = 0;
  std::function<void()> on_event;  // after each message handled

  std::uint16_t port() const { return acceptor.local_endpoint().port(); }

  asio::awaitable<void> serve() {
    for (;;) {
      auto sock = co_await acceptor.async_accept(asio::use_awaitable);
      Stream s(std::move(sock), tls);
      try {
        co_await s.async_handshake(Stream::server, asio::use_awaitable);
        ++sessions;
        co_await session(s);
      } catch (const std::exception&) {
        // The agent closed or the test is ending: wait for the next connection.
      }
    }
  }

  asio::awaitable<void> session(Stream& s) {
    for (;;) {
      auto m = common::decode_message(co_await common::read_frame(s));
      common::Message reply;
      bool close_after = false;
      if (auto* e = std::get_if<common::EnrollReq>(&m)) {
        auto ca = tocsin::collector::CertificateAuthority::load(pki->tmp / "ca.pem",
                                                                   pki->tmp / "ca.key");
        reply = common::EnrollResp{kAgent, ca.issue_agent_cert(e->csr_pem, kAgent, 24h),
                                   enrolls < enroll_keys.size() ? enroll_keys[enrolls] : ""};
        ++enrolls;
        close_after = true;
      } else if (std::holds_alternative<common::Hello>(m)) {
        reply = common::HelloAck{1, common::kGenesisHash};
      } else if (auto* t = std::get_if<common::TimeReq>(&m)) {
        ++clock_exchanges;
        reply = common::TimeResp{t->t1, common::now_ns(), common::now_ns()};
      } else if (std::holds_alternative<common::CommandPoll>(m)) {
        ++polls;
        if (old) {
          reply = common::ErrorMsg{"malformed_message", "unknown message type 'command_poll'"};
          close_after = true;
        } else {
          common::Commands c;
          c.commands.resize(1);
          c.commands[0].id = "cmd-" + std::to_string(polls);
          c.command_key_pem = "key";
          reply = c;
        }
      } else {
        co_return;
      }
      co_await common::write_frame(s, common::frame_message(reply));
      if (on_event) on_event();
      if (close_after) co_return;
    }
  }
};

struct Fixture {
  Pki pki;
  asio::io_context io;
  asio::ssl::context client_tls = common::make_client_context(
      {pki.tmp / "ca.pem", pki.tmp / "agent.pem", pki.tmp / "agent.key"});
  std::unique_ptr<Outbox> outbox = Outbox::open({pki.tmp / "outbox", 1 << 20}, kAgent);
  ClockState clock;
  asio::steady_timer deadline{io, 20s};  // only a hang reaches it

  std::unique_ptr<Uplink> uplink(std::uint16_t port) {
    UplinkOptions o;
    o.backoff_initial = 50ms;
    o.backoff_max = 100ms;
    o.command_poll_interval = 200ms;
    return std::make_unique<Uplink>(
        io.get_executor(), client_tls, common::HostPort{"127.0.0.1", port}, kAgent,
        common::Ed25519Key::from_private_pem(pki.agent_key.private_pem()), *outbox, clock, o);
  }
  void run(FakeCollector& fc) {
    asio::co_spawn(io, fc.serve(), [](std::exception_ptr) {});
    deadline.async_wait([this](boost::system::error_code ec) {
      if (!ec) io.stop();
    });
    io.run();
  }
};

}  // namespace

TEST_CASE("the uplink polls right after connecting and then every command_poll_interval") {
  Fixture f;
  FakeCollector fc(f.io, f.pki, false);
  auto up = f.uplink(fc.port());
  std::vector<std::string> got;
  auto started = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration first_at{}, second_at{};
  up->on_commands([&](common::Commands c) {
    REQUIRE(c.commands.size() == 1);
    got.push_back(c.commands[0].id);
    (got.size() == 1 ? first_at : second_at) = std::chrono::steady_clock::now() - started;
    if (got.size() == 2) {
      up->stop();
      f.deadline.cancel();
      f.io.stop();
    }
  });
  up->start();
  f.run(fc);
  CHECK(got == std::vector<std::string>{"cmd-1", "cmd-2"});
  CHECK(fc.sessions == 1);
  CHECK(second_at - first_at >= 200ms);
  CHECK(up->stats().command_polls == 2);
  CHECK_FALSE(up->stats().command_polling_disabled);
}

TEST_CASE("an older collector's error turns polling off, the uplink reconnects and stays up") {
  Fixture f;
  FakeCollector fc(f.io, f.pki, true);
  auto up = f.uplink(fc.port());
  int dispatched = 0;
  up->on_commands([&](common::Commands) { ++dispatched; });
  asio::steady_timer quiet(f.io);
  fc.on_event = [&] {
    // The second session's clock exchange: from here on, several poll intervals pass quietly.
    if (fc.sessions == 2 && fc.clock_exchanges == 2) {
      quiet.expires_after(1s);
      quiet.async_wait([&](boost::system::error_code) {
        up->stop();
        f.deadline.cancel();
        f.io.stop();
      });
    }
  };
  up->start();
  f.run(fc);
  CHECK(fc.sessions == 2);
  CHECK(fc.polls == 1);
  CHECK(dispatched == 0);
  CHECK(up->stats().command_polling_disabled);
  CHECK(up->stats().connected);
}

TEST_CASE("enrollment stores the collector's command key, 0600, and a re-enrollment replaces it") {
  Fixture f;
  FakeCollector fc(f.io, f.pki, false);
  auto command_key = common::Ed25519Key::generate();
  // The second enrollment: a collector without command keys.
  fc.enroll_keys = {command_key.public_pem(), ""};
  asio::co_spawn(f.io, fc.serve(), [](std::exception_ptr) {});
  std::thread server([&] { f.io.run(); });
  struct Join {
    asio::io_context& io;
    std::thread& t;
    ~Join() {
      io.stop();
      t.join();
    }
  } join{f.io, server};

  tocsin::agent::EnrollOptions o;
  o.server = "127.0.0.1:" + std::to_string(fc.port());
  o.token = "t";
  o.ca_file = f.pki.tmp / "ca.pem";
  o.state_dir = f.pki.tmp / "state";
  auto id = tocsin::agent::enroll(o);
  REQUIRE(std::filesystem::exists(id.command_key_file()));
  auto pinned = common::Ed25519Key::from_public_pem(common::read_file(id.command_key_file()));
  CHECK(pinned.public_raw() == command_key.public_raw());
  struct stat st {};
  REQUIRE(::stat(id.command_key_file().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  // No stale key of the earlier enrollment stays pinned.
  o.force = true;
  id = tocsin::agent::enroll(o);
  CHECK_FALSE(std::filesystem::exists(id.command_key_file()));
}
