#include "agent/runtime/agent.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include "agent/probes/eicar_drop.hpp"
#include "agent/probes/encoded_command.hpp"
#include "agent/probes/optional_probes.hpp"
#include "agent/probes/tcp_connect.hpp"
#include "agent/probes/tcp_listen.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/tls.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;

ProbeSet make_probes(asio::any_io_executor ex, const AgentConfig& cfg, const ClockState& clock) {
  ProbeSet probes;
  probes["tcp_connect"] = std::make_unique<TcpConnectProbe>(ex, cfg.allowlist, clock);
  probes["tcp_listen"] = std::make_unique<TcpListenProbe>(ex, clock);
  probes["eicar_drop"] = std::make_unique<EicarDropProbe>(ex, clock);
  probes["encoded_command"] = std::make_unique<EncodedCommandProbe>(ex, clock);
  add_optional_probes(probes, ex, cfg, clock);
  return probes;
}

std::chrono::milliseconds run_deadline(const TestSpec& t) {
  if (t.probe == "tcp_connect") {
    // Each attempt bounds DNS, connect and (with the handshake) the reply by the timeout.
    long per_target = t.handshake ? 3 : 2;
    return t.timeout * per_target * static_cast<long>(t.targets.size() + (t.control ? 1 : 0)) + 5s;
  }
  return t.timeout + 5s;
}

