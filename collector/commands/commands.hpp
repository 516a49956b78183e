// Remote commands with human approval (issue 6): a request waits for approvers, an approved
// request becomes a command signed with the collector's command key, the agent fetches it on its
// next poll, checks it against its own allowlist and reports the outcome as a signed result.
//
// Why this shape: the collector never pushes and never decides alone. The requester (an operator,
// or the watchdog) cannot approve their own request; approvals are counted by distinct people;
// a request that nobody approves in time expires, and so does a signed command that no agent
// fetched or ran in time. The agent re-checks everything (signature, expiry, nonce, allowlist,
// approvals), so a compromised collector database cannot widen what an agent does. Every step is
// appended to the audit log in the same synced write as the state change.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "collector/store/store.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

class AuditLog;

// awaiting_approval → approved (signed, queued) → delivered (fetched by the agent) →
// executed | failed | refused; or denied / expired on the way.
enum class CommandState { awaiting_approval, approved, delivered, executed, failed, refused, denied, expired };
std::string command_state_name(CommandState s);
std::optional<CommandState> parse_command_state(const std::string& s);
inline bool command_final(CommandState s) {
  return s != CommandState::awaiting_approval && s != CommandState::approved &&
         s != CommandState::delivered;
}

struct CommandPolicy {  // collector.yaml `commands:`
  std::size_t approvals_required = 1;
  std::chrono::milliseconds approval_ttl{60 * 60 * 1000};  // a request waits this long
  std::chrono::milliseconds command_ttl{10 * 60 * 1000};   // a signed command lives this long
  static CommandPolicy load(const common::ConfigNode& node);
};

// A human mistake (unknown id, approving one's own request, too late...): the API answers 4xx.
struct CommandError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CommandRecord {
  std::uint64_t id = 0;
  std::string agent_id, kind, target, requester, reason;
  std::uint64_t incident_id = 0;  // the incident this serves, if any
  CommandState state = CommandState::awaiting_approval;
  std::vector<std::pair<std::string, std::int64_t>> approvals;  // who, when
  std::string denied_by, deny_reason;
  std::int64_t requested_ns = 0, request_expires_ns = 0, approved_ns = 0, delivered_ns = 0,
               finished_ns = 0;
  std::string recheck_test;
  std::int64_t recheck_after_ns = 0;
  common::Command command;  // once approved: what the agent receives, signed
  std::string outcome_reason;
  std::map<std::string, std::string> outcome_evidence;
  std::int64_t outcome_agent_ns = 0;    // when the agent finished it, agent clock (raw)
  std::vector<std::string> used_links;  // approval links already used (their link ids)
  std::vector<std::string> refused_links;  // links refused once (audited once, not again)
};
nlohmann::json command_json(const CommandRecord& c);

struct CommandRequest {
  std::string agent_id, kind = "restart_service", target, requester, reason;
  std::uint64_t incident_id = 0;
  std::string recheck_test;
  std::int64_t recheck_after_ns = 0;
};

// A one-time approval link's content (see CommandEngine::approval_link). The token in the URL
// is base64url(payload JSON) "." base64url(Ed25519 signature by the command key over a domain
// tag and the payload), so it cannot be forged, widened to another command or approver, or
// extended; `link_id` makes it single use (the command record keeps the ids used).
struct ApprovalLink {
  std::uint64_t command_id = 0;
  std::string approver;
  std::string link_id;
  std::int64_t expires_ns = 0;
};

class CommandEngine {
 public:
  using Clock = std::function<std::int64_t()>;
  CommandEngine(Store& store, common::Ed25519Key command_key, CommandPolicy policy,
                AuditLog* audit, Clock now = {});

  CommandRecord request(const CommandRequest& r);  // throws CommandError
  CommandRecord approve(std::uint64_t id, const std::string& approver);
  CommandRecord deny(std::uint64_t id, const std::string& who, const std::string& reason);
  // Expires requests past their approval time and commands past their expiry; returns how many.
  std::size_t tick();

  // One-time approval links. approval_link() mints the token for `approver` (expiring with the
  // request, or sooner with `ttl`); the same arguments give the same token, so a notification
  // retried renders the same link. check_link() verifies signature and shape only (throws
  // CommandError "not a valid approval link"); the decisions re-check everything else: expiry,
  // single use, the approver not being the requester, the request still waiting. A valid link
  // that is refused (used twice, expired, already decided) is audited as approval_link_refused.
  std::string approval_link(std::uint64_t id, const std::string& approver, const std::string& link_id,
                            std::chrono::milliseconds ttl = {}) const;
  ApprovalLink check_link(const std::string& token) const;
  CommandRecord approve_by_link(const std::string& token);
  CommandRecord deny_by_link(const std::string& token, const std::string& reason);

  // For the agent session: the signed commands waiting for this agent (now delivered) and the
  // key to check them with.
  common::Commands poll(const std::string& agent_id);
  // Results of kind "command" from this agent, after they are stored: the outcome.
  void results_stored(const std::string& agent_id, const std::vector<common::ResultBody>& bodies);

  std::optional<CommandRecord> get(std::uint64_t id) const;
  std::vector<CommandRecord> list(std::optional<CommandState> state, std::size_t limit) const;
  // Every command `pred` accepts, oldest first (a scan: commands are few).
  std::vector<CommandRecord> find(const std::function<bool(const CommandRecord&)>& pred) const;
  const std::string& key_pem() const { return key_pem_; }
  const CommandPolicy& policy() const { return policy_; }

 private:
  CommandRecord load(std::uint64_t id) const;
  void save(const CommandRecord& c, const std::string& actor, const std::string& action,
            nlohmann::json detail);
  CommandRecord sign(CommandRecord c);
  CommandRecord approve_locked(CommandRecord c, const std::string& approver, const std::string& link_id);
  CommandRecord deny_locked(CommandRecord c, const std::string& who, const std::string& reason,
                            const std::string& link_id);
  // The command a link may decide, or a CommandError (audited) saying why not.
  CommandRecord link_target(const ApprovalLink& l, const std::string& decision);

  Store& store_;
  common::Ed25519Key key_;
  std::string key_pem_;
  CommandPolicy policy_;
  AuditLog* audit_;
  Clock now_;
  mutable std::mutex mu_;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, CommandRecord> active_;  // not final, by id
};

inline std::filesystem::path command_key_path(const std::filesystem::path& data_dir) {
  return data_dir / "command.key";
}

}  // namespace tocsin::collector
