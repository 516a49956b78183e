// The service watchdog (issue 6): when an http_check test named in `watch:` reports a service
// unhealthy, ask for a restart on the incident's behalf, and follow it through.
//
// It owns no state machine of its own that could drift from the truth: every round it looks
// at each active health_failed incident of a watched test and at the watchdog's commands for
// that incident's current opening (CommandEngine::find), and does the one thing due:
//
//   no request yet (or the last restart did not help, and fewer than max_restarts in the window)
//       → request a restart (requester "watchdog", with the rule's recheck) and pause the
//         incident's SLA while the request waits for a human;
//   request no longer waiting (approved, denied, expired) → resume the SLA;
//   restart executed, and the service still failed after it (an occurrence on the incident
//       after the restart, or no recovery by recheck_after + a grace) → escalate the incident;
//   denied, expired, failed or refused → say so on the incident, escalate, stop asking for
//       this opening (a human said no, or the agent cannot do it);
//   max_restarts reached within the window → escalate once, stop restarting.
//
// A healthy recheck resolves the incident through the ordinary result feed. What the watchdog
// has already acted on is kept as a cursor per incident (IncidentEngine::set_cursors), so a
// collector restart neither repeats nor forgets a step.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collector/commands/commands.hpp"
#include "collector/incidents/incidents.hpp"
#include "common/config.hpp"

namespace tocsin::collector {

struct WatchRule {
  std::string test;                // an http_check test id
  std::string agent;               // empty: any agent running the test
  std::string target;              // the service the agent restarts (its allowlist decides)
  std::chrono::milliseconds recheck_after{180'000};
  std::size_t max_restarts = 3;    // per window, per agent and target
  std::chrono::milliseconds window{3'600'000};
};

struct WatchPolicy {
  std::vector<WatchRule> rules;
  // The `watch:` list: test, on_unhealthy (only request_restart), target, agent,
  // recheck_after, max_restarts ("3 per 1h" or a number with `window`). Errors name file,
  // line and key.
  static WatchPolicy load(const common::ConfigNode& node);
  const WatchRule* rule_for(const std::string& test, const std::string& agent) const;
};

class Watchdog {
 public:
  using Clock = std::function<std::int64_t()>;
  static constexpr const char* kRequester = "watchdog";

  Watchdog(IncidentEngine& incidents, CommandEngine& commands, WatchPolicy policy, Clock now = {},
           std::chrono::milliseconds period = std::chrono::seconds(2));
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void start();
  void stop();
  // One round over the active incidents; returns the actions taken.
  std::size_t poll_once();

 private:
  // `for_incident`: the watchdog's commands for this incident; `mine`: all of its commands.
  std::size_t handle(const Incident& i, const WatchRule& rule,
                     const std::vector<CommandRecord>& for_incident,
                     const std::vector<CommandRecord>& mine);
  void loop();

  IncidentEngine& incidents_;
  CommandEngine& commands_;
  WatchPolicy policy_;
  Clock now_;
  std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tocsin::collector
