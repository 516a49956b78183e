// Splunk alerts: the search export endpoint, one streamed answer per window.
#include "collector/alerts/pollers/vendor.hpp"

#include <cctype>
#include <cstdio>
#include <sstream>

#include "common/crypto.hpp"

namespace tocsin::collector::detail::pollers {
namespace {

// Splunk: POST /services/search/jobs/export. It streams every result of the window at once
// (no paging); the response cap bounds it.
class SplunkSearch : public Vendor {
 public:
  using Vendor::Vendor;

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = cfg_.url + "/services/search/jobs/export";
    HttpRequest req;
    req.post = true;
    req.url = what;
    req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    if (!cfg_.api_key.empty()) {
      req.headers.push_back("Authorization: Bearer " + cfg_.api_key);
    } else {
      req.username = cfg_.username;
      req.password = cfg_.password;
    }
    std::string earliest = epoch_seconds(w.start_ns), latest = epoch_seconds(w.end_ns);
    req.body = form_encode({{"search", search_text()},
                            {"earliest_time", earliest},
                            {"latest_time", latest},
                            {"output_mode", "json"}});
    HttpResponse resp = http.send(req);
    expect_2xx(resp, what);
    return read_stream(resp.body, what);
  }

 private:
  // The export endpoint runs SPL as given; a bare filter needs the implicit "search" command.
  std::string search_text() const {
    std::string_view q = cfg_.query;
    while (!q.empty() && std::isspace(static_cast<unsigned char>(q.front()))) q.remove_prefix(1);
    bool has_command =
        q.starts_with("|") || (q.starts_with("search") &&
                               (q.size() == 6 || std::isspace(static_cast<unsigned char>(q[6]))));
    return has_command ? std::string(q) : "search " + std::string(q);
  }

  static std::string epoch_seconds(std::int64_t ns) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%lld.%03lld", static_cast<long long>(ns / 1'000'000'000),
                  static_cast<long long>((ns % 1'000'000'000) / kNsPerMs));
    return buf;
  }

  // Newline-delimited JSON objects; read value by value so concatenated objects work too.
  Page read_stream(const std::string& body, const std::string& what) const {
    Page page;
    std::istringstream in(body);
    for (std::size_t n = 0;; ++n) {
      in >> std::ws;
      if (in.peek() == std::char_traits<char>::eof()) break;
      json obj;
      try {
        in >> obj;
      } catch (const json::exception&) {
        malformed(what, "object " + std::to_string(n) + " of the stream is not valid JSON");
      }
      if (!obj.is_object()) malformed(what, "item " + std::to_string(n) + " is not an object");
      read_item(obj, n, page);
    }
    return page;
  }

  void read_item(const json& obj, std::size_t n, Page& page) const {
    if (const json* msgs = find_path(obj, "messages"); msgs && msgs->is_array())
      for (const auto& m : *msgs) {
        std::string type = first_text(m, {"type"});
        if (type == "FATAL" || type == "ERROR")
          page.partial_error = "Splunk search " + type + ": " + first_text(m, {"text"});
      }
    const json* result = find_path(obj, "result");
    if (!result) return;  // lastrow, progress and other framing
    if (!result->is_object()) {
      page.note("malformed", "item " + std::to_string(n) + ": result is not an object");
      return;
    }
    if (is_true(obj, "preview")) return;  // the final copy follows
    add_result(*result, "results[" + std::to_string(n) + "]", page);
  }

  void add_result(const json& r, const std::string& where, Page& page) const {
    Alert a = base_alert(cfg_, "splunk_search", r);
    a.id = result_id(r);
    a.host = first_text(r, {"host"});
    a.rule = first_text(r, {"search_name", "savedsearch_name", "source"});
    a.severity = first_text(r, {"severity", "urgency"});
    a.technique = technique_from(
        r, {"annotations.mitre_attack", "mitre_technique_id", "technique_id"}, a.text);
    a.event_ns = read_time(r, {"_time"}, where, page);
    a.ingest_ns = read_time(r, {"_indextime"}, where, page);
    page.alerts.push_back(std::move(a));
  }

  // _cd (bucket:offset) is unique only within a bucket; _bkt names the index and bucket.
  // Without them (a transforming search) the id hashes the fields that do not change between
  // searches (_serial and _si do), so overlapping windows still deduplicate.
  static std::string result_id(const json& r) {
    std::string cd = first_text(r, {"_cd"});
    if (!cd.empty()) {
      std::string bkt = first_text(r, {"_bkt"});
      return bkt.empty() ? cd : bkt + "/" + cd;
    }
    json stable = json::object();
    for (const auto& [k, v] : r.items())
      if (k != "_serial" && k != "_si") stable[k] = v;
    auto digest = common::sha256(stable.dump());
    return "sha256:" + common::to_hex(digest);
  }
};

}  // namespace

std::unique_ptr<Vendor> make_splunk_search(const AlertSourceConfig& cfg) {
  return std::make_unique<SplunkSearch>(cfg);
}

}  // namespace tocsin::collector::detail::pollers
