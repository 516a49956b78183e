// The poller engine: config checks, the thread, window cursor and paging, sink hand-off, backoff.
#include "collector/alerts/pollers/pollers.hpp"

#include <pthread.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "collector/alerts/pollers/vendor.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {
namespace {

using detail::pollers::FailureKind;
using detail::pollers::has_control_chars;
using detail::pollers::HttpClient;
using detail::pollers::kNsPerMs;
using detail::pollers::Page;
using detail::pollers::PollError;
using detail::pollers::Stopped;
using detail::pollers::Vendor;
using detail::pollers::Window;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr std::size_t kMaxPageSize = 10000;  // Elasticsearch's default max_result_window
constexpr milliseconds kMaxBackoff = 5min;
constexpr milliseconds kSubmitTimeout = 2min;
constexpr milliseconds kMinBackoffBase = 50ms;

// ---------------------------------------------------------------------------------------------
// Configuration checks: fail at start with the field's name, not at the first poll.

void require(bool ok, const AlertSourceConfig& cfg, const std::string& problem) {
  if (!ok) throw std::invalid_argument("alert source '" + cfg.name + "': " + problem);
}

void check_common(const AlertSourceConfig& cfg) {
  require(cfg.url.starts_with("http://") || cfg.url.starts_with("https://"), cfg,
          "url must start with https:// (or http://)");
  require(!has_control_chars(cfg.url) && cfg.url.find(' ') == std::string::npos, cfg,
          "url contains spaces or control characters");
  require(cfg.interval > 0ms, cfg, "interval must be positive");
  require(cfg.timeout > 0ms, cfg, "timeout must be positive");
  require(cfg.lookback >= 0ms, cfg, "lookback must not be negative");
  require(cfg.page_size >= 1 && cfg.page_size <= kMaxPageSize, cfg,
          "page_size must be 1.." + std::to_string(kMaxPageSize));
  require(cfg.max_pages >= 1, cfg, "max_pages must be at least 1");
  // These end up in HTTP headers: a newline would inject headers of its own.
  for (const auto* s : {&cfg.api_key, &cfg.username, &cfg.password, &cfg.client_id})
    require(!has_control_chars(*s), cfg, "credentials contain control characters");
}

constexpr const char* kCrowdsecNoBouncerKey =
    "crowdsec_lapi cannot use api_key: that is a bouncer key, and CrowdSec refuses bouncers on "
    "GET /v1/alerts; alerts need a machine login (machine_id and password, from cscli machines "
    "add)";

void check_vendor(const AlertSourceConfig& cfg) {
  bool basic = !cfg.username.empty();
  switch (cfg.type) {
    case SourceType::elasticsearch:
      require(!cfg.index.empty(), cfg, "elasticsearch needs index");
      require(!cfg.time_field.empty(), cfg, "elasticsearch needs time_field");
      break;
    case SourceType::splunk_search:
      require(!cfg.query.empty(), cfg, "splunk_search needs query");
      require(basic || !cfg.api_key.empty(), cfg, "splunk_search needs username or api_key");
      break;
    case SourceType::sentinel:
      require(!cfg.query.empty(), cfg, "sentinel needs query (KQL)");
      require(!cfg.workspace_id.empty(), cfg, "sentinel needs workspace_id");
      require(!cfg.client_id.empty() && !cfg.client_secret.empty(), cfg,
              "sentinel needs client_id and client_secret");
      require(!cfg.token_url.empty() || !cfg.tenant_id.empty(), cfg,
              "sentinel needs tenant_id or token_url");
      break;
    case SourceType::crowdsec_lapi:
      require(cfg.api_key.empty(), cfg, kCrowdsecNoBouncerKey);
      require(basic && !cfg.password.empty(), cfg,
              "crowdsec_lapi needs machine_id and password (a machine login: cscli machines add)");
      break;
    default:
      require(false, cfg, "type is not a poller");
  }
}

std::unique_ptr<Vendor> make_vendor(const AlertSourceConfig& cfg) {
  switch (cfg.type) {
    case SourceType::elasticsearch:
      return detail::pollers::make_elasticsearch(cfg);
    case SourceType::splunk_search:
      return detail::pollers::make_splunk_search(cfg);
    case SourceType::sentinel:
      return detail::pollers::make_sentinel(cfg);
    case SourceType::crowdsec_lapi:
      return detail::pollers::make_crowdsec_lapi(cfg);
    default:
      return nullptr;
  }
}

// The sink answers on its own thread, possibly after we gave up waiting: the shared state
// outlives whichever side finishes first.
struct SubmitWait {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<SubmitOutcome> outcome;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Poller::Impl {
  Impl(AlertSourceConfig c, AlertSink& s) : cfg(std::move(c)), sink(s) {
    while (cfg.url.ends_with("/")) cfg.url.pop_back();
    check_common(cfg);
    check_vendor(cfg);
    vendor = make_vendor(cfg);
    rng.seed(std::random_device{}());
  }

