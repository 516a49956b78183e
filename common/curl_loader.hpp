// libcurl loaded with dlopen on first use, for the agent. A process linked with libcurl maps
// about 33 more shared libraries at start (GnuTLS, librtmp, Kerberos, LDAP, SSH, nghttp2, ...)
// even if it never makes a request; the agent only needs them once a web probe runs. The
// collector links libcurl normally (common/curl.hpp).
#pragma once

#include <curl/curl.h>    // types and constants only: nothing here links libcurl
#include <openssl/ssl.h>  // types only: the functions below come from libcurl's OpenSSL
#include <openssl/x509.h>

#include <memory>
#include <stdexcept>
#include <string>

// A namespace of its own: common/curl.hpp's names (EasyDeleter, ...) call the linked libcurl.
namespace tocsin::common::curl::loaded {

// libcurl cannot be used: not installed, too old, built without OpenSSL 3, or
// curl_global_init failed. The message says which, naming the library.
struct Unavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline constexpr const char* kLibcurlSoname = "libcurl.so.4";

// OpenSSL as libcurl uses it: what a CURLOPT_SSL_CTX_FUNCTION callback may call on libcurl's
// SSL_CTX and on the objects hanging off it, resolved through libcurl's handle from the
// libssl.so.3 and libcrypto.so.3 it is bound to. These need not be the OpenSSL the program is
// linked with: tocsin-agent links a static copy (cmake/linux-deps.cmake), and an object made
// by one copy must never reach the other's functions.
struct CurlOpenSsl {
  decltype(&::OPENSSL_init_crypto) init_crypto = nullptr;
  decltype(&::SSL_CTX_set_cert_verify_callback) ssl_ctx_set_cert_verify_callback = nullptr;
  decltype(&::X509_verify_cert) x509_verify_cert = nullptr;
  decltype(&::X509_STORE_CTX_get0_cert) x509_store_ctx_get0_cert = nullptr;
  decltype(&::X509_STORE_CTX_get_error) x509_store_ctx_get_error = nullptr;
  decltype(&::X509_get0_notAfter) x509_get0_notAfter = nullptr;
  decltype(&::ASN1_TIME_diff) asn1_time_diff = nullptr;
  decltype(&::ASN1_TIME_to_tm) asn1_time_to_tm = nullptr;
};

// The functions the agent's web probes call, resolved from the loaded library.
struct Api {
  CURL* (*easy_init)() = nullptr;
  void (*easy_cleanup)(CURL*) = nullptr;
  CURLcode (*easy_setopt)(CURL*, CURLoption, ...) = nullptr;
  CURLcode (*easy_perform)(CURL*) = nullptr;
  CURLcode (*easy_getinfo)(CURL*, CURLINFO, ...) = nullptr;
  const char* (*easy_strerror)(CURLcode) = nullptr;
  curl_slist* (*slist_append)(curl_slist*, const char*) = nullptr;
  void (*slist_free_all)(curl_slist*) = nullptr;
  CURLcode (*global_init)(long) = nullptr;
  curl_version_info_data* (*version_info)(CURLversion) = nullptr;
  CurlOpenSsl openssl;  // libcurl's own OpenSSL (see CurlOpenSsl)
  std::string version;  // e.g. "8.1.2 (OpenSSL/3.0.19)"
};

// libcurl.so.4, loaded and initialised (curl_global_init) by the first call from any thread;
// later calls return the same table. Throws Unavailable; a failed load is tried again by the
// next call (libcurl may have been installed meanwhile). The library is never unloaded.
const Api& api();

// Opens `soname` and resolves the functions, without curl_global_init. Throws Unavailable.
// For api() and for tests; the handle is kept open on success.
Api open_api(const std::string& soname);

struct EasyDeleter {
  const Api* api = nullptr;
  void operator()(CURL* c) const { api->easy_cleanup(c); }
};
struct SlistDeleter {
  const Api* api = nullptr;
  void operator()(curl_slist* l) const { api->slist_free_all(l); }
};
using Easy = std::unique_ptr<CURL, EasyDeleter>;
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

// A new easy handle; throws std::runtime_error when libcurl cannot make one.
Easy make_easy(const Api& a);
inline Slist make_slist(const Api& a) { return Slist(nullptr, SlistDeleter{&a}); }
// Appends a header line (curl_slist_append's ownership dance); throws std::bad_alloc.
void append(const Api& a, Slist& list, const std::string& line);

}  // namespace tocsin::common::curl::loaded
