// web_download and http_beacon against real peers started on loopback by the test: nginx as
// the origin (it ignores the run's marker segment), squid as the egress proxy with and without
// deny rules. Every run goes through the real `tocsin-agent run-once`.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <fstream>
#include <sstream>

#include "agent/probes/eicar_drop.hpp"
#include "common/crypto.hpp"
#include "tests/integration/harness.hpp"

using namespace tocsin;
using namespace tocsin::test;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool port_open(std::uint16_t port) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket s(io);
  boost::system::error_code ec;
  s.connect({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
  return !ec;
}

fs::path require_binary(const char* path) {
  REQUIRE_MESSAGE(fs::exists(path), path << " is missing: install it (scripts/deps installs the "
                                            "test peers: squid, nginx-light)");
  return path;
}

// A peer process stopped with SIGTERM (then SIGKILL) when the fixture goes away.
void stop(Process& p) {
  if (!p.running()) return;
  p.signal(SIGTERM);
  if (!p.wait(10s)) p.kill9();
}

// nginx as the origin: serves eicar.com, file.zip and index.txt; a leading "/tcn-..." path
// segment (the run's marker) is logged and ignored; /beacon answers 204.
struct Nginx {
  explicit Nginx(const fs::path& root) : dir(root / "nginx") {
    auto exe = require_binary("/usr/sbin/nginx");
    fs::create_directories(dir / "www");
    fs::create_directories(dir / "tmp");
    std::ofstream(dir / "www" / "eicar.com", std::ios::binary) << agent::eicar_test_string();
    std::ofstream(dir / "www" / "file.zip", std::ios::binary)
        << std::string("PK\x03\x04", 4) << "Tocsin test archive " << common::random_id(16);
    std::ofstream(dir / "www" / "index.txt") << "Tocsin origin\n";
    port = closed_port();
    auto d = dir.string();
    std::ofstream(dir / "nginx.conf")
        << "master_process off;\ndaemon off;\nworker_processes 1;\n"
        << "pid " << d << "/nginx.pid;\nerror_log " << d << "/error.log info;\n"
        << "events { worker_connections 64; }\nhttp {\n"
        << "  log_format tcn '$remote_addr \"$request\" $status \"$http_user_agent\" "
           "\"$http_x_request_id\"';\n"
        << "  access_log " << d << "/access.log tcn;\n"
        << "  client_body_temp_path " << d << "/tmp/body;\n  proxy_temp_path " << d
        << "/tmp/proxy;\n  fastcgi_temp_path " << d << "/tmp/fastcgi;\n  uwsgi_temp_path " << d
        << "/tmp/uwsgi;\n  scgi_temp_path " << d << "/tmp/scgi;\n"
        << "  types { application/octet-stream com zip; text/plain txt; }\n"
        << "  server {\n    listen 127.0.0.1:" << port << ";\n    root " << d << "/www;\n"
        << "    rewrite ^/tcn-[a-z0-9]+(/.*)$ $1 last;\n"
        << "    location /beacon { return 204; }\n  }\n}\n";
    proc = Process({exe.string(), "-e", d + "/error.log", "-p", d, "-c", d + "/nginx.conf"},
                   dir / "nginx.out");
    REQUIRE_MESSAGE(wait_until([&] { return port_open(port); }, 20s),
                    "nginx did not start: " << proc.log() << read_text(dir / "error.log"));
  }
  ~Nginx() { stop(proc); }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port) + path;
  }
  std::string access_log() const { return read_text(dir / "access.log"); }
  std::string sha256(const std::string& file) const {
    auto d = common::sha256(read_text(dir / "www" / file));
    return common::to_hex(d);
  }
  fs::path dir;
  std::uint16_t port = 0;
  Process proc;
};

