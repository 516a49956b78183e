#include "common/x509.hpp"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <stdexcept>

namespace tocsin::common {
namespace {
struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

BioPtr mem_bio(std::string_view s) {
  return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
}
}  // namespace

std::string make_csr_pem(const Ed25519Key& key, std::string_view common_name) {
  X509ReqPtr req(X509_REQ_new());
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  std::string cn(common_name);
  if (!req || X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.get()) != 1 ||
      X509_REQ_sign(req.get(), key.get(), nullptr) <= 0)
    throw CryptoError("building CSR: " + openssl_error_string());
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), req.get());
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

X509Ptr parse_cert_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!x) throw std::invalid_argument("not a PEM certificate: " + openssl_error_string());
  return x;
}

X509ReqPtr parse_csr_pem(std::string_view pem) {
  auto bio = mem_bio(pem);
  X509ReqPtr x(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!x) throw std::invalid_argument("not a PEM certificate request: " + openssl_error_string());
  return x;
}

std::string cert_to_pem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

std::string cert_common_name(X509* cert) {
  char buf[256] = {0};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

Ed25519Key cert_public_key(X509* cert) {
  EVP_PKEY* p = X509_get_pubkey(cert);  // returns a new reference
  return Ed25519Key::from_pkey(PkeyPtr(p));
}

std::string cert_fingerprint_hex(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  return to_hex(std::span<const std::uint8_t>(md, len));
}

std::string cert_not_after_utc(X509* cert) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) return "";
  return utc_text(tm);
}

std::int64_t whole_days(int days, int secs) {
  std::int64_t total = std::int64_t{days} * 86400 + secs;
  return total >= 0 ? total / 86400 : -((-total + 86399) / 86400);
}

std::string utc_text(const struct tm& tm) {
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace tocsin::common
