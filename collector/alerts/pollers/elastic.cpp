// Elasticsearch / OpenSearch alerts: _search over the window, paged with search_after.
#include "collector/alerts/pollers/vendor.hpp"

#include "common/clock.hpp"

namespace tocsin::collector::detail::pollers {
namespace {

// Elasticsearch / OpenSearch: POST /<index>/_search with search_after.
//
// Tiebreaker: ES recommends a point in time with the implicit `_shard_doc` tiebreaker, but the
// PIT API differs between Elasticsearch (POST /<index>/_pit) and OpenSearch (POST
// /<index>/_search/point_in_time) and does not exist before ES 7.10. Sorting on `_id` fails
// on ES 8 (no fielddata for _id). So the sort is [time_field, _doc]: valid everywhere, exact
// within a shard; across shards, hits sharing the very same timestamp at a page boundary can
// be skipped or repeated. Repeats are deduplicated by id, and a skipped hit is read again by
// the next poll, whose window overlaps this one by the lookback with different page edges.
class Elasticsearch : public Vendor {
 public:
  using Vendor::Vendor;
  void restart() override { search_after_ = nullptr; }

  Page fetch(HttpClient& http, const Window& w) override {
    std::string what = cfg_.url + "/" + cfg_.index + "/_search";
    HttpRequest req;
    req.post = true;
    req.url = cfg_.url + "/" + percent_encode(cfg_.index, "*,:") + "/_search";
    req.headers.push_back("Content-Type: application/json");
    if (!cfg_.api_key.empty()) {
      req.headers.push_back("Authorization: ApiKey " + cfg_.api_key);
    } else if (!cfg_.username.empty()) {
      req.username = cfg_.username;
      req.password = cfg_.password;
    }
    req.body = request_body(w).dump();
    HttpResponse resp = http.send(req);
    expect_2xx(resp, what);
    return read_page(parse_body(resp.body, what), what);
  }

 private:
  json request_body(const Window& w) const {
    json bounds = {{"gte", common::format_time(w.start_ns)},
                   {"lte", common::format_time(w.end_ns)},
                   {"format", "strict_date_optional_time"}};
    json range = json::object();
    range["range"][cfg_.time_field] = bounds;
    json filter = json::array();
    filter.push_back(range);
    if (!cfg_.query.empty()) {
      json qs = json::object();
      qs["query_string"]["query"] = cfg_.query;
      filter.push_back(qs);
    }
    // unmapped_type: an index in the pattern without the field sorts last instead of failing
    // the whole search.
    json by_time = json::object();
    by_time[cfg_.time_field] = {{"order", "asc"}, {"unmapped_type", "date"}};
    json by_doc = json::object();
    by_doc["_doc"]["order"] = "asc";
    json body = json::object();
    body["size"] = cfg_.page_size;
    body["query"]["bool"]["filter"] = filter;
    body["sort"] = json::array({by_time, by_doc});
    body["track_total_hits"] = false;
    if (!search_after_.is_null()) body["search_after"] = search_after_;
    return body;
  }

  Page read_page(const json& j, const std::string& what) {
    const json* hits = j.is_object() ? find_path(j, "hits.hits") : nullptr;
    if (!hits || !hits->is_array()) malformed(what, "no hits.hits array");
    Page page;
    if (is_true(j, "timed_out"))
      page.partial_error = "search timed out on " + what + " (partial results)";
    if (const json* failed = find_path(j, "_shards.failed");
        failed && failed->is_number() && failed->get<double>() > 0)
      page.partial_error = "shard failures on " + what + " (partial results)";
    for (std::size_t i = 0; i < hits->size(); ++i)
      add_hit((*hits)[i], "hits.hits[" + std::to_string(i) + "]", page);
    page.more = !hits->empty() && hits->size() >= cfg_.page_size;
    if (page.more) {
      const json* sort = find_path(hits->back(), "sort");
      if (!sort || !sort->is_array() || sort->empty() || sort->size() > 8)
        malformed(what, "the last hit has no usable sort values for search_after");
      for (const auto& v : *sort)
        if (!v.is_primitive()) malformed(what, "a sort value of the last hit is not a scalar");
      search_after_ = *sort;
    }
    return page;
  }

  void add_hit(const json& hit, const std::string& where, Page& page) const {
    const json* id = hit.is_object() ? find_path(hit, "_id") : nullptr;
    const json* src = hit.is_object() ? find_path(hit, "_source") : nullptr;
    if (!id || !id->is_string() || !src || !src->is_object()) {
      page.note("malformed", where + ": a hit needs a string _id and an object _source");
      return;
    }
    Alert a = base_alert(cfg_, "elasticsearch", *src);
    a.id = printable(first_text(hit, {"_index"}) + "/" + id->get<std::string>(), kMaxFieldChars);
    a.host = first_text(*src, {"host.name", "host.hostname", "agent.name"});
    a.rule = first_text(*src, {"rule.name", "kibana.alert.rule.name", "signal.rule.name"});
    a.severity = first_text(
        *src, {"kibana.alert.severity", "signal.rule.severity", "event.severity", "log.level"});
    a.technique = technique_from(
        *src, {"threat.technique.id", "threat", "kibana.alert.rule.threat", "signal.rule.threat"},
        a.text);
    std::string at = where + "._source";
    // A Kibana alert's @timestamp is when the rule fired; the activity's own time is in
    // original_time, which is what the event timestamp means here.
    a.event_ns = read_time(
        *src, {"kibana.alert.original_time", "signal.original_time", cfg_.time_field, "@timestamp"},
        at, page);
    a.ingest_ns = read_time(*src, {"event.ingested"}, at, page);
    a.created_ns = read_time(*src, {"kibana.alert.start"}, at, page);
    page.alerts.push_back(std::move(a));
  }

  json search_after_;
};

}  // namespace

std::unique_ptr<Vendor> make_elasticsearch(const AlertSourceConfig& cfg) {
  return std::make_unique<Elasticsearch>(cfg);
}

}  // namespace tocsin::collector::detail::pollers
