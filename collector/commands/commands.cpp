#include "collector/commands/commands.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <regex>

#include "collector/audit/audit.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int kCommandFormat = 1;
constexpr std::int64_t kNsPerMs = 1'000'000;
// A delivered command's outcome may arrive a little after its expiry (the agent ran it just in
// time, then sent the result); it is expired only after this much more.
constexpr std::int64_t kOutcomeGraceNs = 5LL * 60 * 1'000'000'000;
constexpr std::size_t kMaxReason = 1000;

std::string id_key(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}

std::string command_name(std::uint64_t id) { return "cmd-" + std::to_string(id); }

std::optional<std::uint64_t> parse_command_name(const std::string& s) {
  if (s.size() < 5 || s.size() > 24 || s.rfind("cmd-", 0) != 0 ||
      s.find_first_not_of("0123456789", 4) != std::string::npos)
    return std::nullopt;
  return std::stoull(s.substr(4));
}

// What the agent receives, without nonce, times and signature: the record's own fields.
common::Command command_fields(const CommandRecord& c) {
  common::Command k;
  k.id = command_name(c.id);
  k.agent_id = c.agent_id;
  k.kind = c.kind;
  k.target = c.target;
  k.requester = c.requester;
  for (const auto& [who, t] : c.approvals) k.approvals.push_back(who);
  k.recheck_test = c.recheck_test;
  k.recheck_after_ns = c.recheck_after_ns;
  return k;
}

std::string state_of_verdict(const std::string& v) {
  if (v == "executed") return "executed";
  if (v == "refused") return "refused";
  return "failed";
}

