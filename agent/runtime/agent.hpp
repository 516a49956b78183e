// The running agent: identity, outbox, probes, scheduler and uplink wired together.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <map>
#include <memory>

#include "agent/actions/actions.hpp"
#include "agent/probes/probe.hpp"
#include "agent/runtime/config.hpp"
#include "agent/runtime/identity.hpp"
#include "agent/runtime/outbox.hpp"
#include "agent/runtime/scheduler.hpp"
#include "agent/runtime/uplink.hpp"

namespace tocsin::agent {

using ProbeSet = std::map<std::string, std::unique_ptr<Probe>>;
// One instance of every probe kind, sharing the agent's allowlist and clock.
ProbeSet make_probes(boost::asio::any_io_executor ex, const AgentConfig& cfg,
                     const ClockState& clock);
// How long a run may take before it is reported as `error: timeout`: the test's timeout (for
// tcp_connect per target and per bounded step: DNS, connect, handshake) plus 5 s for the
// probe's own clean-up.
std::chrono::milliseconds run_deadline(const TestSpec& t);
// Runs one test once with a fresh marker; results are stamped with the test's technique. A
// run that has not finished by `deadline` (default: run_deadline) gives one result,
// `error: timeout`.
boost::asio::awaitable<std::vector<common::ResultBody>> run_probe(
    const ProbeSet& probes, const TestSpec& t, const ClockState& clock,
    std::chrono::milliseconds deadline = std::chrono::milliseconds(0));

// The kill switch (`kill_switch:` in the config) exists: no probe may run, on any path
// (`run`, `run --once`, `run-once`, a command's recheck).
bool kill_switch_present(const AgentConfig& cfg);

class Agent {
 public:
  Agent(boost::asio::io_context& io, AgentConfig cfg);  // throws with a clear message
  ~Agent();
  // once: run each test a single time, deliver everything, then call on_done.
  void start(bool once = false, std::function<void()> on_done = {});
  void stop();
  const Identity& identity() const { return identity_; }
  Outbox& outbox() { return *outbox_; }
  UplinkStats uplink_stats() const { return uplink_->stats(); }

 private:
  boost::asio::awaitable<void> run_test(const TestSpec& t);
  void report_command(const common::ResultBody& b);

  boost::asio::io_context& io_;
  AgentConfig cfg_;
  Identity identity_;
  boost::asio::ssl::context tls_;
  std::unique_ptr<Outbox> outbox_;
  ClockState clock_;
  ProbeSet probes_;
  std::unique_ptr<Uplink> uplink_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ActionRunner> actions_;  // remote commands the uplink receives
  bool tests_done_ = false;
  bool disabled_ = false;  // kill switch seen at the last run
  std::unique_ptr<boost::asio::steady_timer> start_timer_;
};

}  // namespace tocsin::agent
