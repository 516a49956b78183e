// The collector's HTTPS API end to end: real store, CA, registry and TLS on loopback, driven by
// the same ApiClient the `tocsin` CLI uses.
#include <doctest/doctest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "collector/api/api.hpp"
#include "collector/audit/audit.hpp"
#include "collector/cli/api_client.hpp"
#include "collector/ingest/ca.hpp"
#include "collector/ingest/registry.hpp"
#include "collector/store/store.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/text.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"

namespace fs = std::filesystem;
using namespace tocsin;
using collector::ApiClient;
using collector::ApiError;
using collector::Role;
using nlohmann::json;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("tocsin-test-api-" + common::random_id(12));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

collector::CertificateAuthority make_ca(const fs::path& dir) {
  collector::CertificateAuthority::initialize(dir, {"127.0.0.1"});
  return collector::CertificateAuthority::load(dir / "ca.pem", dir / "ca.key");
}

// A running API server on 127.0.0.1:<free port>, its io_context on its own thread.
struct ApiFixture {
  TempDir tmp;
  collector::CertificateAuthority ca = make_ca(tmp.path);
  std::unique_ptr<collector::Store> store = collector::Store::open(tmp.path / "db");
  collector::Registry registry{*store, ca, std::chrono::hours(24 * 7), std::chrono::hours(24)};
  boost::asio::ssl::context tls =
      common::make_server_context({tmp.path / "server.pem", tmp.path / "server.key", {}}, false);
  boost::asio::io_context io{1};
  std::unique_ptr<collector::ApiServer> server;
  std::thread thread;
  std::string admin_token = registry.create_api_token("test admin", Role::admin);
  std::string viewer_token = registry.create_api_token("test viewer", Role::viewer);
  std::string approver_token = registry.create_api_token("test approver", Role::approver);
  collector::AuditLog audit{*store, common::Ed25519Key::generate()};

  // threads == 0: connections served on `io` (this thread); else on the server's own threads.
  explicit ApiFixture(std::size_t threads = 0) {
    server = std::make_unique<collector::ApiServer>(io, tls, common::HostPort{"127.0.0.1", 0},
                                                    *store, registry,
                                                    collector::ApiAlerting{.audit = &audit}, threads);
    server->start();
    thread = std::thread([this] { io.run(); });
  }
  ~ApiFixture() {
    if (!server) return;
    server->stop();  // closes the acceptor and idle connections, so run() returns
    thread.join();
    server->wait();
  }

  std::string url() const { return "https://127.0.0.1:" + std::to_string(server->port()); }
  ApiClient client(const std::string& token) const {
    return ApiClient(url(), token, tmp.path / "ca.pem", 10000);
  }
};

// The ApiError a call ends with, or nothing if it succeeded.
std::optional<ApiError> error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const ApiError& e) {
    return e;
  }
  return std::nullopt;
}

const std::string kAgent = "agt-test-1";

common::ResultBody probe_body(int n) {
  common::ResultBody b;
  b.test_id = "tcp-smb-" + std::to_string(n);
  b.probe = "tcp_connect";
  b.target = "10.0.0." + std::to_string(n) + ":445";
  b.marker = "tcn-abc" + std::to_string(n);
  b.verdict = "prevented";
  b.reason = "refused";
  b.evidence = {{"errno", "ECONNREFUSED"}};
  b.expect_prevent = true;
  b.started_ns = 1'700'000'000'000'000'000 + n * 1'000'000'000LL;
  b.finished_ns = b.started_ns + 5'000'000;
  b.clock_offset_ns = 2'000'000;
  b.clock_error_ns = 500'000;
  return b;
}

struct SignedBatch {
  std::vector<collector::StoredResult> results;
  collector::StoredBatch batch;
};

