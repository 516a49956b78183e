#include "agent/actions/actions.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstring>
#include <set>
#include <sstream>

#include "agent/platform/process.hpp"
#include "agent/probes/probe.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/log.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

constexpr auto kPrivate = fs::perms::owner_read | fs::perms::owner_write;

const char* const kUnitSuffixes[] = {".service", ".socket", ".target",    ".timer",
                                     ".path",    ".mount",  ".automount", ".swap",
                                     ".slice",   ".scope",  ".device"};

ActionEntry load_entry(const common::ConfigNode& item) {
  ActionEntry e;
  bool mapped = item.has("name") || item.has("exec");
  e.name = mapped ? item.str("name") : item.scalar();
  std::string key = mapped ? "name" : "";
  if (mapped) item.check_keys({"name", "exec"});
  if (mapped && item.has("exec")) {
    if (!valid_action_name(e.name))
      item.fail(key, "'" + e.name +
                         "' is not a valid name (1-255 of A-Z a-z 0-9 @ . _ : -, "
                         "not starting with '-')");
    e.exec = item.str_list("exec");
    if (e.exec.empty())
      item.fail("exec", "give the program and its arguments, e.g. [/usr/sbin/nginx, -s, reload]");
    if (!fs::path(e.exec.front()).is_absolute())
      item.fail("exec", "the program '" + e.exec.front() + "' must be an absolute path");
    return e;
  }
  // The native form: what the name must be depends on the platform's service manager.
  if (auto problem = service_name_problem(e.name); !problem.empty())
    item.fail(key, "'" + e.name + "' " + problem);
  e.unit = e.name;
  return e;
}

}  // namespace

bool valid_action_name(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '@' || ch == '.' || ch == '_' || ch == ':' || ch == '-';
  });
}

bool valid_unit_name(std::string_view name) {
  if (!valid_action_name(name)) return false;
  return std::any_of(std::begin(kUnitSuffixes), std::end(kUnitSuffixes), [&](std::string_view s) {
    return name.size() > s.size() && name.substr(name.size() - s.size()) == s;
  });
}

const ActionEntry* ActionPolicy::find(std::string_view kind, std::string_view target) const {
  if (kind != "restart_service") return nullptr;
  for (const auto& e : restart_service)
    if (e.name == target) return &e;
  return nullptr;
}

std::vector<std::string> ActionPolicy::argv_for(const ActionEntry& e) const {
  if (!e.exec.empty()) return e.exec;
  return {systemctl, "restart", e.unit};
}

ActionPolicy ActionPolicy::load(const common::ConfigNode& node) {
  ActionPolicy p;
  if (!node.defined()) return p;
  node.check_keys({"min_approvals", "timeout", "restart_service"});
  auto n = node.integer("min_approvals", p.min_approvals);
  if (n < 1 || n > 10) node.fail("min_approvals", "must be between 1 and 10");
  p.min_approvals = static_cast<int>(n);
  p.timeout = node.duration("timeout", p.timeout);
  if (p.timeout < std::chrono::seconds(1) || p.timeout > std::chrono::minutes(15))
    node.fail("timeout", "must be between 1s and 15m");
  std::set<std::string> names;
  for (auto& item : node["restart_service"].items()) {
    p.restart_service.push_back(load_entry(item));
    if (!names.insert(p.restart_service.back().name).second)
      node.fail("restart_service", "'" + p.restart_service.back().name + "' is listed twice");
  }
  return p;
}

// --- the pinned command key ------------------------------------------------------------------

CommandKey::CommandKey(fs::path file) : file_(std::move(file)) {
  std::error_code ec;
  if (!fs::exists(file_, ec)) return;
  // A pinned file that does not parse is an error to fix, not a reason to trust a new key.
  key_ = common::Ed25519Key::from_public_pem(common::read_file(file_, 64 * 1024));
}

CommandKey::Offer CommandKey::offer(std::string_view pem) {
  if (pem.empty()) return Offer::none;
  std::optional<common::Ed25519Key> offered;
  try {
    offered = common::Ed25519Key::from_public_pem(pem);
  } catch (const std::exception& e) {
    spdlog::warn("collector sent a command key that does not parse: {}", e.what());
    return key_ ? Offer::mismatch : Offer::none;
  }
  if (key_) return key_->public_raw() == offered->public_raw() ? Offer::matches : Offer::mismatch;
  common::write_file_atomic(file_, offered->public_pem(), kPrivate);
  key_ = std::move(offered);
  return Offer::pinned_now;
}

