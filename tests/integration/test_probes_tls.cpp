// tls_policy and http_check against real peers on loopback: openssl s_server (weak and strong
// configurations, expired and self-signed certificates), socat as an inspecting proxy that
// re-signs, a blocker that resets after the ClientHello, squid as a CONNECT proxy with a deny
// rule, and nginx serving HTTPS with good, short-lived and expired certificates.
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <fstream>
#include <random>
#include <thread>

#include "agent/probes/http_check.hpp"
#include "common/config.hpp"
#include "common/x509.hpp"
#include "tests/integration/harness.hpp"

using namespace tocsin;
using namespace tocsin::test;

namespace {

// ---- Certificates made by the test with the OpenSSL API (any validity window, no faketime). ----

struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;

struct Issued {
  KeyPtr key;
  common::X509Ptr cert;
  fs::path cert_file, key_file;
  std::string sha256() const { return common::cert_fingerprint_hex(cert.get()); }
};

// A certificate for `cn` valid from now+start_days to now+end_days, signed by `ca` (or
// self-signed), with SANs for 127.0.0.1 and localhost unless it is a CA.
Issued issue(const fs::path& dir, const std::string& name, const std::string& cn, long start_days,
             long end_days, const Issued* ca = nullptr, bool is_ca = false) {
  Issued out;
  out.key.reset(EVP_RSA_gen(2048));
  REQUIRE(out.key);
  out.cert.reset(X509_new());
  X509* x = out.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x),
                   static_cast<long>(std::random_device{}() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), start_days * 86400);
  X509_gmtime_adj(X509_getm_notAfter(x), end_days * 86400);
  X509_set_pubkey(x, out.key.get());
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("Tocsin test"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, ca ? X509_get_subject_name(ca->cert.get()) : n);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca ? ca->cert.get() : x, x, nullptr, nullptr, 0);
  auto ext = [&](int nid, const char* value) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    REQUIRE(e);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  };
  ext(NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "CA:FALSE");
  ext(NID_subject_key_identifier, "hash");
  if (ca) ext(NID_authority_key_identifier, "keyid");
  if (!is_ca) ext(NID_subject_alt_name, ("DNS:" + cn + ",DNS:localhost,IP:127.0.0.1").c_str());
  REQUIRE(X509_sign(x, ca ? ca->key.get() : out.key.get(), EVP_sha256()) > 0);
  out.cert_file = dir / (name + ".pem");
  out.key_file = dir / (name + ".key");
  std::unique_ptr<FILE, decltype(&fclose)> cf(fopen(out.cert_file.c_str(), "w"), &fclose);
  PEM_write_X509(cf.get(), x);
  std::unique_ptr<FILE, decltype(&fclose)> kf(fopen(out.key_file.c_str(), "w"), &fclose);
  PEM_write_PrivateKey(kf.get(), out.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  return out;
}

void require_binary(const std::string& path) {
  REQUIRE_MESSAGE(fs::exists(path), path << " is missing: install it (scripts/deps)");
}

bool port_open(std::uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// A peer on a free loopback port (the kernel picked it; nothing else binds it meanwhile).
Process start_peer(const std::vector<std::string>& argv, const fs::path& log, std::uint16_t port) {
  Process p(argv, log);
  REQUIRE_MESSAGE(wait_until([&] { return port_open(port); }, 20s),
                  argv[0] << " did not listen on " << port << ": " << p.log());
  return p;
}

// `openssl s_server` with the given certificate and extra options.
Process s_server(const Issued& cert, std::uint16_t port, const fs::path& log,
                 std::vector<std::string> extra = {}) {
  require_binary("/usr/bin/openssl");
  std::vector<std::string> argv = {"/usr/bin/openssl",
                                   "s_server",
                                   "-quiet",
                                   "-accept",
                                   "127.0.0.1:" + std::to_string(port),
                                   "-cert",
                                   cert.cert_file.string(),
                                   "-key",
                                   cert.key_file.string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Process p(argv, log);
  REQUIRE_MESSAGE(wait_until([&] { return port_open(port); }, 20s),
                  "s_server did not listen: " << p.log());
  return p;
}

// An in-path blocker: takes the TCP connection, reads the ClientHello, answers with a reset.
class ResetAfterHello {
 public:
  ResetAfterHello() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(fd_, 16) == 0);
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~ResetAfterHello() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  std::uint16_t port() const { return port_; }
  int hellos() const { return hellos_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      pollfd q{c, POLLIN, 0};
      char buf[4096];
      if (poll(&q, 1, 5000) > 0 && recv(c, buf, sizeof buf, 0) > 5 && buf[0] == 0x16) ++hellos_;
      linger l{1, 0};  // close with RST, as an IPS does
      setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      close(c);
    }
  }
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> hellos_{0};
  std::thread thread_;
};

