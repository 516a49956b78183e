// Which code answers a request: route table, prefix matches, payloads, roles, error statuses.
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "common/log.hpp"
#include "common/payloads.hpp"

namespace tocsin::collector::detail::api {

ApiToken authorize(State& st, const Request& req, Role min_role) {
  auto field = req[http::field::authorization];
  std::string_view header(field.data(), field.size());
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size() ||
      !beast::iequals(beast::string_view(header.data(), kScheme.size()), "bearer "))
    throw HttpError(http::status::unauthorized,
                    "missing API token (send 'Authorization: Bearer <token>')");
  std::string token(header.substr(kScheme.size()));
  auto tok = st.registry.authenticate_api(token);
  if (!tok) throw HttpError(http::status::unauthorized, "unknown or revoked API token");
  if (tok->role < min_role)
    throw HttpError(http::status::forbidden, "requires role " + role_name(min_role));
  return *tok;
}

Response method_not_allowed(const Request& req, std::string_view path,
                            const std::vector<http::verb>& allowed) {
  std::string names, header;
  for (auto verb : allowed) {
    auto name = std::string(http::to_string(verb));
    names += (names.empty() ? "" : " and ") + name;
    header += (header.empty() ? "" : ", ") + name;
  }
  auto res = error_response(http::status::method_not_allowed,
                                    std::string(path) + " only accepts " + names, &req);
  res.set(http::field::allow, header);
  return res;
}

std::optional<std::pair<std::string_view, std::string_view>> resource_path(std::string_view path,
                                                                           std::string_view base) {
  if (path.substr(0, base.size()) != base) return std::nullopt;
  auto rest = path.substr(base.size());
  if (!rest.empty() && rest[0] != '/') return std::nullopt;
  if (!rest.empty()) rest.remove_prefix(1);
  auto slash = rest.find('/');
  return std::pair{rest.substr(0, slash),
                   slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1)};
}

namespace {

json get_health() {
  return {{"status", "ok"}, {"version", TOCSIN_VERSION}};
}

struct Route {
  std::string_view path;
  http::verb method;
  std::optional<Role> min_role;  // nullopt: no token needed
  std::vector<std::string> query_params;
  json (*get)(State&, const Params&);
  json (*post)(State&, const Request&, const ApiToken&);
};

const std::vector<Route>& routes() {
  static const std::vector<Route> kRoutes = {
      {"/api/v1/health", http::verb::get, std::nullopt, {}, nullptr, nullptr},
      {"/api/v1/enroll-tokens", http::verb::post, Role::admin, {}, nullptr, post_enroll_token},
      {"/api/v1/api-tokens", http::verb::post, Role::admin, {}, nullptr, post_api_token},
      {"/api/v1/agents", http::verb::get, Role::viewer, {}, get_agents, nullptr},
      {"/api/v1/results",
       http::verb::get,
       Role::viewer,
       {"agent", "since", "limit", "from_seq"},
       get_results,
       nullptr},
      {"/api/v1/security-events",
       http::verb::get,
       Role::viewer,
       {"since", "limit"},
       get_security_events,
       nullptr},
      {"/api/v1/runs",
       http::verb::get,
       Role::viewer,
       {"since", "state", "agent", "test", "limit"},
       get_runs,
       nullptr},
      {"/api/v1/latency", http::verb::get, Role::viewer, {"since", "by"}, get_latency, nullptr},
      {"/api/v1/detection-events",
       http::verb::get,
       Role::viewer,
       {"from_seq", "limit"},
       get_detection_events,
       nullptr},
      {"/api/v1/alert-sources", http::verb::get, Role::viewer, {}, get_alert_sources, nullptr},
      {"/api/v1/notifications",
       http::verb::get,
       Role::viewer,
       {"state", "limit"},
       get_notifications,
       nullptr},
      {"/api/v1/audit/verify", http::verb::get, Role::approver, {}, get_audit_verify, nullptr},
      {"/api/v1/audit/export",
       http::verb::get,
       Role::approver,
       {"since", "from_seq", "limit"},
       get_audit_export,
       nullptr},
  };
  return kRoutes;
}

Response dispatch(State& st, const Request& req) {
  std::string_view target(req.target().data(), req.target().size());
  auto qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  std::string_view query = qpos == std::string_view::npos ? "" : target.substr(qpos + 1);
  if (path.substr(0, 10) == "/payloads/") {
    // The standard test payloads for web probes, so no internet is needed; public (a proxy
    // fetches them for an agent that holds no API token) and fixed content.
    auto p = common::builtin_payload(path);
    if (!p)
      return error_response(http::status::not_found,
                                    "no such payload (eicar.com, eicar.zip, benign.txt)", &req);
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      auto res = error_response(http::status::method_not_allowed,
                                        "payloads only answer GET and HEAD", &req);
      res.set(http::field::allow, "GET, HEAD");
      return res;
    }
    Response res{http::status::ok, req.version()};
    res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
    res.set(http::field::content_type, p->content_type);
    res.set(http::field::content_disposition, "attachment; filename=\"" + p->name + "\"");
    res.set(http::field::cache_control, "no-store");
    res.keep_alive(req.keep_alive());
    res.body() = req.method() == http::verb::head ? std::string() : std::move(p->body);
    res.prepare_payload();
    if (req.method() == http::verb::head) res.content_length(p->body.size());
    return res;
  }
  if (auto res = dispatch_approval_link(st, req, path)) return std::move(*res);
  if (auto res = dispatch_incidents(st, req, path, query)) return std::move(*res);
  if (auto res = dispatch_silences(st, req, path, query)) return std::move(*res);
  if (auto res = dispatch_commands(st, req, path, query)) return std::move(*res);
  const auto& all = routes();
  auto route = std::find_if(all.begin(), all.end(), [&](const Route& r) { return r.path == path; });
  if (route == all.end())
    return error_response(http::status::not_found, "no such endpoint: " + std::string(path),
                                  &req);
  if (req.method() != route->method) return method_not_allowed(req, path, {route->method});
  if (!route->min_role) return make_response(http::status::ok, get_health(), &req);
  ApiToken who = authorize(st, req, *route->min_role);
  json out = route->post ? route->post(st, req, who)
                         : route->get(st, parse_query(query, route->query_params));
  return make_response(http::status::ok, out, &req);
}

// The request target as logs may show it: an approval link's token is a credential.
std::string loggable_target(const Request& req) {
  std::string t(req.target());
  if (t.rfind("/approve/", 0) == 0) return "/approve/<token>";
  return t;
}

}  // namespace

Response handle_request(State& st, const Request& req, const std::string& remote) {
  try {
    return dispatch(st, req);
  } catch (const HttpError& e) {
    if (e.status == http::status::unauthorized)
      spdlog::warn("api: {} {} from {}: {}", std::string(req.method_string()),
                   loggable_target(req), remote, e.what());
    auto res = error_response(e.status, e.what(), &req);
    if (e.status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
    return res;
  } catch (const std::exception& e) {
    spdlog::error("api: {} {} from {} failed: {}", std::string(req.method_string()),
                  loggable_target(req), remote, e.what());
    return error_response(http::status::internal_server_error,
                                  "internal error (see the collector log)", &req);
  }
}

}  // namespace tocsin::collector::detail::api
