// The `tocsin` CLI's shared pieces: exit codes, the command registry every command family adds
// to, and the printing helpers (sanitised tables, JSON, CSV, times and clock bounds).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "collector/cli/api_client.hpp"

namespace tocsin::collector::cli {

using nlohmann::json;

constexpr int kExitApiError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitAuditBroken = 3;  // `audit verify`: the log is not intact

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A leaf subcommand and what runs when the command line selected it. Options are bound to
// state the closure owns (a shared_ptr), so it outlives parsing.
struct Command {
  CLI::App* sub;
  std::function<int(const ApiClient&)> run;
};
using Commands = std::vector<Command>;

// Each command family adds its subcommands to `app` and their runners to `out`.
void add_fleet_commands(CLI::App& app, Commands& out);     // token, api-token, agents, results
void add_runs_commands(CLI::App& app, Commands& out);      // runs, latency, alert-sources
void add_incident_commands(CLI::App& app, Commands& out);  // incidents, incident, notifications
void add_silence_commands(CLI::App& app, Commands& out);   // silence add/list/expire
void add_command_commands(CLI::App& app, Commands& out);   // command, approvals, audit

std::string url_encode(const std::string& s);
// Agents and SIEMs control many printed strings: no escape sequences reach the terminal.
std::string sanitize(const std::string& s);
// obj[key] as sanitised text, "-" when absent, null or empty.
std::string text(const json& obj, const std::string& key);
void print_table(const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows);
// RFC 4180 CSV: numeric columns carry plain numbers, the unit lives in the header.
void print_csv(const std::vector<std::string>& headers,
               const std::vector<std::vector<std::string>>& rows);
void print_json(const json& j);
// answer[key] when it is a list; otherwise a clear error about the server's answer.
const json& list_field(const json& answer, const std::string& key);
// "24h" reads as a window, "2026-01-01T00:00:00Z" as a point in time.
std::string since_text(const std::string& since);

// Milliseconds for people: "32.9 s", "812.0 ms", "0.412 ms", "12 µs"; "-" when not a number.
std::string ms_text(const json& v);
// A clock error bound: "± 12 µs", "± 1.3 ms"; never "± 0.0 ms" for a bound that is not zero.
std::string bound_text(const json& v);
// A number for a CSV cell ("" when absent): no unit, no rounding to zero.
std::string number_cell(const json& v);

// An id typed by a person: a clear error unless it is a positive integer.
std::uint64_t parse_id(const std::string& what, const std::string& text);
// The same as a CLI11 check on an option bound to an integer.
CLI::Validator id_check(const std::string& what);

// The known word closest to `word` by edit distance, or "" when none is close.
std::string closest(const std::string& word, const std::vector<std::string>& known);

}  // namespace tocsin::collector::cli
