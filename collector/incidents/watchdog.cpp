#include "collector/incidents/watchdog.hpp"

#include <spdlog/spdlog.h>

#include <map>
#include <regex>
#include <pthread.h>

#include "common/clock.hpp"

namespace tocsin::collector {
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t kNsPerMs = 1'000'000;
// After a restart ran, how long past recheck_after the watchdog waits for a verdict before it
// calls the restart useless (the recheck result may be delayed by the agent's outbox).
constexpr std::int64_t kRecheckGraceNs = 60'000 * kNsPerMs;
constexpr std::string_view kPausePrefix = "waiting for approval of restart ";

std::int64_t ns(std::chrono::milliseconds d) { return d.count() * kNsPerMs; }

std::string cursor_name(std::uint64_t incident, const char* what) {
  return "watchdog/" + std::to_string(incident) + "/" + what;
}

std::string cmd_name(const CommandRecord& c) { return "cmd-" + std::to_string(c.id); }

}  // namespace

WatchPolicy WatchPolicy::load(const common::ConfigNode& node) {
  WatchPolicy p;
  if (!node.defined()) return p;
  static const std::regex max_re(R"(^\s*(\d+)\s*(?:per\s+(\S+))?\s*$)");
  for (const auto& n : node.items()) {
    n.check_keys({"test", "agent", "on_unhealthy", "target", "recheck_after", "max_restarts", "window"});
    WatchRule r;
    r.test = n.str("test");
    if (r.test.empty()) n.fail("test", "is required (an http_check test id)");
    r.agent = n.str("agent", "");
    auto action = n.str("on_unhealthy", "request_restart");
    if (action != "request_restart") n.fail("on_unhealthy", "must be request_restart");
    r.target = n.str("target");
    static const std::regex target_re("^[A-Za-z0-9@._:-]{1,256}$");
    if (!std::regex_match(r.target, target_re) || r.target.front() == '-')
      n.fail("target", "'" + r.target + "' is not a service name (letters, digits, @ . _ : -)");
    r.recheck_after = n.duration("recheck_after", r.recheck_after);
    if (r.recheck_after < 1s || r.recheck_after > 24h) n.fail("recheck_after", "must be between 1s and 24h");
    if (n.has("window")) r.window = n.duration("window", r.window);
    if (n.has("max_restarts")) {
      std::smatch m;
      auto text = n.str("max_restarts");
      if (!std::regex_match(text, m, max_re))
        n.fail("max_restarts", "'" + text + "' is not a count such as \"3 per 1h\"");
      try {
        r.max_restarts = std::stoul(m[1].str());
        if (m[2].matched) {
          if (n.has("window")) n.fail("window", "given twice (also in max_restarts)");
          r.window = common::parse_duration(m[2].str());
        }
      } catch (const std::invalid_argument& e) {
        n.fail("max_restarts", e.what());
      } catch (const std::out_of_range&) {
        n.fail("max_restarts", "is too large");
      }
      if (r.max_restarts < 1 || r.max_restarts > 100) n.fail("max_restarts", "must be between 1 and 100");
    }
    if (r.window < 1min) n.fail("window", "must be at least 1m");
    for (const auto& other : p.rules)
      if (other.test == r.test && other.agent == r.agent)
        n.fail("test", "'" + r.test + "' is watched twice" + (r.agent.empty() ? "" : " for " + r.agent));
    p.rules.push_back(std::move(r));
  }
  return p;
}

const WatchRule* WatchPolicy::rule_for(const std::string& test, const std::string& agent) const {
  const WatchRule* any = nullptr;
  for (const auto& r : rules) {
    if (r.test != test) continue;
    if (r.agent == agent) return &r;
    if (r.agent.empty()) any = &r;
  }
  return any;
}

Watchdog::Watchdog(IncidentEngine& incidents, CommandEngine& commands, WatchPolicy policy, Clock now,
                   std::chrono::milliseconds period)
    : incidents_(incidents),
      commands_(commands),
      policy_(std::move(policy)),
      now_(now ? std::move(now) : Clock(common::now_ns)),
      period_(period) {}

Watchdog::~Watchdog() { stop(); }

