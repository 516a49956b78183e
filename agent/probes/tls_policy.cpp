#include "agent/probes/tls_policy.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "common/x509.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Mode = TlsPolicyParams::Mode;

namespace {

bool is_ip_literal(const std::string& host) {
  boost::system::error_code ec;
  (void)asio::ip::make_address(host, ec);
  return !ec;
}

common::HostPort host_port(const common::ConfigNode& params, const std::string& key,
                           const Allowlist& allow) {
  common::HostPort hp;
  try {
    hp = common::parse_host_port(params.str(key));
  } catch (const std::invalid_argument& e) {
    params.fail(key, e.what());
  }
  if (!allow.allows_name(hp.host, hp.port))
    params.fail(key, hp.to_string() + " is not on the allowlist (add it under allowlist.network)");
  return hp;
}

}  // namespace

void load_tls_policy(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow) {
  params.check_keys({"mode", "target", "proxy", "server_name", "sni_marker", "expect_fingerprint",
                     "expect_issuer", "ca_file", "min_days_left"});
  auto p = std::make_shared<TlsPolicyParams>();
  auto mode = params.str("mode", "outbound");
  if (mode == "outbound")
    p->mode = Mode::outbound;
  else if (mode == "inbound")
    p->mode = Mode::inbound;
  else
    params.fail("mode", "'" + mode + "' is not one of outbound, inbound");
  p->target = host_port(params, "target", allow);
  p->server_name = params.str("server_name", is_ip_literal(p->target.host) ? "" : p->target.host);
  if (p->mode == Mode::inbound) {
    for (const char* k : {"proxy", "sni_marker", "expect_fingerprint", "expect_issuer", "ca_file"})
      if (params.has(k)) params.fail(k, "only for mode: outbound");
    auto days = params.integer("min_days_left", 30);
    if (days < 0 || days > 3650) params.fail("min_days_left", "must be between 0 and 3650");
    p->min_days_left = static_cast<int>(days);
  } else {
    if (params.has("min_days_left")) params.fail("min_days_left", "only for mode: inbound");
    if (params.has("proxy")) p->proxy = host_port(params, "proxy", allow);
    p->sni_marker = params.boolean("sni_marker", false);
    p->expect_fingerprint = params.str("expect_fingerprint", "");
    std::erase(p->expect_fingerprint, ':');
    std::transform(p->expect_fingerprint.begin(), p->expect_fingerprint.end(),
                   p->expect_fingerprint.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!p->expect_fingerprint.empty() &&
        (p->expect_fingerprint.size() != 64 ||
         p->expect_fingerprint.find_first_not_of("0123456789abcdef") != std::string::npos))
      params.fail("expect_fingerprint", "must be a SHA-256 in hex (64 digits, colons allowed)");
    p->expect_issuer = params.str("expect_issuer", "");
    p->ca_file = params.str("ca_file", "");
    if (!p->ca_file.empty() && !std::filesystem::path(p->ca_file).is_absolute())
      params.fail("ca_file", "must be an absolute path");
  }
  if (!test.has("timeout")) s.timeout = p->mode == Mode::inbound ? 30s : 15s;
  s.summary = std::string(p->mode == Mode::inbound ? "inbound scan of " : "outbound to ") +
              p->target.to_string() + (p->proxy ? " via " + p->proxy->to_string() : "");
  s.tls_policy = std::move(p);
}

std::string to_string(TlsEnd e) {
  switch (e) {
    case TlsEnd::completed:
      return "completed";
    case TlsEnd::dns_failure:
      return "dns_failure";
    case TlsEnd::not_allowlisted:
      return "target_not_allowlisted";
    case TlsEnd::refused:
      return "refused";
    case TlsEnd::connect_timeout:
      return "connect_timeout";
    case TlsEnd::unreachable:
      return "unreachable";
    case TlsEnd::connect_error:
      return "connect_error";
    case TlsEnd::proxy_unreachable:
      return "proxy_unreachable";
    case TlsEnd::proxy_status:
      return "proxy_status";
    case TlsEnd::proxy_error:
      return "proxy_error";
    case TlsEnd::handshake_reset:
      return "handshake_reset";
    case TlsEnd::handshake_closed:
      return "handshake_closed";
    case TlsEnd::handshake_timeout:
      return "handshake_timeout";
    case TlsEnd::peer_alert:
      return "peer_alert";
    case TlsEnd::local_error:
      return "local_error";
  }
  return "error";
}

