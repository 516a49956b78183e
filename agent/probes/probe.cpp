#include "agent/probes/probe.hpp"

#include <openssl/ssl.h>

#include <array>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include "common/clock.hpp"
#include "common/crypto.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::tcp;

boost::asio::thread_pool& blocking_pool() {
  // OpenSSL starts here, on the calling thread, before the pool exists: it registers its
  // exit-time cleanup now, so that runs after the pool's threads are joined (exit handlers run
  // in reverse). Were the first TLS use on a pool thread, the cleanup would run first and the
  // threads' OpenSSL error state would leak (LeakSanitizer saw it). libcurl is not started
  // here: the first web probe loads it on a pool thread (common/curl_loader.hpp). In the
  // static agent its OpenSSL is a second copy, started there without an exit handler.
  static const bool libraries_ready = [] {
    OPENSSL_init_ssl(0, nullptr);
    return true;
  }();
  (void)libraries_ready;
  static boost::asio::thread_pool pool(2);
  return pool;
}

std::string new_marker() { return "tcn-" + common::random_id(10); }

common::ResultBody start_result(const TestSpec& test, const std::string& marker) {
  common::ResultBody b;
  b.test_id = test.id;
  b.probe = test.probe;
  b.technique = test.technique;
  b.marker = marker;
  b.expect_prevent = test.expect_prevent;
  if (test.alert_within)
    b.alert_within_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(*test.alert_within).count();
  b.detections = test.detections;
  b.started_ns = common::frame_now_ns();
  return b;
}

void finish_result(common::ResultBody& b, const ClockState& clock) {
  auto r = clock.observe();
  b.finished_ns = common::process_frame().at(r.mono_ns);
  auto s = clock.stamp(r, b.started_ns);
  b.clock_offset_ns = s.offset_ns;
  b.clock_error_ns = s.error_ns;
  b.clock_stepped = s.stepped;
  b.clock_frame = process_frame_id();
  b.clock_steps = s.steps;
}

const std::string& process_frame_id() {
  static const std::string id = [] {
    std::array<std::uint8_t, 8> bytes{};
    common::random_bytes(bytes);
    return common::to_hex(bytes);
  }();
  return id;
}

ClockState::ClockState(std::int64_t offset_ns, std::int64_t error_ns)
    : mapping_(common::ClockMapping::fixed(offset_ns, error_ns)) {}

common::ClockReading ClockState::observe() const {
  common::ClockReading r;
  std::int64_t step = 0;
  std::function<void()> cb;
  {
    // Read under the lock: readings applied out of order (two threads, one preempted between
    // reading and applying) would count a step and then its reverse.
    std::lock_guard lk(mu_);
    r = common::read_clocks();
    step = mapping_.observe(common::process_frame(), r);
    if (step != 0) cb = on_step_;
  }
  if (step != 0) {
    spdlog::warn("the wall clock stepped by {:+.3f} s against the monotonic clock; results are "
                 "marked clock_stepped, their bound widened by the step, until a clock exchange "
                 "confirms the mapping{}",
                 step / 1e9, cb ? " (re-synchronising now)" : "");
    if (cb) cb();
  }
  return r;
}

common::ClockMapping::Stamp ClockState::stamp(const common::ClockReading& r,
                                              std::int64_t started_ns) const {
  std::lock_guard lk(mu_);
  return mapping_.stamp(r, started_ns);
}

common::ClockMapping::Stamp ClockState::now() const {
  auto r = observe();
  return stamp(r, common::process_frame().at(r.mono_ns));
}

void ClockState::synchronised(const common::ClockSample& s, const common::ClockReading& at) {
  std::lock_guard lk(mu_);
  mapping_.synchronised(s, at);
}

bool ClockState::resync_wanted() const {
  std::lock_guard lk(mu_);
  return mapping_.resync_wanted();
}

std::uint64_t ClockState::steps() const {
  std::lock_guard lk(mu_);
  return mapping_.steps();
}

void ClockState::on_step(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  on_step_ = std::move(fn);
}

asio::awaitable<AllowedAddresses> resolve_allowed(asio::any_io_executor ex, const Allowlist& allow,
                                                  std::string host, std::uint16_t port,
                                                  std::chrono::milliseconds timeout) {
  AllowedAddresses out;
  boost::system::error_code ec;
  auto literal = asio::ip::make_address(host, ec);
  std::vector<asio::ip::address> all;
  bool name_allowed = false;
  if (!ec) {
    all.push_back(literal);
  } else {
    name_allowed = allow.allows_name(host, port);
    struct Dns {
      explicit Dns(asio::any_io_executor e) : resolver(e) {}
      tcp::resolver resolver;
      bool timed_out = false;
    };
    auto dns = std::make_shared<Dns>(ex);
    asio::steady_timer timer(ex);
    timer.expires_after(timeout);
    timer.async_wait([dns](boost::system::error_code e) {
      if (!e) {
        dns->timed_out = true;
        dns->resolver.cancel();
      }
    });
    ec = {};
    auto results = co_await dns->resolver.async_resolve(
        host, std::to_string(port), asio::redirect_error(asio::use_awaitable, ec));
    timer.cancel();
    if (ec || results.empty()) {
      out.failure = "dns_failure";
      out.detail = dns->timed_out ? "name resolution timed out"
                   : ec           ? ec.message()
                                  : "no addresses";
      co_return out;
    }
    for (const auto& r : results) all.push_back(r.endpoint().address());
  }
  std::string refused;
  for (const auto& a : all) {
    if (name_allowed || allow.allows_address(a, port))
      out.addrs.push_back(a);
    else
      refused += (refused.empty() ? "" : ", ") + a.to_string();
  }
  if (out.addrs.empty()) {
    out.failure = "target_not_allowlisted";
    out.detail = "address(es) " + refused + " not on the allowlist; not contacted";
  }
  co_return out;
}

}  // namespace tocsin::agent
