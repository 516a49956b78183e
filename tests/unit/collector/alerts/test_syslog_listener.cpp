// The syslog listener on real loopback sockets: UDP, TCP (both framings), TLS, and syslog-ng.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <utility>  // before Asio's awaitable.hpp (Boost 1.74 trap)

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "collector/alerts/syslog_listener.hpp"
#include "collector/ingest/ca.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/tls.hpp"
#include "tests/unit/temp_dir.hpp"

namespace tocsin::collector {
namespace {

TEST_SUITE_BEGIN("syslog_listener");

namespace asio = boost::asio;
namespace fs = std::filesystem;
using asio::ip::tcp;
using asio::ip::udp;
using namespace std::chrono_literals;

// Generous: only a failing test ever waits this long.
constexpr auto kBound = 20s;

struct Rejection {
  std::string source, reason, detail;
};

// Records what the listener hands over; tests wait on it with a bounded condition wait.
class RecordingSink : public AlertSink {
 public:
  void submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) override {
    SubmitOutcome out;
    out.accepted = alerts.size();
    {
      std::lock_guard lock(mu_);
      batch_sizes_.push_back(alerts.size());
      for (auto& a : alerts) alerts_.push_back(std::move(a));
    }
    cv_.notify_all();
    done(out);
  }

  void rejected(const std::string& source, const std::string& reason,
                const std::string& detail) override {
    {
      std::lock_guard lock(mu_);
      rejections_.push_back({source, reason, detail});
    }
    cv_.notify_all();
  }

  std::vector<Alert> wait_alerts(const std::string& needle, std::size_t count = 1) {
    std::unique_lock lock(mu_);
    std::vector<Alert> found;
    cv_.wait_for(lock, kBound, [&] {
      found.clear();
      for (const auto& a : alerts_)
        if (a.text.find(needle) != std::string::npos) found.push_back(a);
      return found.size() >= count;
    });
    return found;
  }

  std::optional<Alert> wait_alert(const std::string& needle) {
    auto found = wait_alerts(needle);
    if (found.empty()) return std::nullopt;
    return found.front();
  }

  std::optional<Rejection> wait_rejection(const std::string& reason, std::size_t nth = 1) {
    std::unique_lock lock(mu_);
    std::optional<Rejection> found;
    cv_.wait_for(lock, kBound, [&] {
      std::size_t seen = 0;
      for (const auto& r : rejections_)
        if (r.reason == reason && ++seen == nth) found = r;
      return found.has_value();
    });
    return found;
  }