  AlertSourceConfig cfg;
  AlertSink& sink;
  std::unique_ptr<Vendor> vendor;
  std::thread thread;
  std::atomic<bool> stopping{false};

  mutable std::mutex mu;  // guards status, stop_requested, current_submit
  std::condition_variable cv;
  bool stop_requested = false;
  PollerStatus stat;
  std::shared_ptr<SubmitWait> current_submit;

  // Owned by the poller thread.
  std::mt19937_64 rng;
  std::int64_t cursor_ns = 0;     // end of the last fully read window
  std::optional<Window> pending;  // a window whose remaining pages wait for the next poll
  unsigned consecutive_failures = 0;

  void run();
  milliseconds poll_once(HttpClient& http);
  std::size_t read_window(HttpClient& http, const Window& w, bool& finished);
  std::size_t submit(std::vector<Alert> alerts);
  std::size_t submit_chunk(std::vector<Alert> chunk);
  void report(const Page& page);
  void succeeded(std::size_t accepted);
  milliseconds failed(const PollError& e, std::size_t accepted);
  milliseconds backoff(milliseconds retry_after);
  bool sleep_for(milliseconds d);
  void request_stop();
};

void Poller::Impl::run() {
  try {
    HttpClient http(cfg, stopping);
    while (true) {
      auto started = std::chrono::steady_clock::now();
      milliseconds delay = poll_once(http);
      // Polls keep their cadence however long one took (osquery-style drift compensation).
      auto next = started + delay;
      auto now = std::chrono::steady_clock::now();
      if (next < now) next = now + std::min(delay, cfg.interval);
      if (!sleep_for(std::chrono::duration_cast<milliseconds>(next - now))) return;
    }
  } catch (const Stopped&) {
  } catch (const std::exception& e) {
    spdlog::error("poller {}: stopped by an unexpected error: {}", cfg.name, e.what());
    std::lock_guard lock(mu);
    stat.last_error = std::string("poller stopped: ") + e.what();
  }
}

milliseconds Poller::Impl::poll_once(HttpClient& http) {
  std::int64_t now = common::now_ns();
  {
    std::lock_guard lock(mu);
    stat.last_attempt_ns = now;
  }
  // Until a window completes, the first attempt's time stands in for "the last window end",
  // so a first poll that fails is retried from the same start, not from a later one.
  if (cursor_ns == 0) cursor_ns = now;
  Window w = pending ? *pending : Window{cursor_ns - cfg.lookback.count() * kNsPerMs, now};
  if (!pending) vendor->restart();
  std::size_t accepted = 0;
  try {
    bool finished = false;
    accepted = read_window(http, w, finished);
    if (finished) {
      cursor_ns = w.end_ns;
      pending.reset();
    } else {
      pending = w;  // max_pages reached: the next poll continues where this one stopped
    }
    succeeded(accepted);
    return cfg.interval;
  } catch (const PollError& e) {
    pending.reset();  // the retry re-reads the whole window; the sink drops the repeats
    return failed(e, accepted);
  } catch (const nlohmann::json::exception& e) {
    pending.reset();
    return failed(PollError(FailureKind::malformed, cfg.url + ": " + e.what()), accepted);
  } catch (const std::exception& e) {
    pending.reset();
    return failed(PollError(FailureKind::transport, e.what()), accepted);
  }
}

std::size_t Poller::Impl::read_window(HttpClient& http, const Window& w, bool& finished) {
  std::size_t accepted = 0;
  for (std::size_t i = 0; i < cfg.max_pages; ++i) {
    Page page = vendor->fetch(http, w);
    report(page);
    if (!page.alerts.empty()) accepted += submit(std::move(page.alerts));
    if (!page.partial_error.empty()) throw PollError(FailureKind::http, page.partial_error);
    if (!page.more) {
      finished = true;
      return accepted;
    }
  }
  return accepted;
}

void Poller::Impl::report(const Page& page) {
  for (const auto& [reason, detail] : page.notes) sink.rejected(cfg.name, reason, detail);
}

std::size_t Poller::Impl::submit(std::vector<Alert> alerts) {
  std::size_t accepted = 0;
  for (std::size_t off = 0; off < alerts.size(); off += kMaxAlertsPerRequest) {
    std::size_t end = std::min(alerts.size(), off + kMaxAlertsPerRequest);
    std::vector<Alert> chunk(std::make_move_iterator(alerts.begin() + off),
                             std::make_move_iterator(alerts.begin() + end));
    accepted += submit_chunk(std::move(chunk));
  }
  return accepted;
}

// Blocks until the sink has stored the alerts: only then may the window move forward.
std::size_t Poller::Impl::submit_chunk(std::vector<Alert> chunk) {
  auto wait = std::make_shared<SubmitWait>();
  {
    std::lock_guard lock(mu);
    if (stop_requested) throw Stopped{};
    current_submit = wait;
  }
  std::int64_t arrival = common::now_ns();
  for (auto& a : chunk) a.arrival_ns = arrival;
  sink.submit(std::move(chunk), [wait](SubmitOutcome o) {
    std::lock_guard lock(wait->mu);
    wait->outcome = std::move(o);
    wait->cv.notify_all();
  });
  std::unique_lock lock(wait->mu);
  bool answered = wait->cv.wait_for(lock, kSubmitTimeout,
                                    [&] { return wait->outcome.has_value() || stopping.load(); });
  if (!wait->outcome && stopping.load()) throw Stopped{};
  if (!answered)
    throw PollError(FailureKind::store, "the alert store did not answer within " +
                                            std::to_string(kSubmitTimeout.count() / 1000) + " s");
  if (!wait->outcome->error.empty())
    throw PollError(FailureKind::store,
                    "the alert store refused the alerts: " + wait->outcome->error);
  return wait->outcome->accepted;
}

void Poller::Impl::succeeded(std::size_t accepted) {
  consecutive_failures = 0;
  std::lock_guard lock(mu);
  stat.last_success_ns = common::now_ns();
  stat.polls += 1;
  stat.alerts += accepted;
}

milliseconds Poller::Impl::failed(const PollError& e, std::size_t accepted) {
  ++consecutive_failures;
  {
    std::lock_guard lock(mu);
    stat.polls += 1;
    stat.failures += 1;
    stat.alerts += accepted;
    stat.last_error = e.what();
  }
  sink.rejected(cfg.name, e.kind == FailureKind::malformed ? "malformed" : "poll_failed", e.what());
  return backoff(e.retry_after);
}

// Exponential from the poll interval, capped, with "equal jitter" (half fixed, half random) so
// many pollers that failed together do not retry together; never sooner than Retry-After.
milliseconds Poller::Impl::backoff(milliseconds retry_after) {
  milliseconds base = std::max(cfg.interval, kMinBackoffBase);
  unsigned shift = std::min(consecutive_failures - 1, 20u);
  double exp = std::min<double>(static_cast<double>(base.count()) * std::ldexp(1.0, shift),
                                static_cast<double>(kMaxBackoff.count()));
  std::uniform_real_distribution<double> jitter(0.0, exp / 2);
  milliseconds delay(static_cast<std::int64_t>(exp / 2 + jitter(rng)));
  return std::max(delay, retry_after);
}

bool Poller::Impl::sleep_for(milliseconds d) {
  std::unique_lock lock(mu);
  cv.wait_for(lock, d, [&] { return stop_requested; });
  return !stop_requested;
}

void Poller::Impl::request_stop() {
  std::shared_ptr<SubmitWait> waiting;
  {
    std::lock_guard lock(mu);
    stop_requested = true;
    stopping.store(true);
    waiting = current_submit;
  }
  cv.notify_all();
  if (waiting) {
    std::lock_guard lock(waiting->mu);  // the waiter checks `stopping` under this mutex
    waiting->cv.notify_all();
  }
}

Poller::Poller(AlertSourceConfig cfg, AlertSink& sink)
    : impl_(std::make_unique<Impl>(std::move(cfg), sink)) {}

Poller::~Poller() {
  stop();
}

void Poller::start() {
  if (impl_->thread.joinable() || impl_->stopping.load())
    throw std::logic_error("poller '" + impl_->cfg.name + "' was already started or stopped");
  impl_->thread = std::thread([impl = impl_.get()] {
    pthread_setname_np(pthread_self(), "poller");
    impl->run();
  });
}

void Poller::stop() {
  impl_->request_stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

PollerStatus Poller::status() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stat;
}

}  // namespace tocsin::collector