nlohmann::json run_once(const fs::path& config, const std::string& test) {
  auto r = run_command({bin("tocsin-agent").string(), "run-once", "--config", config.string(),
                        "--test", test, "--json"},
                       120s);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return nlohmann::json::parse(r.out);
}

std::string ev(const nlohmann::json& r, const std::string& key) {
  return r["evidence"].value(key, std::string());
}

// An agent config with the loopback allowlist and the given tests (YAML list items).
fs::path write_config(const TempDir& tmp, const std::string& tests) {
  auto file = tmp / "agent.yaml";
  std::ofstream(file) << "state_dir: " << (tmp / "state").string() << "\n"
                      << "allowlist: { network: [\"127.0.0.1:1-65535\", \"nothing.invalid\"] }\n"
                      << "tests:\n"
                      << tests;
  return file;
}

std::string port_s(std::uint16_t p) {
  return std::to_string(p);
}

}  // namespace

// ------------------------------------ tls_policy outbound ------------------------------------

TEST_CASE("tls_policy outbound: an invalid certificate that arrives as-is is not_prevented") {
  TempDir tmp("tls");
  auto bad = issue(tmp.path(), "bad", "bad.tocsin.test", -60, -30);  // expired, self-signed
  auto port = closed_port();
  auto server = s_server(bad, port, tmp / "s_server.log");
  auto cfg = write_config(tmp,
                          "  - id: out-direct\n    kind: tls_policy\n    every: 1h\n"
                          "    expect: {prevent: true}\n"
                          "    params: {target: \"127.0.0.1:" +
                              port_s(port) +
                              "\", server_name: bad.tocsin.test, sni_marker: true,"
                              " expect_fingerprint: \"" +
                              bad.sha256() +
                              "\"}\n"
                              "  - id: out-noexpect\n    kind: tls_policy\n    every: 1h\n"
                              "    params: {target: \"127.0.0.1:" +
                              port_s(port) + "\"}\n");
  auto r = run_once(cfg, "out-direct");
  INFO(r.dump(2));
  CHECK(r["verdict"] == "not_prevented");
  CHECK(r["reason"] == "invalid_certificate_delivered");
  CHECK(ev(r, "cert_sha256") == bad.sha256());
  CHECK(ev(r, "cert_self_signed") == "true");
  CHECK(ev(r, "sni") == r["marker"].get<std::string>() + ".bad.tocsin.test");
  CHECK(std::stol(ev(r, "cert_days_left")) < 0);
  // Without an expected fingerprint the verdict rests on the certificate failing validation.
  auto r2 = run_once(cfg, "out-noexpect");
  INFO(r2.dump(2));
  CHECK(r2["verdict"] == "not_prevented");
  CHECK(ev(r2, "cert_verify") != "ok");
}

