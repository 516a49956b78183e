// Remote commands (docs/COMMANDS.md) with an API token: list, request, approve, deny.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "collector/commands/commands.hpp"
#include "common/config.hpp"

namespace tocsin::collector::detail::api {

// GET /api/v1/commands[?state=&limit=] and /api/v1/commands/N (viewer); POST /api/v1/commands
// {agent, kind, target, reason, recheck_test, recheck_after} (operator); POST
// /api/v1/commands/N/approve and /deny {reason} (approver, never the requester).

namespace {

CommandEngine& command_engine(State& st) {
  if (!st.alerting.commands)
    throw HttpError(http::status::service_unavailable,
                    "commands are not enabled in this collector");
  return *st.alerting.commands;
}

json get_commands(CommandEngine& engine, std::string_view query) {
  auto p = parse_query(query, {"state", "limit"});
  std::optional<CommandState> state;
  if (auto s = param(p, "state", ""); !s.empty()) {
    state = parse_command_state(s);
    if (!state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + s +
                          "' (use awaiting_approval, approved, delivered, executed, failed, "
                          "refused, denied, expired)");
  }
  json list = json::array();
  for (const auto& c : engine.list(state, limit_param(p))) list.push_back(command_json(c));
  return {{"commands", std::move(list)}};
}

json post_command(CommandEngine& engine, const Request& req, const ApiToken& who) {
  json body = parse_body_object(
      req, {"agent", "kind", "target", "reason", "recheck_test", "recheck_after", "incident_id"});
  CommandRequest r;
  r.agent_id = required_body_text(body, "agent");
  r.kind = string_field(body, "kind").value_or("restart_service");
  r.target = required_body_text(body, "target");
  r.reason = string_field(body, "reason").value_or("");
  r.requester = who.name;
  r.recheck_test = string_field(body, "recheck_test").value_or("");
  if (auto inc = body.find("incident_id"); inc != body.end() && !inc->is_null()) {
    if (!inc->is_number_unsigned())
      throw HttpError(http::status::bad_request, "'incident_id' must be an incident number");
    r.incident_id = inc->get<std::uint64_t>();
  }
  if (auto ra = string_field(body, "recheck_after"); ra && !ra->empty()) {
    try {
      r.recheck_after_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(common::parse_duration(*ra)).count();
    } catch (const std::exception& e) {
      throw HttpError(http::status::bad_request, "recheck_after: " + std::string(e.what()));
    }
  }
  return command_json(engine.request(r));
}

// GET /api/v1/commands/N, or POST /api/v1/commands/N/<action>.
json command_by_id(CommandEngine& engine, const Request& req, const ApiToken& who,
                   std::string_view first, std::string_view action, std::string_view query) {
  bool is_post = req.method() == http::verb::post;
  parse_query(query, {});
  auto id = id_param(first, "command");
  if (!is_post) {
    auto c = engine.get(id);
    if (!c) throw HttpError(http::status::not_found, "no command #" + std::to_string(id));
    return command_json(*c);
  }
  if (action == "approve") {
    parse_body_object(req, {});
    return command_json(engine.approve(id, who.name));
  }
  if (action == "deny")
    return command_json(engine.deny(
        id, who.name, required_body_text(parse_body_object(req, {"reason"}), "reason")));
  throw HttpError(http::status::not_found,
                  "no such command action '" + std::string(action) + "' (use approve, deny)");
}

}  // namespace

std::optional<Response> dispatch_commands(State& st, const Request& req, std::string_view path,
                                          std::string_view query) {
  auto methods = [](std::string_view, std::string_view) {
    return std::vector{http::verb::get, http::verb::post};
  };
  // A CommandError (not awaiting approval, the requester approving) is a 409: dispatch_resource.
  auto handle = [&](std::string_view first,
                    std::string_view action) -> std::pair<http::status, json> {
    bool is_post = req.method() == http::verb::post;
    Role need = !is_post ? Role::viewer : first.empty() ? Role::operator_ : Role::approver;
    ApiToken who = authorize(st, req, need);
    auto& engine = command_engine(st);
    if (first.empty() && !is_post) return {http::status::ok, get_commands(engine, query)};
    if (first.empty()) return {http::status::created, post_command(engine, req, who)};
    return {http::status::ok, command_by_id(engine, req, who, first, action, query)};
  };
  return dispatch_resource<CommandError>(req, path, "/api/v1/commands", methods, handle);
}

}  // namespace tocsin::collector::detail::api