TlsVerdict outbound_verdict(TlsEnd end, int proxy_status, const std::optional<CertFacts>& cert,
                            const TlsPolicyParams& p) {
  switch (end) {
    case TlsEnd::not_allowlisted:
      return {"not_applicable", "target_not_allowlisted"};
    case TlsEnd::dns_failure:
    case TlsEnd::refused:
    case TlsEnd::connect_timeout:
    case TlsEnd::unreachable:
    case TlsEnd::connect_error:
    case TlsEnd::proxy_unreachable:
    case TlsEnd::proxy_error:
      return {"inconclusive", to_string(end)};
    case TlsEnd::proxy_status:
      // The proxy refusing the tunnel is a block; the proxy failing to reach the server, or
      // wanting credentials the probe does not have, proves nothing about the policy.
      if (proxy_status == 407) return {"inconclusive", "proxy_auth_required"};
      if (proxy_status >= 500) return {"inconclusive", "proxy_upstream_failure"};
      return {"prevented", "proxy_denied"};
    case TlsEnd::handshake_reset:
    case TlsEnd::handshake_closed:
    case TlsEnd::handshake_timeout:
      return {"prevented", to_string(end)};
    case TlsEnd::peer_alert:
    case TlsEnd::local_error:
      return {"inconclusive", "handshake_failed"};
    case TlsEnd::completed:
      break;
  }
  if (!cert) return {"error", "no_certificate"};
  if (!p.expect_fingerprint.empty())
    return cert->sha256 == p.expect_fingerprint
               ? TlsVerdict{"not_prevented", "invalid_certificate_delivered"}
               : TlsVerdict{"prevented", "certificate_replaced"};
  if (!p.expect_issuer.empty())
    return cert->issuer.find(p.expect_issuer) != std::string::npos
               ? TlsVerdict{"not_prevented", "invalid_certificate_delivered"}
               : TlsVerdict{"prevented", "certificate_replaced"};
  // Without an expectation, a certificate that validates may be an inspecting proxy's or a
  // target that is not bad at all: say so rather than guess.
  if (cert->chain_verifies) return {"inconclusive", "valid_certificate_presented"};
  return {"not_prevented", "invalid_certificate_delivered"};
}

InboundVerdict inbound_verdict(const std::vector<ScanCheck>& checks,
                               const std::optional<CertFacts>& cert, int min_days_left) {
  InboundVerdict v;
  std::string first_reason;
  auto add = [&](const std::string& finding, const std::string& reason) {
    v.findings.push_back(finding);
    if (first_reason.empty()) first_reason = reason;
  };
  bool any_accepted = false, any_failed = false;
  for (const auto& c : checks) {
    any_accepted |= c.state == ScanCheck::State::accepted;
    any_failed |= c.state == ScanCheck::State::failed;
  }
  for (const auto& c : checks)
    if (c.state == ScanCheck::State::accepted &&
        (c.name.starts_with("ssl") || c.name.starts_with("tls1_")))
      add(c.name + "_accepted", "weak_protocol_accepted");
  for (const auto& c : checks)
    if (c.state == ScanCheck::State::accepted && c.name.starts_with("cipher_"))
      add(c.name + "_accepted", "weak_cipher_accepted");
  if (cert) {
    if (cert->expired)
      add("certificate_expired", "certificate_expired");
    else if (cert->days_left < min_days_left)
      add("certificate_expiring", "certificate_expiring");
    if (cert->self_signed) add("certificate_self_signed", "certificate_self_signed");
    if (cert->name_matches == false) add("certificate_name_mismatch", "certificate_name_mismatch");
  }
  if (!v.findings.empty()) {
    v.verdict = "not_prevented";
    v.reason = first_reason;
  } else if (!any_accepted) {
    v.verdict = "inconclusive";
    v.reason = "no_tls_handshake";
  } else if (any_failed) {
    v.verdict = "inconclusive";
    v.reason = "incomplete_scan";
  } else {
    v.verdict = "prevented";
    v.reason = "policy_enforced";
  }
  return v;
}