TEST_CASE("tls_policy outbound: an inspecting proxy that re-signs or resets is prevented") {
  TempDir tmp("tls");
  auto bad = issue(tmp.path(), "bad", "bad.tocsin.test", -60, -30);
  auto proxy_ca = issue(tmp.path(), "proxy-ca", "Tocsin Inspection CA", -1, 365, nullptr, true);
  auto proxy_leaf = issue(tmp.path(), "proxy-leaf", "bad.tocsin.test", -1, 30, &proxy_ca);
  auto bad_port = closed_port();
  auto server = s_server(bad, bad_port, tmp / "s_server.log");
  require_binary("/usr/bin/socat");
  auto mitm_port = closed_port();
  // socat terminates TLS with its own certificate and opens a second session to the server:
  // what a TLS-inspecting proxy does.
  auto mitm = start_peer(
      {"/usr/bin/socat", "-d",
       "OPENSSL-LISTEN:" + port_s(mitm_port) + ",bind=127.0.0.1,reuseaddr,fork,verify=0,cert=" +
           proxy_leaf.cert_file.string() + ",key=" + proxy_leaf.key_file.string(),
       "OPENSSL:127.0.0.1:" + port_s(bad_port) + ",verify=0"},
      tmp / "socat.log", mitm_port);
  ResetAfterHello blocker;
  auto params = [&](std::uint16_t port) {
    return "    params: {target: \"127.0.0.1:" + port_s(port) +
           "\", server_name: bad.tocsin.test, expect_fingerprint: \"" + bad.sha256() + "\"}\n";
  };
  auto cfg = write_config(
      tmp, "  - id: out-mitm\n    kind: tls_policy\n    every: 1h\n" + params(mitm_port) +
               "  - id: out-reset\n    kind: tls_policy\n    every: 1h\n" + params(blocker.port()));
  SUBCASE("certificate replaced") {
    auto r = run_once(cfg, "out-mitm");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "certificate_replaced");
    CHECK(ev(r, "cert_sha256") == proxy_leaf.sha256());
    CHECK(ev(r, "expected_sha256") == bad.sha256());
    CHECK(ev(r, "cert_issuer").find("Tocsin Inspection CA") != std::string::npos);
  }
  SUBCASE("reset after the ClientHello") {
    auto r = run_once(cfg, "out-reset");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "handshake_reset");
    CHECK(blocker.hellos() >= 1);
  }
}

TEST_CASE("tls_policy outbound through squid: allowed tunnel, denied tunnel, unreachable server") {
  require_binary("/usr/sbin/squid");
  TempDir tmp("tls");
  auto bad = issue(tmp.path(), "bad", "bad.tocsin.test", -60, -30);
  auto bad_port = closed_port();
  auto server = s_server(bad, bad_port, tmp / "s_server.log");
  auto denied_port = closed_port();  // squid denies CONNECT to it (nothing needs to listen)
  auto dead_port = closed_port();    // squid may CONNECT, but nothing listens
  auto squid_port = closed_port();
  auto sq = tmp / "squid";
  fs::create_directories(sq);
  std::ofstream(sq / "squid.conf")
      << "http_port 127.0.0.1:" << squid_port << "\npid_filename " << (sq / "squid.pid").string()
      << "\ncache_log stdio:" << (sq / "cache.log").string()
      << "\naccess_log stdio:" << (sq / "access.log").string() << " squid\n"
      << "coredump_dir " << sq.string() << "\ncache_effective_user proxy\ncache deny all\n"
      << "pinger_enable off\nshutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\n"
      << "acl localhostnet src 127.0.0.0/8\nacl badport port " << denied_port << "\n"
      << "http_access deny CONNECT badport\nhttp_access allow localhostnet\nhttp_access deny all\n";
  REQUIRE(run_command({"/bin/chown", "-R", "proxy:proxy", sq.string()}).rc == 0);
  auto squid = start_peer({"/usr/sbin/squid", "-N", "-d", "1", "-f", (sq / "squid.conf").string()},
                          tmp / "squid.out", squid_port);
  auto test = [&](const std::string& id, std::uint16_t port) {
    return "  - id: " + id + "\n    kind: tls_policy\n    every: 1h\n" +
           "    params: {target: \"127.0.0.1:" + port_s(port) +
           "\", proxy: \"127.0.0.1:" + port_s(squid_port) + "\", expect_fingerprint: \"" +
           bad.sha256() + "\"}\n";
  };
  auto cfg = write_config(tmp, test("via-allowed", bad_port) + test("via-denied", denied_port) +
                                   test("via-dead", dead_port));
  auto allowed = run_once(cfg, "via-allowed");
  INFO(allowed.dump(2));
  CHECK(allowed["verdict"] == "not_prevented");
  CHECK(ev(allowed, "proxy_status") == "200");
  auto denied = run_once(cfg, "via-denied");
  INFO(denied.dump(2));
  CHECK(denied["verdict"] == "prevented");
  CHECK(denied["reason"] == "proxy_denied");
  CHECK(ev(denied, "proxy_status") == "403");
  auto dead = run_once(cfg, "via-dead");
  INFO(dead.dump(2));
  CHECK(dead["verdict"] == "inconclusive");  // the proxy failing to connect is no block
  CHECK(dead["reason"] == "proxy_upstream_failure");
  // The proxy's own record of the denied tunnel.
  CHECK(wait_until(
      [&] {
        std::ifstream in(sq / "access.log");
        std::string log((std::istreambuf_iterator<char>(in)), {});
        return log.find("TCP_DENIED/403") != std::string::npos &&
               log.find("CONNECT 127.0.0.1:" + port_s(denied_port)) != std::string::npos;
      },
      5s));
}

