// run_probe: the deadline around every run, which turns a probe that never finishes into one
// `error: timeout` result and leaves a probe that does finish untouched.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "agent/runtime/agent.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using tocsin::agent::ClockState;
using tocsin::agent::Probe;
using tocsin::agent::ProbeSet;
using tocsin::agent::TestSpec;
using tocsin::common::ResultBody;

namespace {

// Waits `delay` on a real timer, then reports `not_prevented`.
class SlowProbe : public Probe {
 public:
  SlowProbe(std::chrono::milliseconds delay, int& finished) : delay_(delay), finished_(finished) {}
  asio::awaitable<std::vector<ResultBody>> run(const TestSpec& test, std::string marker) override {
    asio::steady_timer t(co_await asio::this_coro::executor, delay_);
    co_await t.async_wait(asio::use_awaitable);
    ++finished_;
    auto b = tocsin::agent::start_result(test, marker);
    b.verdict = "not_prevented";
    b.reason = "connected";
    co_return std::vector<ResultBody>{b};
  }

 private:
  std::chrono::milliseconds delay_;
  int& finished_;
};

std::vector<ResultBody> run(std::chrono::milliseconds probe_takes, std::chrono::milliseconds deadline,
                            int& finished) {
  asio::io_context io;
  ProbeSet probes;
  probes["tcp_connect"] = std::make_unique<SlowProbe>(probe_takes, finished);
  TestSpec t;
  t.id = "slow";
  t.probe = "tcp_connect";
  t.summary = "1 target(s)";
  ClockState clock{123, 456};
  std::optional<std::vector<ResultBody>> out;
  asio::co_spawn(io, tocsin::agent::run_probe(probes, t, clock, deadline),
                 [&](std::exception_ptr e, std::vector<ResultBody> r) {
                   REQUIRE_FALSE(e);
                   out = std::move(r);
                 });
  while (!out && io.run_one()) {
  }
  // Let a probe that outlived its deadline finish on its own (its result goes nowhere).
  io.run_for(probe_takes + 200ms);
  REQUIRE(out);
  return *out;
}

}  // namespace

TEST_CASE("run_probe reports a probe past its deadline as error: timeout") {
  int finished = 0;
  auto rs = run(400ms, 50ms, finished);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "error");
  CHECK(rs[0].reason == "timeout");
  CHECK(rs[0].test_id == "slow");
  CHECK(rs[0].marker.rfind("tcn-", 0) == 0);
  CHECK(rs[0].evidence.at("deadline") == "50ms");
  CHECK(rs[0].clock_offset_ns == 123);
  CHECK(rs[0].finished_ns >= rs[0].started_ns);
  CHECK(finished == 1);  // the probe itself ran to its end; only its result was dropped
}

TEST_CASE("run_probe passes through the results of a probe that finishes in time") {
  int finished = 0;
  auto rs = run(10ms, 5s, finished);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].verdict == "not_prevented");
  CHECK(finished == 1);
}

TEST_CASE("run_deadline allows every tcp_connect target its timeout") {
  TestSpec t;
  t.probe = "tcp_connect";
  t.timeout = 2s;
  t.targets.resize(3);
  CHECK(tocsin::agent::run_deadline(t) == 17s);  // DNS and connect, each within 2s
  t.handshake = true;
  CHECK(tocsin::agent::run_deadline(t) == 23s);
  t.probe = "eicar_drop";
  CHECK(tocsin::agent::run_deadline(t) == 7s);
}

TEST_CASE("run_blocking runs on the pool, returns values and exceptions, keeps captures intact") {
  asio::io_context io;
  std::string captured(200, 'x');  // heap-allocated: a double free of it would crash or be seen
  auto io_thread = std::this_thread::get_id();
  std::string got;
  bool pool_thread_differs = false, threw = false, void_ran = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto job = [captured, io_thread, &pool_thread_differs] {
          pool_thread_differs = std::this_thread::get_id() != io_thread;
          return captured + "!";
        };
        got = co_await tocsin::agent::run_blocking(job);
        auto failing = [captured]() -> int { throw std::runtime_error("boom " + captured.substr(0, 3)); };
        try {
          co_await tocsin::agent::run_blocking(failing);
        } catch (const std::runtime_error& e) {
          threw = std::string(e.what()) == "boom xxx";
        }
        auto void_job = [captured, &void_ran] { void_ran = !captured.empty(); };
        co_await tocsin::agent::run_blocking(void_job);
        CHECK(std::this_thread::get_id() == io_thread);  // resumed on the io thread
      },
      [](std::exception_ptr e) { REQUIRE_FALSE(e); });
  io.run();
  CHECK(got == captured + "!");
  CHECK(pool_thread_differs);
  CHECK(threw);
  CHECK(void_ran);
}
