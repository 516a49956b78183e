// X.509 helpers shared by agent and collector: CSRs, reading certificates, names and keys.
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/crypto.hpp"

namespace tocsin::common {

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
struct X509ReqDeleter {
  void operator()(X509_REQ* x) const { X509_REQ_free(x); }
};
using X509ReqPtr = std::unique_ptr<X509_REQ, X509ReqDeleter>;

// Certificate signing request for `key`, subject CN=`common_name`, signed by `key`.
std::string make_csr_pem(const Ed25519Key& key, std::string_view common_name);

X509Ptr parse_cert_pem(std::string_view pem);  // throws std::invalid_argument
X509ReqPtr parse_csr_pem(std::string_view pem);  // throws std::invalid_argument
std::string cert_to_pem(X509* cert);

std::string cert_common_name(X509* cert);
Ed25519Key cert_public_key(X509* cert);  // throws if the key is not Ed25519
std::string cert_fingerprint_hex(X509* cert);  // SHA-256 of DER
std::string cert_not_after_utc(X509* cert);    // "2027-11-28T00:00:00Z"
std::string utc_text(const struct tm& tm);     // the same format, from a broken-down UTC time
// The whole days in ASN1_TIME_diff's (days, secs) span, rounded down: negative from the first
// second past the end (an expired certificate's days left).
std::int64_t whole_days(int days, int secs);

}  // namespace tocsin::common