void Watchdog::start() {
  if (policy_.rules.empty()) return;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "watchdog");
    loop();
  });
}

void Watchdog::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    try {
      poll_once();
    } catch (const std::exception& e) {
      spdlog::error("watchdog: {}", e.what());
    }
    lock.lock();
    cv_.wait_for(lock, period_, [&] { return stopping_; });
  }
}

std::size_t Watchdog::poll_once() {
  std::size_t actions = 0;
  // One scan of the watchdog's own commands per round, grouped by incident.
  std::map<std::uint64_t, std::vector<CommandRecord>> by_incident;
  std::vector<CommandRecord> mine;
  for (auto& c : commands_.find([](const CommandRecord& c) { return c.requester == kRequester; })) {
    by_incident[c.incident_id].push_back(c);
    mine.push_back(std::move(c));
  }
  std::map<std::uint64_t, Incident> active;
  for (auto& i : incidents_.active()) active.emplace(i.id, std::move(i));

  // A request whose incident has moved on (resolved, closed, or reopened since) is withdrawn:
  // nobody should approve a restart of a service that is healthy again.
  for (const auto& c : mine) {
    if (c.state != CommandState::awaiting_approval) continue;
    auto it = active.find(c.incident_id);
    bool current = it != active.end() &&
                   c.requested_ns >= std::max(it->second.opened_ns, it->second.reopened_ns);
    if (current) continue;
    try {
      commands_.deny(c.id, kRequester,
                     "withdrawn by the watchdog: incident #" + std::to_string(c.incident_id) +
                         " recovered before anyone approved");
      ++actions;
    } catch (const CommandError& e) {  // decided meanwhile
      spdlog::info("watchdog: {}: {}", cmd_name(c), e.what());
    }
  }

  for (const auto& [id, i] : active) {
    if (i.kind != IncidentKind::health_failed) continue;
    try {
      const WatchRule* rule = policy_.rule_for(i.test_id, i.agent_id);
      if (!rule) {  // the rule went away: do not leave the SLA frozen
        if (i.paused() && i.pause_reason.rfind(kPausePrefix, 0) == 0) {
          incidents_.resume(i.id, kRequester, std::string(kPausePrefix));
          ++actions;
        }
        continue;
      }
      actions += handle(i, *rule, by_incident[i.id], mine);
    } catch (const std::exception& e) {
      spdlog::warn("watchdog: incident #{}: {}", i.id, e.what());
    }
  }
  return actions;
}