// squid 5 as the egress proxy (TEST-PEERS.md §3). With `rules`, it denies any URL path ending
// in .zip (the lax `\.zip$` form a careless edit leaves), anything with "eicar" in the URL,
// and paths under /beacon; without, it lets everything from loopback through.
struct Squid {
  Squid(const fs::path& root, bool rules) : dir(root / (rules ? "squid-rules" : "squid-open")) {
    auto exe = require_binary("/usr/sbin/squid");
    fs::create_directories(dir);
    port = closed_port();
    auto d = dir.string();
    std::ofstream conf(dir / "squid.conf");
    conf << "http_port 127.0.0.1:" << port << "\npid_filename " << d << "/squid.pid\n"
         << "cache_log stdio:" << d << "/cache.log\naccess_log stdio:" << d
         << "/access.log combined\ncoredump_dir " << d << "\ncache_effective_user proxy\n"
         << "cache deny all\npinger_enable off\nshutdown_lifetime 0 seconds\n"
         << "dns_nameservers 127.0.0.1\nacl localhostnet src 127.0.0.0/8\n";
    if (rules)
      conf << "acl zipfiles urlpath_regex -i \\.zip$\nacl eicar url_regex -i eicar\n"
           << "acl c2 urlpath_regex ^/beacon\nhttp_access deny zipfiles\n"
           << "http_access deny eicar\nhttp_access deny c2\n";
    conf << "http_access allow localhostnet\nhttp_access deny all\n";
    conf.close();
    // squid started as root drops to `proxy`, which must reach and write this directory.
    if (::geteuid() == 0) {
      fs::permissions(root, fs::perms::group_exec | fs::perms::others_exec, fs::perm_options::add);
      auto chown = run_command({"/bin/chown", "-R", "proxy:proxy", d}, 10s);
      REQUIRE_MESSAGE(chown.rc == 0, "chown for squid failed: " << chown.err);
    }
    proc = Process({exe.string(), "-N", "-d", "1", "-n", "tcn" + common::random_id(10), "-f",
                    d + "/squid.conf"},
                   dir / "squid.out");
    REQUIRE_MESSAGE(wait_until([&] { return port_open(port); }, 30s),
                    "squid did not start: " << proc.log());
  }
  ~Squid() { stop(proc); }
  std::string proxy() const { return "127.0.0.1:" + std::to_string(port); }
  std::string access_log() const { return read_text(dir / "access.log"); }
  fs::path dir;
  std::uint16_t port = 0;
  Process proc;
};

nlohmann::json run_once(const fs::path& config, const std::string& test) {
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config", config.string(),
                        "--test", test, "--json"},
                       120s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return nlohmann::json::parse(r.out);
}

std::string ev(const nlohmann::json& r, const std::string& key) {
  return r["evidence"].contains(key) ? r["evidence"][key].get<std::string>() : std::string();
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// An agent.yaml with an allowlist of loopback ports and the given tests.
void write_config(const fs::path& file, const std::vector<std::uint16_t>& ports,
                  const std::string& tests) {
  std::ofstream out(file);
  out << "state_dir: " << (file.parent_path() / "state").string() << "\nallowlist:\n  network:\n";
  for (auto p : ports) out << "    - \"127.0.0.1:" << p << "\"\n";
  out << "    - \"tcn-nonexistent.invalid:80\"\ntests:\n" << tests;
}

std::string test_yaml(const std::string& id, const std::string& kind, const std::string& params) {
  return "  - id: " + id + "\n    kind: " + kind +
         "\n    every: 1h\n    timeout: 20s\n    technique: T1105\n    expect: {prevent: true}\n"
         "    params: {" +
         params + "}\n";
}

}  // namespace

