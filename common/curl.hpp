// libcurl handles as RAII types and URL encoding, shared by the API client and the pollers.
#pragma once

#include <curl/curl.h>

#include <memory>
#include <string>
#include <string_view>

namespace firedrill::common::curl {

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

}  // namespace firedrill::common::curl
