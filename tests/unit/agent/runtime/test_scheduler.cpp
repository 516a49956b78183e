// The drift-free schedule grid, full-jitter backoff, and the Scheduler on a real io_context.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "agent/runtime/scheduler.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using tocsin::agent::full_jitter_backoff;
using tocsin::agent::next_slot;
using tocsin::agent::Scheduler;
using tocsin::agent::SteadyTime;
using tocsin::agent::TestSpec;

namespace {

const SteadyTime kOrigin = SteadyTime{} + 1000h;

TestSpec spec(const std::string& id) {
  TestSpec t;
  t.id = id;
  t.probe = "tcp_connect";
  t.every = 1h;  // once mode must not wait for it
  t.jitter = 30min;
  return t;
}

}  // namespace

TEST_CASE("next_slot is the first grid slot strictly after now") {
  struct Case {
    std::chrono::milliseconds now_after_origin;
    std::chrono::milliseconds want_after_origin;
  } cases[] = {
      {0ms, 10s},     // exactly on a slot: the next one
      {1ms, 10s},     //
      {9999ms, 10s},  //
      {10s, 20s},     //
      {37s, 40s},     // an overrun skips the missed slots 20s and 30s
      {10000001ms, 10010000ms},
  };
  for (const auto& c : cases) {
    CAPTURE(c.now_after_origin.count());
    CHECK(next_slot(kOrigin, 10s, kOrigin + c.now_after_origin) == kOrigin + c.want_after_origin);
  }
}

TEST_CASE("next_slot before the origin is the origin itself") {
  CHECK(next_slot(kOrigin, 10s, kOrigin - 1ms) == kOrigin);
  CHECK(next_slot(kOrigin, 10s, kOrigin - 1h) == kOrigin);
}

TEST_CASE("next_slot never drifts off the grid however late the wake-ups are") {
  const auto every = 7s;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::int64_t> late(0, 20'000);  // up to ~3 periods late, in ms
  auto slot = kOrigin;
  for (int i = 0; i < 1000; ++i) {
    auto now = slot + std::chrono::milliseconds(late(rng));
    auto next = next_slot(kOrigin, every, now);
    CAPTURE(i);
    REQUIRE(next > now);
    REQUIRE(next - now <= every);
    REQUIRE((next - kOrigin) % every == 0ms);
    slot = next;
  }
}

TEST_CASE("full_jitter_backoff stays within [0, min(cap, base * 2^attempt)] and reaches the cap") {
  std::mt19937_64 rng(12345);
  const auto base = 1ms, cap = 8ms;
  struct Case {
    unsigned attempt;
    std::int64_t ceiling;
  } cases[] = {{0, 1}, {1, 2}, {2, 4}, {3, 8}, {4, 8}, {30, 8}, {1000, 8}, {4'000'000'000u, 8}};
  for (const auto& c : cases) {
    CAPTURE(c.attempt);
    std::int64_t lo = c.ceiling, hi = 0;
    for (int i = 0; i < 2000; ++i) {
      auto d = full_jitter_backoff(c.attempt, base, cap, rng).count();
      REQUIRE(d >= 0);
      REQUIRE(d <= c.ceiling);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
    // With 2000 draws over at most 9 values every value shows up: both ends are reached.
    CHECK(lo == 0);
    CHECK(hi == c.ceiling);
  }
}

TEST_CASE("full_jitter_backoff with realistic settings never exceeds its cap") {
  std::mt19937_64 rng(99);
  const auto base = 1000ms, cap = 60'000ms;
  std::int64_t hi = 0;
  for (unsigned attempt = 0; attempt < 64; ++attempt)
    for (int i = 0; i < 200; ++i) {
      auto d = full_jitter_backoff(attempt, base, cap, rng);
      REQUIRE(d >= 0ms);
      REQUIRE(d <=
              std::min<std::chrono::milliseconds>(cap, base * (1ll << std::min(attempt, 20u))));
      hi = std::max(hi, d.count());
    }
  CHECK(hi > 50'000);  // the cap's neighbourhood is reached, it is not stuck low
}

TEST_CASE("full_jitter_backoff is reproducible for a given seed") {
  std::mt19937_64 a(5), b(5);
  for (unsigned attempt = 0; attempt < 10; ++attempt)
    CHECK(full_jitter_backoff(attempt, 100ms, 10s, a) ==
          full_jitter_backoff(attempt, 100ms, 10s, b));
}

TEST_CASE("a Scheduler with once=true runs each test exactly once and then reports completion") {
  asio::io_context io;
  std::map<std::string, int> runs;
  int done_calls = 0;
  Scheduler s(io.get_executor(), {spec("alpha"), spec("beta"), spec("gamma")},
              [&](const TestSpec& t) -> asio::awaitable<void> {
                ++runs[t.id];
                co_return;
              });
  s.start(true, [&] {
    ++done_calls;
    CHECK(runs.size() == 3);  // completion comes after every run
  });
  io.run();  // returns because nothing is left to do
  CHECK(runs == std::map<std::string, int>{{"alpha", 1}, {"beta", 1}, {"gamma", 1}});
  CHECK(done_calls == 1);
}

TEST_CASE("a test whose run throws still counts towards completion") {
  asio::io_context io;
  int runs = 0, done_calls = 0;
  Scheduler s(io.get_executor(), {spec("ok"), spec("broken")},
              [&](const TestSpec& t) -> asio::awaitable<void> {
                ++runs;
                if (t.id == "broken") throw std::runtime_error("probe exploded");
                co_return;
              });
  s.start(true, [&] { ++done_calls; });
  io.run();
  CHECK(runs == 2);
  CHECK(done_calls == 1);
}

TEST_CASE("a Scheduler without tests reports completion at once") {
  asio::io_context io;
  int done_calls = 0;
  Scheduler s(io.get_executor(), {}, [](const TestSpec&) -> asio::awaitable<void> { co_return; });
  s.start(true, [&] { ++done_calls; });
  io.run();
  CHECK(done_calls == 1);
}

TEST_CASE("a repeating Scheduler runs the first slot at once and stop() ends it") {
  asio::io_context io;
  int runs = 0, done_calls = 0;
  std::unique_ptr<Scheduler> s;
  auto t = spec("repeating");
  t.jitter = 0ms;  // the first run is due immediately
  s = std::make_unique<Scheduler>(io.get_executor(), std::vector<TestSpec>{t},
                                  [&](const TestSpec&) -> asio::awaitable<void> {
                                    ++runs;
                                    s->stop();  // otherwise it would wait an hour for the next
                                    co_return;
                                  });
  s->start(false, [&] { ++done_calls; });
  io.run();
  CHECK(runs == 1);
  CHECK(done_calls == 1);
}

TEST_CASE("stop() before the first slot prevents every run") {
  asio::io_context io;
  int runs = 0, done_calls = 0;
  auto t = spec("never");
  t.jitter = 0ms;
  Scheduler s(io.get_executor(), {t}, [&](const TestSpec&) -> asio::awaitable<void> {
    ++runs;
    co_return;
  });
  s.start(false, [&] { ++done_calls; });
  s.stop();
  io.run();
  CHECK(runs == 0);
  CHECK(done_calls == 1);
}