TEST_CASE("tls_policy outbound: a closed port or an unresolvable proxy is inconclusive") {
  TempDir tmp("tls");
  auto cfg = write_config(tmp,
                          "  - id: out-closed\n    kind: tls_policy\n    every: 1h\n"
                          "    params: {target: \"127.0.0.1:" +
                              port_s(closed_port()) +
                              "\"}\n"
                              "  - id: out-dns\n    kind: tls_policy\n    every: 1h\n"
                              "    params: {target: \"127.0.0.1:443\", proxy: "
                              "\"nothing.invalid:3128\"}\n");
  auto closed = run_once(cfg, "out-closed");
  CHECK(closed["verdict"] == "inconclusive");
  CHECK(closed["reason"] == "refused");
  auto dns = run_once(cfg, "out-dns");
  CHECK(dns["verdict"] == "inconclusive");
  CHECK(dns["reason"] == "proxy_unreachable");
}

// ------------------------------------ tls_policy inbound -------------------------------------

TEST_CASE("tls_policy inbound: a weak server is reported with each finding, a strict one passes") {
  TempDir tmp("tls");
  auto ca = issue(tmp.path(), "ca", "Tocsin Test CA", -1, 3650, nullptr, true);
  auto weak_cert = issue(tmp.path(), "weak", "weak.tocsin.test", -60, -30);
  auto good_cert = issue(tmp.path(), "good", "localhost", -1, 365, &ca);
  auto short_cert = issue(tmp.path(), "short", "localhost", -1, 5, &ca);
  auto weak_port = closed_port(), good_port = closed_port(), short_port = closed_port();
  auto weak = s_server(weak_cert, weak_port, tmp / "weak.log",
                       {"-min_protocol", "TLSv1", "-cipher", "ALL:eNULL:@SECLEVEL=0"});
  auto good = s_server(good_cert, good_port, tmp / "good.log");
  auto shortp = s_server(short_cert, short_port, tmp / "short.log");
  auto test = [&](const std::string& id, std::uint16_t port,
                  const std::string& name = "localhost") {
    return "  - id: " + id + "\n    kind: tls_policy\n    every: 1h\n" +
           "    params: {mode: inbound, target: \"127.0.0.1:" + port_s(port) +
           "\", server_name: " + name + "}\n";
  };
  auto cfg = write_config(tmp, test("in-weak", weak_port, "www.tocsin.test") +
                                   test("in-good", good_port) + test("in-short", short_port) +
                                   test("in-closed", closed_port()));
  SUBCASE("weak configuration accepted") {
    auto r = run_once(cfg, "in-weak");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "weak_protocol_accepted");
    auto findings = ev(r, "findings");
    for (const char* f :
         {"tls1_0_accepted", "tls1_1_accepted", "cipher_null_accepted", "certificate_expired",
          "certificate_self_signed", "certificate_name_mismatch"})
      CHECK_MESSAGE(findings.find(f) != std::string::npos, f);
    CHECK(ev(r, "check_tls1_0").starts_with("accepted: TLSv1 "));
    CHECK(ev(r, "check_cipher_rc4").starts_with("untestable"));  // not in Debian's OpenSSL 3
  }
  SUBCASE("strict configuration") {
    auto r = run_once(cfg, "in-good");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "prevented");
    CHECK(r["reason"] == "policy_enforced");
    CHECK(ev(r, "findings") == "");
    CHECK(ev(r, "check_tls1_0").starts_with("refused"));
    CHECK(ev(r, "check_cipher_null").starts_with("refused"));
    CHECK(std::stol(ev(r, "cert_days_left")) >= 300);
  }
  SUBCASE("certificate about to expire") {
    auto r = run_once(cfg, "in-short");
    INFO(r.dump(2));
    CHECK(r["verdict"] == "not_prevented");
    CHECK(r["reason"] == "certificate_expiring");
    CHECK(ev(r, "findings") == "certificate_expiring");
    CHECK(std::stol(ev(r, "cert_days_left")) <= 5);
  }
  SUBCASE("nothing listening") {
    auto r = run_once(cfg, "in-closed");
    CHECK(r["verdict"] == "inconclusive");
    CHECK(r["reason"] == "refused");
  }
}

