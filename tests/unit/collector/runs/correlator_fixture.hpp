// Shared by the correlator's tests: runs and alerts to feed it, and a correlator over a fresh
// RocksDB store that records the detection events it emits.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "common/clock.hpp"
#include "tests/unit/temp_dir.hpp"

namespace tocsin::test {

using namespace tocsin::collector;
using namespace std::chrono_literals;

constexpr std::int64_t kSec = 1'000'000'000;

inline Run make_run(const std::string& marker, std::int64_t action_ns, std::int64_t within_ns) {
  Run r;
  r.marker = marker;
  r.agent_id = "agent-1";
  r.seq = 1;
  r.hostname = "web01";
  r.test_id = "eicar-drop-tmp";
  r.probe = "eicar_drop";
  r.technique = "T1105";
  r.verdict = "prevented";
  r.alert_within_ns = within_ns;
  r.action_ns = action_ns;
  r.agent_started_ns = action_ns;
  r.action_error_ns = 2'000'000;
  r.received_ns = action_ns;
  r.state = within_ns > 0 ? DetectionState::pending : DetectionState::not_expected;
  return r;
}

inline Alert make_alert(const std::string& text, std::int64_t arrival_ns, const std::string& id = "") {
  Alert a;
  a.source = "siem";
  a.source_type = "generic";
  a.id = id;
  a.text = text;
  a.arrival_ns = arrival_ns;
  return a;
}

// A correlator over a fresh store that records the detection events it emits.
struct Fixture {
  explicit Fixture(CorrelationConfig cfg = {}) : cfg(cfg) { open(); }
  ~Fixture() { close(); }

  void open() {
    store = Store::open(dir / "db");
    correlator = std::make_unique<Correlator>(*store, cfg);
    correlator->on_event([this](const DetectionEvent& e) {
      std::lock_guard lk(mu);
      events.push_back(e);
      cv.notify_all();
    });
    correlator->start();
  }
  void close() {
    correlator.reset();
    store.reset();
  }

  void add_run(const Run& r) {  // as the ingest does: stored first, then announced
    WriteSet ws;
    put_run(ws, r);
    store->commit(std::move(ws));
    correlator->runs_stored({r});
  }
  SubmitOutcome submit(std::vector<Alert> alerts) {
    std::promise<SubmitOutcome> p;
    auto f = p.get_future();
    correlator->submit(std::move(alerts), [&p](SubmitOutcome o) { p.set_value(o); });
    REQUIRE(f.wait_for(10s) == std::future_status::ready);
    return f.get();
  }
  Run run(const std::string& marker) {
    correlator->drain();
    auto r = get_run(*store, marker);
    REQUIRE(r.has_value());
    return *r;
  }
  // Waits (bounded) for an event that moves `marker` to `to`.
  bool wait_event(const std::string& marker, const std::string& to) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, 10s, [&] {
      for (const auto& e : events)
        if (e.marker == marker && e.to == to) return true;
      return false;
    });
  }

  TempDir dir{"correlator"};
  CorrelationConfig cfg;
  std::unique_ptr<Store> store;
  std::unique_ptr<Correlator> correlator;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<DetectionEvent> events;
};

}  // namespace tocsin::test
