// The one-time approval links mailed to approvers: the page, and its form's approve or deny.
#include <boost/beast/http.hpp>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "collector/commands/commands.hpp"
#include "collector/html/html.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"

namespace tocsin::collector::detail::api {

// GET /approve/<token> shows what would happen and a form; only the form's POST decides. No
// API token: the signed, expiring, single-use link is the credential (CommandEngine checks it).

namespace {

Response html_response(http::status status, const std::string& title, const std::string& body,
                       const Request& req) {
  Response res{status, req.version()};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "text/html; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  res.set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'");
  res.set("X-Frame-Options", "DENY");
  res.set("Referrer-Policy", "no-referrer");
  res.set("X-Content-Type-Options", "nosniff");
  res.keep_alive(req.keep_alive());
  res.body() = html_page(title, "<h2>" + html_escape(title) + "</h2>\n" + body);
  res.prepare_payload();
  if (req.method() == http::verb::head) {
    auto length = res.body().size();
    res.body().clear();
    res.content_length(length);
  }
  return res;
}

std::string command_facts_html(const CommandRecord& c, std::size_t approvals_required) {
  std::vector<std::pair<std::string, std::string>> f{
      {"Command", "cmd-" + std::to_string(c.id)},
      {"What will happen", "The agent " + c.agent_id + " will restart " + c.target +
                               " (if its own allowlist permits it)"},
      {"Requested by", c.requester + " at " + common::format_time(c.requested_ns)},
      {"Reason", c.reason},
      {"Approvals so far", std::to_string(c.approvals.size()) + " of " + std::to_string(approvals_required)},
      {"State", command_state_name(c.state)},
      {"Decide before", common::format_time(c.request_expires_ns)}};
  if (c.incident_id) f.push_back({"Incident", "#" + std::to_string(c.incident_id)});
  if (!c.recheck_test.empty())
    f.push_back({"Then", "re-run " + c.recheck_test + " after " +
                             std::to_string(c.recheck_after_ns / 1'000'000'000) + " s"});
  return html_kv_table(f);
}

}  // namespace

std::optional<Response> dispatch_approval_link(State& st, const Request& req, std::string_view path) {
  constexpr std::string_view kBase = "/approve/";
  if (path.substr(0, kBase.size()) != kBase) return std::nullopt;
  if (!st.alerting.commands)
    return html_response(http::status::service_unavailable, "Approvals are not available",
                         "<p>This collector has no command engine.</p>", req);
  auto& engine = *st.alerting.commands;
  std::string token(path.substr(kBase.size()));
  ApprovalLink link;
  try {
    link = engine.check_link(token);
  } catch (const CommandError& e) {
    spdlog::warn("api: refused an approval link: {}", e.what());
    return html_response(http::status::not_found, "Not a valid approval link",
                         "<p>" + html_escape(e.what()) + "</p>", req);
  }
  const auto required = engine.policy().approvals_required;
  if (req.method() == http::verb::get || req.method() == http::verb::head) {
    auto c = engine.get(link.command_id);
    if (!c)
      return html_response(http::status::not_found, "No such command",
                           "<p>The command this link was made for does not exist.</p>", req);
    bool used = std::find(c->used_links.begin(), c->used_links.end(), link.link_id) != c->used_links.end();
    bool expired = common::now_ns() >= link.expires_ns;
    std::string body = "<p>For <b>" + html_escape(link.approver) + "</b>. Opening this page changed nothing.</p>\n" +
                       command_facts_html(*c, required);
    if (used || expired || c->state != CommandState::awaiting_approval) {
      std::string why = used ? "This link was already used." : expired ? "This link has expired."
                                                                       : "This request is no longer waiting for approval.";
      return html_response(http::status::ok, "Restart request cmd-" + std::to_string(c->id),
                           body + "<p><b>" + html_escape(why) + "</b> Nothing can be decided with it.</p>\n", req);
    }
    body += "<form method=\"post\"><input type=\"hidden\" name=\"decision\" value=\"approve\">"
            "<button type=\"submit\">Approve the restart</button></form>\n"
            "<form method=\"post\"><input type=\"hidden\" name=\"decision\" value=\"deny\">"
            "<p><label>Why deny? <input type=\"text\" name=\"reason\" maxlength=\"1000\" required></label> "
            "<button type=\"submit\">Deny</button></p></form>\n"
            "<p>This link works once and expires at " + html_escape(common::format_time(link.expires_ns)) + ".</p>\n";
    return html_response(http::status::ok, "Approve a restart? (cmd-" + std::to_string(c->id) + ")", body, req);
  }
  if (req.method() != http::verb::post) {
    auto res = html_response(http::status::method_not_allowed, "Method not allowed",
                             "<p>Open the link, then confirm on the page.</p>", req);
    res.set(http::field::allow, "GET, POST");
    return res;
  }
  auto form = parse_query(req.body(), {"decision", "reason"});
  auto decision = param(form, "decision", "");
  try {
    CommandRecord c;
    std::string title;
    if (decision == "approve") {
      c = engine.approve_by_link(token);
      title = c.state == CommandState::approved
                  ? "Approved: cmd-" + std::to_string(c.id) + " is signed and goes to the agent at its next poll"
                  : "Approval recorded: cmd-" + std::to_string(c.id) + " waits for more approvers";
    } else if (decision == "deny") {
      c = engine.deny_by_link(token, param(form, "reason", ""));
      title = "Denied: cmd-" + std::to_string(c.id) + " will not run";
    } else {
      return html_response(http::status::bad_request, "Nothing decided",
                           "<p>The form must say decision=approve or decision=deny.</p>", req);
    }
    return html_response(http::status::ok, title, command_facts_html(c, required), req);
  } catch (const CommandError& e) {
    return html_response(http::status::conflict, "Nothing decided", "<p>" + html_escape(e.what()) + "</p>", req);
  }
}

}  // namespace tocsin::collector::detail::api