// ----------------------------------------- http_check -----------------------------------------

namespace {

// nginx-light serving HTTPS with a good, a short-lived and an expired certificate, and HTTP.
struct Nginx {
  explicit Nginx(const TempDir& tmp) : dir(tmp / "nginx") {
    require_binary("/usr/sbin/nginx");
    fs::create_directories(dir / "www");
    fs::create_directories(dir / "tmp");
    std::ofstream(dir / "www" / "health") << "status: ok\n";
    std::ofstream(dir / "www" / "page.html") << "<p>version 1</p>\n";
    ca.emplace(issue(dir, "ca", "Tocsin Test CA", -1, 3650, nullptr, true));
    auto good = issue(dir, "good", "localhost", -1, 365, &*ca);
    auto short_lived = issue(dir, "short", "localhost", -1, 5, &*ca);
    auto expired = issue(dir, "expired", "localhost", -60, -1, &*ca);
    good_port = closed_port();
    short_port = closed_port();
    expired_port = closed_port();
    http_port = closed_port();
    auto server = [&](std::uint16_t port, const Issued* cert) {
      std::string s = "  server { listen 127.0.0.1:" + port_s(port) + (cert ? " ssl" : "") +
                      "; root " + (dir / "www").string() + ";\n";
      if (cert)
        s += "    ssl_certificate " + cert->cert_file.string() + "; ssl_certificate_key " +
             cert->key_file.string() + ";\n";
      return s + "  }\n";
    };
    auto t = (dir / "tmp").string();
    std::ofstream(dir / "nginx.conf")
        << "daemon off;\nmaster_process off;\nworker_processes 1;\npid "
        << (dir / "nginx.pid").string() << ";\nerror_log " << (dir / "error.log").string()
        << ";\nevents { worker_connections 64; }\n"
        << "http {\n  access_log off;\n  client_body_temp_path " << t
        << "/body;\n  proxy_temp_path " << t << "/proxy;\n  fastcgi_temp_path " << t
        << "/fcgi;\n  uwsgi_temp_path " << t << "/uwsgi;\n  scgi_temp_path " << t
        << "/scgi;\n  default_type text/plain;\n"
        << server(good_port, &good) << server(short_port, &short_lived)
        << server(expired_port, &expired) << server(http_port, nullptr) << "}\n";
    proc = start_peer({"/usr/sbin/nginx", "-p", dir.string(), "-c", (dir / "nginx.conf").string(),
                       "-e", (dir / "error.log").string()},
                      dir / "nginx.out", http_port);
    REQUIRE(wait_until([&] { return port_open(good_port) && port_open(expired_port); }, 10s));
  }
  std::string https(std::uint16_t port, const std::string& path) const {
    return "https://127.0.0.1:" + port_s(port) + path;
  }
  fs::path dir;
  std::optional<Issued> ca;
  std::uint16_t good_port = 0, short_port = 0, expired_port = 0, http_port = 0;
  Process proc;
};

}  // namespace