namespace {

// ---- Blocking socket and OpenSSL work, run on the blocking pool, every wait bounded. ----

struct Fd {
  int fd = -1;
  Fd() = default;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};
struct SslCtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslDeleter {
  void operator()(SSL* s) const { SSL_free(s); }
};

int remaining_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(ms, 0, 1 << 30));
}

// Waits for `events` on fd; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return true;  // let the next call report the error
  }
}

struct Step {
  TlsEnd end = TlsEnd::completed;
  std::string detail;
};

Step tcp_connect_fd(const asio::ip::address& addr, std::uint16_t port, Clock::time_point deadline,
                    Fd& out) {
  tcp::endpoint ep(addr, port);
  out.fd = ::socket(ep.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (out.fd < 0) return {TlsEnd::connect_error, std::string("socket: ") + std::strerror(errno)};
  int err = 0;
  if (::connect(out.fd, ep.data(), static_cast<socklen_t>(ep.size())) != 0) {
    if (errno != EINPROGRESS) {
      err = errno;
    } else if (!wait_fd(out.fd, POLLOUT, deadline)) {
      return {TlsEnd::connect_timeout, "no answer to the TCP handshake in time"};
    } else {
      socklen_t len = sizeof err;
      ::getsockopt(out.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
  }
  if (err == 0) return {TlsEnd::completed, "TCP handshake completed"};
  std::string text = std::strerror(err);
  if (err == ECONNREFUSED) return {TlsEnd::refused, text};
  if (err == ETIMEDOUT) return {TlsEnd::connect_timeout, text};
  if (err == EHOSTUNREACH || err == ENETUNREACH || err == ENETDOWN)
    return {TlsEnd::unreachable, text};
  return {TlsEnd::connect_error, text};
}

// Sends an HTTP CONNECT and reads the answer's head (capped); `status` gets the code.
Step proxy_connect(int fd, const common::HostPort& target, const std::string& marker,
                   Clock::time_point deadline, int& status, std::string& status_line) {
  std::string authority = target.host.find(':') != std::string::npos
                              ? "[" + target.host + "]:" + std::to_string(target.port)
                              : target.to_string();
  std::string req = "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority +
                    "\r\nUser-Agent: Tocsin-tls_policy/1 (" + marker +
                    ")\r\nX-Tocsin-Marker: " + marker + "\r\n\r\n";
  std::size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_fd(fd, POLLOUT, deadline)) return {TlsEnd::proxy_error, "CONNECT not sent in time"};
    } else {
      return {TlsEnd::proxy_error, std::string("sending CONNECT: ") + std::strerror(errno)};
    }
  }
  // Byte by byte so nothing of the tunnel is read past the head (the head is small).
  std::string head;
  constexpr std::size_t kMaxHead = 16 * 1024;
  while (head.size() < kMaxHead && !head.ends_with("\r\n\r\n")) {
    char c;
    ssize_t n = ::recv(fd, &c, 1, 0);
    if (n == 1) {
      head += c;
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_fd(fd, POLLIN, deadline))
        return {TlsEnd::proxy_error, "no answer to CONNECT in time"};
    } else {
      return {TlsEnd::proxy_error,
              n == 0 ? "proxy closed the connection before answering CONNECT"
                     : std::string("reading the CONNECT answer: ") + std::strerror(errno)};
    }
  }
  status_line = head.substr(0, head.find("\r\n"));
  if (!head.ends_with("\r\n\r\n") || status_line.size() < 12 || !status_line.starts_with("HTTP/1."))
    return {TlsEnd::proxy_error, "malformed answer to CONNECT: " + status_line.substr(0, 80)};
  status = std::atoi(status_line.substr(9, 3).c_str());
  if (status >= 200 && status < 300) return {TlsEnd::completed, status_line};
  return {TlsEnd::proxy_status, status_line};
}

std::string name_text(X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(std::max(0L, len)));
}

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out;
}

CertFacts cert_facts(X509* c, const std::string& name) {
  CertFacts f;
  f.sha256 = common::cert_fingerprint_hex(c);
  f.subject = name_text(X509_get_subject_name(c));
  f.issuer = name_text(X509_get_issuer_name(c));
  f.not_after = common::cert_not_after_utc(c);
  int days = 0, secs = 0;
  if (ASN1_TIME_diff(&days, &secs, nullptr, X509_get0_notAfter(c)) == 1) {
    f.days_left = common::whole_days(days, secs);
    f.expired = f.days_left < 0;
  }
  f.self_signed = X509_self_signed(c, 1) == 1;
  if (!name.empty())
    f.name_matches = is_ip_literal(name) ? X509_check_ip_asc(c, name.c_str(), 0) == 1
                                         : X509_check_host(c, name.c_str(), 0, 0, nullptr) == 1;
  return f;
}