// --- nonces ----------------------------------------------------------------------------------

namespace {
// Nonces are written one per line: only characters that cannot break the file.
bool valid_nonce(std::string_view n) {
  return n.size() >= 16 && n.size() <= 128 &&
         n.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos;
}
}  // namespace

NonceStore::NonceStore(fs::path file) : file_(std::move(file)) {
  std::error_code ec;
  if (!fs::exists(file_, ec)) return;
  std::istringstream in(common::read_file(file_, 4 << 20));
  std::size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    std::istringstream fields(line);
    std::string nonce;
    std::int64_t expires = 0;
    if (!(fields >> nonce >> expires) || !valid_nonce(nonce)) {
      spdlog::warn("{}:{}: not a nonce entry; skipped", file_.string(), line_no);
      continue;
    }
    entries_[nonce] = expires;
  }
}

void NonceStore::remember(const std::string& nonce, std::int64_t expires_ns,
                          std::int64_t collector_now_ns) {
  auto next = entries_;
  std::erase_if(next, [&](const auto& kv) { return kv.second + kPruneGraceNs < collector_now_ns; });
  next[nonce] = expires_ns;
  if (next.size() > kMaxEntries)
    throw std::runtime_error("nonce store " + file_.string() + " holds " +
                             std::to_string(kMaxEntries) + " unexpired nonces");
  std::string text;
  for (const auto& [n, e] : next) text += n + " " + std::to_string(e) + "\n";
  common::write_file_atomic(file_, text, kPrivate);  // throws: then nothing is remembered
  entries_ = std::move(next);
}

// --- the checks ------------------------------------------------------------------------------

std::int64_t collector_now_latest(const ClockState& clock, std::int64_t agent_now_ns) {
  auto s = clock.now();  // the bound grown since the exchange, widened by a step not yet confirmed
  return agent_now_ns + s.offset_ns + std::max<std::int64_t>(s.error_ns, 0);
}

CheckOutcome check_command(const common::Command& c, const CheckInputs& in) {
  auto refuse = [](std::string reason, std::string detail) {
    return CheckOutcome{std::move(reason), std::move(detail), nullptr};
  };
  if (!in.command_key) return refuse("bad_signature", "no command key is pinned on this agent");
  if (!in.command_key->verify(common::command_signing_bytes(c), c.signature))
    return refuse("bad_signature", "the signature does not verify with the pinned command key");
  if (c.agent_id != in.agent_id)
    return refuse("wrong_agent", "the command is for agent '" + c.agent_id + "'");
  if (in.collector_now_latest_ns >= c.expires_ns)
    return refuse("expired", "expired at " + common::format_time(c.expires_ns) +
                                 "; collector time here is up to " +
                                 common::format_time(in.collector_now_latest_ns));
  if (!valid_nonce(c.nonce)) return refuse("bad_nonce", "the nonce is not 16-128 hex digits");
  if (in.nonces->seen(c.nonce))
    return refuse("replayed_nonce", "nonce " + c.nonce + " was seen before");
  if (std::find(kCommandKinds.begin(), kCommandKinds.end(), c.kind) == kCommandKinds.end())
    return refuse("unknown_kind", "this agent does not know command kind '" + c.kind + "'");
  const ActionEntry* action = in.policy->find(c.kind, c.target);
  if (!action)
    return refuse("not_allowlisted",
                  "'" + c.target + "' is not under allowed_actions." + c.kind + " on this agent");
  std::set<std::string> approvers;
  for (const auto& a : c.approvals) {
    if (a == c.requester)
      return refuse("not_approved",
                    "the requester '" + c.requester + "' approved their own command");
    if (!a.empty()) approvers.insert(a);
  }
  if (static_cast<int>(approvers.size()) < in.policy->min_approvals)
    return refuse("not_approved", std::to_string(approvers.size()) + " distinct approver(s), " +
                                      std::to_string(in.policy->min_approvals) + " required");
  return CheckOutcome{"", "", action};
}

