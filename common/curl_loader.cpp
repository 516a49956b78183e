#include "common/curl_loader.hpp"

#include <dlfcn.h>

#include <mutex>
#include <new>
#include <string_view>

namespace firedrill::common::curl::loaded {

namespace {

// CURLOPT_PROTOCOLS_STR, which every transfer sets, arrived in 7.85.0.
constexpr unsigned kMinVersion = 0x075500;

template <class F>
void resolve(void* handle, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(::dlsym(handle, name));
  if (!out) missing += (missing.empty() ? "" : ", ") + std::string(name);
}

// The probes hand libcurl's SSL_CTX to OpenSSL 3 (http_check's verify callback) and share the
// process's libssl: a libcurl on another TLS library or OpenSSL version would crash there.
void check_build(const std::string& soname, const curl_version_info_data& v) {
  std::string_view ssl = v.ssl_version ? v.ssl_version : "";
  if (v.version_num < kMinVersion)
    throw Unavailable(soname + " is libcurl " + v.version + "; the web probes need 7.85.0 or later");
  if (!ssl.starts_with("OpenSSL/3"))
    throw Unavailable(soname + " (libcurl " + v.version + ") uses " +
                      (ssl.empty() ? std::string("no TLS library") : std::string(ssl)) +
                      "; the web probes need libcurl built with OpenSSL 3");
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

}  // namespace firedrill::common::curl::loaded
