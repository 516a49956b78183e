// Incidents: the list, one incident with its timeline, and the human actions on one.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "collector/incidents/incidents.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"

namespace tocsin::collector::detail::api {

// The id is part of the path, so these are matched by prefix rather than through the route
// table: GET /api/v1/incidents[?state=&severity=&limit=], GET /api/v1/incidents/N,
// GET /api/v1/incidents/closed-untouched?since=, POST /api/v1/incidents/N/<action> with
// action ack, note {text}, assign {owner}, resolve {reason[, accepted_risk: true]},
// close {reason}, pause {reason}, resume, reopen {reason}. The list also filters by agent, test
// and kind (the incident's kind or one of its facets).
// Reading needs viewer, changing operator; the actor on the timeline is the token's name.

namespace {

IncidentEngine& incident_engine(State& st) {
  auto* engine = st.alerting.incidents;
  if (!engine)
    throw HttpError(http::status::service_unavailable,
                    "the incident engine is not running in this collector");
  return *engine;
}

// The record as the API shows it, with the active silences that match it.
json shown(const IncidentEngine& engine, const Incident& i, std::int64_t now, bool timeline) {
  auto j = incident_json(i, now, timeline);
  j["silenced_by"] = engine.silenced_by(i);
  return j;
}

json get_incidents(State& st, const Params& p) {
  auto& engine = incident_engine(st);
  IncidentFilter f;
  if (auto s = param(p, "state", ""); !s.empty()) {
    f.state = parse_incident_state(s);
    if (!f.state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + s + "' (use open, acknowledged, resolved, closed)");
  }
  if (auto s = param(p, "severity", ""); !s.empty()) {
    f.severity = parse_severity(s);
    if (!f.severity)
      throw HttpError(
          http::status::bad_request,
          "unknown severity '" + s + "' (use informational, low, medium, high, critical)");
  }
  if (auto s = param(p, "kind", ""); !s.empty()) {
    f.kind = parse_kind(s);
    if (!f.kind)
      throw HttpError(http::status::bad_request,
                      "unknown kind '" + s.substr(0, 64) +
                          "' (use prevention_failed, detection_missed, detection_late, "
                          "health_failed, agent_silent, security_event, latency_regression)");
  }
  if (auto s = param(p, "agent", ""); !s.empty()) f.agent_id = s;
  if (auto s = param(p, "test", ""); !s.empty()) f.test_id = s;
  json list = json::array();
  auto now = engine.now();
  auto incidents = engine.list(f, limit_param(p));
  auto silenced = engine.silenced_by(incidents);  // the engine's lock once, not per incident
  for (std::size_t n = 0; n < incidents.size(); ++n) {
    auto j = incident_json(incidents[n], now, false);
    j["silenced_by"] = std::move(silenced[n]);
    list.push_back(std::move(j));
  }
  return {{"incidents", std::move(list)}};
}

json get_closed_untouched(State& st, const Params& p) {
  auto& engine = incident_engine(st);
  auto since = since_param(p, "30d");
  json by_kind = json::object();
  std::size_t total = 0;
  for (const auto& [kind, n] : engine.closed_untouched_since(since)) {
    by_kind[kind_name(kind)] = n;
    total += n;
  }
  return {{"since", common::format_time(since)}, {"total", total}, {"by_kind", std::move(by_kind)}};
}

// An IncidentError (already resolved, not paused...) becomes 409 in dispatch_resource.
json post_incident_action(State& st, const Request& req, const ApiToken& who, std::uint64_t id,
                          std::string_view action) {
  auto& engine = incident_engine(st);
  if (!engine.get(id))
    throw HttpError(http::status::not_found, "no incident #" + std::to_string(id));
  Incident i;
  if (action == "ack") {
    parse_body_object(req, {});
    i = engine.ack(id, who.name);
  } else if (action == "note") {
    i = engine.note(id, who.name,
                    required_body_text(parse_body_object(req, {"text"}), "text"));
  } else if (action == "assign") {
    i = engine.assign(id, who.name,
                      required_body_text(parse_body_object(req, {"owner"}), "owner"));
  } else if (action == "resolve") {
    auto body = parse_body_object(req, {"reason", "accepted_risk"});
    auto reason = required_body_text(body, "reason");
    if (body.contains("accepted_risk") && !body["accepted_risk"].is_boolean())
      throw HttpError(http::status::bad_request, "'accepted_risk' must be true or false");
    i = body.value("accepted_risk", false) ? engine.accept_risk(id, who.name, reason)
                                           : engine.resolve(id, who.name, reason);
  } else if (action == "close") {
    i = engine.close(id, who.name,
                     required_body_text(parse_body_object(req, {"reason"}), "reason"));
  } else if (action == "reopen") {
    i = engine.reopen(id, who.name,
                      required_body_text(parse_body_object(req, {"reason"}), "reason"));
  } else if (action == "pause") {
    i = engine.pause(id, who.name,
                     required_body_text(parse_body_object(req, {"reason"}), "reason"));
  } else if (action == "resume") {
    parse_body_object(req, {});
    i = engine.resume(id, who.name);
  } else {
    throw HttpError(http::status::not_found,
                    "no such incident action '" + std::string(action) +
                        "' (use ack, note, assign, resolve, close, pause, resume, reopen)");
  }
  spdlog::info("api: '{}' {} incident #{}", who.name, std::string(action), id);
  return shown(engine, i, engine.now(), true);
}

}  // namespace

std::optional<Response> dispatch_incidents(State& st, const Request& req, std::string_view path,
                                           std::string_view query) {
  // Reading is a GET of the list or of one incident; every action is a POST.
  auto methods = [](std::string_view, std::string_view action) {
    return std::vector{action.empty() ? http::verb::get : http::verb::post};
  };
  auto handle = [&](std::string_view first,
                    std::string_view action) -> std::pair<http::status, json> {
    bool is_post = !action.empty();
    ApiToken who = authorize(st, req, is_post ? Role::operator_ : Role::viewer);
    json out;
    if (first.empty()) {
      out = get_incidents(
          st, parse_query(query, {"state", "severity", "agent", "test", "kind", "limit"}));
    } else if (first == "closed-untouched" && !is_post) {
      out = get_closed_untouched(st, parse_query(query, {"since"}));
    } else {
      auto id = id_param(first);
      parse_query(query, {});
      if (is_post) {
        out = post_incident_action(st, req, who, id, action);
      } else {
        auto& engine = incident_engine(st);
        auto i = engine.get(id);
        if (!i) throw HttpError(http::status::not_found, "no incident #" + std::to_string(id));
        out = shown(engine, *i, engine.now(), true);
      }
    }
    return {http::status::ok, out};
  };
  return dispatch_resource<IncidentError>(req, path, "/api/v1/incidents", methods, handle);
}

}  // namespace tocsin::collector::detail::api