TEST_CASE("web_download: EICAR through squid with a deny rule is prevented, without it delivered") {
  TempDir tmp("probes-web");
  Nginx origin(tmp.path());
  Squid strict(tmp.path(), true);
  Squid open(tmp.path(), false);
  auto sha = origin.sha256("eicar.com");
  auto url = origin.url("/{marker}/eicar.com");
  auto common_params = "url: \"" + url + "\", sha256: " + sha;
  write_config(tmp / "agent.yaml", {origin.port, strict.port, open.port},
               test_yaml("eicar-strict", "web_download",
                         common_params + ", proxy: \"http://" + strict.proxy() + "\"") +
                   test_yaml("eicar-open", "web_download",
                             common_params + ", proxy: \"" + open.proxy() + "\"") +
                   test_yaml("eicar-direct", "web_download", common_params));

  {  // defence present: the proxy's deny rule
    auto r = run_once(tmp / "agent.yaml", "eicar-strict");
    INFO(r.dump(2));
    auto marker = r["marker"].get<std::string>();
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "blocked_by_proxy");
    CHECK(ev(r, "status") == "403");
    CHECK(contains(ev(r, "header.x-squid-error"), "ERR_ACCESS_DENIED"));
    CHECK(ev(r, "proxy") == strict.proxy());
    CHECK(contains(ev(r, "variants_tried"), "query_string"));  // no form got through
    CHECK_FALSE(r["evidence"].contains("variant"));
    // The proxy's own record carries the marker in the URL and the User-Agent; the origin
    // never saw the request.
    CHECK(wait_until([&] { return contains(strict.access_log(), "/" + marker + "/eicar.com"); },
                     10s));
    CHECK(contains(strict.access_log(), ev(r, "user_agent")));
    CHECK(contains(strict.access_log(), "TCP_DENIED"));
    CHECK_FALSE(contains(origin.access_log(), marker));
  }
  {  // defence absent: a proxy without the rule
    auto r = run_once(tmp / "agent.yaml", "eicar-open");
    INFO(r.dump(2));
    auto marker = r["marker"].get<std::string>();
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "payload_received");
    CHECK(ev(r, "status") == "200");
    CHECK(ev(r, "sha256") == sha);
    CHECK_FALSE(r["evidence"].contains("body_snippet"));  // the payload is never copied
    CHECK(wait_until([&] { return contains(open.access_log(), marker); }, 10s));
    // The origin logged the marker in the path, the User-Agent and X-Request-ID.
    CHECK(wait_until([&] { return contains(origin.access_log(), "/" + marker + "/eicar.com"); },
                     10s));
    CHECK(contains(origin.access_log(), ev(r, "user_agent")));
    CHECK(contains(origin.access_log(), "\"" + marker + "\""));
  }
  {  // defence absent: no proxy at all
    auto r = run_once(tmp / "agent.yaml", "eicar-direct");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "payload_received");
    CHECK(ev(r, "proxy") == "direct");
    CHECK(ev(r, "address") == "127.0.0.1:" + std::to_string(origin.port));
  }
}

TEST_CASE(
    "web_download: a lax \\.zip$ rule is reported as a policy gap with the variant that got "
    "through") {
  TempDir tmp("probes-web");
  Nginx origin(tmp.path());
  Squid strict(tmp.path(), true);
  auto params = "url: \"" + origin.url("/{marker}/file.zip") +
                "\", sha256: " + origin.sha256("file.zip") + ", proxy: \"" + strict.proxy() + "\"";
  write_config(tmp / "agent.yaml", {origin.port, strict.port},
               test_yaml("zip", "web_download", params) +
                   test_yaml("zip-plain-only", "web_download", params + ", variants: false"));

  auto r = run_once(tmp / "agent.yaml", "zip");
  INFO(r.dump(2));
  auto marker = r["marker"].get<std::string>();
  CHECK(r["verdict"] == "not_prevented");
  CHECK(r["reason"] == "policy_gap_bypass");
  CHECK(ev(r, "status") == "403");  // the plain request was refused...
  CHECK(contains(ev(r, "header.x-squid-error"), "ERR_ACCESS_DENIED"));
  CHECK(ev(r, "variant") == origin.url("/" + marker + "/file.zip?x=1"));  // ...this was not
  CHECK(ev(r, "variant_name") == "query_string");
  CHECK(ev(r, "variant_status") == "200");
  CHECK(ev(r, "variant_sha256") == origin.sha256("file.zip"));
  CHECK(contains(ev(r, "variant.upper_case"), "403 prevented/blocked_by_proxy"));
  CHECK(wait_until([&] { return contains(origin.access_log(), marker + "/file.zip?x=1"); }, 10s));

  auto plain = run_once(tmp / "agent.yaml", "zip-plain-only");
  CHECK(plain["verdict"] == "prevented");
  CHECK(plain["reason"] == "blocked_by_proxy");
  CHECK_FALSE(plain["evidence"].contains("variants_tried"));
}

