// The socket watchdog (common/net.hpp) on a real io_context: when it fires, and when it must not.
// Only lower bounds on time are checked (a timer cannot fire early); nothing asserts speed.
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>

#include "common/net.hpp"

using namespace tocsin::common;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST_CASE("a watchdog fires once its deadline passes, not before") {
  boost::asio::io_context io;
  int fired = 0;
  Watchdog wd(io.get_executor(), [&] { ++fired; });
  auto t0 = Clock::now();
  wd.arm(50ms);
  io.run();  // returns once the only wait has ended
  CHECK(fired == 1);
  CHECK(wd.fired());
  CHECK(Clock::now() - t0 >= 50ms);
}

TEST_CASE("re-arming a watchdog later moves its deadline: the earlier wait does not fire") {
  boost::asio::io_context io;
  int fired = 0;
  Clock::time_point fired_at{};
  Watchdog wd(io.get_executor(), [&] {
    ++fired;
    fired_at = Clock::now();
  });
  wd.arm(40ms);
  // Re-armed three times before the first deadline: each time for 200 ms from then.
  boost::asio::steady_timer step(io);
  Clock::time_point last_arm{};
  int steps = 0;
  std::function<void()> rearm = [&] {
    step.expires_after(20ms);
    step.async_wait([&](boost::system::error_code) {
      last_arm = Clock::now();
      wd.arm(200ms);
      if (++steps < 3) rearm();
    });
  };
  rearm();
  io.run();
  CHECK(fired == 1);
  CHECK(steps == 3);
  CHECK(fired_at - last_arm >= 200ms);
}

TEST_CASE("re-arming a watchdog sooner takes effect at once") {
  boost::asio::io_context io;
  int fired = 0;
  Watchdog wd(io.get_executor(), [&] { ++fired; });
  auto t0 = Clock::now();
  wd.arm(1h);
  wd.arm(30ms);
  io.run();  // would last an hour if the first deadline still held
  CHECK(fired == 1);
  CHECK(Clock::now() - t0 < 30min);
}

TEST_CASE("a disarmed watchdog never fires and leaves nothing to keep the io_context running") {
  boost::asio::io_context io;
  int fired = 0;
  Watchdog wd(io.get_executor(), [&] { ++fired; });
  wd.arm(1h);
  wd.arm(2h);  // a lazy re-arm: still the one-hour wait outstanding
  boost::asio::post(io, [&] { wd.disarm(); });
  auto t0 = Clock::now();
  io.run();
  CHECK(fired == 0);
  CHECK_FALSE(wd.fired());
  CHECK(Clock::now() - t0 < 30min);

  // Armed again after a disarm, it works as new.
  io.restart();
  wd.arm(20ms);
  io.run();
  CHECK(fired == 1);
}

TEST_CASE("a watchdog destroyed while waiting does not call its action") {
  boost::asio::io_context io;
  int fired = 0;
  auto wd = std::make_unique<Watchdog>(io.get_executor(), [&] { ++fired; });
  wd->arm(10ms);
  wd.reset();
  io.run();
  CHECK(fired == 0);
}
