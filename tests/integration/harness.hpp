// Integration-test harness: real binaries on loopback, each in its own temporary directory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "tests/unit/temp_dir.hpp"

namespace tocsin::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path bin(const std::string& name);  // build/bin/<name>


struct CommandResult {
  int rc = -1;
  std::string out, err;
};
// Runs argv to completion (killed after `timeout`), capturing stdout and stderr.
CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::milliseconds timeout = 60s);

// A background process whose stderr and stdout go to a log file; killed (SIGKILL) on destruction.
class Process {
 public:
  Process() = default;
  Process(const std::vector<std::string>& argv, const fs::path& log);
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  ~Process();
  pid_t pid() const { return pid_; }
  bool running();
  void signal(int sig);
  // Waits for exit; returns the exit code (128+signal if killed), or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  void kill9();
  std::string log() const;

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = true;
  fs::path log_;
};

// Polls `cond` every few milliseconds until true or `timeout`; returns whether it held.
bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

struct CollectorOptions {
  std::string frame_timeout = "10s";
  std::string idle_timeout = "5m";
  std::string handshake_timeout = "10s";
  std::string extra_yaml;  // appended to collector.yaml (alert_sources:, correlation:)
};

class Collector {
 public:
  explicit Collector(CollectorOptions opts = {});
  ~Collector();
  void start();
  void kill9();
  void stop();  // SIGTERM and wait
  bool running() { return proc_.running(); }
  std::uint16_t agent_port() const { return agent_port_; }
  std::uint16_t api_port() const { return api_port_; }
  std::string agent_endpoint() const { return "127.0.0.1:" + std::to_string(agent_port_); }
  fs::path dir() const { return tmp_.path() / "collector"; }
  fs::path ca_pem() const { return dir() / "ca.pem"; }
  fs::path admin_token() const { return dir() / "admin.token"; }
  std::string log() const { return proc_.log(); }
  // The --ready-file JSON of the running collector (ports, pid, "syslog": {source: ports}).
  fs::path ready_file() const { return tmp_.path() / "ready.json"; }

  // The `tocsin` CLI against this collector with the admin token.
  CommandResult cli(std::vector<std::string> args);
  // The same with the token in `token_file` (see api_token).
  CommandResult cli_as(const fs::path& token_file, std::vector<std::string> args);
  // Creates an API token named `name` with `role` and writes it to a file for cli_as.
  fs::path api_token(const std::string& name, const std::string& role);
  std::string create_token(const std::string& ttl = "1h");
  nlohmann::json api_get(const std::string& path, const std::string& token = {});
  std::uint64_t stored_results(const std::string& agent_id);  // via the API agents list
  nlohmann::json security_events();
  // Rewrites correlation.grace in collector.yaml (init writes the section) and restarts on
  // the same ports.
  void set_grace(const std::string& grace);

 private:
  TempDir tmp_;
  Process proc_;
  std::uint16_t agent_port_ = 0, api_port_ = 0;
  int starts_ = 0;
};

struct AgentTest {
  std::string id;
  std::string every = "1s";
  std::vector<std::string> targets;
  bool expect_prevent = false;
};

class Agent {
 public:
  // Enrolls with a fresh token from `c` into its own state directory.
  explicit Agent(Collector& c, std::string outbox_max = "64MiB");
  void write_config(const std::vector<AgentTest>& tests, const std::string& server = {});
  // The same header (state, outbox, fast uplink) with a hand-written `allowlist:` and `tests:`.
  void write_config_yaml(const std::string& allowlist_and_tests);
  // Smaller batches make delivery take many round trips (to kill something mid-flight).
  void set_batch_max_results(int n) { batch_max_results_ = n; }
  // How often the agent asks for commands (uplink.command_poll; the agent's default if empty).
  void set_command_poll(const std::string& every) { command_poll_ = every; }
  // `prefix` runs the agent under another program, e.g. {"faketime", "-f", "+30s"}.
  void start(const std::vector<std::string>& extra = {},
             const std::vector<std::string>& prefix = {});
  void kill9() { proc_.kill9(); }
  void stop();
  bool running() { return proc_.running(); }
  Process& process() { return proc_; }
  nlohmann::json status();  // `tocsin-agent status`
  const std::string& id() const { return id_; }
  fs::path state_dir() const { return tmp_.path() / "state"; }
  fs::path config() const { return tmp_.path() / "agent.yaml"; }
  std::string log() const { return proc_.log(); }

 private:
  std::string config_header(const std::string& server) const;
  Collector& c_;
  TempDir tmp_;
  Process proc_;
  std::string id_;
  std::string outbox_max_;
  int batch_max_results_ = 512;
  std::string command_poll_;
  int starts_ = 0;
};

// A TCP listener on 127.0.0.1 that accepts and closes connections on its own thread.
class OpenPort {
 public:
  OpenPort();
  ~OpenPort();
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread* thread_ = nullptr;
};

std::uint16_t closed_port();  // a loopback port with nothing listening

// libfaketime 0.9.10 rewrites every TFD_TIMER_ABSTIME deadline passed to timerfd_settime by
// the fake offset, whatever clock the timerfd runs on: Asio arms its CLOCK_MONOTONIC timerfd
// with the absolute time {0 s, 1 ns} for "a timer is already due", which with a +30 s offset
// becomes {-30 s, 1 ns}, the kernel answers EINVAL, and the agent's due timers never fire.
// With monotonic time left real (FAKETIME_DONT_FAKE_MONOTONIC=1) nothing needs rewriting, so
// this shim, preloaded ahead of libfaketime, sends timerfd_settime straight to the kernel.
// Built in `dir` at test time; nullopt when there is no C compiler.
std::optional<std::filesystem::path> build_timerfd_shim(const std::filesystem::path& dir);

}  // namespace tocsin::test
