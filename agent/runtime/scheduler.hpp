// Runs each test on a drift-free grid (start + k*every) with bounded per-run jitter.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "agent/runtime/config.hpp"

namespace tocsin::agent {

using SteadyTime = std::chrono::steady_clock::time_point;

// The first grid slot strictly after `now`: a run that overran skips the slots it missed
// instead of bunching them up, and late wake-ups never shift the grid (no drift).
SteadyTime next_slot(SteadyTime origin, std::chrono::milliseconds every, SteadyTime now);

// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)].
std::chrono::milliseconds full_jitter_backoff(unsigned attempt, std::chrono::milliseconds base,
                                              std::chrono::milliseconds cap, std::mt19937_64& rng);

class Scheduler {
 public:
  using RunFn = std::function<boost::asio::awaitable<void>(const TestSpec&)>;
  Scheduler(boost::asio::any_io_executor ex, std::vector<TestSpec> tests, RunFn run);
  ~Scheduler();
  // once: run every test a single time (at once, no jitter) and report completion.
  void start(bool once = false, std::function<void()> on_all_done = {});
  // One extra run of test `id` after `delay`, outside its grid (a command's recheck). False
  // when there is no such test. Works whether or not start() was called.
  bool run_once_after(const std::string& id, std::chrono::milliseconds delay);
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tocsin::agent