  std::vector<std::size_t> batch_sizes() {
    std::lock_guard lock(mu_);
    return batch_sizes_;
  }
  std::size_t rejection_count() {
    std::lock_guard lock(mu_);
    return rejections_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Alert> alerts_;
  std::vector<std::size_t> batch_sizes_;
  std::vector<Rejection> rejections_;
};

std::string new_marker() {
  return "tcn-" + common::random_id(10);
}

AlertSourceConfig listen_config(bool udp, bool tcp, bool tls, std::size_t max_message = 64 * 1024) {
  AlertSourceConfig c;
  c.name = "test-syslog";
  c.type = SourceType::syslog;
  common::HostPort loopback{"127.0.0.1", 0};
  if (udp) c.udp = loopback;
  if (tcp) c.tcp = loopback;
  if (tls) c.tls = loopback;
  c.max_message = max_message;
  return c;
}

tcp::endpoint local(std::uint16_t port) {
  return {asio::ip::make_address("127.0.0.1"), port};
}

tcp::socket connect_tcp(asio::io_context& io, std::uint16_t port) {
  tcp::socket s(io);
  s.connect(local(port));
  return s;
}

// True once the peer ends the connection (EOF or reset) within the bound; data is discarded.
bool closed_by_peer(asio::io_context& io, tcp::socket& s) {
  std::array<char, 256> buf{};
  bool closed = false;
  std::function<void()> read = [&] {
    s.async_read_some(asio::buffer(buf), [&](boost::system::error_code ec, std::size_t) {
      if (ec)
        closed = true;
      else
        read();
    });
  };
  read();
  io.run_for(kBound);
  io.restart();
  return closed;
}

std::string octet_frame(const std::string& msg) {
  return std::to_string(msg.size()) + " " + msg;
}

TEST_CASE("syslog listener: a UDP datagram arrives as an alert carrying its marker") {
  RecordingSink sink;
  SyslogListener listener(listen_config(true, false, false, 512), sink, {}, {});
  REQUIRE(listener.udp_port() != 0);
  CHECK(listener.tcp_port() == 0);
  CHECK(listener.tls_port() == 0);
  listener.start();

  asio::io_context io;
  udp::socket client(io, udp::v4());
  udp::endpoint to(asio::ip::make_address("127.0.0.1"), listener.udp_port());
  auto marker = new_marker();
  auto before = common::now_ns();
  client.send_to(asio::buffer("<14>Jun 14 09:30:00 web01 drill: saw " + marker + "\n"), to);

  auto a = sink.wait_alert(marker);
  REQUIRE(a);
  CHECK(a->source == "test-syslog");
  CHECK(a->source_type == "syslog");
  CHECK(a->host == "web01");
  CHECK(a->rule == "drill");
  CHECK(a->severity == "info");
  CHECK(a->arrival_ns >= before);
  CHECK(a->arrival_ns <= common::now_ns());

  SUBCASE("a malformed datagram is rejected and the next one still arrives") {
    client.send_to(asio::buffer(std::string("<999>broken")), to);
    auto r = sink.wait_rejection("malformed");
    REQUIRE(r);
    CHECK(r->source == "test-syslog");
    CHECK(r->detail.find("above 191") != std::string::npos);
    CHECK(r->detail.find("127.0.0.1:") != std::string::npos);  // names the sender
    auto next = new_marker();
    client.send_to(asio::buffer("<13>" + next), to);
    CHECK(sink.wait_alert(next));
  }
  SUBCASE("a datagram above max_message is rejected as oversized") {
    client.send_to(asio::buffer(std::string(600, 'x')), to);
    auto r = sink.wait_rejection("oversized");
    REQUIRE(r);
    CHECK(r->detail.find("600 bytes") != std::string::npos);
    auto next = new_marker();
    client.send_to(asio::buffer("<13>" + next), to);
    CHECK(sink.wait_alert(next));
  }
}

TEST_CASE("syslog listener: TCP streams with octet counting and with newline framing") {
  RecordingSink sink;
  SyslogListener listener(listen_config(false, true, false), sink, {}, {});
  REQUIRE(listener.tcp_port() != 0);
  CHECK(listener.udp_port() == 0);
  listener.start();
  asio::io_context io;

  SUBCASE("octet counting, a frame split across writes, a newline inside a message") {
    auto s = connect_tcp(io, listener.tcp_port());
    auto m1 = new_marker(), m2 = new_marker();
    auto f1 = octet_frame("<13>1 2024-03-05T14:03:11Z web01 app - - - first " + m1);
    auto f2 = octet_frame("<13>1 2024-03-05T14:03:11Z web01 app - - - line one\nline two " + m2);
    asio::write(s, asio::buffer(f1 + f2.substr(0, 20)));
    asio::write(s, asio::buffer(f2.substr(20)));
    auto a1 = sink.wait_alert(m1);
    auto a2 = sink.wait_alert(m2);
    REQUIRE(a1);
    REQUIRE(a2);
    CHECK(a1->host == "web01");
    CHECK(a2->text.find("line one\nline two") != std::string::npos);
  }
  SUBCASE("newline framing with CRLF; the messages of one read form one submission") {
    auto s = connect_tcp(io, listener.tcp_port());
    auto m = new_marker();
    asio::write(
        s, asio::buffer("<13>Jun 14 09:30:00 h a: one " + m + "\r\n<13>Jun 14 09:30:00 h a: two " +
                        m + "\n<13>Jun 14 09:30:00 h a: three " + m + "\n"));
    CHECK(sink.wait_alerts(m, 3).size() == 3);
    auto sizes = sink.batch_sizes();
    CHECK(std::find(sizes.begin(), sizes.end(), 3u) != sizes.end());
  }
  SUBCASE("a last line without its newline arrives when the sender closes") {
    auto s = connect_tcp(io, listener.tcp_port());
    auto m = new_marker();
    asio::write(s, asio::buffer("<13>Jun 14 09:30:00 h a: no newline " + m));
    s.shutdown(tcp::socket::shutdown_send);
    CHECK(sink.wait_alert(m));
  }
  SUBCASE("a malformed message is rejected and the next on the same connection arrives") {
    auto s = connect_tcp(io, listener.tcp_port());
    auto m = new_marker();
    asio::write(
        s, asio::buffer("<13>1 2024-03-05T14:03:11Z h a - - [x@1 k=\"open] m\n<13>ok " + m + "\n"));
    auto r = sink.wait_rejection("malformed");
    REQUIRE(r);
    CHECK(r->detail.find("unterminated") != std::string::npos);
    CHECK(sink.wait_alert(m));
  }
}

TEST_CASE("syslog listener: an oversized TCP frame closes that connection only") {
  RecordingSink sink;
  SyslogListener listener(listen_config(false, true, false, 256), sink, {}, {});
  listener.start();
  asio::io_context io;

  auto good = connect_tcp(io, listener.tcp_port());
  auto bad = connect_tcp(io, listener.tcp_port());
  asio::write(bad, asio::buffer(std::string("100000 <13>")));
  auto r = sink.wait_rejection("oversized");
  REQUIRE(r);
  CHECK(r->detail.find("exceeds the 256-byte message limit") != std::string::npos);
  CHECK(closed_by_peer(io, bad));

  auto m1 = new_marker();
  asio::write(good, asio::buffer("<13>still here " + m1 + "\n"));
  CHECK(sink.wait_alert(m1));
  auto later = connect_tcp(io, listener.tcp_port());
  auto m2 = new_marker();
  asio::write(later, asio::buffer(octet_frame("<13>new connection " + m2)));
  CHECK(sink.wait_alert(m2));

  SUBCASE("a newline-framed line past the limit is oversized too") {
    auto longline = connect_tcp(io, listener.tcp_port());
    asio::write(longline, asio::buffer("<13>" + std::string(300, 'x')));
    auto r2 = sink.wait_rejection("oversized", 2);
    REQUIRE(r2);
    CHECK(r2->detail.find("without a newline") != std::string::npos);
    CHECK(closed_by_peer(io, longline));
  }
}

TEST_CASE("syslog listener: connections past the cap are refused and counted") {
  RecordingSink sink;
  SyslogListener listener(listen_config(false, true, false), sink, {}, {});
  listener.start();
  asio::io_context io;
  std::vector<tcp::socket> open;
  for (std::size_t i = 0; i < SyslogListener::kMaxConnections; ++i)
    open.push_back(connect_tcp(io, listener.tcp_port()));
  auto extra = connect_tcp(io, listener.tcp_port());
  auto r = sink.wait_rejection("too_many_connections");
  REQUIRE(r);
  CHECK(r->detail.find("256 connections open") != std::string::npos);
  CHECK(closed_by_peer(io, extra));
  auto m = new_marker();  // the connections within the cap are served
  asio::write(open.back(), asio::buffer("<13>" + m + "\n"));
  CHECK(sink.wait_alert(m));
}

// A TLS client that trusts only the collector CA, as rsyslog with a pinned CA would.
struct TlsClient {
  TlsClient(asio::io_context& io, const fs::path& ca)
      : ctx(common::make_client_context({ca, {}, {}})), stream(io, ctx) {}

