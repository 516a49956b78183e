// The `tocsin` admin CLI: parses the command line, calls the collector's HTTPS API through
// ApiClient and prints tables or JSON. It never opens the collector's database. The command
// families live beside this file (fleet, runs, incidents, silences, commands and audit).
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "collector/cli/output.hpp"
#include "common/crypto.hpp"

namespace fs = std::filesystem;
using namespace tocsin::collector::cli;
using tocsin::collector::ApiClient;
using tocsin::collector::ApiError;

namespace {

struct GlobalOptions {
  std::string server = "https://127.0.0.1:7444";
  std::string token_file;
  std::string ca;
  int timeout_s = 15;
};

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

ApiClient make_client(const GlobalOptions& g) {
  if (g.token_file.empty())
    throw UsageError("no API token: pass --token-file or set TOCSIN_TOKEN_FILE");
  std::string token;
  try {
    token = trim(tocsin::common::read_file(g.token_file, 4096));
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot read token file: " + std::string(e.what()));
  }
  if (token.empty()) throw std::runtime_error("token file " + g.token_file + " is empty");
  fs::path ca = g.ca.empty() ? fs::path(g.token_file).parent_path() / "ca.pem" : fs::path(g.ca);
  std::error_code ec;
  if (!fs::is_regular_file(ca, ec))
    throw std::runtime_error("collector CA certificate " + ca.string() +
                             " not found (pass --ca with the collector's ca.pem)");
  return ApiClient(g.server, token, ca, g.timeout_s * 1000L);
}

std::string check_https(const std::string& url) {
  return url.rfind("https://", 0) == 0
             ? std::string()
             : "must be an https:// URL (the token is never sent in clear)";
}

// CLI11 answers a mistyped subcommand with "A subcommand is required", which names neither
// the word nor the fix. Walk the words that select subcommands (skipping global options and
// their values) and name the first one that is not a subcommand, with the closest that is.
std::optional<std::string> unknown_subcommand(CLI::App& app, int argc, char** argv) {
  CLI::App* cur = &app;
  std::string path = "tocsin";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    if (a.size() > 1 && a[0] == '-') {
      if (a.find('=') != std::string::npos) continue;
      const CLI::Option* opt = cur->get_option_no_throw(a);
      if (!opt) opt = app.get_option_no_throw(a);
      if (opt && opt->get_expected_min() > 0) ++i;
      continue;
    }
    auto subs = cur->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) break;  // a leaf command: the remaining words are its own arguments
    CLI::App* next = nullptr;
    std::vector<std::string> names;
    for (auto* s : subs) {
      if (s->check_name(a)) next = s;
      names.push_back(s->get_name());
    }
    if (!next) {
      std::string msg = "unknown command '" + sanitize(a.substr(0, 64)) + "' for '" + path + "'";
      if (auto best = closest(a, names); !best.empty()) msg += "; did you mean '" + best + "'?";
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      return msg + "\n  commands: " + list + "\n  (see " + path + " --help)";
    }
    cur = next;
    path += " " + next->get_name();
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tocsin: administer a Tocsin collector through its HTTPS API."};
  app.set_version_flag("--version", std::string(TOCSIN_VERSION));
  app.require_subcommand(1);
  app.fallthrough();  // global options are accepted after the subcommand too

  GlobalOptions g;
  app.add_option("--server", g.server, "Collector API base URL")
      ->envname("TOCSIN_SERVER")
      ->check(check_https)
      ->capture_default_str();
  app.add_option("--token-file", g.token_file,
                 "File holding the API token (e.g. <data dir>/admin.token)")
      ->envname("TOCSIN_TOKEN_FILE");
  app.add_option("--ca", g.ca,
                 "Collector CA certificate to pin (default: ca.pem beside the token file)");
  app.add_option("--timeout", g.timeout_s, "Seconds to wait for the collector's answer")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();

  Commands commands;
  add_fleet_commands(app, commands);
  add_runs_commands(app, commands);
  add_incident_commands(app, commands);
  add_silence_commands(app, commands);
  add_command_commands(app, commands);
  for (const auto& c : commands)
    c.sub->footer(
        "Global options (--server, --token-file, --ca, --timeout) may follow the "
        "subcommand; see tocsin --help.");

  if (auto unknown = unknown_subcommand(app, argc, argv)) {
    std::cerr << "tocsin: " << *unknown << "\n";
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  try {
    for (const auto& c : commands)
      if (*c.sub) {
        ApiClient api = make_client(g);
        return c.run(api);
      }
    return kExitUsage;  // require_subcommand makes this unreachable
  } catch (const UsageError& e) {
    std::cerr << "tocsin: " << e.what() << "\n";
    return kExitUsage;
  } catch (const ApiError& e) {
    std::cerr << "tocsin: " << e.what();
    if (e.status != 0) std::cerr << " (HTTP " << e.status << ")";
    std::cerr << "\n";
    return kExitApiError;
  } catch (const std::exception& e) {
    std::cerr << "tocsin: " << e.what() << "\n";
    return kExitApiError;
  }
}
