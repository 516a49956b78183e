// Remote commands on the agent: the local policy of what may ever be done, the pinned command
// key, durable nonces, the checks in their fixed order, and running the one allowed action.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/platform/process.hpp"
#include "agent/platform/service_control.hpp"
#include "common/crypto.hpp"
#include "common/wire.hpp"

namespace tocsin::common {
class ConfigNode;
}

namespace tocsin::agent {

struct ClockState;

// One thing a command may name. The argv comes from the agent's own config only: a command
// carries a name, never a program or an argument.
struct ActionEntry {
  std::string name;  // what Command::target must equal
  // Native form: the service (== name), a systemd unit on Linux, a Windows service name on
  // Windows (restart_service_native); empty for exec.
  std::string unit;
  std::vector<std::string> exec;  // exec form: the argv written in the config
};

// `allowed_actions:` of agent.yaml. Empty by default: an agent without it refuses every
// command (not_allowlisted).
struct ActionPolicy {
  int min_approvals = 1;
  std::chrono::milliseconds timeout = std::chrono::minutes(2);  // per action run
  std::vector<ActionEntry> restart_service;
  // Not configurable from YAML: tests point it at a recording script (no systemd there).
  // Not used on Windows, where the native form goes through the Service Control Manager.
  std::string systemctl = "/usr/bin/systemctl";

  // The entry `target` names for `kind`, or nullptr.
  const ActionEntry* find(std::string_view kind, std::string_view target) const;
  // What is run for an entry on POSIX: systemd -> {systemctl, "restart", unit}; exec -> its
  // argv. (On Windows the native form runs no program.)
  std::vector<std::string> argv_for(const ActionEntry& e) const;
  // Fails with file:line (common::ConfigError) on any entry it cannot accept.
  static ActionPolicy load(const common::ConfigNode& node);
};

// The command kinds this agent knows.
inline const std::vector<std::string> kCommandKinds = {"restart_service"};

// The names an entry may have on any platform (the exec form's, and systemd units'): 1-255 of
// [A-Za-z0-9@._:-], no leading '-'.
bool valid_action_name(std::string_view name);
// systemd unit names we accept: a valid_action_name with a unit suffix such as .service.
bool valid_unit_name(std::string_view name);

// The collector's command public key, pinned in the state dir (command-key.pem, 0600).
class CommandKey {
 public:
  explicit CommandKey(std::filesystem::path file);  // loads the pinned key if there is one
  enum class Offer { none, pinned_now, matches, mismatch };
  // A key the collector sent (EnrollResp or Commands): pinned if none is yet (trust on first
  // use over the CA-pinned mutual-TLS channel), otherwise compared. An empty or unparsable
  // PEM pins nothing (none, or mismatch when a key is pinned and the PEM is not it).
  Offer offer(std::string_view pem);
  const common::Ed25519Key* key() const { return key_ ? &*key_ : nullptr; }
  const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
  std::optional<common::Ed25519Key> key_;
};

// Nonces of commands acted on (or refused after the nonce check), kept until their expiry so a
// replay is refused even after a restart. One "nonce expires_ns" line each; rewritten
// atomically (tmp + fsync + rename + directory fsync) on every change.
class NonceStore {
 public:
  static constexpr std::size_t kMaxEntries = 10000;
  // Entries are dropped this long after their expiry: a later clock exchange may move the
  // agent's estimate of collector time back by up to the error of the one before.
  static constexpr std::int64_t kPruneGraceNs = 10LL * 60 * 1000 * 1000 * 1000;

  explicit NonceStore(std::filesystem::path file);  // a corrupt line is skipped and logged
  bool seen(const std::string& nonce) const { return entries_.count(nonce) != 0; }
  // Records the nonce durably before returning; prunes entries whose expiry is more than
  // kPruneGraceNs before `collector_now_ns`. Throws std::runtime_error when it cannot write
  // (the caller must then not act) or when the store is full of unexpired nonces.
  void remember(const std::string& nonce, std::int64_t expires_ns, std::int64_t collector_now_ns);
  std::size_t size() const { return entries_.size(); }

 private:
  std::filesystem::path file_;
  std::map<std::string, std::int64_t> entries_;
};

// Everything check_command looks at besides the command.
struct CheckInputs {
  const common::Ed25519Key* command_key = nullptr;  // nullptr: none pinned -> bad_signature
  std::string agent_id;
  // The latest collector time consistent with the clock exchange: agent now (frame time) +
  // offset + error, the error grown since the exchange (0 when never synchronised). A command
  // is live only while this is before its expiry.
  std::int64_t collector_now_latest_ns = 0;
  const ActionPolicy* policy = nullptr;
  const NonceStore* nonces = nullptr;
};

// The collector time the expiry check uses (see CheckInputs::collector_now_latest_ns).
std::int64_t collector_now_latest(const ClockState& clock, std::int64_t agent_now_ns);

struct CheckOutcome {
  // "" = accepted; else bad_signature, wrong_agent, expired, bad_nonce, replayed_nonce,
  // unknown_kind, not_allowlisted, not_approved (checked in this order).
  std::string reason;
  std::string detail;
  const ActionEntry* action = nullptr;  // set when accepted
  bool ok() const { return reason.empty(); }
};
CheckOutcome check_command(const common::Command& c, const CheckInputs& in);

// Runs an entry: the exec form's argv, or the native form through restart_service_native.
boost::asio::awaitable<ActionOutcome> execute(boost::asio::any_io_executor ex,
                                              const ActionPolicy& policy, ActionEntry action);

// An action that ran a program: executed on exit 0, else failed with exit_<n>, timeout,
// signal_<n> or spawn_failed; output is stdout then stderr, capped at kMaxActionOutput.
ActionOutcome outcome_of_process(const ProcessOutcome& p, const std::string& program);

// The result that reports a command's outcome (kind "command"); `action` is null for refusals.
// started_ns: when the action began (frame time, common::frame_now_ns); 0: now.
common::ResultBody command_result(const common::Command& c, const std::string& verdict,
                                  const std::string& reason, const ActionOutcome* action,
                                  const ClockState& clock, std::int64_t started_ns = 0);

// Takes Commands messages from the uplink and handles their commands one at a time, in order:
// check, remember the nonce, act, report, schedule the recheck.
class ActionRunner {
 public:
  struct Hooks {
    // Appends a result to the outbox (signed and chained like every result).
    std::function<void(const common::ResultBody&)> report;
    // Runs test `id` once after `delay`; false when the agent has no such test.
    std::function<bool(const std::string& id, std::chrono::milliseconds delay)> recheck;
  };
  // key_file, nonce_file: Identity::command_key_file(), command_nonce_file().
  ActionRunner(boost::asio::any_io_executor ex, ActionPolicy policy, std::filesystem::path key_file,
               std::filesystem::path nonce_file, std::string agent_id, const ClockState& clock,
               Hooks hooks);
  ~ActionRunner();
  // Pins or compares the message's key, then queues its commands. Never throws.
  void on_commands(common::Commands msg);
  // Handles one command now (the queue uses it; tests await it directly).
  boost::asio::awaitable<void> handle(common::Command c);
  const CommandKey& command_key() const;
  const NonceStore& nonces() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tocsin::agent
