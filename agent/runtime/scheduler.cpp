#include "agent/runtime/scheduler.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <list>

#include "common/log.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;

SteadyTime next_slot(SteadyTime origin, std::chrono::milliseconds every, SteadyTime now) {
  if (now < origin) return origin;
  return origin + ((now - origin) / every + 1) * every;  // first slot strictly after now
}

std::chrono::milliseconds full_jitter_backoff(unsigned attempt, std::chrono::milliseconds base,
                                              std::chrono::milliseconds cap, std::mt19937_64& rng) {
  auto ceiling = base.count();
  for (unsigned i = 0; i < attempt && ceiling < cap.count(); ++i) ceiling *= 2;
  ceiling = std::min(ceiling, cap.count());
  std::uniform_int_distribution<std::int64_t> d(0, ceiling);
  return std::chrono::milliseconds(d(rng));
}

struct Scheduler::Impl {
  asio::any_io_executor ex;
  std::vector<TestSpec> tests;
  RunFn run;
  std::list<asio::steady_timer> timers;
  bool stopping = false;
  std::mt19937_64 rng{std::random_device{}()};
  std::size_t remaining = 0;
  std::function<void()> on_all_done;

  asio::awaitable<void> loop(const TestSpec& t, asio::steady_timer& timer, bool once) {
    auto origin = std::chrono::steady_clock::now();
    auto slot = origin;
    for (;;) {
      auto start = slot;
      if (!once && t.jitter.count() > 0)
        start += std::chrono::milliseconds(
            std::uniform_int_distribution<std::int64_t>(0, t.jitter.count() - 1)(rng));
      timer.expires_at(start);
      boost::system::error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (stopping) co_return;
      try {
        co_await run(t);
      } catch (const std::exception& e) {
        // One failed run (a full disk, a probe bug) must not end the test's schedule.
        spdlog::error("test {}: run failed: {}", t.id, e.what());
      }
      if (once || stopping) co_return;
      auto next = next_slot(origin, t.every, std::chrono::steady_clock::now());
      if (auto skipped = (next - slot) / t.every - 1; skipped > 0)
        spdlog::warn("test {} overran its interval; skipped {} run(s)", t.id, skipped);
      slot = next;
    }
  }
};

Scheduler::Scheduler(asio::any_io_executor ex, std::vector<TestSpec> tests, RunFn run)
    : impl_(std::make_shared<Impl>()) {
  impl_->ex = std::move(ex);
  impl_->tests = std::move(tests);
  impl_->run = std::move(run);
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::start(bool once, std::function<void()> on_all_done) {
  impl_->remaining = impl_->tests.size();
  impl_->on_all_done = std::move(on_all_done);
  if (impl_->tests.empty() && impl_->on_all_done) impl_->on_all_done();
  for (const auto& t : impl_->tests) {
    auto& timer = impl_->timers.emplace_back(impl_->ex);
    asio::co_spawn(impl_->ex, impl_->loop(t, timer, once),
                   [impl = impl_, id = t.id](std::exception_ptr e) {
                     if (e) {
                       try {
                         std::rethrow_exception(e);
                       } catch (const std::exception& ex) {
                         spdlog::error("test {} stopped: {}", id, ex.what());
                       }
                     }
                     if (--impl->remaining == 0 && impl->on_all_done) impl->on_all_done();
                   });
  }
}

bool Scheduler::run_once_after(const std::string& id, std::chrono::milliseconds delay) {
  auto it = std::find_if(impl_->tests.begin(), impl_->tests.end(),
                         [&](const TestSpec& t) { return t.id == id; });
  if (it == impl_->tests.end() || impl_->stopping) return false;
  auto timer = impl_->timers.emplace(impl_->timers.end(), impl_->ex);
  timer->expires_after(delay);
  // Parameters by value: the list keeps the timer where it is until the handler erases it.
  auto once = [](std::shared_ptr<Impl> impl, TestSpec t,
                 asio::steady_timer* timer) -> asio::awaitable<void> {
    boost::system::error_code ec;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (impl->stopping) co_return;
    spdlog::info("test {}: extra run (recheck)", t.id);
    co_await impl->run(t);
  };
  asio::co_spawn(impl_->ex, once(impl_, *it, &*timer),
                 [impl = impl_, timer, id](std::exception_ptr e) {
                   common::log_if_failed("test " + id + ": recheck run failed")(e);
                   impl->timers.erase(timer);
                 });
  return true;
}

void Scheduler::stop() {
  impl_->stopping = true;
  for (auto& t : impl_->timers) t.cancel();
}

}  // namespace tocsin::agent