std::size_t Watchdog::handle(const Incident& i, const WatchRule& rule,
                             const std::vector<CommandRecord>& for_incident,
                             const std::vector<CommandRecord>& mine) {
  const std::int64_t opening = std::max(i.opened_ns, i.reopened_ns);
  const std::int64_t now = now_();
  const CommandRecord* latest = nullptr;  // the newest request of this opening
  for (const auto& c : for_incident)
    if (c.requested_ns >= opening && (!latest || c.id > latest->id)) latest = &c;
  const auto handled = incidents_.cursor(cursor_name(i.id, "handled"));
  const auto paused_for = incidents_.cursor(cursor_name(i.id, "paused"));
  const bool stopped = incidents_.cursor(cursor_name(i.id, "stopped")) == static_cast<std::uint64_t>(opening);
  std::size_t actions = 0;

  // The SLA stands still while a human is asked, once per request: a person who resumes it
  // on purpose is not overruled.
  if (latest && latest->state == CommandState::awaiting_approval) {
    if (!i.paused() && paused_for != latest->id) {
      incidents_.pause(i.id, kRequester, std::string(kPausePrefix) + cmd_name(*latest));
      incidents_.set_cursors({{cursor_name(i.id, "paused"), latest->id}});
      ++actions;
    }
    return actions;
  }
  if (i.paused() && i.pause_reason.rfind(kPausePrefix, 0) == 0) {
    incidents_.resume(i.id, kRequester, std::string(kPausePrefix));
    ++actions;
  }
  if (stopped) return actions;
  if (latest && (latest->state == CommandState::approved || latest->state == CommandState::delivered))
    return actions;  // on its way to the agent

  auto stop_cursors = [&](std::uint64_t handled_id) {
    std::map<std::string, std::uint64_t> c{{cursor_name(i.id, "stopped"), static_cast<std::uint64_t>(opening)}};
    if (handled_id) c[cursor_name(i.id, "handled")] = handled_id;
    return c;
  };
  auto short_text = [](std::string s) { return s.size() > 300 ? s.substr(0, 297) + "..." : s; };

  if (latest && latest->id > handled) {
    if (latest->state == CommandState::executed) {
      // Did a check that began after the restart fail? Both times are the agent's own clock,
      // so a check in flight during the restart does not count, whenever it was uploaded.
      bool failed_after = latest->outcome_agent_ns > 0 && i.last_failure_agent_ns > 0
                              ? i.last_failure_agent_ns >= latest->outcome_agent_ns
                              : i.last_failure_ns > latest->finished_ns + latest->recheck_after_ns;
      if (!failed_after && now < latest->finished_ns + ns(rule.recheck_after) + kRecheckGraceNs)
        return actions;  // waiting for the recheck
      incidents_.escalate(i.id, kRequester,
                          "restart " + cmd_name(*latest) + " of " + latest->target + " ran, but " +
                              i.test_id + (failed_after ? " still fails after it" : " did not recover in time"),
                          {{cursor_name(i.id, "handled"), latest->id}});
      ++actions;
    } else {
      std::string why =
          latest->state == CommandState::denied ? "denied by " + latest->denied_by + ": " + latest->deny_reason
          : latest->state != CommandState::expired ? "the agent said " + latest->outcome_reason
          : latest->approved_ns == 0               ? "nobody approved it in time"
          : latest->delivered_ns == 0              ? "the agent did not fetch it in time"
                                                   : "the agent reported no outcome in time";
      incidents_.escalate(i.id, kRequester,
                          "restart " + cmd_name(*latest) + " of " + latest->target + " was " +
                              command_state_name(latest->state) + " (" + short_text(why) +
                              "); no automatic restart until this incident is resolved",
                          stop_cursors(latest->id));
      return actions + 1;
    }
  }

  // Ask (again): not while another restart of the same service is under way, and not past the
  // window's budget. Every request that was approved counts, whatever became of it.
  const std::int64_t since = now - ns(rule.window);
  std::size_t recent = 0;
  for (const auto& c : mine) {
    if (c.agent_id != i.agent_id || c.target != rule.target) continue;
    if (!command_final(c.state)) return actions;  // e.g. requested for another opening or test
    if (c.requested_ns >= since && c.approved_ns != 0) ++recent;
  }
  if (recent >= rule.max_restarts) {
    incidents_.escalate(i.id, kRequester,
                        "max_restarts reached: " + std::to_string(recent) + " restart(s) of " +
                            rule.target + " within " + common::format_duration(rule.window) +
                            "; the watchdog stops restarting it until this incident is resolved",
                        stop_cursors(latest ? latest->id : 0));
    return actions + 1;
  }
  CommandRequest r;
  r.agent_id = i.agent_id;
  r.kind = "restart_service";
  r.target = rule.target;
  r.requester = kRequester;
  r.incident_id = i.id;
  r.recheck_test = rule.test;
  r.recheck_after_ns = ns(rule.recheck_after);
  r.reason = short_text("incident #" + std::to_string(i.id) + ": " + i.title + " (watch policy for " +
                        rule.test + ")");
  CommandRecord c;
  try {
    c = commands_.request(r);
  } catch (const CommandError& e) {  // e.g. the agent was revoked: say so once, then stop
    incidents_.escalate(i.id, kRequester,
                        "the watchdog cannot request a restart of " + rule.target + ": " +
                            short_text(e.what()) + "; no automatic restart until this incident is resolved",
                        stop_cursors(latest ? latest->id : 0));
    return actions + 1;
  }
  spdlog::info("watchdog: incident #{}: requested {} (restart {} on {})", i.id, cmd_name(c), rule.target,
               i.agent_id);
  if (!i.paused()) {
    incidents_.pause(i.id, kRequester, std::string(kPausePrefix) + cmd_name(c));
    incidents_.set_cursors({{cursor_name(i.id, "paused"), c.id}});
  }
  return actions + 1;
}

}  // namespace tocsin::collector
