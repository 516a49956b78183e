#include "collector/ingest/ca.hpp"

#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

#include <stdexcept>

namespace tocsin::collector {
namespace {

using common::X509Ptr;
constexpr auto kKeyPerms = std::filesystem::perms::owner_read | std::filesystem::perms::owner_write;
constexpr auto kCertPerms = kKeyPerms | std::filesystem::perms::group_read |
                            std::filesystem::perms::others_read;

void crypto_check(int ok, const char* what) {
  if (ok <= 0) throw common::CryptoError(std::string(what) + ": " + common::openssl_error_string());
}

void set_serial(X509* x) {
  std::array<std::uint8_t, 16> b{};
  common::random_bytes(b);
  b[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(b.data(), static_cast<int>(b.size()), nullptr);
  crypto_check(bn != nullptr, "serial");
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  crypto_check(ext != nullptr, "certificate extension");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

X509Ptr new_cert(const std::string& cn, EVP_PKEY* subject_key, std::chrono::hours validity) {
  X509Ptr x(X509_new());
  crypto_check(x != nullptr, "X509_new");
  X509_set_version(x.get(), 2);
  set_serial(x.get());
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -300);  // tolerate small skew on agents
  X509_gmtime_adj(X509_getm_notAfter(x.get()), static_cast<long>(validity.count()) * 3600);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Tocsin"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  crypto_check(X509_set_pubkey(x.get(), subject_key), "set public key");
  return x;
}

void sign(X509* x, EVP_PKEY* key) {
  crypto_check(X509_sign(x, key, nullptr), "sign certificate");  // Ed25519: no digest
}

std::string san_list(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) {
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address(n, ec);
    s += (s.empty() ? "" : ",") + std::string(ec ? "DNS:" : "IP:") + n;
  }
  return s;
}

}  // namespace

void CertificateAuthority::initialize(const std::filesystem::path& dir,
                                      const std::vector<std::string>& server_names) {
  if (server_names.empty()) throw std::invalid_argument("the server certificate needs a name");
  auto ca_key = common::Ed25519Key::generate();
  auto ca = new_cert("Tocsin Collector CA " + common::random_id(6), ca_key.get(),
                     std::chrono::hours(24 * 3650));
  X509_set_issuer_name(ca.get(), X509_get_subject_name(ca.get()));
  add_ext(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca.get(), ca.get(), NID_subject_key_identifier, "hash");
  sign(ca.get(), ca_key.get());

  auto srv_key = common::Ed25519Key::generate();
  auto srv = new_cert(server_names.front(), srv_key.get(), std::chrono::hours(24 * 825));
  X509_set_issuer_name(srv.get(), X509_get_subject_name(ca.get()));
  add_ext(srv.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_ext(srv.get(), ca.get(), NID_key_usage, "critical,digitalSignature");
  add_ext(srv.get(), ca.get(), NID_ext_key_usage, "serverAuth");
  add_ext(srv.get(), ca.get(), NID_subject_alt_name, san_list(server_names));
  add_ext(srv.get(), ca.get(), NID_authority_key_identifier, "keyid:always");
  sign(srv.get(), ca_key.get());

  std::filesystem::create_directories(dir);
  common::write_file_atomic(dir / "ca.key", ca_key.private_pem(), kKeyPerms);
  common::write_file_atomic(dir / "ca.pem", common::cert_to_pem(ca.get()), kCertPerms);
  common::write_file_atomic(dir / "server.key", srv_key.private_pem(), kKeyPerms);
  common::write_file_atomic(dir / "server.pem", common::cert_to_pem(srv.get()), kCertPerms);
}

CertificateAuthority CertificateAuthority::load(const std::filesystem::path& ca_cert,
                                                const std::filesystem::path& ca_key) {
  auto cert = common::parse_cert_pem(common::read_file(ca_cert));
  auto key = common::Ed25519Key::from_private_pem(common::read_file(ca_key));
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    throw std::runtime_error(ca_key.string() + " is not the key of " + ca_cert.string());
  return CertificateAuthority(std::move(cert), std::move(key));
}

std::string CertificateAuthority::issue_agent_cert(const std::string& csr_pem,
                                                   const std::string& agent_id,
                                                   std::chrono::hours validity) const {
  auto csr = common::parse_csr_pem(csr_pem);
  common::PkeyPtr pub(X509_REQ_get_pubkey(csr.get()));
  if (!pub || EVP_PKEY_get_id(pub.get()) != EVP_PKEY_ED25519)
    throw std::invalid_argument("the certificate request's key is not Ed25519");
  if (X509_REQ_verify(csr.get(), pub.get()) != 1)
    throw std::invalid_argument("the certificate request's self-signature does not verify");
  auto x = new_cert(agent_id, pub.get(), validity);
  X509_set_issuer_name(x.get(), X509_get_subject_name(cert_.get()));
  add_ext(x.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_ext(x.get(), cert_.get(), NID_key_usage, "critical,digitalSignature");
  add_ext(x.get(), cert_.get(), NID_ext_key_usage, "clientAuth");
  add_ext(x.get(), cert_.get(), NID_authority_key_identifier, "keyid:always");
  sign(x.get(), key_.get());
  return common::cert_to_pem(x.get());
}

std::string CertificateAuthority::ca_pem() const { return common::cert_to_pem(cert_.get()); }

}  // namespace tocsin::collector
