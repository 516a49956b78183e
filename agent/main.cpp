// tocsin-agent: `enroll` once with a token, then `run` the scheduled tests as a service.
#include <CLI/CLI.hpp>
#include <boost/asio/steady_timer.hpp>

#include <boost/asio/co_spawn.hpp>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <thread>

#include "agent/platform/platform.hpp"
#include "agent/runtime/agent.hpp"
#include "agent/runtime/config.hpp"
#include "agent/runtime/identity.hpp"
#include "agent/runtime/outbox.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/file_io.hpp"
#include "common/log.hpp"

using namespace tocsin;
namespace fs = std::filesystem;

namespace {

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.erase(0, 1);
  return s;
}

int cmd_enroll(agent::EnrollOptions opts, const std::string& token_file) {
  if (!token_file.empty()) opts.token = trim(common::read_file(token_file, 4096));
  try {
    auto id = agent::enroll(opts);
    std::cout << "Enrolled as " << id.agent_id << " with collector " << id.server << "\n"
              << "  identity: " << id.state_dir.string() << " (key.pem, cert.pem: 0600)\n"
              << "  pinned CA: " << id.ca_file().string() << "\n";
    return 0;
  } catch (const agent::EnrollError& e) {
    std::cerr << "tocsin-agent: enrollment failed (" << e.code << "): " << e.what() << "\n";
    return 3;
  }
}

int cmd_run(const fs::path& config_file, bool once, const std::string& log_level) {
  auto cfg = agent::AgentConfig::load(config_file);
  common::setup_logging("agent", log_level.empty() ? cfg.log_level : log_level,
                        agent::platform::service_log_file());
  boost::asio::io_context io(1);
  agent::Agent a(io, cfg);
  agent::platform::ServiceHost host(io);  // systemd or the Windows SCM
  // Probes in flight finish within their timeout, but the way out must never hang on them: after
  // a stop, a grace of 5 s, then the loop is stopped. Not a timer on `io`: a pending timer is
  // work, and io.run() would wait out the whole grace even when nothing else is left to do.
  std::mutex grace_mu;
  std::condition_variable grace_cv;
  bool loop_done = false;
  std::thread grace;
  auto shutdown = [&](const std::string& why) {
    spdlog::info("{}; stopping", why);
    host.stopping();
    a.stop();
    if (grace.joinable()) return;
    grace = std::thread([&] {
      std::unique_lock lk(grace_mu);
      if (!grace_cv.wait_for(lk, std::chrono::seconds(5), [&] { return loop_done; })) {
        spdlog::warn("work still in flight 5 s after the stop; exiting anyway");
        io.stop();
      }
    });
  };
  host.on_stop(shutdown);
  a.start(once, [&] {
    auto s = a.outbox().stats();
    spdlog::info("all tests ran once and {} results are acknowledged by the collector", s.acked_seq);
    shutdown("done (--once)");
  });
  host.ready("running " + std::to_string(cfg.tests.size()) + " tests");
  io.run();
  {
    std::lock_guard lk(grace_mu);
    loop_done = true;
  }
  grace_cv.notify_all();
  if (grace.joinable()) grace.join();
  spdlog::info("stopped");
  return 0;
}

// The MSI's first-install step: the default configuration, only where none exists yet.
int cmd_install_config(const fs::path& from, const fs::path& to) {
  if (fs::exists(to)) {
    std::cout << to.string() << " exists; left as it is\n";
    return 0;
  }
  common::file_io::make_config_dir(to.parent_path());
  common::write_file_atomic(to, common::read_file(from, 1 << 20),
                            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                fs::perms::others_read);
  std::cout << "wrote " << to.string() << " from " << from.string() << "\n";
  return 0;
}

int cmd_status(const fs::path& config_file) {
  auto cfg = agent::AgentConfig::load(config_file);
  auto id = agent::Identity::load(cfg.state_dir);
  // Read-only: safe while the agent runs (a record being appended is simply not counted).
  auto ob = agent::Outbox::open({id.outbox_dir(), cfg.outbox_max_bytes, 4ull << 20, true},
                                id.agent_id);
  auto s = ob->stats();
  std::cout << "{\"agent_id\":\"" << id.agent_id << "\",\"server\":\"" << id.server
            << "\",\"head_seq\":" << s.head_seq << ",\"acked_seq\":" << s.acked_seq
            << ",\"pending\":" << s.pending << ",\"pending_bytes\":" << s.pending_bytes
            << ",\"dropped_total\":" << s.dropped_total
            << ",\"dropped_unreported\":" << s.dropped_unreported << "}\n";
  return 0;
}

