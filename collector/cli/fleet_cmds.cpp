// `tocsin` fleet commands: enrollment and API tokens, agents, results, security events.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "collector/cli/output.hpp"

namespace tocsin::collector::cli {

namespace {

// An agent whose clock is off by more than this is flagged: its timestamps still get corrected,
// but an offset this large means its time sync is broken and bounds may not hold.
constexpr double kLargeOffsetMs = 1000;

std::string format_ms(double ms) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%+.1f", ms);
  return buf;
}

std::string clock_text(const json& a) {
  const json& err = a.value("clock_error_ms", json());
  if (!err.is_number()) return "not synchronised";
  return format_ms(a.value("clock_offset_ms", 0.0)) + " ms " + bound_text(err);
}

// "UNSYNCED" when the agent never measured its offset, "OFFSET > 1 s" when it is large.
std::string clock_flag(const json& a) {
  if (!a.value("clock_error_ms", json()).is_number() || !a.value("clock_synced", true))
    return "UNSYNCED";
  const json& off = a.value("clock_offset_ms", json());
  if (off.is_number() && std::abs(off.get<double>()) > kLargeOffsetMs) return "OFFSET > 1 s";
  return "ok";
}

int cmd_agents(const ApiClient& api, bool as_json) {
  const json answer = api.get("/api/v1/agents");
  const json& agents = list_field(answer, "agents");
  if (as_json) return print_json(agents), 0;
  if (agents.empty()) return std::cout << "No agents enrolled.\n", 0;
  std::vector<std::vector<std::string>> rows;
  std::size_t flagged = 0;
  for (const auto& a : agents) {
    std::string flag = clock_flag(a);
    flagged += flag != "ok";
    rows.push_back({text(a, "agent_id") + (a.value("revoked", false) ? " (revoked)" : ""),
                    text(a, "hostname"), text(a, "os"), text(a, "results"), text(a, "last_seen"),
                    clock_text(a), flag});
  }
  print_table({"AGENT", "HOSTNAME", "OS", "RESULTS", "LAST SEEN", "CLOCK OFFSET", "CLOCK"}, rows);
  if (flagged)
    std::cout << "\n"
              << flagged
              << " agent(s) with an unsynchronised clock or an offset above 1 s: their "
                 "time-to-alert figures are flagged or excluded.\n";
  return 0;
}

struct ResultsQuery {
  std::string agent;
  std::string since = "24h";
  int limit = 1000;
  bool as_json = false;
};

int cmd_results(const ApiClient& api, const ResultsQuery& q) {
  std::string path =
      "/api/v1/results?since=" + url_encode(q.since) + "&limit=" + std::to_string(q.limit);
  if (!q.agent.empty()) path += "&agent=" + url_encode(q.agent);
  const json answer = api.get(path);
  const json& results = list_field(answer, "results");
  if (q.as_json) return print_json(results), 0;
  if (results.empty()) return std::cout << "No results since " << since_text(q.since) << ".\n", 0;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> problems;
  for (const auto& r : results) {
    bool ok = r.value("verified", false);
    rows.push_back({text(r, "received_at"), text(r, "agent_id"), text(r, "seq"), text(r, "test_id"),
                    text(r, "target"), text(r, "verdict"), text(r, "reason"),
                    ok ? "verified" : "INVALID"});
    if (!ok)
      problems.push_back(text(r, "agent_id") + " seq " + text(r, "seq") + ": " +
                         text(r, "verify_error"));
  }
  print_table({"RECEIVED", "AGENT", "SEQ", "TEST", "TARGET", "VERDICT", "REASON", "SIGNATURE"},
              rows);
  std::cout << "\n"
            << results.size() << " of " << text(answer, "total")
            << (answer.value("total_is_lower_bound", false) ? "+" : "") << " result(s) since "
            << since_text(q.since) << ", newest first.\n";
  if (!problems.empty()) {
    std::cout << "\n" << problems.size() << " result(s) failed verification:\n";
    for (const auto& p : problems) std::cout << "  INVALID " << p << "\n";
  }
  return 0;
}

int cmd_security_events(const ApiClient& api, const std::string& since, int limit, bool as_json) {
  const json answer = api.get("/api/v1/security-events?since=" + url_encode(since) +
                              "&limit=" + std::to_string(limit));
  const json& events = list_field(answer, "events");
  if (as_json) return print_json(events), 0;
  if (events.empty())
    return std::cout << "No security events since " << since_text(since) << ".\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : events)
    rows.push_back({text(e, "time"), text(e, "kind"), text(e, "agent_id"), text(e, "remote"),
                    text(e, "detail")});
  print_table({"TIME", "KIND", "AGENT", "REMOTE", "DETAIL"}, rows);
  return 0;
}

}  // namespace

