#include "agent/probes/probe.hpp"

#include <openssl/ssl.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

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
  b.started_ns = common::now_ns();
  return b;
}

void finish_result(common::ResultBody& b, const ClockState& clock) {
  b.finished_ns = common::now_ns();
  b.clock_offset_ns = clock.offset_ns;
  b.clock_error_ns = clock.error_ns;
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