TEST_CASE("web_download: a broken path is inconclusive, never prevented") {
  TempDir tmp("probes-web");
  Nginx origin(tmp.path());
  Squid open(tmp.path(), false);
  auto closed_proxy = closed_port();
  auto dead_origin = closed_port();
  write_config(tmp / "agent.yaml", {origin.port, open.port, closed_proxy, dead_origin},
               test_yaml("proxy-down", "web_download",
                         "url: \"" + origin.url("/{marker}/eicar.com") +
                             "\", proxy: \"127.0.0.1:" + std::to_string(closed_proxy) + "\"") +
                   test_yaml("origin-down", "web_download",
                             "url: \"http://127.0.0.1:" + std::to_string(dead_origin) +
                                 "/{marker}/eicar.com\", proxy: \"" + open.proxy() + "\"") +
                   test_yaml("no-such-host", "web_download",
                             "url: \"http://tcn-nonexistent.invalid/{marker}/eicar.com\""));
  auto down = run_once(tmp / "agent.yaml", "proxy-down");
  INFO(down.dump(2));
  CHECK(down["verdict"] == "inconclusive");
  CHECK(down["reason"] == "proxy_unreachable");
  CHECK(contains(ev(down, "curl_error"), "onnect"));
  auto gone = run_once(tmp / "agent.yaml", "origin-down");
  INFO(gone.dump(2));
  CHECK(gone["verdict"] == "inconclusive");  // squid's 503 says it could not connect
  CHECK(gone["reason"] == "proxy_upstream_failure");
  CHECK(contains(ev(gone, "header.x-squid-error"), "ERR_CONNECT_FAIL"));
  auto dns = run_once(tmp / "agent.yaml", "no-such-host");
  INFO(dns.dump(2));
  CHECK(dns["verdict"] == "inconclusive");
  CHECK(dns["reason"] == "dns_failure");
}

TEST_CASE("web_download: a URL off the allowlist stops the agent at load with file:line") {
  TempDir tmp("probes-web");
  write_config(tmp / "agent.yaml", {8080},
               test_yaml("off-list", "web_download", "url: \"http://127.0.0.1:9/{marker}/x\""));
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config",
                        (tmp / "agent.yaml").string(), "--test", "off-list", "--json"},
                       60s);
  CHECK(r.rc != 0);
  CHECK(contains(r.err + r.out, "agent.yaml:"));
  CHECK(contains(r.err + r.out, "127.0.0.1:9 is not on the allowlist"));
}