  bool connect(asio::io_context& io, std::uint16_t port) {
    stream.lowest_layer().connect(local(port));
    common::set_expected_peer_name(stream.native_handle(), "127.0.0.1");
    std::optional<boost::system::error_code> result;
    stream.async_handshake(asio::ssl::stream_base::client,
                           [&](boost::system::error_code ec) { result = ec; });
    io.run_for(kBound);
    io.restart();
    if (result && *result) MESSAGE("TLS handshake failed: " << result->message());
    return result && !*result;
  }

  asio::ssl::context ctx;
  asio::ssl::stream<tcp::socket> stream;
};

TEST_CASE("syslog listener: TLS with the collector's certificate, octet-counted") {
  test::TempDir dir("syslog-tls");
  CertificateAuthority::initialize(dir.path(), {"127.0.0.1"});
  RecordingSink sink;
  SyslogListener listener(listen_config(false, false, true), sink, dir / "server.pem",
                          dir / "server.key");
  REQUIRE(listener.tls_port() != 0);
  listener.start();
  asio::io_context io;

  TlsClient client(io, dir / "ca.pem");
  REQUIRE(client.connect(io, listener.tls_port()));
  auto m = new_marker();
  asio::write(client.stream,
              asio::buffer(octet_frame("<13>1 2024-03-05T14:03:11Z tlshost app - - - " + m)));
  auto a = sink.wait_alert(m);
  REQUIRE(a);
  CHECK(a->host == "tlshost");

  SUBCASE("a plaintext sender on the TLS port is refused, TLS senders keep working") {
    auto plain = connect_tcp(io, listener.tls_port());
    asio::write(plain, asio::buffer(std::string("<13>Jun 14 09:30:00 h a: plaintext\n")));
    auto r = sink.wait_rejection("tls_handshake");
    REQUIRE(r);
    CHECK(closed_by_peer(io, plain));
    TlsClient again(io, dir / "ca.pem");
    REQUIRE(again.connect(io, listener.tls_port()));
    auto m2 = new_marker();
    asio::write(again.stream, asio::buffer("<13>Jun 14 09:30:00 h a: " + m2 + "\n"));
    CHECK(sink.wait_alert(m2));
  }
}

TEST_CASE("syslog listener: a source's own tls_cert wins, and a missing one fails at start") {
  test::TempDir dir("syslog-tls2");
  CertificateAuthority::initialize(dir.path(), {"127.0.0.1"});
  RecordingSink sink;
  auto cfg = listen_config(false, false, true);
  cfg.tls_cert = dir / "server.pem";
  cfg.tls_key = dir / "server.key";
  {
    SyslogListener listener(cfg, sink, dir / "missing.pem", dir / "missing.key");
    listener.start();
    asio::io_context io;
    TlsClient client(io, dir / "ca.pem");
    CHECK(client.connect(io, listener.tls_port()));
  }
  cfg.tls_cert = dir / "nope.pem";
  try {
    SyslogListener listener(cfg, sink, {}, {});
    FAIL("a listener without its certificate started");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("nope.pem") != std::string::npos);
    CHECK(std::string(e.what()).find("test-syslog") != std::string::npos);
  }
}

TEST_CASE("syslog listener: an address in use fails in the constructor, naming it") {
  asio::io_context io;
  tcp::acceptor taken(io, local(0));
  udp::socket taken_udp(io, udp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  RecordingSink sink;

  auto cfg = listen_config(false, false, false);
  cfg.tcp = common::HostPort{"127.0.0.1", taken.local_endpoint().port()};
  try {
    SyslogListener listener(cfg, sink, {}, {});
    FAIL("bound a taken TCP port");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find("tcp " + cfg.tcp->to_string()) != std::string::npos);
  }
  auto cfg2 = listen_config(false, false, false);
  cfg2.udp = common::HostPort{"127.0.0.1", taken_udp.local_endpoint().port()};
  try {
    SyslogListener listener(cfg2, sink, {}, {});
    FAIL("bound a taken UDP port");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find("udp " + cfg2.udp->to_string()) != std::string::npos);
  }
}