TEST_CASE("http_check: healthy service, then each way it can be unhealthy") {
  TempDir tmp("http");
  Nginx nginx(tmp);
  auto ca = nginx.ca->cert_file.string();
  auto test = [&](const std::string& id, const std::string& params) {
    return "  - id: " + id + "\n    kind: http_check\n    every: 1m\n    params: {" + params +
           "}\n";
  };
  auto cfg = write_config(
      tmp, test("ok", "url: \"" + nginx.https(nginx.good_port, "/health") + "\", ca_file: " + ca +
                          ", body_regex: \"status: ok\"") +
               test("status",
                    "url: \"" + nginx.https(nginx.good_port, "/missing") + "\", ca_file: " + ca) +
               test("body", "url: \"" + nginx.https(nginx.good_port, "/health") +
                                "\", ca_file: " + ca + ", body_regex: \"status: down\"") +
               test("hash", "url: \"http://127.0.0.1:" + port_s(nginx.http_port) +
                                "/health\", expect_sha256: \"" + std::string(64, '0') + "\"") +
               test("short", "url: \"" + nginx.https(nginx.short_port, "/health") +
                                 "\", ca_file: " + ca + ", cert_min_days: 14") +
               test("expired",
                    "url: \"" + nginx.https(nginx.expired_port, "/health") + "\", ca_file: " + ca) +
               test("untrusted", "url: \"" + nginx.https(nginx.good_port, "/health") + "\"") +
               test("closed", "url: \"http://127.0.0.1:" + port_s(closed_port()) + "/\"") +
               test("dns", "url: \"http://nothing.invalid/\""));
  auto ok = run_once(cfg, "ok");
  INFO(ok.dump(2));
  CHECK(ok["verdict"] == "healthy");
  CHECK(ok["reason"] == "checks_passed");
  CHECK(ev(ok, "status") == "200");
  CHECK(std::stol(ev(ok, "cert_days_left")) >= 300);
  CHECK(ev(ok, "body_sha256") == common::to_hex(common::sha256(std::string("status: ok\n"))));
  CHECK(!ev(ok, "response_time_ms").empty());

  struct Case {
    const char* id;
    const char* reason;
  };
  for (auto c : {Case{"status", "status_mismatch"}, Case{"body", "body_mismatch"},
                 Case{"hash", "content_changed"}, Case{"short", "cert_expiring"},
                 Case{"expired", "cert_expired"}, Case{"untrusted", "cert_invalid"},
                 Case{"closed", "connect_failed"}, Case{"dns", "dns_failure"}}) {
    auto r = run_once(cfg, c.id);
    INFO(c.id << ": " << r.dump(2));
    CHECK(r["verdict"] == "unhealthy");
    CHECK(r["reason"] == c.reason);
  }
  auto s = run_once(cfg, "short");
  CHECK(std::stol(ev(s, "cert_days_left")) <= 5);
  auto e = run_once(cfg, "expired");
  CHECK(std::stol(ev(e, "cert_days_left")) < 0);
}

TEST_CASE("http_check remembers the last body hash and reports a change once") {
  TempDir tmp("http");
  Nginx nginx(tmp);
  auto cfg_text =
      "allowlist: { network: [\"127.0.0.1:1-65535\"] }\n"
      "tests:\n  - id: page\n    kind: http_check\n    every: 1m\n"
      "    params: {url: \"http://127.0.0.1:" +
      port_s(nginx.http_port) + "/page.html\", track_changes: true}\n";
  std::ofstream(tmp / "agent.yaml") << "state_dir: " << (tmp / "state").string() << "\n"
                                    << cfg_text;
  auto cfg = agent::AgentConfig::load(tmp / "agent.yaml");
  boost::asio::io_context io;
  agent::ClockState clock;
  agent::HttpCheckProbe probe(io.get_executor(), cfg.allowlist, clock);
  auto run = [&] {
    std::vector<common::ResultBody> out;
    boost::asio::co_spawn(io, probe.run(cfg.tests.at(0), agent::new_marker()),
                          [&](std::exception_ptr e, std::vector<common::ResultBody> r) {
                            if (e) std::rethrow_exception(e);
                            out = std::move(r);
                          });
    io.run_for(30s);
    io.restart();
    REQUIRE(out.size() == 1);
    return out.front();
  };
  auto first = run();
  CHECK(first.verdict == "healthy");
  CHECK(run().verdict == "healthy");
  std::ofstream(nginx.dir / "www" / "page.html") << "<p>defaced</p>\n";
  auto changed = run();
  CHECK(changed.verdict == "unhealthy");
  CHECK(changed.reason == "content_changed");
  CHECK(changed.evidence["previous_sha256"] == first.evidence["body_sha256"]);
  CHECK(changed.evidence["body_sha256"] != first.evidence["body_sha256"]);
  CHECK(run().verdict == "healthy");  // the new content is the new normal
}