TEST_CASE("http_beacon: reaches the origin unless a proxy rule refuses it, a broken path is inconclusive") {
  TempDir tmp("probes-web");
  Nginx origin(tmp.path());
  Squid strict(tmp.path(), true);
  Squid open(tmp.path(), false);
  auto closed_proxy = closed_port();
  auto url = "url: \"" + origin.url("/beacon/{marker}") + "\"";
  write_config(
      tmp / "agent.yaml", {origin.port, strict.port, open.port, closed_proxy},
      test_yaml("direct", "http_beacon", url) +
          test_yaml("open", "http_beacon",
                    url + ", proxy: \"" + open.proxy() + "\", method: POST") +
          test_yaml("strict", "http_beacon", url + ", proxy: \"" + strict.proxy() + "\"") +
          test_yaml("proxy-down", "http_beacon",
                    url + ", proxy: \"127.0.0.1:" + std::to_string(closed_proxy) + "\"") +
          test_yaml("no-such-host", "http_beacon", "url: \"http://tcn-nonexistent.invalid/c2\""));

  {  // defence absent: direct, the origin answered
    auto r = run_once(tmp / "agent.yaml", "direct");
    INFO(r.dump(2));
    auto marker = r["marker"].get<std::string>();
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "origin_responded");
    CHECK(ev(r, "status") == "204");
    CHECK(ev(r, "request_header") == "X-Request-ID: " + marker);
    // Marker in the path, the User-Agent and the header, as the origin logged them.
    CHECK(wait_until([&] { return contains(origin.access_log(), "/beacon/" + marker); }, 10s));
    CHECK(contains(origin.access_log(), ev(r, "user_agent")));
    CHECK(contains(origin.access_log(), "\"" + marker + "\""));
  }
  {  // defence absent: through a proxy without a rule
    auto r = run_once(tmp / "agent.yaml", "open");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "origin_responded");
    CHECK(contains(ev(r, "header.via"), "squid"));
    auto marker = r["marker"].get<std::string>();
    CHECK(wait_until([&] { return contains(origin.access_log(), "POST /beacon/" + marker); }, 10s));
  }
  {  // defence present: the proxy refuses the C2 path
    auto r = run_once(tmp / "agent.yaml", "strict");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "blocked_by_proxy");
    CHECK(ev(r, "status") == "403");
    CHECK(contains(ev(r, "header.x-squid-error"), "ERR_ACCESS_DENIED"));
    CHECK(contains(ev(r, "page_title"), "ERROR"));  // squid's block page
    CHECK(wait_until([&] { return contains(strict.access_log(), r["marker"].get<std::string>()); },
                     10s));
    CHECK_FALSE(contains(origin.access_log(), r["marker"].get<std::string>()));
  }
  {  // inconclusive: the proxy is down, the name does not resolve
    auto down = run_once(tmp / "agent.yaml", "proxy-down");
    INFO(down.dump(2));
    CHECK(down["verdict"] == "inconclusive");
    CHECK(down["reason"] == "proxy_unreachable");
    auto dns = run_once(tmp / "agent.yaml", "no-such-host");
    INFO(dns.dump(2));
    CHECK(dns["verdict"] == "inconclusive");
    CHECK(dns["reason"] == "dns_failure");
  }
}

