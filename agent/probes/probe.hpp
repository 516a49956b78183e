// What every probe shares: the clock state stamped on results and the probe interface.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <string>
#include <vector>

#include "agent/runtime/allowlist.hpp"
#include "agent/runtime/config.hpp"
#include "common/clock.hpp"
#include "common/wire.hpp"

namespace tocsin::agent {

// The agent's mapping to the collector's clock (common::ClockMapping) over the process frame,
// shared by the uplink (which exchanges) and every stamper (probes, actions), on whatever
// threads they run: all access is under one lock. A step of the wall clock seen by any reading
// is logged and handed to the step callback (the uplink re-synchronises at once).
class ClockState {
 public:
  ClockState() = default;  // never synchronised: results carry error -1
  // A mapping given by hand (tests, `run-once`): offset and bound as given, no drift.
  ClockState(std::int64_t offset_ns, std::int64_t error_ns);
  ClockState(const ClockState&) = delete;
  ClockState& operator=(const ClockState&) = delete;

  // Reads both clocks and checks them for a step; returns the reading.
  common::ClockReading observe() const;
  // The stamp for a result started at frame time `started_ns` and finished at reading `r`.
  common::ClockMapping::Stamp stamp(const common::ClockReading& r, std::int64_t started_ns) const;
  // The offset and bound in force now.
  common::ClockMapping::Stamp now() const;
  void synchronised(const common::ClockSample& s, const common::ClockReading& at);
  bool resync_wanted() const;
  std::uint64_t steps() const;
  // Called on the thread that saw a step, outside the lock.
  void on_step(std::function<void()> fn);

 private:
  mutable std::mutex mu_;
  mutable common::ClockMapping mapping_;
  std::function<void()> on_step_;
};

// A unique, detector-visible marker for one run: "tcn-" + 10 random [a-z0-9].
std::string new_marker();

// This process's frame (common::process_frame) named by 16 random hex digits, sent with every
// result: the collector applies an offset only to results of the same frame.
const std::string& process_frame_id();

// The fields every result of a run shares: test, kind, technique, marker, expectation, and
// the start time (the process frame, common::frame_now_ns). finish_result stamps the end time
// and the clock state: offset, bound (grown since the exchange), clock_stepped, frame and steps.
common::ResultBody start_result(const TestSpec& test, const std::string& marker);
void finish_result(common::ResultBody& b, const ClockState& clock);

// A small pool (created on first use) for probe work that can only block: libcurl easy
// transfers, c-ares and OpenSSL handshakes driven synchronously. The agent's io thread never
// blocks: a probe co_awaits run_blocking(job) and resumes on its own executor with a copy of
// job's result (or its exception). The job must bound its own time (curl and socket timeouts).
// It takes a named callable, never a temporary: GCC 12 destroys a lambda temporary that sits
// in a co_await expression twice (its captures are freed twice), so this does not compile:
//   co_await run_blocking([s] { ... });           // refused: a temporary
//   auto job = [s] { ... }; co_await run_blocking(job);   // fine
boost::asio::thread_pool& blocking_pool();
template <class F>
auto run_blocking(F& job) {
  using R = std::invoke_result_t<F&>;
  F f = job;
  using Held = std::conditional_t<std::is_void_v<R>, bool, R>;
  // Not a coroutine: the callable moves straight into the job posted to the pool, and the
  // handler (the awaiting coroutine) is resumed on its own executor with (error, value).
  auto initiation = [](auto handler, F f) {
    auto ex = boost::asio::get_associated_executor(handler);
    boost::asio::post(blocking_pool(), [f = std::move(f), ex,
                                        handler = std::move(handler)]() mutable {
      std::exception_ptr error;
      Held value{};
      try {
        if constexpr (std::is_void_v<R>) {
          f();
        } else {
          value = f();
        }
      } catch (...) {
        error = std::current_exception();
      }
      boost::asio::post(ex, [handler = std::move(handler), error, value = std::move(value)]() mutable {
        if constexpr (std::is_void_v<R>)
          std::move(handler)(error);
        else
          std::move(handler)(error, std::move(value));
      });
    });
  };
  if constexpr (std::is_void_v<R>)
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(std::exception_ptr)>(
        initiation, boost::asio::use_awaitable, std::move(f));
  else
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable),
                                       void(std::exception_ptr, R)>(
        initiation, boost::asio::use_awaitable, std::move(f));
}

// A target's addresses that the allowlist permits, resolved within `timeout` (an IP literal
// is not resolved). failure: "" (addrs non-empty), "dns_failure" or "target_not_allowlisted"
// (every address refused; none may be contacted), with a detail for the evidence. A name on
// the allowlist admits all its addresses; otherwise each address must be listed.
struct AllowedAddresses {
  std::string failure, detail;
  std::vector<boost::asio::ip::address> addrs;
};
boost::asio::awaitable<AllowedAddresses> resolve_allowed(boost::asio::any_io_executor ex,
                                                         const Allowlist& allow,
                                                         std::string host, std::uint16_t port,
                                                         std::chrono::milliseconds timeout);

class Probe {
 public:
  virtual ~Probe() = default;
  // Runs one test once; returns one result per target. Never throws for outcomes on the
  // network (those are verdicts); throws only for bugs or exhausted resources.
  virtual boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                                      std::string marker) = 0;
};

}  // namespace tocsin::agent
