// `tocsin` remote commands (request, approve, deny, list) and the audit log.
#include <iostream>
#include <memory>

#include "collector/cli/output.hpp"

namespace tocsin::collector::cli {

namespace {

// ---- commands -------------------------------------------------------------------------------

struct CommandArgs {
  std::string agent, restart, reason, recheck_test, recheck_after, state, deny_reason;
  std::uint64_t id = 0;
  bool as_json = false;
};

void print_commands(const json& list) {
  if (list.empty()) {
    std::cout << "No commands.\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : list) {
    std::string approvers;
    for (const auto& a : c.value("approvals", json::array()))
      approvers += (approvers.empty() ? "" : ",") + sanitize(a.value("who", ""));
    rows.push_back({text(c, "id"), text(c, "agent_id"), text(c, "kind") + " " + text(c, "target"),
                    text(c, "state"), text(c, "requester"), approvers.empty() ? "-" : approvers,
                    text(c, "requested"), text(c, "outcome_reason")});
  }
  print_table(
      {"ID", "AGENT", "ACTION", "STATE", "REQUESTER", "APPROVED BY", "REQUESTED", "OUTCOME"}, rows);
}

void print_command(const json& c) {
  std::cout << "Command #" << text(c, "id") << ": " << text(c, "kind") << " " << text(c, "target")
            << " on " << text(c, "agent_id") << "\n  state: " << text(c, "state")
            << "   requested by " << text(c, "requester") << " at " << text(c, "requested")
            << "\n  reason: " << text(c, "reason") << "\n";
  if (!c.value("expires", json()).is_null())
    std::cout << "  signed command expires: " << text(c, "expires") << "\n";
  if (c.value("state", "") == "awaiting_approval")
    std::cout << "  waiting for approval until " << text(c, "request_expires") << "\n";
}

int cmd_commands(const ApiClient& api, const std::string& verb, const CommandArgs& a) {
  if (verb == "request") {
    json body = {{"agent", a.agent},
                 {"kind", "restart_service"},
                 {"target", a.restart},
                 {"reason", a.reason}};
    if (!a.recheck_test.empty()) body["recheck_test"] = a.recheck_test;
    if (!a.recheck_after.empty()) body["recheck_after"] = a.recheck_after;
    json c = api.post("/api/v1/commands", body);
    if (a.as_json) return print_json(c), 0;
    print_command(c);
    std::cout << "An approver other than you must run: tocsin approve " << text(c, "id") << "\n";
    return 0;
  }
  if (verb == "approve" || verb == "deny") {
    auto path = "/api/v1/commands/" + std::to_string(a.id) + "/" + verb;
    json c = api.post(path, verb == "deny" ? json{{"reason", a.deny_reason}} : json::object());
    if (a.as_json) return print_json(c), 0;
    print_command(c);
    return 0;
  }
  std::string path = "/api/v1/commands?limit=1000";
  std::string state = verb == "approvals" ? "awaiting_approval" : a.state;
  if (!state.empty()) path += "&state=" + url_encode(state);
  json answer = api.get(path);
  const json& list = list_field(answer, "commands");
  if (a.as_json) return print_json(list), 0;
  print_commands(list);
  return 0;
}

// ---- audit log ------------------------------------------------------------------------------

int cmd_audit_verify(const ApiClient& api, bool as_json) {
  json r = api.get("/api/v1/audit/verify");
  if (as_json) print_json(r);
  bool ok = r.value("ok", false);
  if (!as_json && ok)
    std::cout << "audit log intact: " << text(r, "entries_checked") << " entries, head seq "
              << text(r, "head_seq") << ", key " << text(r, "key_fingerprint") << "\n";
  if (!as_json && !ok) {
    std::cout << "audit log NOT intact (" << text(r, "entries_checked") << " entries checked):\n";
    for (const auto& p : list_field(r, "problems"))
      std::cout << "  seq " << text(p, "seq") << ": " << text(p, "reason") << "\n";
    if (r.value("problems_truncated", false)) std::cout << "  (more problems not shown)\n";
  }
  return ok ? 0 : kExitAuditBroken;
}

// JSON lines for a SIEM: one entry per line, paging through the API until it runs dry.
int cmd_audit_export(const ApiClient& api, const std::string& since) {
  constexpr int kPage = 1000;
  std::uint64_t from = 1;
  for (;;) {
    json r = api.get("/api/v1/audit/export?since=" + url_encode(since) +
                     "&from_seq=" + std::to_string(from) + "&limit=" + std::to_string(kPage));
    const json& list = list_field(r, "entries");
    for (const auto& e : list)
      std::cout << e.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    auto next = r.value("next_from_seq", from);
    if (list.size() < static_cast<std::size_t>(kPage) || next <= from) break;
    from = next;
  }
  std::cout.flush();
  return std::cout ? 0 : kExitApiError;
}

}  // namespace

void add_command_commands(CLI::App& app, Commands& out) {
  auto ca = std::make_shared<CommandArgs>();
  auto* command = app.add_subcommand("command", "Ask an agent to act (operator)");
  command->require_subcommand(1);
  auto* command_request = command->add_subcommand(
      "request", "Request a service restart; it runs once an approver other than you approves");
  command_request->add_option("--agent", ca->agent, "The agent's id")->required();
  command_request
      ->add_option("--restart", ca->restart, "The service to restart (on the agent's allowlist)")
      ->required();
  command_request->add_option("--reason", ca->reason, "Why (shown to the approver, audited)");
  command_request->add_option("--recheck", ca->recheck_test,
                              "A test the agent runs again afterwards");
  command_request->add_option("--recheck-after", ca->recheck_after, "When to run it, e.g. 180s");
  command_request->add_flag("--json", ca->as_json, "Print JSON");
  auto* commands_list = app.add_subcommand("commands", "Commands and their state (viewer)");
  commands_list->add_option("--state", ca->state, "Only this state")
      ->check(CLI::IsMember({"awaiting_approval", "approved", "delivered", "executed", "failed",
                             "refused", "denied", "expired"}));
  commands_list->add_flag("--json", ca->as_json, "Print JSON");
  auto* approvals = app.add_subcommand("approvals", "Commands waiting for approval (viewer)");
  approvals->add_flag("--json", ca->as_json, "Print JSON");
  auto* approve =
      app.add_subcommand("approve", "Approve a command (approver; not your own request)");
  approve->add_option("ID", ca->id, "Command number")->required()->check(id_check("command id"));
  approve->add_flag("--json", ca->as_json, "Print JSON");
  auto* deny = app.add_subcommand("deny", "Deny a command with a reason (approver)");
  deny->add_option("ID", ca->id, "Command number")->required()->check(id_check("command id"));
  deny->add_option("REASON", ca->deny_reason, "Why")->required();
  deny->add_flag("--json", ca->as_json, "Print JSON");
  for (auto [verb, sub] : {std::pair{"request", command_request},
                           {"commands", commands_list},
                           {"approvals", approvals},
                           {"approve", approve},
                           {"deny", deny}})
    out.push_back({sub, [verb = std::string(verb), ca](const ApiClient& api) {
                     return cmd_commands(api, verb, *ca);
                   }});

  auto* audit = app.add_subcommand("audit", "The tamper-evident audit log (approver)");
  audit->require_subcommand(1);
  auto* audit_verify = audit->add_subcommand(
      "verify", "Check the whole audit chain; exit 0 when intact, 3 naming each problem");
  auto audit_json = std::make_shared<bool>(false);
  audit_verify->add_flag("--json", *audit_json, "Print the JSON answer instead");
  out.push_back({audit_verify, [audit_json](const ApiClient& api) {
                   return cmd_audit_verify(api, *audit_json);
                 }});
  auto* audit_export =
      audit->add_subcommand("export", "Print audit entries as JSON lines (for a SIEM)");
  auto audit_since = std::make_shared<std::string>("7d");
  audit_export
      ->add_option("--since", *audit_since, "How far back: a duration (1h, 7d) or an RFC 3339 time")
      ->capture_default_str();
  out.push_back({audit_export, [audit_since](const ApiClient& api) {
                   return cmd_audit_export(api, *audit_since);
                 }});
}

}  // namespace tocsin::collector::cli