// Three chained results signed as one batch, as an agent would send them.
SignedBatch make_batch(const common::Ed25519Key& key, const std::vector<std::string>& bodies) {
  SignedBatch out;
  common::Digest prev = common::kGenesisHash;
  std::int64_t received = common::now_ns();
  std::uint64_t seq = 0;
  for (const auto& body : bodies) {
    collector::StoredResult r;
    r.record.agent_id = kAgent;
    r.record.seq = ++seq;
    r.record.prev_hash = prev;
    r.record.body = body;
    r.record.hash = common::compute_result_hash(kAgent, seq, prev, body);
    r.batch_head_seq = bodies.size();
    r.received_ns = received;
    prev = r.record.hash;
    out.results.push_back(r);
  }
  out.batch.agent_id = kAgent;
  out.batch.first_seq = 1;
  out.batch.head_seq = seq;
  out.batch.head_hash = prev;
  out.batch.signature = key.sign(common::batch_signing_bytes(kAgent, seq, prev));
  out.batch.received_ns = received;
  return out;
}

void store_batch(collector::Store& store, const common::Ed25519Key& key, const SignedBatch& sb) {
  collector::AgentRecord agent;
  agent.agent_id = kAgent;
  agent.hostname = "ws-042";
  agent.os = "linux";
  agent.version = "0.1.0";
  agent.public_key_hex = common::to_hex(key.public_raw());
  agent.enrolled_ns = common::now_ns();
  agent.last_seen_ns = agent.enrolled_ns;
  agent.next_seq = sb.batch.head_seq + 1;
  agent.head_hash = sb.batch.head_hash;
  agent.clock_offset_ns = 2'000'000;
  agent.clock_error_ns = 500'000;
  collector::WriteSet ws;
  for (const auto& r : sb.results) ws.put_result(r);
  ws.put_batch(sb.batch);
  ws.put_agent(agent);
  store.commit(std::move(ws));
}

std::vector<std::string> three_bodies() {
  return {common::encode_body(probe_body(1)), common::encode_body(probe_body(2)),
          common::encode_body(probe_body(3))};
}

}  // namespace

TEST_CASE("the API health endpoint answers without a token") {
  ApiFixture f;
  json j = f.client("").get("/api/v1/health");
  CHECK(j["status"] == "ok");
  CHECK(j["version"] == TOCSIN_VERSION);
}

TEST_CASE("an API on its own threads serves concurrent clients and stops with idle ones open") {
  ApiFixture f(2);
  // Eight clients at once, each with its own connections: every answer is right.
  std::vector<std::thread> clients;
  std::atomic<int> ok{0}, failed{0};
  for (int c = 0; c < 8; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; i < 15; ++i) {
        try {
          auto j = f.client(c % 2 ? f.admin_token : f.viewer_token).get("/api/v1/agents");
          j.is_object() ? ++ok : ++failed;
          if (f.client("").get("/api/v1/health")["status"] == "ok") ++ok;
        } catch (const std::exception&) {
          ++failed;
        }
      }
    });
  for (auto& t : clients) t.join();
  CHECK(ok == 8 * 15 * 2);
  CHECK(failed == 0);

  // Keep-alive connections left idle on the serving threads (one request answered, then
  // nothing): stopping must close them rather than wait for their timeout.
  namespace asio = boost::asio;
  asio::io_context cio;
  asio::ssl::context cctx(asio::ssl::context::tls_client);
  cctx.load_verify_file((f.tmp.path / "ca.pem").string());
  cctx.set_verify_mode(asio::ssl::verify_peer);
  std::vector<std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket>>> idle;
  for (int i = 0; i < 4; ++i) {
    auto s = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket>>(cio, cctx);
    s->next_layer().connect({asio::ip::make_address("127.0.0.1"), f.server->port()});
    s->handshake(asio::ssl::stream_base::client);
    std::string req = "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n";
    asio::write(*s, asio::buffer(req));
    std::string got(4096, '\0');
    auto n = s->read_some(asio::buffer(got));
    CHECK(got.substr(0, 12) == "HTTP/1.1 200");
    CHECK(n > 0);
    idle.push_back(std::move(s));
  }
  auto t0 = std::chrono::steady_clock::now();
  f.server->stop();
  f.thread.join();
  f.server->wait();  // would last the 30 s request timeout if idle connections were left open
  f.server.reset();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(25));
  for (auto& s : idle) {  // each was closed by the server
    boost::system::error_code ec;
    char c;
    s->read_some(asio::buffer(&c, 1), ec);
    CHECK(ec);
  }
}

