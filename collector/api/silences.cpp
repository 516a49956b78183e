// Silences: create one, list them, expire one (collector/incidents/silences.hpp).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "collector/incidents/incidents.hpp"
#include "common/log.hpp"

namespace tocsin::collector::detail::api {

// Matched by prefix (the id is part of the path): GET /api/v1/silences?state=active|expired|all
// and GET /api/v1/silences/N (viewer); POST /api/v1/silences {test, agent, kind, labels,
// until, reason} -> 201 and POST /api/v1/silences/N/expire (operator). Bad input is a 400
// naming the field; the active-silence bound and expiring an ended silence are 409.

namespace {

IncidentEngine& silence_engine(State& st) {
  auto* engine = st.alerting.incidents;
  if (!engine)
    throw HttpError(http::status::service_unavailable,
                    "the incident engine is not running in this collector");
  return *engine;
}

std::string optional_text(const json& body, const std::string& key) {
  return string_field(body, key).value_or("");
}

json post_silence(State& st, const Request& req, const ApiToken& who) {
  auto& engine = silence_engine(st);
  auto body = parse_body_object(req, {"test", "agent", "kind", "labels", "until", "reason"});
  SilenceRequest r;
  r.matchers.test_id = optional_text(body, "test");
  r.matchers.agent_id = optional_text(body, "agent");
  r.matchers.kind = optional_text(body, "kind");
  if (body.contains("labels")) {
    const auto& labels = body["labels"];
    if (!labels.is_object())
      throw HttpError(http::status::bad_request, "'labels' must be an object of \"K\": \"V\"");
    if (labels.size() > kMaxSilenceLabels)
      throw HttpError(http::status::bad_request,
                      "'labels' has more than " + std::to_string(kMaxSilenceLabels) + " matchers");
    for (const auto& [k, v] : labels.items()) {
      if (!v.is_string())
        throw HttpError(http::status::bad_request,
                        "'labels' value for '" + k.substr(0, kMaxSilenceId) + "' must be a string");
      r.matchers.labels[k] = v.get<std::string>();
    }
  }
  r.until = optional_text(body, "until");
  r.reason = optional_text(body, "reason");
  try {
    make_silence(r, who.name, engine.now());  // bad input: 400 naming the field
  } catch (const IncidentError& e) {
    throw HttpError(http::status::bad_request, e.what());
  }
  auto s = engine.add_silence(r, who.name);  // over the bound: 409
  spdlog::info("api: '{}' created silence #{}", who.name, s.id);
  return {{"silence", silence_json(s, engine.now())}};
}

json get_silences(State& st, const Params& p) {
  auto& engine = silence_engine(st);
  auto state = param(p, "state", "active");
  if (state != "active" && state != "expired" && state != "all")
    throw HttpError(http::status::bad_request,
                    "unknown state '" + state.substr(0, 64) + "' (use active, expired, all)");
  json list = json::array();
  auto now = engine.now();
  for (const auto& s : engine.list_silences(state, limit_param(p))) list.push_back(silence_json(s, now));
  return {{"silences", std::move(list)}};
}

}  // namespace

std::optional<Response> dispatch_silences(State& st, const Request& req, std::string_view path,
                                          std::string_view query) {
  auto methods = [](std::string_view first, std::string_view action) {
    if (first.empty()) return std::vector{http::verb::get, http::verb::post};
    if (action.empty()) return std::vector{http::verb::get};
    return std::vector{http::verb::post};
  };
  auto handle = [&](std::string_view first,
                    std::string_view action) -> std::pair<http::status, json> {
    bool is_post = req.method() == http::verb::post;
    ApiToken who = authorize(st, req, is_post ? Role::operator_ : Role::viewer);
    if (first.empty()) {
      if (is_post) {
        parse_query(query, {});
        return {http::status::created, post_silence(st, req, who)};
      }
      return {http::status::ok, get_silences(st, parse_query(query, {"state", "limit"}))};
    }
    auto id = id_param(first, "silence");
    parse_query(query, {});
    auto& engine = silence_engine(st);
    if (!action.empty() && action != "expire")
      throw HttpError(http::status::not_found,
                      "no such silence action '" + std::string(action).substr(0, 64) +
                          "' (use expire)");
    if (action.empty()) {
      if (auto s = engine.get_silence(id))
        return {http::status::ok, {{"silence", silence_json(*s, engine.now())}}};
      throw HttpError(http::status::not_found, "no silence #" + std::to_string(id));
    }
    auto s = engine.expire_silence(id, who.name);  // an ended one: 409
    if (!s) throw HttpError(http::status::not_found, "no silence #" + std::to_string(id));
    spdlog::info("api: '{}' expired silence #{}", who.name, id);
    return {http::status::ok, {{"silence", silence_json(*s, engine.now())}}};
  };
  return dispatch_resource<IncidentError>(req, path, "/api/v1/silences", methods, handle);
}

}  // namespace tocsin::collector::detail::api