struct HandshakeOptions {
  int min_version = 0, max_version = 0;  // 0: the library's default
  std::string cipher_list;               // empty: the library's default
  bool seclevel0 = false;                // so OpenSSL 3 can offer TLS 1.0/1.1 and weak suites
  std::string sni;
  std::string verify_name;  // checked with the chain (outbound) and reported (both)
  bool load_trust = false;
  std::string ca_file;
};

struct Handshake {
  TlsEnd end = TlsEnd::local_error;
  std::string detail, version, cipher;
  bool untestable = false;  // this OpenSSL cannot even offer what was asked
  std::optional<CertFacts> cert;
};

Handshake tls_handshake(int fd, const HandshakeOptions& o, Clock::time_point deadline) {
  Handshake h;
  ERR_clear_error();
  std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) throw std::runtime_error("SSL_CTX_new: " + openssl_errors());
  if (o.seclevel0) SSL_CTX_set_security_level(ctx.get(), 0);
  auto untestable = [&](std::string why) {
    h.untestable = true;
    h.detail = std::move(why);
    ERR_clear_error();
    return h;
  };
  if ((o.min_version && SSL_CTX_set_min_proto_version(ctx.get(), o.min_version) != 1) ||
      (o.max_version && SSL_CTX_set_max_proto_version(ctx.get(), o.max_version) != 1))
    return untestable("this OpenSSL cannot offer the protocol version");
  if (!o.cipher_list.empty() && SSL_CTX_set_cipher_list(ctx.get(), o.cipher_list.c_str()) != 1)
    return untestable("cipher list '" + o.cipher_list + "' is not offered by this OpenSSL build");
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);  // observe, never trust
  if (o.load_trust) {
    if (!o.ca_file.empty())
      SSL_CTX_load_verify_locations(ctx.get(), o.ca_file.c_str(), nullptr);
    else
      SSL_CTX_set_default_verify_paths(ctx.get());
    ERR_clear_error();
  }
  std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(ctx.get()));
  if (!ssl) throw std::runtime_error("SSL_new: " + openssl_errors());
  if (STACK_OF(SSL_CIPHER)* usable = SSL_get1_supported_ciphers(ssl.get())) {
    int n = sk_SSL_CIPHER_num(usable);
    sk_SSL_CIPHER_free(usable);
    if (n == 0) return untestable("no cipher of '" + o.cipher_list + "' is usable here");
  } else {
    return untestable("no usable cipher for this protocol range");
  }
  if (!o.sni.empty() && !is_ip_literal(o.sni)) SSL_set_tlsext_host_name(ssl.get(), o.sni.c_str());
  if (!o.verify_name.empty()) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
    if (is_ip_literal(o.verify_name))
      X509_VERIFY_PARAM_set1_ip_asc(param, o.verify_name.c_str());
    else
      X509_VERIFY_PARAM_set1_host(param, o.verify_name.c_str(), 0);
  }
  SSL_set_fd(ssl.get(), fd);
  for (;;) {
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(ssl.get());
    if (r == 1) break;
    int err = SSL_get_error(ssl.get(), r);
    int saved_errno = errno;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (!wait_fd(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
        h.end = TlsEnd::handshake_timeout;
        h.detail = "no answer to the ClientHello in time";
        return h;
      }
      continue;
    }
    unsigned long e = ERR_peek_error();
    int reason = ERR_GET_REASON(e);
    std::string text = openssl_errors();
    if (err == SSL_ERROR_SYSCALL && (saved_errno == ECONNRESET || saved_errno == EPIPE)) {
      h.end = TlsEnd::handshake_reset;
      h.detail = std::strerror(saved_errno);
    } else if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && e == 0) ||
               reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
      h.end = TlsEnd::handshake_closed;
      h.detail = "connection closed during the handshake";
    } else if (err == SSL_ERROR_SSL && reason >= SSL_AD_REASON_OFFSET) {
      h.end = TlsEnd::peer_alert;
      h.detail = text;
    } else if (reason == SSL_R_NO_PROTOCOLS_AVAILABLE || reason == SSL_R_NO_CIPHERS_AVAILABLE) {
      return untestable(text);
    } else {
      h.end = TlsEnd::local_error;
      h.detail = text.empty() ? std::string(std::strerror(saved_errno)) : text;
    }
    return h;
  }
  h.end = TlsEnd::completed;
  h.version = SSL_get_version(ssl.get());
  h.cipher = SSL_get_cipher_name(ssl.get());
  h.detail = "handshake completed: " + h.version + " " + h.cipher;
  if (X509* peer = SSL_get1_peer_certificate(ssl.get())) {
    common::X509Ptr owned(peer);
    h.cert = cert_facts(peer, o.verify_name);
    long v = SSL_get_verify_result(ssl.get());
    h.cert->chain_verifies = v == X509_V_OK;
    h.cert->verify_error = v == X509_V_OK ? "ok" : X509_verify_cert_error_string(v);
  }
  SSL_shutdown(ssl.get());  // one close_notify, not waited for: we only observed
  ERR_clear_error();
  return h;
}

