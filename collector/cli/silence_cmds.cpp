// `tocsin silence`: Alertmanager-style silences (matchers, an end time, a reason) that keep
// matching failures from opening incidents or notifying, while still counting them.
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>

#include "collector/cli/output.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"

namespace tocsin::collector::cli {

namespace {

struct SilenceArgs {
  std::string test, agent, kind, until, reason;
  std::vector<std::string> labels;  // K=V
};

// The request body, or a UsageError naming what is missing or malformed.
json silence_body(const SilenceArgs& a) {
  if (a.test.empty() && a.agent.empty() && a.kind.empty() && a.labels.empty())
    throw UsageError(
        "a silence needs at least one matcher: --test, --agent, --label K=V or --kind");
  json labels = json::object();
  for (const auto& l : a.labels) {
    auto eq = l.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--label must be KEY=VALUE, got '" + sanitize(l) + "'");
    auto key = l.substr(0, eq);
    if (labels.contains(key)) throw UsageError("--label '" + sanitize(key) + "' is given twice");
    labels[key] = l.substr(eq + 1);
  }
  if (a.reason.find_first_not_of(" \t") == std::string::npos)
    throw UsageError("--reason must say why (it is shown on every silenced incident)");
  try {
    auto now = common::now_ns();
    if (a.until.find('T') == std::string::npos) {
      if (common::parse_duration(a.until).count() <= 0) throw std::invalid_argument("zero");
    } else if (common::parse_since(a.until, now) <= now) {
      throw UsageError("--until " + sanitize(a.until) + " is in the past");
    }
  } catch (const std::invalid_argument&) {
    throw UsageError("--until must be a duration from now (2h, 7d) or an RFC 3339 time, got '" +
                     sanitize(a.until) + "'");
  }
  json body = {{"until", a.until}, {"reason", a.reason}};
  if (!a.test.empty()) body["test"] = a.test;
  if (!a.agent.empty()) body["agent"] = a.agent;
  if (!a.kind.empty()) body["kind"] = a.kind;
  if (!labels.empty()) body["labels"] = labels;
  return body;
}

std::string matchers_text(const json& s) {
  const json& m = s.value("matchers", json::object());
  std::string out;
  for (const char* k : {"test", "agent", "kind"})
    if (m.is_object() && m.value(k, json()).is_string() && !m[k].get<std::string>().empty())
      out += (out.empty() ? "" : " ") + std::string(k) + "=" + sanitize(m[k].get<std::string>());
  if (m.is_object() && m.value("labels", json()).is_object())
    for (const auto& [k, v] : m["labels"].items())
      out += (out.empty() ? "" : " ") + sanitize(k) + "=" +
             sanitize(v.is_string() ? v.get<std::string>() : v.dump());
  return out.empty() ? "-" : out;
}

void print_silence(const json& s) {
  std::cout << "Silence " << text(s, "id") << " (" << text(s, "state") << "): " << matchers_text(s)
            << "\n  until:   " << text(s, "until") << "\n  reason:  " << text(s, "reason")
            << "\n  created: " << text(s, "created_at") << " by " << text(s, "created_by")
            << "\n  silenced signals: " << text(s, "silenced_signals") << "\n";
  if (!s.value("expired_at", json()).is_null())
    std::cout << "  expired: " << text(s, "expired_at") << " by " << text(s, "expired_by") << "\n";
}

struct ListArgs {
  bool all = false, expired = false, as_json = false;
};

int cmd_list(const ApiClient& api, const ListArgs& a) {
  std::string state = a.all ? "all" : a.expired ? "expired" : "active";
  const json answer = api.get("/api/v1/silences?state=" + state);
  const json& list = list_field(answer, "silences");
  if (a.as_json) return print_json(list), 0;
  if (list.empty()) return std::cout << "No " << (a.all ? "" : state + " ") << "silences.\n", 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : list)
    rows.push_back({text(s, "id"), text(s, "state"), matchers_text(s), text(s, "until"),
                    text(s, "silenced_signals"), text(s, "created_by"), text(s, "reason")});
  print_table({"ID", "STATE", "MATCHERS", "UNTIL", "SILENCED", "BY", "REASON"}, rows);
  return 0;
}

}  // namespace

void add_silence_commands(CLI::App& app, Commands& out) {
  auto* silence = app.add_subcommand(
      "silence", "Silences: matching failures are counted but open and notify nothing (operator)");
  silence->require_subcommand(1);

  auto* add = silence->add_subcommand(
      "add", "Silence failures matching all the given matchers until a time, with a reason");
  auto a = std::make_shared<SilenceArgs>();
  auto add_json = std::make_shared<bool>(false);
  add->add_option("--test", a->test, "Match this test id");
  add->add_option("--agent", a->agent, "Match this agent id");
  add->add_option("--kind", a->kind, "Match this incident kind (prevention_failed, ...)");
  add->add_option("--label", a->labels, "Match this label, KEY=VALUE; repeatable");
  add->add_option("--until", a->until, "When it ends: a duration from now (2h, 7d) or RFC 3339")
      ->required();
  add->add_option("--reason", a->reason, "Why (shown on every silenced incident)")->required();
  add->add_flag("--json", *add_json, "Print JSON");
  add->parse_complete_callback([a] {
    try {
      silence_body(*a);
    } catch (const UsageError& e) {
      throw CLI::ValidationError(e.what());
    }
  });
  out.push_back({add, [a, add_json](const ApiClient& api) {
                   json r = api.post("/api/v1/silences", silence_body(*a));
                   const json s = r.value("silence", json());
                   if (*add_json) return print_json(s), 0;
                   print_silence(s);
                   return 0;
                 }});

  auto* list = silence->add_subcommand("list", "Active silences (viewer)");
  auto la = std::make_shared<ListArgs>();
  auto* all = list->add_flag("--all", la->all, "Active and expired silences");
  list->add_flag("--expired", la->expired, "Only expired silences")->excludes(all);
  list->add_flag("--json", la->as_json, "Print the JSON array");
  out.push_back({list, [la](const ApiClient& api) { return cmd_list(api, *la); }});

  auto* expire = silence->add_subcommand("expire", "End a silence now (operator)");
  auto id_text = std::make_shared<std::string>();
  auto expire_json = std::make_shared<bool>(false);
  expire->add_option("ID", *id_text, "The silence's id")->required();
  expire->add_flag("--json", *expire_json, "Print JSON");
  expire->parse_complete_callback([id_text] {
    // Ids are the server's strings (see `silence list`): printable, no spaces, bounded.
    const auto& t = *id_text;
    bool ok = !t.empty() && t.size() <= 128 && std::all_of(t.begin(), t.end(), [](char c) {
      return static_cast<unsigned char>(c) > 0x20 && c != 0x7f && c != '/';
    });
    if (!ok)
      throw CLI::ValidationError(
          "silence id must be an id as `tocsin silence list` shows it, got '" +
          sanitize(t.substr(0, 40)) + "'");
  });
  out.push_back({expire, [id_text, expire_json](const ApiClient& api) {
                   json r = api.post("/api/v1/silences/" + url_encode(*id_text) + "/expire",
                                     json::object());
                   const json s = r.value("silence", json());
                   if (*expire_json) return print_json(s), 0;
                   print_silence(s);
                   return 0;
                 }});
}

}  // namespace tocsin::collector::cli