void add_fleet_commands(CLI::App& app, Commands& out) {
  auto* token = app.add_subcommand("token", "Enrollment tokens for new agents (admin)");
  token->require_subcommand(1);
  auto* token_create = token->add_subcommand(
      "create",
      "Create a single-use enrollment token; the token is printed alone on the last line");
  auto ttl = std::make_shared<std::string>("1h");
  token_create->add_option("--ttl", *ttl, "How long the token stays valid (30m, 1h, 2d, ...)")
      ->capture_default_str();
  out.push_back({token_create, [ttl](const ApiClient& api) {
                   json r = api.post("/api/v1/enroll-tokens", json{{"ttl", *ttl}});
                   std::cout << "Single-use enrollment token, valid until " << text(r, "expires_at")
                             << ":\n"
                             << text(r, "token") << "\n";
                   return 0;
                 }});

  auto* api_token = app.add_subcommand("api-token", "API tokens for people and scripts (admin)");
  api_token->require_subcommand(1);
  auto* api_token_create = api_token->add_subcommand(
      "create", "Create an API token; the token is printed alone on the last line");
  auto nr = std::make_shared<std::pair<std::string, std::string>>();
  api_token_create->add_option("--name", nr->first, "Who or what the token is for")->required();
  api_token_create
      ->add_option("--role", nr->second,
                   "What the token may do: viewer, approver, operator or admin")
      ->required()
      ->check(CLI::IsMember({"viewer", "approver", "operator", "admin"}));
  out.push_back(
      {api_token_create, [nr](const ApiClient& api) {
         json r = api.post("/api/v1/api-tokens", json{{"name", nr->first}, {"role", nr->second}});
         std::cout << "API token '" << text(r, "name") << "' with role " << text(r, "role")
                   << " (shown only now; store it like a password):\n"
                   << text(r, "token") << "\n";
         return 0;
       }});

  auto* agents = app.add_subcommand(
      "agents", "List enrolled agents; flags unsynchronised clocks and offsets above 1 s (viewer)");
  auto agents_json = std::make_shared<bool>(false);
  agents->add_flag("--json", *agents_json, "Print the JSON array instead of a table");
  out.push_back(
      {agents, [agents_json](const ApiClient& api) { return cmd_agents(api, *agents_json); }});

  auto* results = app.add_subcommand(
      "results", "List received results, newest first, and re-verify their signatures (viewer)");
  auto rq = std::make_shared<ResultsQuery>();
  results->add_option("--agent", rq->agent, "Only results of this agent id (default: all agents)");
  results
      ->add_option("--since", rq->since,
                   "How far back: a duration (1h, 7d) or an RFC 3339 UTC time")
      ->capture_default_str();
  results->add_option("--limit", rq->limit, "At most this many results, newest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  results->add_flag("--json", rq->as_json, "Print the JSON array instead of a table");
  out.push_back({results, [rq](const ApiClient& api) { return cmd_results(api, *rq); }});

  auto* events = app.add_subcommand(
      "security-events", "List security events: forged signatures, replays, bad tokens (viewer)");
  struct Ev {
    std::string since = "7d";
    int limit = 1000;
    bool as_json = false;
  };
  auto ev = std::make_shared<Ev>();
  events
      ->add_option("--since", ev->since,
                   "How far back: a duration (1h, 7d) or an RFC 3339 UTC time")
      ->capture_default_str();
  events->add_option("--limit", ev->limit, "At most this many events, oldest first")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  events->add_flag("--json", ev->as_json, "Print the JSON array instead of a table");
  out.push_back({events, [ev](const ApiClient& api) {
                   return cmd_security_events(api, ev->since, ev->limit, ev->as_json);
                 }});
}

}  // namespace tocsin::collector::cli