// One connection: TCP to the first address that answers (moving on only when unreachable),
// the CONNECT when there is a proxy, then the handshake.
struct Attempt {
  TlsEnd end = TlsEnd::connect_error;
  std::string detail, address, proxy_status_line;
  int proxy_status = 0;
  Handshake handshake;
};

Attempt attempt(const std::vector<asio::ip::address>& addrs, std::uint16_t port,
                const std::optional<common::HostPort>& tunnel_to, const std::string& marker,
                const HandshakeOptions& o, Clock::time_point deadline) {
  Attempt a;
  Fd fd;
  for (const auto& addr : addrs) {
    if (fd.fd >= 0) ::close(fd.fd);
    fd.fd = -1;
    a.address = addr.to_string();
    auto s = tcp_connect_fd(addr, port, deadline, fd);
    a.end = s.end;
    a.detail = s.detail;
    if (s.end != TlsEnd::unreachable) break;
  }
  if (a.end != TlsEnd::completed) {
    if (tunnel_to) {
      a.detail = "proxy " + a.address + ": " + to_string(a.end) + ": " + a.detail;
      a.end = TlsEnd::proxy_unreachable;
    }
    return a;
  }
  if (tunnel_to) {
    auto s =
        proxy_connect(fd.fd, *tunnel_to, marker, deadline, a.proxy_status, a.proxy_status_line);
    if (s.end != TlsEnd::completed) {
      a.end = s.end;
      a.detail = s.detail;
      return a;
    }
  }
  a.handshake = tls_handshake(fd.fd, o, deadline);
  a.end = a.handshake.untestable ? TlsEnd::local_error : a.handshake.end;
  a.detail = a.handshake.detail;
  return a;
}

// The first hop's allowed addresses, with a failure as the TlsEnd it means.
struct Resolved {
  TlsEnd end = TlsEnd::completed;
  std::string detail;
  std::vector<asio::ip::address> addrs;
};

asio::awaitable<Resolved> resolve_hop(asio::any_io_executor ex, const Allowlist& allow,
                                      common::HostPort hp, std::chrono::milliseconds timeout) {
  auto r = co_await resolve_allowed(ex, allow, hp.host, hp.port, timeout);
  Resolved out;
  out.detail = r.detail;
  out.addrs = std::move(r.addrs);
  if (r.failure == "dns_failure") out.end = TlsEnd::dns_failure;
  if (r.failure == "target_not_allowlisted") out.end = TlsEnd::not_allowlisted;
  co_return out;
}

void put_cert(std::map<std::string, std::string>& ev, const CertFacts& c) {
  ev["cert_sha256"] = c.sha256;
  ev["cert_subject"] = c.subject;
  ev["cert_issuer"] = c.issuer;
  ev["cert_not_after"] = c.not_after;
  ev["cert_days_left"] = std::to_string(c.days_left);
  ev["cert_self_signed"] = c.self_signed ? "true" : "false";
  if (c.name_matches) ev["cert_name_matches"] = *c.name_matches ? "true" : "false";
}

std::string elapsed_ms(Clock::time_point t0) {
  return std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
}