TEST_CASE("web_download over https: trusted with ca_file, inconclusive (tls_error) without") {
  TempDir tmp("probes-web");
  auto openssl = require_binary("/usr/bin/openssl");
  auto cert = (tmp / "cert.pem").string(), key = (tmp / "key.pem").string();
  auto made = run_command(
      {openssl.string(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
       cert, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"},
      60s);
  REQUIRE_MESSAGE(made.rc == 0, made.err);
  auto port = closed_port();
  // -www answers every GET with a 200 status page: an origin that delivers.
  Process server({openssl.string(), "s_server", "-accept", "127.0.0.1:" + std::to_string(port),
                  "-cert", cert, "-key", key, "-www", "-quiet"},
                 tmp / "s_server.log");
  REQUIRE_MESSAGE(wait_until([&] { return port_open(port); }, 20s), server.log());
  Squid open(tmp.path(), false);
  auto url = "url: \"https://127.0.0.1:" + std::to_string(port) + "/{marker}/payload\"";
  write_config(tmp / "agent.yaml", {port, open.port},
               test_yaml("trusted", "web_download", url + ", ca_file: \"" + cert + "\"") +
                   test_yaml("trusted-via-proxy", "web_download",
                             url + ", ca_file: \"" + cert + "\", proxy: \"" + open.proxy() + "\"") +
                   test_yaml("untrusted", "web_download", url));
  auto ok = run_once(tmp / "agent.yaml", "trusted");
  INFO(ok.dump(2));
  CHECK(ok["verdict"] == "not_prevented");
  CHECK(ok["reason"] == "payload_received");
  auto tunnel = run_once(tmp / "agent.yaml", "trusted-via-proxy");
  INFO(tunnel.dump(2));
  CHECK(tunnel["verdict"] == "not_prevented");
  CHECK(ev(tunnel, "connect_status") == "200");
  CHECK(wait_until(
      [&] { return contains(open.access_log(), "CONNECT 127.0.0.1:" + std::to_string(port)); },
      10s));
  auto bad = run_once(tmp / "agent.yaml", "untrusted");
  INFO(bad.dump(2));
  CHECK(bad["verdict"] == "inconclusive");  // a certificate problem is not a block
  CHECK(bad["reason"] == "tls_error");
  stop(server);
}

TEST_CASE("the agent links neither libcurl nor libsystemd and maps libcurl only for a web probe") {
  auto agent_bin = bin("tocsin-agent").string();
  auto dynamic = run_command({"/usr/bin/readelf", "-d", agent_bin}, 30s);
  REQUIRE_MESSAGE(dynamic.rc == 0, "/usr/bin/readelf -d (binutils) failed: " << dynamic.err);
  CHECK(contains(dynamic.out, "(NEEDED)"));
  CHECK_FALSE(contains(dynamic.out, "libcurl"));
  CHECK_FALSE(contains(dynamic.out, "libsystemd"));
  // --version names the OpenSSL inside: with a static one, host updates do not reach it.
  auto version = run_command({agent_bin, "--version"}, 30s);
  CHECK(version.rc == 0);
  CHECK_MESSAGE(contains(version.out, "(OpenSSL 3."), version.out);
  if (TOCSIN_STATIC_AGENT) {  // cmake/linux-deps.cmake: libc and nothing else
    for (const char* lib : {"libssl", "libcrypto", "libstdc++", "libyaml-cpp", "libcares",
                            "libspdlog", "libfmt", "libgcc_s"})
      CHECK_MESSAGE(!contains(dynamic.out, lib), lib << " in " << dynamic.out);
    // libcurl's libssl.so.3 binds to what the agent exports: only glibc's own symbols may be
    // there, never a function of the agent's static OpenSSL.
    auto exported = run_command({"/usr/bin/nm", "-D", "--defined-only", agent_bin}, 30s);
    REQUIRE(exported.rc == 0);
    std::istringstream lines(exported.out);
    int symbols = 0;
    for (std::string line; std::getline(lines, line);) {
      ++symbols;
      CHECK_MESSAGE(contains(line, "@GLIBC_"), "exported: " << line);
    }
    CHECK(symbols > 0);
    // spdlog compiled in once: a second registry would send main.cpp's lines elsewhere.
    auto syms = run_command({"/usr/bin/nm", "-C", agent_bin}, 60s);
    REQUIRE(syms.rc == 0);
    std::istringstream symbol_lines(syms.out);
    int registries = 0;
    for (std::string line; std::getline(symbol_lines, line);)
      if (line.ends_with(" spdlog::details::registry::instance()::s_instance") &&
          !contains(line, "guard variable"))
        ++registries;
    CHECK_MESSAGE(registries == 1, "spdlog registries in tocsin-agent: " << registries);
  }

  // A running agent whose tests are all tcp_connect has delivered results without libcurl.
  Collector c;
  OpenPort open;
  Agent idle(c);
  idle.write_config({{"reach", "1s", {"127.0.0.1:" + std::to_string(open.port())}}});
  idle.start();
  REQUIRE_MESSAGE(
      wait_until([&] { return idle.status()["acked_seq"].get<std::uint64_t>() >= 2; }, 60s),
      idle.log());
  auto maps = read_text("/proc/" + std::to_string(idle.process().pid()) + "/maps");
  CHECK(contains(maps, "libc.so"));  // the file was read: it lists the agent's libraries
  CHECK(contains(maps, "libcrypto") == !TOCSIN_STATIC_AGENT);
  CHECK(contains(maps, "libstdc++") == !TOCSIN_STATIC_AGENT);
  CHECK_FALSE(contains(maps, "libcurl"));
  CHECK_FALSE(contains(maps, "libgnutls"));
  idle.stop();

  // The same binary runs a web probe: libcurl is loaded when it first runs.
  TempDir tmp("probes-web");
  Nginx origin(tmp.path());
  write_config(tmp / "agent.yaml", {origin.port},
               test_yaml("direct", "web_download", "url: \"" + origin.url("/index.txt") + "\""));
  auto r = run_once(tmp / "agent.yaml", "direct");
  INFO(r.dump(2));
  CHECK(r["verdict"] == "not_prevented");
  CHECK(r["reason"] == "payload_received");
  CHECK(ev(r, "status") == "200");
}
