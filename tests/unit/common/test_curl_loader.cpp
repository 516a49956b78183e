// The agent's libcurl, loaded with dlopen on first use: what it resolves, and what it says
// when the library is missing or is not libcurl.
#include <doctest/doctest.h>

#include <string>

#include "common/curl_loader.hpp"

using namespace tocsin::common::curl::loaded;

namespace {

std::string unavailable_message(const std::string& soname) {
  try {
    (void)open_api(soname);
  } catch (const Unavailable& e) {
    return e.what();
  }
  return "(loaded)";
}

}  // namespace

TEST_CASE("libcurl.so.4 loads with every function the web probes call, on OpenSSL 3") {
  const Api& a = api();
  bool all_resolved = a.easy_init && a.easy_cleanup && a.easy_setopt && a.easy_perform &&
                      a.easy_getinfo && a.easy_strerror && a.slist_append && a.slist_free_all &&
                      a.global_init && a.version_info;
  CHECK(all_resolved);
  const CurlOpenSsl& o = a.openssl;
  bool openssl_resolved = o.init_crypto && o.ssl_ctx_set_cert_verify_callback &&
                          o.x509_verify_cert && o.x509_store_ctx_get0_cert &&
                          o.x509_store_ctx_get_error && o.x509_get0_notAfter &&
                          o.asn1_time_diff && o.asn1_time_to_tm;
  CHECK(openssl_resolved);
  // This test program links the shared OpenSSL: libcurl's copy is the same one.
  CHECK(reinterpret_cast<void*>(o.x509_verify_cert) == reinterpret_cast<void*>(&X509_verify_cert));
  CHECK(a.version.find("OpenSSL/3") != std::string::npos);
  CHECK(&api() == &a);  // loaded once
  Easy e = make_easy(a);
  CHECK(a.easy_setopt(e.get(), CURLOPT_URL, "http://127.0.0.1/") == CURLE_OK);
  Slist headers = make_slist(a);
  append(a, headers, "X-One: 1");
  append(a, headers, "X-Two: 2");
  REQUIRE(headers);
  CHECK(std::string(headers->next->data) == "X-Two: 2");
}

TEST_CASE("a missing libcurl is an error that names the library and the package") {
  auto why = unavailable_message("libcurl-tocsin-missing.so.4");
  CHECK(why.find("cannot load libcurl-tocsin-missing.so.4") != std::string::npos);
  CHECK(why.find("install libcurl4") != std::string::npos);
}

TEST_CASE("a library that is not libcurl is refused, naming the functions it lacks") {
  auto why = unavailable_message("libz.so.1");
  CHECK(why.find("libz.so.1 lacks curl_easy_init") != std::string::npos);
}