struct CheckDef {
  const char* name;
  int min_version, max_version;
  const char* ciphers;
  bool seclevel0;
};

// The scan: a modern handshake (the positive control and the certificate), the old protocol
// versions, then each weak cipher family alone (TLS 1.3 has none, so at most TLS 1.2).
// Families this OpenSSL build cannot offer (Debian's 3.0 has no RC4, 3DES, DES or EXPORT)
// are reported `untestable`, never as refused.
constexpr CheckDef kChecks[] = {
    {"modern", TLS1_2_VERSION, 0, "", false},
    {"ssl3", SSL3_VERSION, SSL3_VERSION, "ALL:@SECLEVEL=0", true},
    {"tls1_0", TLS1_VERSION, TLS1_VERSION, "ALL:@SECLEVEL=0", true},
    {"tls1_1", TLS1_1_VERSION, TLS1_1_VERSION, "ALL:@SECLEVEL=0", true},
    {"cipher_null", TLS1_VERSION, TLS1_2_VERSION, "eNULL:@SECLEVEL=0", true},
    {"cipher_anonymous", TLS1_VERSION, TLS1_2_VERSION, "aNULL:!eNULL:@SECLEVEL=0", true},
    {"cipher_rc4", TLS1_VERSION, TLS1_2_VERSION, "RC4:@SECLEVEL=0", true},
    {"cipher_3des", TLS1_VERSION, TLS1_2_VERSION, "3DES:@SECLEVEL=0", true},
    {"cipher_des", TLS1_VERSION, TLS1_2_VERSION, "DES:@SECLEVEL=0", true},
    {"cipher_export", TLS1_VERSION, TLS1_2_VERSION, "EXP:@SECLEVEL=0", true},
};

std::string state_text(ScanCheck::State s) {
  switch (s) {
    case ScanCheck::State::accepted:
      return "accepted";
    case ScanCheck::State::refused:
      return "refused";
    case ScanCheck::State::untestable:
      return "untestable";
    case ScanCheck::State::failed:
      return "failed";
  }
  return "failed";
}

}  // namespace