std::string encode(const CommandRecord& c) {
  json approvals = json::array();
  for (const auto& [who, t] : c.approvals) approvals.push_back({{"who", who}, {"t", t}});
  const auto& k = c.command;
  return json{{"v", kCommandFormat},
              {"id", c.id},
              {"agent_id", c.agent_id},
              {"kind", c.kind},
              {"target", c.target},
              {"requester", c.requester},
              {"reason", c.reason},
              {"incident_id", c.incident_id},
              {"state", command_state_name(c.state)},
              {"approvals", approvals},
              {"denied_by", c.denied_by},
              {"deny_reason", c.deny_reason},
              {"requested_ns", c.requested_ns},
              {"request_expires_ns", c.request_expires_ns},
              {"approved_ns", c.approved_ns},
              {"delivered_ns", c.delivered_ns},
              {"finished_ns", c.finished_ns},
              {"recheck_test", c.recheck_test},
              {"recheck_after_ns", c.recheck_after_ns},
              {"nonce", k.nonce},
              {"issued_ns", k.issued_ns},
              {"expires_ns", k.expires_ns},
              {"signature", common::to_hex(k.signature)},
              {"outcome_reason", c.outcome_reason},
              {"outcome_evidence", c.outcome_evidence},
              {"outcome_agent_ns", c.outcome_agent_ns},
              {"used_links", c.used_links},
              {"refused_links", c.refused_links}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

CommandRecord decode(const std::string& s) {
  json j = json::parse(s, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != kCommandFormat) throw StoreError("corrupt command record");
  try {
    CommandRecord c;
    c.id = j.at("id").get<std::uint64_t>();
    c.agent_id = j.value("agent_id", "");
    c.kind = j.value("kind", "");
    c.target = j.value("target", "");
    c.requester = j.value("requester", "");
    c.reason = j.value("reason", "");
    c.incident_id = j.value("incident_id", std::uint64_t{0});
    auto st = parse_command_state(j.value("state", ""));
    if (!st) throw StoreError("command record with unknown state");
    c.state = *st;
    for (const auto& a : j.value("approvals", json::array()))
      c.approvals.emplace_back(a.value("who", ""), a.value("t", std::int64_t{0}));
    c.denied_by = j.value("denied_by", "");
    c.deny_reason = j.value("deny_reason", "");
    c.requested_ns = j.value("requested_ns", std::int64_t{0});
    c.request_expires_ns = j.value("request_expires_ns", std::int64_t{0});
    c.approved_ns = j.value("approved_ns", std::int64_t{0});
    c.delivered_ns = j.value("delivered_ns", std::int64_t{0});
    c.finished_ns = j.value("finished_ns", std::int64_t{0});
    c.recheck_test = j.value("recheck_test", "");
    c.recheck_after_ns = j.value("recheck_after_ns", std::int64_t{0});
    c.outcome_reason = j.value("outcome_reason", "");
    c.outcome_evidence = j.value("outcome_evidence", std::map<std::string, std::string>{});
    c.used_links = j.value("used_links", std::vector<std::string>{});
    c.refused_links = j.value("refused_links", std::vector<std::string>{});
    c.outcome_agent_ns = j.value("outcome_agent_ns", std::int64_t{0});
    if (c.approved_ns) {
      auto& k = c.command;
      k = command_fields(c);
      k.nonce = j.value("nonce", "");
      k.issued_ns = j.value("issued_ns", std::int64_t{0});
      k.expires_ns = j.value("expires_ns", std::int64_t{0});
      if (!common::from_hex(j.value("signature", ""), k.signature))
        throw StoreError("command record with a corrupt signature");
    }
    return c;
  } catch (const json::exception& e) {
    throw StoreError(std::string("corrupt command record: ") + e.what());
  }
}

}  // namespace

std::string command_state_name(CommandState s) {
  switch (s) {
    case CommandState::awaiting_approval: return "awaiting_approval";
    case CommandState::approved: return "approved";
    case CommandState::delivered: return "delivered";
    case CommandState::executed: return "executed";
    case CommandState::failed: return "failed";
    case CommandState::refused: return "refused";
    case CommandState::denied: return "denied";
    case CommandState::expired: return "expired";
  }
  return "?";
}

std::optional<CommandState> parse_command_state(const std::string& s) {
  for (auto st : {CommandState::awaiting_approval, CommandState::approved, CommandState::delivered,
                  CommandState::executed, CommandState::failed, CommandState::refused,
                  CommandState::denied, CommandState::expired})
    if (command_state_name(st) == s) return st;
  return std::nullopt;
}

CommandPolicy CommandPolicy::load(const common::ConfigNode& node) {
  CommandPolicy p;
  if (!node.defined()) return p;
  node.check_keys({"approvals_required", "approval_ttl", "command_ttl"});
  auto n = node.integer("approvals_required", static_cast<std::int64_t>(p.approvals_required));
  if (n < 1 || n > 10) node.fail("approvals_required", "must be between 1 and 10");
  p.approvals_required = static_cast<std::size_t>(n);
  p.approval_ttl = node.duration("approval_ttl", p.approval_ttl);
  p.command_ttl = node.duration("command_ttl", p.command_ttl);
  if (p.approval_ttl < 1s) node.fail("approval_ttl", "must be at least 1s");
  if (p.command_ttl < 1s) node.fail("command_ttl", "must be at least 1s");
  return p;
}

json command_json(const CommandRecord& c) {
  json j = json::parse(encode(c));
  j.erase("v");
  j.erase("signature");
  j.erase("used_links");  // link ids are not secrets, but they are of no use to a reader
  j.erase("refused_links");
  j["command_id"] = command_name(c.id);
  for (const char* name : {"requested", "request_expires", "approved", "delivered", "finished"}) {
    auto ns = j.value(std::string(name) + "_ns", std::int64_t{0});
    j[name] = ns ? json(common::format_time(ns)) : json(nullptr);
  }
  j["expires"] = c.command.expires_ns ? json(common::format_time(c.command.expires_ns)) : json(nullptr);
  return j;
}

CommandEngine::CommandEngine(Store& store, common::Ed25519Key command_key, CommandPolicy policy,
                             AuditLog* audit, Clock now)
    : store_(store),
      key_(std::move(command_key)),
      key_pem_(key_.public_pem()),
      policy_(policy),
      audit_(audit),
      now_(now ? std::move(now) : Clock(common::now_ns)) {
  if (auto last = store_.last_key(Table::commands); last && last->size() == 8)
    next_id_ = get_be64(last->data()) + 1;
  store_.scan(Table::commands, "", [&](std::string_view, std::string_view v) {
    auto c = decode(std::string(v));
    if (!command_final(c.state)) active_.emplace(c.id, std::move(c));
    return true;
  });
}

void CommandEngine::save(const CommandRecord& c, const std::string& actor, const std::string& action,
                         json detail) {
  WriteSet ws;
  ws.put(Table::commands, id_key(c.id), encode(c));
  detail["agent_id"] = c.agent_id;
  detail["kind"] = c.kind;
  detail["target"] = c.target;
  if (c.incident_id) detail["incident_id"] = c.incident_id;
  if (audit_)
    audit_->commit(std::move(ws), {{actor, action, command_name(c.id), std::move(detail)}});
  else
    store_.commit(std::move(ws));
  if (command_final(c.state)) active_.erase(c.id);
  else active_[c.id] = c;
  spdlog::info("command {} ({} {} on {}): {} by {}", command_name(c.id), c.kind, c.target,
               c.agent_id, action, actor);
}

CommandRecord CommandEngine::load(std::uint64_t id) const {
  if (auto it = active_.find(id); it != active_.end()) return it->second;
  auto v = store_.get(Table::commands, id_key(id));
  if (!v) throw CommandError("no command #" + std::to_string(id));
  return decode(*v);
}

CommandRecord CommandEngine::request(const CommandRequest& r) {
  static const std::regex target_re("^[A-Za-z0-9@._:-]{1,256}$");
  if (r.kind != "restart_service")
    throw CommandError("unknown command kind '" + r.kind + "' (known: restart_service)");
  if (!std::regex_match(r.target, target_re) || r.target.front() == '-')
    throw CommandError("'" + r.target + "' is not a service name (letters, digits, @ . _ : -)");
  if (r.requester.empty()) throw CommandError("a request needs a requester");
  if (r.reason.size() > kMaxReason) throw CommandError("the reason is longer than 1000 characters");
  auto agent = store_.get_agent(r.agent_id);
  if (!agent || agent->revoked) throw CommandError("no enrolled agent '" + r.agent_id + "'");
  std::lock_guard lock(mu_);
  CommandRecord c;
  c.id = next_id_;
  c.agent_id = r.agent_id;
  c.kind = r.kind;
  c.target = r.target;
  c.requester = r.requester;
  c.reason = r.reason;
  c.incident_id = r.incident_id;
  c.recheck_test = r.recheck_test;
  c.recheck_after_ns = r.recheck_after_ns;
  c.requested_ns = now_();
  c.request_expires_ns = c.requested_ns + policy_.approval_ttl.count() * kNsPerMs;
  save(c, r.requester, "command_requested",
       {{"reason", r.reason}, {"approvals_required", policy_.approvals_required},
        {"request_expires", common::format_time(c.request_expires_ns)}});
  ++next_id_;
  return c;
}

CommandRecord CommandEngine::sign(CommandRecord c) {
  auto& k = c.command;
  k = command_fields(c);
  std::array<std::uint8_t, 16> nonce{};
  common::random_bytes(nonce);
  k.nonce = common::to_hex(nonce);
  k.issued_ns = now_();
  k.expires_ns = k.issued_ns + policy_.command_ttl.count() * kNsPerMs;
  auto bytes = common::command_signing_bytes(k);
  k.signature = key_.sign(bytes);
  return c;
}

CommandRecord CommandEngine::approve(std::uint64_t id, const std::string& approver) {
  std::lock_guard lock(mu_);
  return approve_locked(load(id), approver, "");
}

CommandRecord CommandEngine::approve_locked(CommandRecord c, const std::string& approver,
                                            const std::string& link_id) {
  const auto id = c.id;
  if (c.state != CommandState::awaiting_approval)
    throw CommandError("command #" + std::to_string(id) + " is " + command_state_name(c.state) +
                       ", not awaiting approval");
  auto now = now_();
  if (now >= c.request_expires_ns) {
    c.state = CommandState::expired;
    c.finished_ns = now;
    save(c, "system", "command_expired", {{"why", "no approval in time"}});
    throw CommandError("command #" + std::to_string(id) + " expired waiting for approval");
  }
  if (approver == c.requester)
    throw CommandError("the requester (" + approver + ") cannot approve their own request");
  for (const auto& [who, t] : c.approvals)
    if (who == approver) throw CommandError(approver + " has already approved command #" + std::to_string(id));
  c.approvals.emplace_back(approver, now);
  json detail = {{"approvals", c.approvals.size()}, {"approvals_required", policy_.approvals_required}};
  if (!link_id.empty()) {
    c.used_links.push_back(link_id);
    detail["via"] = "approval link";
    detail["link_id"] = link_id;
  }
  if (c.approvals.size() >= policy_.approvals_required) {
    c = sign(std::move(c));
    c.state = CommandState::approved;
    c.approved_ns = now;
    detail["nonce"] = c.command.nonce;
    detail["expires"] = common::format_time(c.command.expires_ns);
  }
  save(c, approver, "command_approved", std::move(detail));
  return c;
}

CommandRecord CommandEngine::deny(std::uint64_t id, const std::string& who, const std::string& reason) {
  std::lock_guard lock(mu_);
  return deny_locked(load(id), who, reason, "");
}

CommandRecord CommandEngine::deny_locked(CommandRecord c, const std::string& who,
                                         const std::string& reason, const std::string& link_id) {
  if (c.state != CommandState::awaiting_approval)
    throw CommandError("command #" + std::to_string(c.id) + " is " + command_state_name(c.state) +
                       ", not awaiting approval");
  if (reason.empty()) throw CommandError("a denial needs a reason");
  if (reason.size() > kMaxReason) throw CommandError("the reason is longer than 1000 characters");
  c.state = CommandState::denied;
  c.denied_by = who;
  c.deny_reason = reason;
  c.finished_ns = now_();
  json detail = {{"reason", reason}};
  if (!link_id.empty()) {
    c.used_links.push_back(link_id);
    detail["via"] = "approval link";
    detail["link_id"] = link_id;
  }
  save(c, who, "command_denied", std::move(detail));
  return c;
}

// ---- approval links ------------------------------------------------------------------------

namespace {
constexpr std::string_view kLinkTag = "tocsin-approval-link-v1\n";
constexpr std::size_t kMaxLinkToken = 2048;

std::vector<std::uint8_t> link_signing_bytes(std::string_view payload) {
  std::vector<std::uint8_t> b(kLinkTag.begin(), kLinkTag.end());
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}
}  // namespace

std::string CommandEngine::approval_link(std::uint64_t id, const std::string& approver,
                                         const std::string& link_id,
                                         std::chrono::milliseconds ttl) const {
  CommandRecord c;
  {
    std::lock_guard lock(mu_);
    c = load(id);
  }
  std::int64_t expires = c.request_expires_ns;
  if (ttl.count() > 0) expires = std::min(expires, c.requested_ns + ttl.count() * kNsPerMs);
  std::string payload =
      json{{"c", id}, {"a", approver}, {"l", link_id}, {"x", expires}}.dump();
  auto sig = key_.sign(link_signing_bytes(payload));
  return common::base64url_encode(payload) + "." +
         common::base64url_encode({reinterpret_cast<const char*>(sig.data()), sig.size()});
}

ApprovalLink CommandEngine::check_link(const std::string& token) const {
  const CommandError bad("not a valid approval link (damaged, or not made by this collector)");
  auto dot = token.find('.');
  if (token.size() > kMaxLinkToken || dot == std::string::npos) throw bad;
  auto payload = common::base64url_decode(std::string_view(token).substr(0, dot));
  auto sig = common::base64url_decode(std::string_view(token).substr(dot + 1));
  if (!payload || !sig) throw bad;
  if (!key_.verify(link_signing_bytes(*payload),
                   {reinterpret_cast<const std::uint8_t*>(sig->data()), sig->size()}))
    throw bad;
  json j = json::parse(*payload, nullptr, false);
  ApprovalLink l;
  try {
    l.command_id = j.at("c").get<std::uint64_t>();
    l.approver = j.at("a").get<std::string>();
    l.link_id = j.at("l").get<std::string>();
    l.expires_ns = j.at("x").get<std::int64_t>();
  } catch (const json::exception&) {
    throw bad;
  }
  if (l.approver.empty() || l.link_id.empty()) throw bad;
  return l;
}

CommandRecord CommandEngine::link_target(const ApprovalLink& l, const std::string& decision) {
  auto c = load(l.command_id);
  std::string why;
  if (std::find(c.used_links.begin(), c.used_links.end(), l.link_id) != c.used_links.end())
    why = "this approval link was already used";
  else if (now_() >= l.expires_ns)
    why = "this approval link expired at " + common::format_time(l.expires_ns);
  else if (c.state != CommandState::awaiting_approval)
    why = "command #" + std::to_string(c.id) + " is " + command_state_name(c.state) +
          ", not awaiting approval";
  if (why.empty()) return c;
  spdlog::warn("command {}: approval link of {} refused: {}", command_name(c.id), l.approver, why);
  // Audited the first time only: whoever holds a spent link must not be able to grow the log.
  if (std::find(c.refused_links.begin(), c.refused_links.end(), l.link_id) == c.refused_links.end()) {
    c.refused_links.push_back(l.link_id);
    save(c, l.approver, "approval_link_refused", {{"link_id", l.link_id}, {"decision", decision}, {"why", why}});
  }
  throw CommandError(why);
}

CommandRecord CommandEngine::approve_by_link(const std::string& token) {
  auto l = check_link(token);
  std::lock_guard lock(mu_);
  return approve_locked(link_target(l, "approve"), l.approver, l.link_id);
}

CommandRecord CommandEngine::deny_by_link(const std::string& token, const std::string& reason) {
  auto l = check_link(token);
  std::lock_guard lock(mu_);
  return deny_locked(link_target(l, "deny"), l.approver, reason, l.link_id);
}

std::size_t CommandEngine::tick() {
  std::lock_guard lock(mu_);
  auto now = now_();
  std::vector<CommandRecord> due;
  for (const auto& [id, c] : active_) {
    bool late = (c.state == CommandState::awaiting_approval && now >= c.request_expires_ns) ||
                (c.state == CommandState::approved && now >= c.command.expires_ns) ||
                (c.state == CommandState::delivered && now >= c.command.expires_ns + kOutcomeGraceNs);
    if (late) due.push_back(c);
  }
  for (auto& c : due) {
    std::string why = c.state == CommandState::awaiting_approval ? "no approval in time"
                      : c.state == CommandState::approved    ? "the agent did not fetch it in time"
                                                             : "no outcome reported in time";
    c.state = CommandState::expired;
    c.finished_ns = now;
    save(c, "system", "command_expired", {{"why", why}});
  }
  return due.size();
}

common::Commands CommandEngine::poll(const std::string& agent_id) {
  std::lock_guard lock(mu_);
  common::Commands out;
  out.command_key_pem = key_pem_;
  auto now = now_();
  std::vector<CommandRecord> ready;
  for (const auto& [id, c] : active_)
    if (c.agent_id == agent_id && c.state == CommandState::approved && now < c.command.expires_ns)
      ready.push_back(c);
  for (auto& c : ready) {
    c.state = CommandState::delivered;
    c.delivered_ns = now;
    save(c, agent_id, "command_delivered", json::object());
    out.commands.push_back(c.command);
  }
  return out;
}

void CommandEngine::results_stored(const std::string& agent_id,
                                   const std::vector<common::ResultBody>& bodies) {
  std::lock_guard lock(mu_);
  for (const auto& b : bodies) {
    if (b.kind != "command") continue;
    auto id = parse_command_name(b.test_id);
    std::optional<CommandRecord> c;
    try {
      if (id) c = load(*id);
    } catch (const CommandError&) {
    }
    if (!c || c->agent_id != agent_id) {
      spdlog::warn("agent {} reported an outcome for unknown command '{}'", agent_id, b.test_id);
      continue;
    }
    if (command_final(c->state) && c->state != CommandState::expired) continue;  // already known
    // Only a command that was handed to this agent, and only with the nonce it was signed with.
    auto nonce = b.evidence.find("nonce");
    if (c->delivered_ns == 0 || nonce == b.evidence.end() || nonce->second != c->command.nonce) {
      spdlog::warn("agent {} reported an outcome for {} that was never delivered to it or with "
                   "another nonce; ignored",
                   agent_id, b.test_id);
      continue;
    }
    c->state = *parse_command_state(state_of_verdict(b.verdict));
    c->finished_ns = now_();
    c->outcome_reason = b.reason;
    c->outcome_evidence = b.evidence;
    c->outcome_agent_ns = b.finished_ns;
    json detail = {{"verdict", b.verdict}, {"reason", b.reason}};
    for (const char* k : {"exit_code", "nonce"})
      if (auto it = b.evidence.find(k); it != b.evidence.end()) detail[k] = it->second;
    save(*c, agent_id, "command_" + command_state_name(c->state), std::move(detail));
  }
}

std::optional<CommandRecord> CommandEngine::get(std::uint64_t id) const {
  std::lock_guard lock(mu_);
  try {
    return load(id);
  } catch (const CommandError&) {
    return std::nullopt;
  }
}

std::vector<CommandRecord> CommandEngine::find(
    const std::function<bool(const CommandRecord&)>& pred) const {
  std::lock_guard lock(mu_);
  std::vector<CommandRecord> out;
  store_.scan(Table::commands, "", [&](std::string_view, std::string_view v) {
    auto c = decode(std::string(v));
    if (pred(c)) out.push_back(std::move(c));
    return true;
  });
  return out;
}

std::vector<CommandRecord> CommandEngine::list(std::optional<CommandState> state, std::size_t limit) const {
  std::lock_guard lock(mu_);
  std::vector<CommandRecord> all;
  store_.scan(Table::commands, "", [&](std::string_view, std::string_view v) {
    auto c = decode(std::string(v));
    if (!state || c.state == *state) all.push_back(std::move(c));
    return true;
  });
  std::reverse(all.begin(), all.end());
  if (all.size() > limit) all.resize(limit);
  return all;
}

}  // namespace tocsin::collector