asio::awaitable<std::vector<common::ResultBody>> run_probe(const ProbeSet& probes,
                                                           const TestSpec& t,
                                                           const ClockState& clock,
                                                           std::chrono::milliseconds deadline) {
  if (deadline <= 0ms) deadline = run_deadline(t);
  auto marker = new_marker();
  // A wall-clock step is caught here, before the action, so the uplink re-synchronises at once.
  auto started_ns = common::process_frame().at(clock.observe().mono_ns);
  auto ex = co_await asio::this_coro::executor;
  // The probe runs as its own coroutine; whichever comes first, its results or the deadline,
  // wakes this one. A probe past its deadline keeps running only to clean up (its own timeouts
  // end it); its late results are dropped.
  struct State {
    explicit State(asio::any_io_executor ex, std::chrono::milliseconds d) : timer(ex, d) {}
    asio::steady_timer timer;
    bool done = false;
    std::exception_ptr error;
    std::vector<common::ResultBody> results;
  };
  auto st = std::make_shared<State>(ex, deadline);
  asio::co_spawn(ex, probes.at(t.probe)->run(t, marker),
                 [st](std::exception_ptr e, std::vector<common::ResultBody> r) {
                   st->done = true;
                   st->error = e;
                   st->results = std::move(r);
                   st->timer.cancel();
                 });
  if (!st->done) {
    boost::system::error_code ec;
    co_await st->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  if (st->done) {
    if (st->error) std::rethrow_exception(st->error);
    co_return std::move(st->results);
  }
  spdlog::warn("test {} run {}: no result within {}; reported as error: timeout", t.id, marker,
               common::format_duration(deadline));
  auto b = start_result(t, marker);
  b.started_ns = started_ns;
  b.target = t.summary;
  b.verdict = "error";
  b.reason = "timeout";
  b.evidence = {{"deadline", common::format_duration(deadline)},
                {"detail", "the probe did not finish in time; a result it gives later is dropped"}};
  finish_result(b, clock);
  co_return std::vector<common::ResultBody>{b};
}

Agent::Agent(asio::io_context& io, AgentConfig cfg)
    : io_(io),
      cfg_(std::move(cfg)),
      identity_(Identity::load(cfg_.state_dir)),
      tls_(common::make_client_context(
          {identity_.ca_file(), identity_.cert_file(), identity_.key_file()})) {
  outbox_ = Outbox::open({identity_.outbox_dir(), cfg_.outbox_max_bytes}, identity_.agent_id);
  probes_ = make_probes(io_.get_executor(), cfg_, clock_);
  auto server = common::parse_host_port(cfg_.server.empty() ? identity_.server : cfg_.server);
  auto key = common::Ed25519Key::from_private_pem(common::read_file(identity_.key_file()));
  uplink_ = std::make_unique<Uplink>(io_.get_executor(), tls_, server, identity_.agent_id,
                                     std::move(key), *outbox_, clock_, cfg_.uplink);
  scheduler_ = std::make_unique<Scheduler>(io_.get_executor(), cfg_.tests,
                                           [this](const TestSpec& t) { return run_test(t); });
  ActionRunner::Hooks hooks;
  hooks.report = [this](const common::ResultBody& b) { report_command(b); };
  hooks.recheck = [this](const std::string& id, std::chrono::milliseconds delay) {
    return scheduler_->run_once_after(id, delay);
  };
  actions_ = std::make_unique<ActionRunner>(io_.get_executor(), cfg_.actions,
                                            identity_.command_key_file(),
                                            identity_.command_nonce_file(), identity_.agent_id,
                                            clock_, std::move(hooks));
}

void Agent::report_command(const common::ResultBody& b) {
  auto appended = outbox_->append({common::encode_body(b)});
  if (appended == 0)
    spdlog::error("command {}: its result ({} {}) was dropped: outbox full", b.test_id, b.verdict,
                  b.reason);
  uplink_->notify();
}

Agent::~Agent() {
  stop();
}

bool kill_switch_present(const AgentConfig& cfg) {
  std::error_code ec;
  return !cfg.kill_switch.empty() && std::filesystem::exists(cfg.kill_switch, ec);
}

asio::awaitable<void> Agent::run_test(const TestSpec& t) {
  bool disabled = kill_switch_present(cfg_);
  if (disabled != disabled_) {
    disabled_ = disabled;
    if (disabled)
      spdlog::warn("kill switch {} present: no probe runs until it is removed",
                   cfg_.kill_switch.string());
    else
      spdlog::info("kill switch {} removed: probes run again", cfg_.kill_switch.string());
  }
  if (disabled) co_return;
  auto results = co_await run_probe(probes_, t, clock_);
  auto marker = results.empty() ? std::string() : results.front().marker;
  std::vector<std::string> bodies;
  bodies.reserve(results.size());
  std::map<std::string, int> verdicts;
  for (const auto& r : results) {
    bodies.push_back(common::encode_body(r));
    ++verdicts[r.verdict];
  }
  auto appended = outbox_->append(bodies);
  std::string summary;
  for (auto& [v, n] : verdicts)
    summary += (summary.empty() ? "" : ", ") + std::to_string(n) + " " + v;
  spdlog::info("test {} run {}: {}{}", t.id, marker, summary,
               appended < bodies.size()
                   ? " (" + std::to_string(bodies.size() - appended) + " dropped: outbox full)"
                   : "");
  uplink_->notify();
}

void Agent::start(bool once, std::function<void()> on_done) {
  auto s = outbox_->stats();
  spdlog::info("agent {} starting: {} tests, collector {}, outbox seq {} ({} unsent)",
               identity_.agent_id, cfg_.tests.size(),
               cfg_.server.empty() ? identity_.server : cfg_.server, s.head_seq, s.pending);
  // A long-running agent takes remote commands; `run --once` (tests, ad-hoc runs) does not.
  if (!once)
    uplink_->on_commands([this](common::Commands c) { actions_->on_commands(std::move(c)); });
  if (once) {
    auto check = [this, on_done] {
      if (tests_done_ && outbox_->stats().pending == 0 && on_done) on_done();
    };
    uplink_->on_drained(check);
  }
  // Run after the first clock exchange so results carry a measured offset (the collector
  // corrects their action times with it); if the collector is unreachable, run anyway after
  // the connect timeout: the results wait in the outbox.
  auto started = std::make_shared<bool>(false);
  auto go = [this, started, once] {
    if (*started) return;
    *started = true;
    if (!once) return scheduler_->start(false);
    scheduler_->start(true, [this] {
      tests_done_ = true;
      uplink_->notify();  // the drained callback fires from the sender once all is acked
    });
  };
  uplink_->on_connected(go);
  start_timer_ = std::make_unique<asio::steady_timer>(io_, cfg_.uplink.connect_timeout);
  start_timer_->async_wait([go](boost::system::error_code ec) {
    if (!ec) go();
  });
  uplink_->start();
}

void Agent::stop() {
  if (start_timer_) start_timer_->cancel();
  if (scheduler_) scheduler_->stop();
  if (uplink_) uplink_->stop();
}

}  // namespace tocsin::agent