TEST_CASE("syslog listener: stop closes idle connections at once and the destructor joins") {
  RecordingSink sink;
  asio::io_context io;
  std::optional<tcp::socket> idle;
  {
    SyslogListener listener(listen_config(true, true, false), sink, {}, {});
    listener.start();
    idle.emplace(connect_tcp(io, listener.tcp_port()));
    auto m = new_marker();  // the connection is being served before we stop
    asio::write(*idle, asio::buffer("<13>" + m + "\n"));
    REQUIRE(sink.wait_alert(m));
    listener.stop();
    listener.stop();  // idempotent
  }
  CHECK(closed_by_peer(io, *idle));
  CHECK(sink.rejection_count() == 0);
}

// --- syslog-ng as a real sender ------------------------------------------------------------

// A child in its own process group, so the whole group can be killed; output to a log file.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      setpgid(0, 0);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execv(args[0], args.data());
      _exit(127);
    }
    setpgid(pid_, pid_);  // also here: whichever runs first, the group exists before a kill
  }
  ~Child() {
    kill(-pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);  // SIGKILL cannot be ignored: this returns
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_CASE("syslog listener: syslog-ng forwards a log line over TCP, both BSD and RFC 5424") {
  const fs::path syslog_ng = "/usr/sbin/syslog-ng";
  if (!fs::exists(syslog_ng)) {
    MESSAGE("syslog-ng is not installed; skipped");
    return;
  }
  RecordingSink sink;
  SyslogListener listener(listen_config(false, true, false), sink, {}, {});
  listener.start();
  auto port = std::to_string(listener.tcp_port());

  test::TempDir dir("syslog-ng");
  auto marker = new_marker();
  // Written before syslog-ng starts: with no persist file it reads the file from the start.
  std::ofstream(dir / "app.log") << "drill wrote " << marker << " here\n";
  std::ofstream(dir / "sng.conf")
      << "@version: 3.38\n"
         "options { stats-freq(0); };\n"
         "source s_app { file(\""
      << (dir / "app.log").string()
      << "\" follow-freq(0.1) flags(no-parse)); };\n"
         "destination d_bsd { network(\"127.0.0.1\" transport(\"tcp\") port("
      << port
      << ")"
         " persist-name(\"d_bsd\")); };\n"
         "destination d_5424 { syslog(\"127.0.0.1\" transport(\"tcp\") port("
      << port
      << ")"
         " persist-name(\"d_5424\")); };\n"
         "log { source(s_app); destination(d_bsd); destination(d_5424); };\n";
  Child sng(
      {syslog_ng.string(), "-F", "-f", (dir / "sng.conf").string(), "-R",
       (dir / "persist").string(), "-p", (dir / "pid").string(), "-c", (dir / "ctl").string()},
      dir / "sng.log");

  auto found = sink.wait_alerts(marker, 2);
  INFO("syslog-ng log:\n" << read_text(dir / "sng.log"));
  REQUIRE(found.size() == 2);
  const Alert* bsd = nullptr;
  const Alert* rfc5424 = nullptr;
  for (const auto& a : found) (a.text.rfind("<13>1 ", 0) == 0 ? rfc5424 : bsd) = &a;
  REQUIRE(bsd);
  REQUIRE(rfc5424);
  for (const Alert* a : {bsd, rfc5424}) {
    INFO(a->text);
    CHECK(!a->host.empty());
    CHECK(a->severity == "notice");
    CHECK(a->created_ns != 0);
    // The header time is syslog-ng's reading of the clock, read back within a day whatever the
    // local zone (BSD times carry none).
    CHECK(std::llabs(a->created_ns - a->arrival_ns) < 86400LL * 1'000'000'000);
  }
}

TEST_SUITE_END();

}  // namespace
}  // namespace tocsin::collector