asio::awaitable<std::vector<common::ResultBody>> TlsPolicyProbe::run(const TestSpec& test,
                                                                     std::string marker) {
  const auto& p = *test.tls_policy;
  auto b = start_result(test, marker);
  b.target = p.target.to_string();
  auto t0 = Clock::now();
  auto deadline = t0 + test.timeout;
  b.evidence["timeout_ms"] = std::to_string(test.timeout.count());
  const common::HostPort& first_hop = p.proxy ? *p.proxy : p.target;
  auto resolved = co_await resolve_hop(ex_, allow_, first_hop, test.timeout);
  if (resolved.end != TlsEnd::completed) {
    b.verdict = resolved.end == TlsEnd::not_allowlisted ? "not_applicable" : "inconclusive";
    b.reason = to_string(resolved.end);
    if (p.proxy && resolved.end == TlsEnd::dns_failure) b.reason = "proxy_unreachable";
    b.evidence["detail"] =
        (p.proxy ? "proxy " + p.proxy->to_string() + ": " : "") + resolved.detail;
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }

  if (p.mode == Mode::outbound) {
    HandshakeOptions o;
    o.sni = p.sni_marker ? marker + "." + (p.server_name.empty() ? "invalid" : p.server_name)
                         : p.server_name;
    o.verify_name = p.server_name.empty() ? p.target.host : p.server_name;
    o.load_trust = true;
    o.ca_file = p.ca_file;
    std::optional<common::HostPort> tunnel;
    if (p.proxy) tunnel = p.target;
    auto job = [addrs = resolved.addrs, port = first_hop.port, tunnel, marker, o, deadline] {
      return attempt(addrs, port, tunnel, marker, o, deadline);
    };
    auto a = co_await run_blocking(job);
    auto v = outbound_verdict(a.end, a.proxy_status, a.handshake.cert, p);
    b.verdict = v.verdict;
    b.reason = v.reason;
    auto& ev = b.evidence;
    ev["address"] = a.address;
    ev["detail"] = a.detail;
    ev["ended"] = to_string(a.end);
    ev["elapsed_ms"] = elapsed_ms(t0);
    if (!o.sni.empty() && !is_ip_literal(o.sni)) ev["sni"] = o.sni;
    if (p.proxy) {
      ev["proxy"] = p.proxy->to_string();
      if (!a.proxy_status_line.empty()) ev["proxy_response"] = a.proxy_status_line;
      if (a.proxy_status) ev["proxy_status"] = std::to_string(a.proxy_status);
    }
    if (!a.handshake.version.empty()) ev["protocol"] = a.handshake.version;
    if (!a.handshake.cipher.empty()) ev["cipher"] = a.handshake.cipher;
    if (a.handshake.cert) {
      put_cert(ev, *a.handshake.cert);
      ev["cert_verify"] = a.handshake.cert->verify_error;
    }
    if (!p.expect_fingerprint.empty()) ev["expected_sha256"] = p.expect_fingerprint;
    if (!p.expect_issuer.empty()) ev["expected_issuer"] = p.expect_issuer;
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }

  // Inbound: one connection per check, each bounded by a share of the test's time.
  auto per_attempt = std::max<std::chrono::milliseconds>(test.timeout / 4, 1s);
  std::vector<ScanCheck> checks;
  std::optional<CertFacts> cert;
  std::vector<asio::ip::address> addrs = resolved.addrs;
  std::string address, protocol, cipher;
  for (const auto& def : kChecks) {
    ScanCheck c;
    c.name = def.name;
    auto now = Clock::now();
    if (now >= deadline) {
      c.state = ScanCheck::State::failed;
      c.detail = "no time left in the test's timeout";
      checks.push_back(c);
      continue;
    }
    HandshakeOptions o;
    o.min_version = def.min_version;
    o.max_version = def.max_version;
    o.cipher_list = def.ciphers;
    o.seclevel0 = def.seclevel0;
    o.sni = p.server_name;
    o.verify_name = p.server_name;
    auto until = std::min<Clock::time_point>(deadline, now + per_attempt);
    auto job = [addrs, port = p.target.port, marker, o, until] {
      return attempt(addrs, port, std::nullopt, marker, o, until);
    };
    auto a = co_await run_blocking(job);
    if (checks.empty()) {
      // The first connection decides whether there is anything to scan at all.
      address = a.address;
      if (a.end == TlsEnd::refused || a.end == TlsEnd::connect_timeout ||
          a.end == TlsEnd::unreachable || a.end == TlsEnd::connect_error) {
        b.verdict = "inconclusive";
        b.reason = to_string(a.end);
        b.evidence["address"] = a.address;
        b.evidence["detail"] = a.detail;
        b.evidence["elapsed_ms"] = elapsed_ms(t0);
        finish_result(b, clock_);
        co_return std::vector<common::ResultBody>{b};
      }
      addrs = {asio::ip::make_address(a.address)};  // scan the one that answered
    }
    if (a.handshake.untestable) {
      c.state = ScanCheck::State::untestable;
    } else if (a.end == TlsEnd::completed) {
      c.state = ScanCheck::State::accepted;
      if (!cert) cert = a.handshake.cert;
      if (protocol.empty()) {
        protocol = a.handshake.version;
        cipher = a.handshake.cipher;
      }
    } else if (a.end == TlsEnd::peer_alert || a.end == TlsEnd::handshake_reset ||
               a.end == TlsEnd::handshake_closed) {
      c.state = ScanCheck::State::refused;
    } else {
      c.state = ScanCheck::State::failed;
    }
    c.detail =
        a.end == TlsEnd::completed ? a.handshake.version + " " + a.handshake.cipher : a.detail;
    checks.push_back(c);
  }
  auto v = inbound_verdict(checks, cert, p.min_days_left);
  b.verdict = v.verdict;
  b.reason = v.reason;
  auto& ev = b.evidence;
  std::string findings;
  for (const auto& f : v.findings) findings += (findings.empty() ? "" : ",") + f;
  ev["findings"] = findings;
  ev["address"] = address;
  ev["elapsed_ms"] = elapsed_ms(t0);
  ev["min_days_left"] = std::to_string(p.min_days_left);
  if (!p.server_name.empty()) ev["server_name"] = p.server_name;
  if (!protocol.empty()) ev["protocol"] = protocol;
  if (!cipher.empty()) ev["cipher"] = cipher;
  for (const auto& c : checks) ev["check_" + c.name] = state_text(c.state) + ": " + c.detail;
  if (cert) put_cert(ev, *cert);
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
