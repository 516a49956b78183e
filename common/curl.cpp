#include "common/curl.hpp"

#include <algorithm>
#include <cctype>
#include <mutex>
#include <stdexcept>

#include "common/clock.hpp"

namespace tocsin::common::curl {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      throw std::runtime_error("cannot initialise libcurl");
  });
}

std::string percent_encode(std::string_view s, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

void append(SlistPtr& list, const std::string& line) {
  curl_slist* l = curl_slist_append(list.get(), line.c_str());
  if (!l) throw std::bad_alloc();
  (void)list.release();
  list.reset(l);
}

std::string url_origin(std::string_view url) {
  auto scheme = url.find("://");
  if (scheme == std::string_view::npos) return "(a URL)";
  auto start = scheme + 3;
  auto end = url.find_first_of("/?#", start);
  std::string_view authority = url.substr(start, end == std::string_view::npos ? url.npos : end - start);
  if (auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  return std::string(url.substr(0, start)) + std::string(authority);
}

std::string printable(std::string_view s, std::size_t cap) {
  std::string out;
  for (char c : s.substr(0, cap))
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
  if (s.size() > cap) out += "...";
  return out;
}

namespace {

constexpr std::size_t kMaxHeaderBytes = 64 * 1024;

struct Transfer {
  HttpResponse resp;
  std::size_t max_body = 0;
  std::size_t header_bytes = 0;
  bool overflow = false;
  const std::atomic<bool>* stopping = nullptr;
};

std::size_t on_body(char* ptr, std::size_t size, std::size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t n = size * nmemb;
  if (t->resp.body.size() + n > t->max_body) {
    t->overflow = true;
    return 0;  // CURLE_WRITE_ERROR: stop before allocating more
  }
  t->resp.body.append(ptr, n);
  return n;
}

std::size_t on_header(char* ptr, std::size_t size, std::size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t n = size * nmemb;
  t->header_bytes += n;
  if (t->header_bytes > kMaxHeaderBytes) return 0;
  std::string_view line(ptr, n);
  constexpr std::string_view kName = "retry-after:";
  if (line.size() > kName.size()) {
    std::string head(line.substr(0, kName.size()));
    std::transform(head.begin(), head.end(), head.begin(), ::tolower);
    if (head == kName) {
      std::string_view v = line.substr(kName.size());
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
      t->resp.retry_after = std::string(v.substr(0, 100));
    }
  }
  return n;
}

// Lets the owner abort a transfer at once instead of waiting out its timeout.
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stopping && t->stopping->load() ? 1 : 0;
}

}  // namespace

HttpClient::HttpClient(Options o) : o_(std::move(o)) {
  global_init();
  curl_.reset(curl_easy_init());
  if (!curl_) throw std::runtime_error("cannot create a libcurl handle");
}

HttpResponse HttpClient::send(const HttpRequest& r) {
  CURL* c = curl_.get();
  curl_easy_reset(c);
  Transfer t;
  t.max_body = o_.max_response_bytes;
  t.stopping = o_.stopping;
  char* errbuf = errbuf_;
  errbuf[0] = 0;
  const long timeout_ms = static_cast<long>(o_.timeout.count());
  set(c, CURLOPT_URL, r.url.c_str());
  // Only the web: a config typo must not turn into file:// or gopher:// access.
  set(c, CURLOPT_PROTOCOLS_STR, "http,https");
  set(c, CURLOPT_ERRORBUFFER, errbuf);
  set(c, CURLOPT_NOSIGNAL, 1L);
  set(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  set(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  if (!o_.ca_file.empty()) set(c, CURLOPT_CAINFO, o_.ca_file.c_str());
  set(c, CURLOPT_SSL_VERIFYPEER, 1L);
  set(c, CURLOPT_SSL_VERIFYHOST, 2L);
  set(c, CURLOPT_FOLLOWLOCATION, 0L);
  set(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(o_.max_response_bytes));
  set(c, CURLOPT_WRITEFUNCTION, on_body);
  set(c, CURLOPT_WRITEDATA, &t);
  set(c, CURLOPT_HEADERFUNCTION, on_header);
  set(c, CURLOPT_HEADERDATA, &t);
  set(c, CURLOPT_NOPROGRESS, 0L);
  set(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  set(c, CURLOPT_XFERINFODATA, &t);
  set(c, CURLOPT_ACCEPT_ENCODING, "");  // gzip where offered
  if (!r.username.empty()) {
    set(c, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BASIC));
    set(c, CURLOPT_USERNAME, r.username.c_str());
    set(c, CURLOPT_PASSWORD, r.password.c_str());
  }
  if (r.post) {
    set(c, CURLOPT_POST, 1L);
    set(c, CURLOPT_POSTFIELDS, r.body.c_str());
    set(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
  } else {
    set(c, CURLOPT_HTTPGET, 1L);
  }
  SlistPtr headers;
  append(headers, "Accept: application/json");
  append(headers, "Expect:");  // no 100-continue round trip
  for (const auto& h : r.headers) append(headers, h);
  set(c, CURLOPT_HTTPHEADER, headers.get());

  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_ABORTED_BY_CALLBACK && o_.stopping && o_.stopping->load()) throw Aborted{};
  if (t.overflow || rc == CURLE_FILESIZE_EXCEEDED)
    throw TransferError("response from " + url_origin(r.url) + " exceeds " +
                        std::to_string(o_.max_response_bytes >> 20) + " MiB");
  if (rc != CURLE_OK)
    throw TransferError("cannot reach " + url_origin(r.url) + ": " +
                        (errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &t.resp.status);
  return std::move(t.resp);
}

std::chrono::milliseconds parse_retry_after(const std::string& v, std::chrono::milliseconds cap) {
  using std::chrono::milliseconds;
  if (v.empty()) return milliseconds(0);
  if (v.size() <= 9 && std::all_of(v.begin(), v.end(), ::isdigit))
    return std::min<milliseconds>(std::chrono::seconds(std::stoll(v)), cap);
  time_t when = curl_getdate(v.c_str(), nullptr);
  if (when < 0) return milliseconds(0);
  std::int64_t delta_ms = static_cast<std::int64_t>(when) * 1000 - common::now_ns() / 1'000'000;
  return std::clamp<milliseconds>(milliseconds(delta_ms), milliseconds(0), cap);
}

}  // namespace tocsin::common::curl
