// Every endpoint, declared under the file that implements it: the API's table of contents.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "collector/alerts/hooks.hpp"
#include "collector/api/detail.hpp"

namespace tocsin::collector::detail::api {

// ---- routes.cpp -------------------------------------------------------------------------------

// Any request but an alert: routed, authorized and answered; errors become their status here.
Response handle_request(State& st, const Request& req, const std::string& remote);

// ---- fleet.cpp: tokens, agents, their results and security events -----------------------------

json post_enroll_token(State& st, const Request& req, const ApiToken& who);
json post_api_token(State& st, const Request& req, const ApiToken& who);
json get_agents(State& st, const Params& p);
json get_results(State& st, const Params& p);
json get_security_events(State& st, const Params& p);

// ---- runs.cpp: test runs, detection latency and the alert sources -----------------------------

json get_runs(State& st, const Params& p);
json get_latency(State& st, const Params& p);
json get_detection_events(State& st, const Params& p);
json get_alert_sources(State& st, const Params& p);

// ---- incidents.cpp, silences.cpp, commands.cpp, approval_page.cpp: matched by prefix ----------

std::optional<Response> dispatch_incidents(State& st, const Request& req, std::string_view path,
                                           std::string_view query);
std::optional<Response> dispatch_silences(State& st, const Request& req, std::string_view path,
                                          std::string_view query);
std::optional<Response> dispatch_commands(State& st, const Request& req, std::string_view path,
                                          std::string_view query);
std::optional<Response> dispatch_approval_link(State& st, const Request& req,
                                               std::string_view path);

// ---- notifications.cpp, audit.cpp -------------------------------------------------------------

json get_notifications(State& st, const Params& p);
json get_audit_verify(State& st, const Params& p);
json get_audit_export(State& st, const Params& p);

// ---- hooks.cpp: alert intake, answered once the correlator has stored the alerts --------------

HookRequest hook_request(const Request& req, std::int64_t arrival_ns);
Response hook_response(const Request& req, const HookReply& r);
awaitable<Response> handle_hook(State& st, const Request& req, std::int64_t arrival_ns);

}  // namespace tocsin::collector::detail::api
