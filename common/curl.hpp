// libcurl as RAII types, URL encoding, and one small synchronous HTTP client shared by the API
// client's neighbours: the SIEM pollers and the incident notifiers.
#pragma once

#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tocsin::common::curl {

struct EasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using EasyPtr = std::unique_ptr<CURL, EasyDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

// curl_global_init once per process; throws std::runtime_error if libcurl cannot start.
void global_init();

// RFC 3986 unreserved characters stay; everything else becomes %XX. `keep` adds characters
// that are meaningful and safe where the result goes (an index pattern's '*' and ',').
std::string percent_encode(std::string_view s, std::string_view keep = "");

// Appends to a header list (curl_slist_append's ownership dance); throws on allocation failure.
void append(SlistPtr& list, const std::string& line);

// scheme://host[:port] of a URL: what error messages and logs may show. The path, query and
// any user:password can be secrets (a Slack or Teams webhook URL is a credential).
std::string url_origin(std::string_view url);

// Control characters become spaces and long text is cut, so a peer's answer can go into a log
// line or an error message.
std::string printable(std::string_view s, std::size_t cap = 300);

// Sets an option, throwing TransferError when libcurl refuses it (an option this libcurl
// does not know, a bad value).
struct TransferError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void set(CURL* c, CURLoption opt, auto value) {
  CURLcode rc = curl_easy_setopt(c, opt, value);
  if (rc != CURLE_OK)
    throw TransferError(std::string("libcurl rejected an option: ") + curl_easy_strerror(rc));
}

struct HttpRequest {
  bool post = false;
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;
  std::string username, password;  // HTTP Basic when username is set
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::string retry_after;  // the raw Retry-After header, if any
};

// The owner asked to stop (the `stopping` flag became true during a transfer).
struct Aborted {};

// One easy handle, reused so keep-alive connections are reused; one thread at a time.
// Only http and https, no redirects (they would carry credentials elsewhere), peer and host
// verified, response bodies capped. A transport failure throws TransferError naming the URL's
// origin (never its path or query); any HTTP status is returned.
class HttpClient {
 public:
  struct Options {
    std::filesystem::path ca_file;  // empty: the system's trust store
    std::chrono::milliseconds timeout{30000};
    std::size_t max_response_bytes = 16 << 20;
    const std::atomic<bool>* stopping = nullptr;  // checked during transfers
  };
  explicit HttpClient(Options o);
  HttpResponse send(const HttpRequest& r);

 private:
  Options o_;
  char errbuf_[CURL_ERROR_SIZE] = {0};  // libcurl may write to it until the handle is cleaned up
  EasyPtr curl_;                        // declared after errbuf_: destroyed before it
};

// Retry-After is either delta-seconds or an HTTP-date (RFC 9110 section 10.2.3); the wait it
// asks for, at most `cap`; 0 when absent or unparseable.
std::chrono::milliseconds parse_retry_after(const std::string& v, std::chrono::milliseconds cap);

}  // namespace tocsin::common::curl
