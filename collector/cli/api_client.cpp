#include "collector/cli/api_client.hpp"

#include "common/curl.hpp"

#include <curl/curl.h>

#include <memory>
#include <mutex>

namespace tocsin::collector {
namespace curl = common::curl;
namespace {

// A hostile or broken server must not be able to make the CLI allocate without bound.
constexpr std::size_t kMaxResponseBytes = 64 << 20;
constexpr std::size_t kMaxErrorTextChars = 500;

using CurlPtr = curl::EasyPtr;
using curl::SlistPtr;

void global_init() {
  try {
    curl::global_init();
  } catch (const std::runtime_error& e) {
    throw ApiError(0, e.what());
  }
}

struct Sink {
  std::string data;
  bool overflow = false;
};

std::size_t on_data(char* ptr, std::size_t size, std::size_t nmemb, void* user) {
  auto* sink = static_cast<Sink*>(user);
  std::size_t n = size * nmemb;
  if (sink->data.size() + n > kMaxResponseBytes) {
    sink->overflow = true;
    return 0;  // makes curl abort with CURLE_WRITE_ERROR
  }
  sink->data.append(ptr, n);
  return n;
}

void set(CURL* c, CURLoption opt, auto value) {
  CURLcode rc = curl_easy_setopt(c, opt, value);
  if (rc != CURLE_OK)
    throw ApiError(0, std::string("libcurl rejected an option: ") + curl_easy_strerror(rc));
}

SlistPtr append(SlistPtr list, const std::string& header) {
  curl_slist* l = curl_slist_append(list.get(), header.c_str());
  if (!l) throw ApiError(0, "out of memory building request headers");
  (void)list.release();
  return SlistPtr(l);
}

// Error text from the server is shown on a terminal: control characters stripped, capped.

std::string error_message(long status, const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_string())
    return common::curl::printable(j["error"].get<std::string>(), kMaxErrorTextChars);
  if (body.empty()) return "HTTP " + std::to_string(status) + " with an empty body";
  return "HTTP " + std::to_string(status) + ": " + common::curl::printable(body, kMaxErrorTextChars);
}

}  // namespace

ApiClient::ApiClient(std::string base_url, std::string token, std::filesystem::path ca_file,
                     long timeout_ms)
    : base_url_(std::move(base_url)),
      token_(std::move(token)),
      ca_file_(std::move(ca_file)),
      timeout_ms_(timeout_ms) {
  while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
  // The token must never travel in clear text, so plain http is refused outright.
  if (base_url_.rfind("https://", 0) != 0)
    throw std::invalid_argument("server URL '" + base_url_ + "' must start with https://");
  for (char c : token_)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      throw std::invalid_argument("API token contains whitespace or control characters");
  if (timeout_ms_ <= 0) throw std::invalid_argument("timeout must be positive");
}

nlohmann::json ApiClient::get(const std::string& path_and_query) const {
  return request("GET", path_and_query, nullptr);
}

nlohmann::json ApiClient::post(const std::string& path, const nlohmann::json& body) const {
  std::string text = body.dump();
  return request("POST", path, &text);
}

nlohmann::json ApiClient::request(const std::string& method, const std::string& path,
                                  const std::string* body) const {
  global_init();
  std::string url = base_url_ + path;
  CurlPtr curl(curl_easy_init());
  if (!curl) throw ApiError(0, "cannot create a libcurl handle");
  CURL* c = curl.get();
  char errbuf[CURL_ERROR_SIZE] = {0};
  Sink sink;

  set(c, CURLOPT_URL, url.c_str());
  set(c, CURLOPT_PROTOCOLS_STR, "https");
  set(c, CURLOPT_ERRORBUFFER, errbuf);
  set(c, CURLOPT_NOSIGNAL, 1L);
  set(c, CURLOPT_TIMEOUT_MS, timeout_ms_);
  set(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms_);
  // Pinned CA only: the system trust store must not vouch for a collector.
  set(c, CURLOPT_CAINFO, ca_file_.c_str());
  set(c, CURLOPT_CAPATH, static_cast<const char*>(nullptr));
  set(c, CURLOPT_SSL_VERIFYPEER, 1L);
  set(c, CURLOPT_SSL_VERIFYHOST, 2L);
  set(c, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  set(c, CURLOPT_FOLLOWLOCATION, 0L);
  set(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(kMaxResponseBytes));
  set(c, CURLOPT_WRITEFUNCTION, on_data);
  set(c, CURLOPT_WRITEDATA, &sink);

  SlistPtr headers;
  headers = append(std::move(headers), "Accept: application/json");
  if (!token_.empty()) headers = append(std::move(headers), "Authorization: Bearer " + token_);
  if (method == "POST") {
    headers = append(std::move(headers), "Content-Type: application/json");
    headers = append(std::move(headers), "Expect:");  // no 100-continue round trip
    set(c, CURLOPT_POST, 1L);
    set(c, CURLOPT_POSTFIELDS, body->c_str());
    set(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  } else if (method != "GET") {
    throw std::invalid_argument("unsupported HTTP method " + method);
  }
  set(c, CURLOPT_HTTPHEADER, headers.get());

  CURLcode rc = curl_easy_perform(c);
  if (sink.overflow || rc == CURLE_FILESIZE_EXCEEDED)
    throw ApiError(
        0, "response from " + url + " exceeds " + std::to_string(kMaxResponseBytes >> 20) + " MiB");
  if (rc != CURLE_OK)
    throw ApiError(0, "cannot reach " + url + ": " +
                          (errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc)));
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (status < 200 || status > 299) throw ApiError(status, error_message(status, sink.data));
  auto j = nlohmann::json::parse(sink.data, nullptr, false);
  if (j.is_discarded())
    throw ApiError(status, "the server's answer from " + url + " is not valid JSON");
  return j;
}

}  // namespace tocsin::collector