TEST_CASE("api requests without a valid token are refused with 401") {
  ApiFixture f;
  SUBCASE("no token") {
    auto e = error_of([&] { f.client("").get("/api/v1/agents"); });
    REQUIRE(e);
    CHECK(e->status == 401);
    CHECK(std::string(e->what()).find("token") != std::string::npos);
  }
  SUBCASE("a well-formed token nobody issued") {
    auto e = error_of([&] { f.client(common::random_token()).get("/api/v1/agents"); });
    REQUIRE(e);
    CHECK(e->status == 401);
  }
  SUBCASE("a malformed token") {
    auto e = error_of([&] { f.client("not-a-token").get("/api/v1/agents"); });
    REQUIRE(e);
    CHECK(e->status == 401);
  }
}

TEST_CASE("an API viewer token cannot create enrollment tokens (403 naming the role)") {
  ApiFixture f;
  json body = {{"ttl", "1h"}};
  auto e = error_of([&] { f.client(f.viewer_token).post("/api/v1/enroll-tokens", body); });
  REQUIRE(e);
  CHECK(e->status == 403);
  CHECK(std::string(e->what()) == "requires role admin");
}

TEST_CASE("an API admin creates an enrollment token of 64 hex digits that the store knows") {
  ApiFixture f;
  json body = {{"ttl", "2h"}};
  json j = f.client(f.admin_token).post("/api/v1/enroll-tokens", body);
  std::string token = j["token"];
  CHECK(collector::Registry::well_formed_token(token));
  CHECK(j["expires_at"].get<std::string>().size() == 24);
  auto stored = f.store->get_enroll_token(collector::Registry::hash_token(token));
  REQUIRE(stored);
  CHECK(stored->created_by == "test admin");
  CHECK(stored->expires_ns - stored->created_ns == 2LL * 3600 * 1'000'000'000);

  SUBCASE("the ttl defaults to one hour") {
    json d = f.client(f.admin_token).post("/api/v1/enroll-tokens", json::object());
    auto t = f.store->get_enroll_token(collector::Registry::hash_token(d["token"]));
    REQUIRE(t);
    CHECK(t->expires_ns - t->created_ns == 3600LL * 1'000'000'000);
  }
}

TEST_CASE("the API answers a bad enrollment token ttl with 400 naming the problem") {
  ApiFixture f;
  auto post = [&](const json& body) {
    return error_of([&] { f.client(f.admin_token).post("/api/v1/enroll-tokens", body); });
  };
  SUBCASE("not a duration") {
    auto e = post({{"ttl", "soon"}});
    REQUIRE(e);
    CHECK(e->status == 400);
    CHECK(std::string(e->what()).find("soon") != std::string::npos);
  }
  SUBCASE("beyond the configured maximum") {
    auto e = post({{"ttl", "30d"}});
    REQUIRE(e);
    CHECK(e->status == 400);
    CHECK(std::string(e->what()).find("maximum") != std::string::npos);
  }
  SUBCASE("zero") {
    auto e = post({{"ttl", "0s"}});
    REQUIRE(e);
    CHECK(e->status == 400);
  }
  SUBCASE("not a string") {
    auto e = post({{"ttl", 3600}});
    REQUIRE(e);
    CHECK(e->status == 400);
    CHECK(std::string(e->what()) == "'ttl' must be a string");
  }
  SUBCASE("an unknown field") {
    auto e = post({{"tll", "1h"}});
    REQUIRE(e);
    CHECK(e->status == 400);
    CHECK(std::string(e->what()).find("tll") != std::string::npos);
  }
  SUBCASE("a body that is not an object") {
    auto e = post(json::array({1, 2}));
    REQUIRE(e);
    CHECK(e->status == 400);
  }
}

TEST_CASE("an API admin creates API tokens with a role and unknown roles are refused") {
  ApiFixture f;
  json body = {{"name", "soc dashboard"}, {"role", "viewer"}};
  json j = f.client(f.admin_token).post("/api/v1/api-tokens", body);
  CHECK(j["name"] == "soc dashboard");
  CHECK(j["role"] == "viewer");
  std::string token = j["token"];
  auto stored = f.registry.authenticate_api(token);
  REQUIRE(stored);
  CHECK(stored->role == Role::viewer);
  CHECK(f.client(token).get("/api/v1/agents")["agents"].is_array());

  json bad = {{"name", "x"}, {"role", "root"}};
  auto e = error_of([&] { f.client(f.admin_token).post("/api/v1/api-tokens", bad); });
  REQUIRE(e);
  CHECK(e->status == 400);
  CHECK(std::string(e->what()).find("root") != std::string::npos);

  json nameless = {{"role", "viewer"}};
  e = error_of([&] { f.client(f.admin_token).post("/api/v1/api-tokens", nameless); });
  REQUIRE(e);
  CHECK(e->status == 400);
}

TEST_CASE("unknown api paths get 404 and wrong methods 405") {
  ApiFixture f;
  auto api = f.client(f.admin_token);
  auto e = error_of([&] { api.get("/api/v1/nothing-here"); });
  REQUIRE(e);
  CHECK(e->status == 404);
  e = error_of([&] { api.post("/api/v1/agents", json::object()); });
  REQUIRE(e);
  CHECK(e->status == 405);
  e = error_of([&] { api.get("/api/v1/enroll-tokens"); });
  REQUIRE(e);
  CHECK(e->status == 405);
}

TEST_CASE("API results verify on read and a body altered on disk is reported as invalid") {
  ApiFixture f;
  auto key = common::Ed25519Key::generate();
  auto sb = make_batch(key, three_bodies());
  store_batch(*f.store, key, sb);
  auto api = f.client(f.viewer_token);

  // The agent id is percent-encoded on purpose: the server must decode the query string.
  json j = api.get("/api/v1/results?agent=agt%2Dtest%2D1&since=1h");
  REQUIRE(j["results"].size() == 3);
  for (const auto& r : j["results"]) {
    CHECK(r["verified"] == true);
    CHECK_FALSE(r.contains("verify_error"));
    CHECK(r["agent_id"] == kAgent);
    CHECK(r["batch_head_seq"] == 3);
    CHECK(r["signature"] == common::to_hex(sb.batch.signature));
    CHECK(r["verdict"] == "prevented");
  }
  const json& first = j["results"][2];  // newest first: seq 3, 2, 1
  CHECK(first["seq"] == 1);
  CHECK(first["test_id"] == "tcp-smb-1");
  CHECK(first["hash"] == common::to_hex(sb.results[0].record.hash));
  CHECK(first["evidence"]["errno"] == "ECONNREFUSED");
  CHECK(first["clock_offset_ms"] == 2.0);
  CHECK(first["clock_error_ms"] == 0.5);
  // started 1'700'000'001 s after the epoch, corrected by +2 ms.
  CHECK(first["started_at"] == common::format_time(1'700'000'001'000'000'000));
  CHECK(first["action_time_corrected"] == common::format_time(1'700'000'001'002'000'000));

  // Someone edits seq 2 on disk and leaves its old hash in place.
  auto altered = sb.results[1];
  auto body = probe_body(2);
  body.verdict = "not_prevented";
  altered.record.body = common::encode_body(body);
  collector::WriteSet ws;
  ws.put_result(altered);
  f.store->commit(std::move(ws));

  j = api.get("/api/v1/results?agent=" + kAgent);
  REQUIRE(j["results"].size() == 3);
  for (const auto& r : j["results"]) {
    CHECK(r["verified"] == false);
    std::string why = r["verify_error"];
    CHECK(why.find("seq 2") != std::string::npos);
  }
}

TEST_CASE(
    "the API lists a result whose body cannot be decoded as invalid without failing the rest") {
  ApiFixture f;
  auto key = common::Ed25519Key::generate();
  // Correctly hashed and signed, but the body is not msgpack at all.
  auto sb = make_batch(key, {"\xc1 not msgpack"});
  store_batch(*f.store, key, sb);
  json j = f.client(f.viewer_token).get("/api/v1/results");
  REQUIRE(j["results"].size() == 1);
  CHECK(j["results"][0]["verified"] == false);
  CHECK(j["results"][0]["verify_error"].get<std::string>().find("decoded") != std::string::npos);
}

TEST_CASE("API results query parameters are validated with 400") {
  ApiFixture f;
  auto api = f.client(f.viewer_token);
  auto status = [&](const std::string& path) {
    auto e = error_of([&] { api.get(path); });
    return e ? e->status : 200L;
  };
  CHECK(status("/api/v1/results?since=yesterday") == 400);
  CHECK(status("/api/v1/results?since=99999999999h") == 400);
  CHECK(status("/api/v1/results?since=9999-99-99T99:99:99Z") == 400);
  CHECK(status("/api/v1/results?limit=0") == 400);
  CHECK(status("/api/v1/results?limit=10001") == 400);
  CHECK(status("/api/v1/results?limit=ten") == 400);
  CHECK(status("/api/v1/results?agnet=x") == 400);
  CHECK(status("/api/v1/results?since=%zz") == 400);
  CHECK(status("/api/v1/results?agent=nobody") == 404);
  CHECK(status("/api/v1/results?since=2020-01-01T00:00:00Z&limit=10000") == 200);
}

TEST_CASE("the API lists agents and security events for viewers") {
  ApiFixture f;
  auto key = common::Ed25519Key::generate();
  store_batch(*f.store, key, make_batch(key, three_bodies()));
  collector::WriteSet ws;
  ws.put_security_event(
      {common::now_ns(), "forged_signature", kAgent, "192.0.2.7:5000", "seq 4: bad signature"});
  f.store->commit(std::move(ws));
  auto api = f.client(f.viewer_token);

  json agents = api.get("/api/v1/agents")["agents"];
  REQUIRE(agents.size() == 1);
  CHECK(agents[0]["agent_id"] == kAgent);
  CHECK(agents[0]["hostname"] == "ws-042");
  CHECK(agents[0]["results"] == 3);
  CHECK(agents[0]["clock_offset_ms"] == 2.0);
  CHECK(agents[0]["clock_error_ms"] == 0.5);
  CHECK(agents[0]["revoked"] == false);

  json events = api.get("/api/v1/security-events?since=1h")["events"];
  REQUIRE(events.size() == 1);
  CHECK(events[0]["kind"] == "forged_signature");
  CHECK(events[0]["agent_id"] == kAgent);
  CHECK(events[0]["remote"] == "192.0.2.7:5000");
  CHECK(events[0]["detail"] == "seq 4: bad signature");
}

TEST_CASE("an api client pinned to another CA fails before any HTTP answer (status 0)") {
  ApiFixture f;
  TempDir other;
  collector::CertificateAuthority::initialize(other.path, {"127.0.0.1"});
  ApiClient api(f.url(), f.admin_token, other.path / "ca.pem", 10000);
  auto e = error_of([&] { api.get("/api/v1/health"); });
  REQUIRE(e);
  CHECK(e->status == 0);
  CHECK(std::string(e->what()).find("cannot reach") != std::string::npos);
}

TEST_CASE("an api client refuses plain http so the token never travels in clear") {
  CHECK_THROWS_AS(ApiClient("http://127.0.0.1:7444", "t", "ca.pem"), std::invalid_argument);
}

TEST_CASE("an API server cannot bind a port that is already listening") {
  ApiFixture f;
  boost::asio::io_context io;
  CHECK_THROWS_AS(collector::ApiServer(io, f.tls, common::HostPort{"127.0.0.1", f.server->port()},
                                       *f.store, f.registry),
                  std::system_error);
}

TEST_CASE("the collector serves the standard payloads without a token, byte for byte") {
  ApiFixture f;
  auto fetch = [&](const std::string& path, const std::string& extra = "") {
    auto out = f.tmp.path / "payload.out";
    auto cmd = "curl -sS -o " + out.string() + " -D " + (f.tmp.path / "headers").string() +
               " -w '%{http_code}' --cacert " + (f.tmp.path / "ca.pem").string() + " " + extra +
               " '" + f.url() + path + "' > " + (f.tmp.path / "code").string();
    REQUIRE(std::system(cmd.c_str()) == 0);
    return std::make_pair(common::read_file(f.tmp.path / "code"),
                          std::filesystem::exists(out) ? common::read_file(out) : std::string());
  };
  auto [code, body] = fetch("/payloads/tcn-abcdefghij/eicar.com?x=1");
  CHECK(code == "200");
  CHECK(common::to_hex(common::sha256(body)) ==
        "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f");
  auto headers = common::read_file(f.tmp.path / "headers");
  for (auto& c : headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  CHECK(headers.find("content-disposition: attachment; filename=\"eicar.com\"") != std::string::npos);
  std::tie(code, body) = fetch("/payloads/eicar.zip");
  CHECK(code == "200");
  CHECK(body.substr(0, 4) == std::string("PK\x03\x04", 4));
  std::tie(code, body) = fetch("/payloads/nothing.exe");
  CHECK(code == "404");
  CHECK(body.find("eicar.com, eicar.zip, benign.txt") != std::string::npos);
  std::tie(code, body) = fetch("/payloads/eicar.com", "-X POST -d x=1");
  CHECK(code == "405");
}

TEST_CASE("the audit endpoints need an approver and page the export by seq") {
  ApiFixture f;
  for (int i = 0; i < 5; ++i) f.audit.append("alice", "token_created", "t" + std::to_string(i));
  auto refused = error_of([&] { f.client(f.viewer_token).get("/api/v1/audit/verify"); });
  REQUIRE(refused);
  CHECK(refused->status == 403);
  auto api = f.client(f.approver_token);
  json v = api.get("/api/v1/audit/verify");
  CHECK(v["ok"] == true);
  CHECK(v["entries_checked"] == 6);
  CHECK(v["problems"].empty());

  json page = api.get("/api/v1/audit/export?since=1h&from_seq=3&limit=2");
  REQUIRE(page["entries"].size() == 2);
  CHECK(page["entries"][0]["seq"] == 3);
  CHECK(page["entries"][0]["subject"] == "t1");
  CHECK(page["entries"][1]["prev_hash"] == page["entries"][0]["hash"]);
  CHECK(page["next_from_seq"] == 5);
  CHECK(api.get("/api/v1/audit/export?from_seq=7")["entries"].empty());
  for (const char* bad : {"from_seq=x", "limit=0", "since=yesterday", "format=csv"}) {
    CAPTURE(bad);
    auto e = error_of([&] { api.get(std::string("/api/v1/audit/export?") + bad); });
    REQUIRE(e);
    CHECK(e->status == 400);
  }
}

TEST_CASE("API results are the newest first, with the total in the window") {
  ApiFixture f;
  auto key = common::Ed25519Key::generate();
  std::vector<std::string> bodies;
  for (int i = 1; i <= 7; ++i) bodies.push_back(common::encode_body(probe_body(i)));
  auto sb = make_batch(key, bodies);
  // Each result arrived a second after the previous one.
  for (std::size_t i = 0; i < sb.results.size(); ++i)
    sb.results[i].received_ns = sb.batch.received_ns - static_cast<std::int64_t>(7 - i) * 1'000'000'000;
  store_batch(*f.store, key, sb);
  auto api = f.client(f.viewer_token);

  json j = api.get("/api/v1/results?limit=3");
  REQUIRE(j["results"].size() == 3);
  CHECK(j["results"][0]["seq"] == 7);
  CHECK(j["results"][1]["seq"] == 6);
  CHECK(j["results"][2]["seq"] == 5);
  CHECK(j["total"] == 7);
  for (const auto& r : j["results"]) CHECK(r["verified"] == true);

  // The window starts where it says: results 5, 6, 7 arrived after this time.
  auto since = common::format_time(sb.batch.received_ns - 3'500'000'000);
  j = api.get("/api/v1/results?agent=" + kAgent + "&since=" + since + "&limit=10");
  CHECK(j["total"] == 3);
  REQUIRE(j["results"].size() == 3);
  CHECK(j["results"][0]["seq"] == 7);
  CHECK(j["results"][2]["seq"] == 5);
}

TEST_CASE("the status mail's CSV leaves numbers alone and still neutralises formulas") {
  using tocsin::common::csv_cell;
  CHECK(csv_cell("-174") == "-174");
  CHECK(csv_cell("-0.5") == "-0.5");
  CHECK(csv_cell("+3") == "+3");
  CHECK(csv_cell("42") == "42");
  CHECK(csv_cell("-cmd") == "'-cmd");
  CHECK(csv_cell("=1+1") == "'=1+1");
  CHECK(csv_cell("@x") == "'@x");
  CHECK(csv_cell("-1+2") == "'-1+2");
  CHECK(csv_cell("-") == "'-");
  CHECK(csv_cell("+1,5") == "\"'+1,5\"");
}