// --- acting and reporting --------------------------------------------------------------------

namespace {
std::string join_approvals(const common::Command& c) {
  std::string out;
  for (const auto& a : c.approvals) out += (out.empty() ? "" : ",") + a;
  return out;
}
}  // namespace

ActionOutcome outcome_of_process(const ProcessOutcome& p, const std::string& program) {
  ActionOutcome o;
  o.exit_code = p.exit_code;
  o.output = p.out;
  if (!p.err.empty() && o.output.size() < kMaxActionOutput)
    o.output += p.err.substr(0, kMaxActionOutput - o.output.size());
  o.verdict = "failed";
  if (p.spawn_errno != 0) {
    o.reason = "spawn_failed";
    o.output = program + ": " + std::strerror(p.spawn_errno);
  } else if (p.timed_out) {
    o.reason = "timeout";
  } else if (p.exited) {
    o.reason = "exit_" + std::to_string(p.exit_code);
    if (p.exit_code == 0) o.verdict = "executed";
  } else {
    o.reason = p.signal ? "signal_" + std::to_string(p.signal) : "unknown_exit";
  }
  return o;
}

asio::awaitable<ActionOutcome> execute(asio::any_io_executor ex, const ActionPolicy& policy,
                                       ActionEntry action) {
  if (!action.unit.empty())
    co_return co_await restart_service_native(ex, action.unit, policy.timeout, policy.systemctl);
  auto p = co_await run_process(ex, action.exec, policy.timeout, kMaxActionOutput);
  co_return outcome_of_process(p, action.exec.front());
}

common::ResultBody command_result(const common::Command& c, const std::string& verdict,
                                  const std::string& reason, const ActionOutcome* action,
                                  const ClockState& clock, std::int64_t started_ns) {
  common::ResultBody b;
  b.kind = "command";
  b.test_id = c.id;
  b.probe = c.kind;
  b.target = c.target;
  b.verdict = verdict;
  b.reason = reason;
  b.evidence = {{"command_id", c.id},
                {"requester", c.requester},
                {"approvals", join_approvals(c)},
                {"nonce", c.nonce},
                {"exit_code", action ? std::to_string(action->exit_code) : ""},
                {"output", action ? action->output : ""}};
  if (action) b.evidence.insert(action->evidence.begin(), action->evidence.end());
  b.started_ns = started_ns ? started_ns : common::frame_now_ns();
  finish_result(b, clock);
  return b;
}

// --- the runner ------------------------------------------------------------------------------

struct ActionRunner::Impl {
  Impl(asio::any_io_executor ex, ActionPolicy policy, fs::path key_file, fs::path nonce_file,
       std::string agent_id, const ClockState& clock, Hooks hooks)
      : ex(std::move(ex)),
        policy(std::move(policy)),
        key(std::move(key_file)),
        nonces(std::move(nonce_file)),
        agent_id(std::move(agent_id)),
        clock(clock),
        hooks(std::move(hooks)) {}

  asio::any_io_executor ex;
  ActionPolicy policy;
  CommandKey key;
  NonceStore nonces;
  std::string agent_id;
  const ClockState& clock;
  Hooks hooks;
  std::deque<common::Command> queue;
  // Signatures of commands queued or running: a collector that offers a command again while
  // it is still waiting here delivered it once, not twice (a later offer is refused as
  // replayed_nonce). The signature, not the nonce: a forged copy must not shadow the original.
  std::set<std::string> queued;
  bool draining = false;

  void report(const common::Command& c, const std::string& verdict, const std::string& reason,
              const ActionOutcome* action, const std::string& detail,
              std::map<std::string, std::string> extra = {}, std::int64_t started_ns = 0) {
    auto body = command_result(c, verdict, reason, action, clock, started_ns);
    if (!detail.empty()) body.evidence["detail"] = detail;
    body.evidence.merge(extra);
    hooks.report(body);
  }

