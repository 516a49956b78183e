#include "common/tls.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

#include <stdexcept>

#include "common/crypto.hpp"

namespace tocsin::common {
namespace {

void base_options(ssl::context& ctx) {
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                  ssl::context::single_dh_use);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
}

void load_cert_and_key(ssl::context& ctx, const std::filesystem::path& cert,
                       const std::filesystem::path& key) {
  if (SSL_CTX_use_certificate_chain_file(ctx.native_handle(), cert.string().c_str()) != 1)
    throw std::runtime_error("cannot load certificate " + cert.string() + ": " +
                             openssl_error_string());
  if (SSL_CTX_use_PrivateKey_file(ctx.native_handle(), key.string().c_str(), SSL_FILETYPE_PEM) != 1)
    throw std::runtime_error("cannot load private key " + key.string() + ": " +
                             openssl_error_string());
  if (SSL_CTX_check_private_key(ctx.native_handle()) != 1)
    throw std::runtime_error("private key " + key.string() + " does not match certificate " +
                             cert.string());
}

void load_ca(ssl::context& ctx, const std::filesystem::path& ca) {
  if (SSL_CTX_load_verify_locations(ctx.native_handle(), ca.string().c_str(), nullptr) != 1)
    throw std::runtime_error("cannot load CA certificate " + ca.string() + ": " +
                             openssl_error_string());
}

}  // namespace

ssl::context make_server_context(const ServerTlsFiles& files, bool require_client_cert) {
  ssl::context ctx(ssl::context::tls_server);
  base_options(ctx);
  load_cert_and_key(ctx, files.cert, files.key);
  if (!files.client_ca.empty()) {
    load_ca(ctx, files.client_ca);
    ssl::verify_mode mode = ssl::verify_peer;
    if (require_client_cert) mode |= ssl::verify_fail_if_no_peer_cert;
    ctx.set_verify_mode(mode);
  } else {
    ctx.set_verify_mode(ssl::verify_none);
  }
  // No session resumption across restarts: every connection proves its certificate afresh.
  SSL_CTX_set_session_cache_mode(ctx.native_handle(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx.native_handle(), 0);
  return ctx;
}

ssl::context make_client_context(const ClientTlsFiles& files) {
  ssl::context ctx(ssl::context::tls_client);
  base_options(ctx);
  load_ca(ctx, files.pinned_ca);
  ctx.set_verify_mode(ssl::verify_peer);
  if (!files.cert.empty()) load_cert_and_key(ctx, files.cert, files.key);
  return ctx;
}

void set_expected_peer_name(SSL* ssl, const std::string& host) {
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  boost::system::error_code ec;
  (void)boost::asio::ip::make_address(host, ec);
  if (!ec) {
    X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
  } else {
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    SSL_set_tlsext_host_name(ssl, host.c_str());
  }
}

}  // namespace tocsin::common
