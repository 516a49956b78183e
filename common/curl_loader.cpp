#include "common/curl_loader.hpp"

#include <dlfcn.h>

#include <mutex>
#include <new>
#include <string_view>

namespace tocsin::common::curl::loaded {

namespace {

// CURLOPT_PROTOCOLS_STR, which every transfer sets, arrived in 7.85.0.
constexpr unsigned kMinVersion = 0x075500;

template <class F>
void resolve(void* handle, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(::dlsym(handle, name));
  if (!out) missing += (missing.empty() ? "" : ", ") + std::string(name);
}

// http_check's verify callback works on libcurl's SSL_CTX with OpenSSL 3's functions (of
// libcurl's copy, CurlOpenSsl): a libcurl on another TLS library or version would crash there.
void check_build(const std::string& soname, const curl_version_info_data& v) {
  std::string_view ssl = v.ssl_version ? v.ssl_version : "";
  if (v.version_num < kMinVersion)
    throw Unavailable(soname + " is libcurl " + v.version + "; the web probes need 7.85.0 or later");
  if (!ssl.starts_with("OpenSSL/3"))
    throw Unavailable(soname + " (libcurl " + v.version + ") uses " +
                      (ssl.empty() ? std::string("no TLS library") : std::string(ssl)) +
                      "; the web probes need libcurl built with OpenSSL 3");
}

// OpenSSL's functions as libcurl is bound to them: dlsym on libcurl's handle searches libcurl
// and then the libraries it loaded (libssl.so.3, libcrypto.so.3), never the program itself.
void resolve_openssl(void* curl, CurlOpenSsl& o) {
  std::string missing;
  resolve(curl, "OPENSSL_init_crypto", o.init_crypto, missing);
  resolve(curl, "SSL_CTX_set_cert_verify_callback", o.ssl_ctx_set_cert_verify_callback, missing);
  resolve(curl, "X509_verify_cert", o.x509_verify_cert, missing);
  resolve(curl, "X509_STORE_CTX_get0_cert", o.x509_store_ctx_get0_cert, missing);
  resolve(curl, "X509_STORE_CTX_get_error", o.x509_store_ctx_get_error, missing);
  resolve(curl, "X509_get0_notAfter", o.x509_get0_notAfter, missing);
  resolve(curl, "ASN1_TIME_diff", o.asn1_time_diff, missing);
  resolve(curl, "ASN1_TIME_to_tm", o.asn1_time_to_tm, missing);
  if (!missing.empty()) throw Unavailable("libcurl's OpenSSL lacks " + missing);
}

}  // namespace

Api open_api(const std::string& soname) {
  ::dlerror();
  void* h = ::dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* why = ::dlerror();
    throw Unavailable("cannot load " + soname + " (install libcurl4): " +
                      (why ? why : "unknown dlopen error"));
  }
  Api a;
  std::string missing;
  resolve(h, "curl_easy_init", a.easy_init, missing);
  resolve(h, "curl_easy_cleanup", a.easy_cleanup, missing);
  resolve(h, "curl_easy_setopt", a.easy_setopt, missing);
  resolve(h, "curl_easy_perform", a.easy_perform, missing);
  resolve(h, "curl_easy_getinfo", a.easy_getinfo, missing);
  resolve(h, "curl_easy_strerror", a.easy_strerror, missing);
  resolve(h, "curl_slist_append", a.slist_append, missing);
  resolve(h, "curl_slist_free_all", a.slist_free_all, missing);
  resolve(h, "curl_global_init", a.global_init, missing);
  resolve(h, "curl_version_info", a.version_info, missing);
  try {
    if (!missing.empty()) throw Unavailable(soname + " lacks " + missing);
    const curl_version_info_data* v = a.version_info(CURLVERSION_NOW);
    if (!v) throw Unavailable(soname + ": curl_version_info returned nothing");
    check_build(soname, *v);
    resolve_openssl(h, a.openssl);
    a.version = std::string(v->version) + " (" + v->ssl_version + ")";
  } catch (...) {
    ::dlclose(h);  // nothing of it was used
    throw;
  }
  return a;
}

const Api& api() {
  static std::mutex mutex;
  // Never destroyed: the blocking pool's threads may still be in a transfer while static
  // objects are destroyed at exit, and the library itself stays loaded anyway.
  static const Api* loaded = nullptr;
  std::lock_guard lock(mutex);
  if (loaded) return *loaded;
  Api a = open_api(kLibcurlSoname);
  // In the static agent libcurl's OpenSSL is a second copy, and it starts here, on a pool
  // thread, after the pool's exit-time join was registered (agent/probes/probe.cpp): its own exit
  // handler would run before that join and free what a transfer still running uses. It gets
  // none (the process's exit frees its memory). Where it is the program's own OpenSSL, already
  // started with its handler, this changes nothing.
  a.openssl.init_crypto(OPENSSL_INIT_NO_ATEXIT, nullptr);
  // Thread-safe since 7.84.
  if (CURLcode rc = a.global_init(CURL_GLOBAL_DEFAULT); rc != CURLE_OK)
    throw Unavailable(std::string("curl_global_init failed: ") + a.easy_strerror(rc));
  loaded = new Api(std::move(a));
  return *loaded;
}

Easy make_easy(const Api& a) {
  Easy e(a.easy_init(), EasyDeleter{&a});
  if (!e) throw std::runtime_error("curl_easy_init failed");
  return e;
}

void append(const Api& a, Slist& list, const std::string& line) {
  curl_slist* l = a.slist_append(list.get(), line.c_str());
  if (!l) throw std::bad_alloc();
  (void)list.release();
  list.reset(l);
}

}  // namespace tocsin::common::curl::loaded