  asio::awaitable<void> handle(common::Command c) {
    CheckInputs in{key.key(), agent_id, collector_now_latest(clock, common::frame_now_ns()), &policy,
                   &nonces};
    auto check = check_command(c, in);
    // Once the nonce is known good, it is spent whatever follows: a refused command must not
    // be replayable either (say, after the allowlist grows). These are the checks after it.
    bool spend = check.ok() || check.reason == "unknown_kind" ||
                 check.reason == "not_allowlisted" || check.reason == "not_approved";
    if (spend) {
      try {
        nonces.remember(c.nonce, c.expires_ns, in.collector_now_latest_ns);
      } catch (const std::exception& e) {
        spdlog::error("command {}: cannot record its nonce, not acting: {}", c.id, e.what());
        report(c, "failed", "nonce_store", nullptr, e.what());
        co_return;
      }
    }
    if (!check.ok()) {
      spdlog::warn("command {} ({} {}) refused: {}: {}", c.id, c.kind, c.target, check.reason,
                   check.detail);
      report(c, "refused", check.reason, nullptr, check.detail);
      co_return;
    }
    spdlog::info("command {}: {} {} (requested by {}, approved by {})", c.id, c.kind, c.target,
                 c.requester, join_approvals(c));
    auto started_ns = common::frame_now_ns();
    auto outcome = co_await execute(ex, policy, *check.action);
    spdlog::info("command {}: {} ({})", c.id, outcome.verdict, outcome.reason);
    std::map<std::string, std::string> extra;
    if (!c.recheck_test.empty() && outcome.verdict == "executed") {
      auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::nanoseconds(std::max<std::int64_t>(c.recheck_after_ns, 0)));
      bool scheduled = hooks.recheck && hooks.recheck(c.recheck_test, delay);
      extra["recheck"] = scheduled ? c.recheck_test : "unknown_test:" + c.recheck_test;
      if (!scheduled)
        spdlog::warn("command {}: recheck test '{}' is not configured on this agent", c.id,
                     c.recheck_test);
    }
    report(c, outcome.verdict, outcome.reason, &outcome, "", std::move(extra), started_ns);
  }

  static asio::awaitable<void> drain(std::shared_ptr<Impl> self) {
    while (!self->queue.empty()) {
      auto c = std::move(self->queue.front());
      self->queue.pop_front();
      auto id = c.id;
      auto sig = common::to_hex(c.signature);
      try {
        co_await self->handle(std::move(c));
      } catch (const std::exception& e) {
        spdlog::error("command {}: {}", id, e.what());
      }
      self->queued.erase(sig);
    }
    self->draining = false;
  }
};

ActionRunner::ActionRunner(asio::any_io_executor ex, ActionPolicy policy, fs::path key_file,
                           fs::path nonce_file, std::string agent_id, const ClockState& clock,
                           Hooks hooks)
    : impl_(std::make_shared<Impl>(std::move(ex), std::move(policy), std::move(key_file),
                                   std::move(nonce_file), std::move(agent_id), clock,
                                   std::move(hooks))) {}

ActionRunner::~ActionRunner() = default;

void ActionRunner::on_commands(common::Commands msg) {
  try {
    switch (impl_->key.offer(msg.command_key_pem)) {
      case CommandKey::Offer::pinned_now:
        spdlog::warn(
            "pinned the collector's command key from its first Commands message "
            "(trust on first use over the CA-pinned channel): {}",
            impl_->key.file().string());
        break;
      case CommandKey::Offer::mismatch:
        spdlog::error(
            "the collector sent a command key that differs from the pinned one in {}; "
            "its commands are checked against the pinned key",
            impl_->key.file().string());
        break;
      default:
        break;
    }
  } catch (const std::exception& e) {
    spdlog::error("cannot pin the collector's command key: {}", e.what());
  }
  for (auto& c : msg.commands) {
    if (!impl_->queued.insert(common::to_hex(c.signature)).second) {
      spdlog::debug("command {}: already waiting to be handled", c.id);
      continue;
    }
    impl_->queue.push_back(std::move(c));
  }
  if (impl_->draining || impl_->queue.empty()) return;
  impl_->draining = true;
  asio::co_spawn(impl_->ex, Impl::drain(impl_), common::log_if_failed("command runner"));
}

asio::awaitable<void> ActionRunner::handle(common::Command c) {
  return impl_->handle(std::move(c));
}
const CommandKey& ActionRunner::command_key() const {
  return impl_->key;
}
const NonceStore& ActionRunner::nonces() const {
  return impl_->nonces;
}

}  // namespace tocsin::agent
