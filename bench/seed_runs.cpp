// Seeds a collector database with pending runs (markers tcn-b000000000, tcn-b000000001, ...)
// so bench/alerts can measure matching with a large index. Run it while the collector is down.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "collector/runs/correlator.hpp"
#include "collector/store/store.hpp"
#include "common/clock.hpp"

using namespace tocsin;

int main(int argc, char** argv) {
  CLI::App app{"Seed a collector database with pending runs for bench/alerts"};
  std::string db;
  std::size_t runs = 1'000'000;
  app.add_option("--db", db, "The collector's database directory (<data dir>/db)")->required();
  app.add_option("--runs", runs, "How many pending runs")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto store = collector::Store::open(db);
  auto now = common::now_ns();
  auto t0 = std::chrono::steady_clock::now();
  collector::WriteSet ws;
  for (std::size_t i = 0; i < runs; ++i) {
    collector::Run r;
    char marker[32];
    std::snprintf(marker, sizeof marker, "tcn-b%09zu", i);
    r.marker = marker;
    r.agent_id = "agt-bench" + std::to_string(i % 1000);
    r.seq = i / 1000 + 1;
    r.hostname = "bench-host-" + std::to_string(i % 1000);
    r.test_id = "bench-test-" + std::to_string(i % 20);
    r.probe = "tcp_connect";
    r.technique = "T1021";
    r.verdict = "not_prevented";
    r.alert_within_ns = 3600LL * 1'000'000'000;  // pending for the whole benchmark
    r.action_ns = r.agent_started_ns = r.received_ns = r.state_changed_ns = now;
    r.action_error_ns = 1'000'000;
    r.state = collector::DetectionState::pending;
    collector::put_run(ws, r);
    if ((i + 1) % 10000 == 0) {
      store->commit(std::move(ws));
      ws = {};
    }
  }
  if (!ws.empty()) store->commit(std::move(ws));
  auto s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "seeded " << runs << " pending runs in " << s << " s\n";
  return 0;
}