int cmd_tests(const fs::path& config_file) {
  auto cfg = agent::AgentConfig::load(config_file);
  std::printf("%-28s %-16s %-8s %-10s %-8s %s\n", "ID", "KIND", "EVERY", "TECHNIQUE",
              "PREVENT", "TARGET");
  for (const auto& t : cfg.tests) {
    const std::string& target = t.summary;
    std::printf("%-28s %-16s %-8s %-10s %-8s %s\n", t.id.c_str(), t.probe.c_str(),
                common::format_duration(t.every).c_str(),
                t.technique.empty() ? "-" : t.technique.c_str(), t.expect_prevent ? "yes" : "no",
                target.c_str());
  }
  return 0;
}

int cmd_run_once(const fs::path& config_file, const std::string& test_id, bool json) {
  auto cfg = agent::AgentConfig::load(config_file);
  common::setup_logging("agent", "warn");
  auto it = std::find_if(cfg.tests.begin(), cfg.tests.end(),
                         [&](const agent::TestSpec& t) { return t.id == test_id; });
  if (it == cfg.tests.end()) {
    std::cerr << "tocsin-agent: no test '" << test_id << "' in " << config_file.string() << "\n";
    return 2;
  }
  if (agent::kill_switch_present(cfg)) {
    std::cerr << "tocsin-agent: kill switch " << cfg.kill_switch.string()
              << " is present: no probe runs until it is removed\n";
    return 4;
  }
  boost::asio::io_context io(1);
  agent::ClockState clock;  // not synchronised: this run is local and not delivered
  auto probes = agent::make_probes(io.get_executor(), cfg, clock);
  std::vector<common::ResultBody> results;
  std::exception_ptr error;
  boost::asio::co_spawn(io, agent::run_probe(probes, *it, clock),
                        [&](std::exception_ptr e, std::vector<common::ResultBody> r) {
                          error = e;
                          results = std::move(r);
                        });
  io.run();
  if (error) std::rethrow_exception(error);
  for (const auto& r : results) {
    if (json) {
      nlohmann::json j = {{"test_id", r.test_id}, {"probe", r.probe},     {"technique", r.technique},
                          {"target", r.target},   {"marker", r.marker},   {"verdict", r.verdict},
                          {"reason", r.reason},   {"evidence", r.evidence},
                          {"expect_prevent", r.expect_prevent},
                          {"started_at", common::format_time(r.started_ns)},
                          {"finished_at", common::format_time(r.finished_ns)}};
      std::cout << j.dump() << "\n";
    } else {
      std::cout << r.test_id << " (" << r.probe << ") " << r.target << "\n"
                << "  verdict:  " << r.verdict << " (" << r.reason << ")\n"
                << "  expected: " << (r.expect_prevent ? "prevented" : "not prevented") << "\n"
                << "  marker:   " << r.marker << "\n";
      for (const auto& [k, v] : r.evidence) std::cout << "  " << k << ": " << v << "\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  common::process_frame();  // the agent's time frame is anchored at process start
  CLI::App app{"Tocsin agent: runs safe, marker-tagged attack simulations and streams signed "
               "results to the collector."};
  // The OpenSSL in use: the Linux build links it statically (cmake/linux-deps.cmake), so a
  // host's OpenSSL update does not reach the agent until the agent is rebuilt.
  app.set_version_flag("--version", std::string(TOCSIN_VERSION) + " (" +
                                        OpenSSL_version(OPENSSL_VERSION) + ")");
  app.require_subcommand(1);
  const std::string default_config = agent::platform::default_config_file().string();

  auto* enroll = app.add_subcommand("enroll", "Enroll with a collector using a single-use token: "
                                              "creates this agent's key and certificate");
  agent::EnrollOptions eo;
  std::string token_file;
  enroll->add_option("--server", eo.server, "Collector agent endpoint, host:port")->required();
  auto* tok = enroll->add_option("--token", eo.token,
                                 "Enrollment token from `tocsin token create`");
  enroll->add_option("--token-file", token_file, "Read the token from this file instead")
      ->excludes(tok);
  enroll->add_option("--ca", eo.ca_file, "The collector's CA certificate (ca.pem) to pin")
      ->required()
      ->check(CLI::ExistingFile);
  enroll->add_option("--state-dir", eo.state_dir, "Where the identity is kept (created 0700)")
      ->capture_default_str()
      ->default_val(agent::platform::default_state_dir().string());
  enroll->add_flag("--force", eo.force, "Replace an existing identity in the state directory");

  auto* run = app.add_subcommand("run", "Run the scheduled tests and deliver results "
                                        "(systemd: Type=notify)");
  fs::path config;
  bool once = false;
  std::string log_level;
  run->add_option("--config", config, "Agent configuration (YAML: state_dir, allowlist, tests; see README)")
      ->capture_default_str()
      ->default_val(default_config);
  run->add_flag("--once", once, "Run every test once, wait until the collector acked all results, "
                                "then exit");
  run->add_option("--log-level", log_level, "Override log_level from the config "
                                            "(trace, debug, info, warn, error)");
  auto* service = app.add_subcommand(
      "service", "Run as a Windows service (the Service Control Manager starts this; elsewhere "
                 "the same as `run`)");
  service->add_option("--config", config, "Agent configuration (YAML)")
      ->capture_default_str()
      ->default_val(default_config);
  service->add_option("--log-level", log_level, "Override log_level from the config");
  auto* install_config = app.add_subcommand(
      "install-config", "Write a default configuration unless one exists (the installer's step)");
  fs::path config_from;
  install_config->add_option("--from", config_from, "The default configuration to copy")
      ->required()
      ->check(CLI::ExistingFile);
  install_config->add_option("--to", config, "Where it goes")
      ->capture_default_str()
      ->default_val(default_config);
  auto* configure_service = app.add_subcommand(
      "configure-service", "Windows: have the Service Control Manager restart the agent 60 s "
                           "after a failure (the installer's step)");
  auto* status = app.add_subcommand("status", "Print identity and outbox state as JSON "
                                              "(head seq, acked seq, unsent results, drops)");
  status->add_option("--config", config, "Agent configuration (YAML), to find the state directory")
      ->capture_default_str()
      ->default_val(default_config);
  auto* tests = app.add_subcommand("tests", "List the configured tests (validates the config)");
  tests->add_option("--config", config, "Agent configuration (YAML)")
      ->capture_default_str()
      ->default_val(default_config);
  auto* run_once = app.add_subcommand(
      "run-once", "Run one test now and print its result (local only: not sent to the collector); "
                  "exits 4 without running while the kill switch is present");
  std::string test_id;
  bool json = false;
  run_once->add_option("--config", config, "Agent configuration (YAML)")
      ->capture_default_str()
      ->default_val(default_config);
  run_once->add_option("--test", test_id, "Id of the test to run")->required();
  run_once->add_flag("--json", json, "Print each result as one JSON line");
  CLI11_PARSE(app, argc, argv);
  try {
    if (*enroll) {
      if (eo.token.empty() && token_file.empty()) {
        std::cerr << "tocsin-agent: enroll needs --token or --token-file\n";
        return 2;
      }
      return cmd_enroll(eo, token_file);
    }
    if (*install_config) return cmd_install_config(config_from, config);
    if (*configure_service) {
      agent::platform::set_service_recovery("tocsin-agent");
      std::cout << "tocsin-agent: restarts 60 s after a failure\n";
      return 0;
    }
    if (*status) return cmd_status(config);
    if (*tests) return cmd_tests(config);
    if (*run_once) return cmd_run_once(config, test_id, json);
    if (*service)
      return agent::platform::run_as_service("tocsin-agent", [&] {
        try {
          return cmd_run(config, false, log_level);
        } catch (const std::exception& e) {
          // Before the log is set up (a bad config) there is only the SCM's exit code and
          // this line, in agent.log when the service has no console.
          auto log = agent::platform::service_log_file();
          if (!log.empty()) std::ofstream(log, std::ios::app) << "tocsin-agent: " << e.what() << "\n";
          std::cerr << "tocsin-agent: " << e.what() << "\n";
          return 1;
        }
      });
    return cmd_run(config, once, log_level);
  } catch (const std::exception& e) {
    std::cerr << "tocsin-agent: " << e.what() << "\n";
    return 1;
  }
}
