// The incident feed: polls the store's durable logs from persisted cursors into the engine.
#include <algorithm>

#include <pthread.h>
#include <spdlog/spdlog.h>

#include "collector/incidents/engine_txn.hpp"
#include "collector/incidents/incidents.hpp"

namespace tocsin::collector {

// ---- feed ---------------------------------------------------------------------------------

namespace {
constexpr std::size_t kFeedBatch = 1000;
}

IncidentFeed::IncidentFeed(IncidentEngine& engine, Store& store, std::chrono::milliseconds period)
    : engine_(engine), store_(store), period_(period) {}

IncidentFeed::~IncidentFeed() {
  stop();
}

void IncidentFeed::start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "incident-feed");
    loop();
  });
}

void IncidentFeed::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void IncidentFeed::loop() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    lk.unlock();
    try {
      poll_once();
    } catch (const std::exception& e) {
      spdlog::error("incidents: feeding the engine failed (retrying next round): {}", e.what());
    }
    lk.lock();
    cv_.wait_for(lk, period_, [this] { return stopping_; });
  }
}

std::size_t IncidentFeed::poll_once() {
  if (engine_.cursor("initialised") == 0) {
    std::map<std::string, std::uint64_t> c{{"initialised", 1}};
    auto last = store_.last_key(Table::detection_events);
    c["detection_events"] = last && last->size() == 8 ? get_be64(last->data()) + 1 : 1;
    for (const auto& a : store_.list_agents()) c["results/" + a.agent_id] = a.next_seq;
    c["security_events"] = static_cast<std::uint64_t>(std::max<std::int64_t>(1, engine_.now()));
    engine_.set_cursors(c);
  }
  std::size_t n = 0;
  for (;;) {
    // The baseline watch learns from every alerted or late run in there too.
    auto ev = list_detection_events(store_, engine_.cursor("detection_events"), kFeedBatch);
    engine_.process_detection_events(ev);
    n += ev.size();
    if (ev.size() < kFeedBatch) break;
  }
  for (const auto& a : store_.list_agents()) {
    for (;;) {
      auto rs = store_.list_results_by_seq(a.agent_id, engine_.cursor("results/" + a.agent_id),
                                           kFeedBatch);
      engine_.process_results(a.agent_id, rs);
      n += rs.size();
      if (rs.size() < kFeedBatch) break;
    }
  }
  // Security events are keyed by the time they were stamped, which is before their group
  // commit: one stamped earlier can become visible after a later one was read. So each poll
  // re-reads a margin before the cursor; the engine skips the events it already processed
  // (remembered in the store, so also across a restart).
  auto cursor = static_cast<std::int64_t>(engine_.cursor("security_events"));
  // No memory at all: nothing was processed within the margin (every processed event is
  // remembered until it falls out of it), so the minute before the cursor holds only what an
  // older collector processed without remembering it (the first start after an upgrade) or
  // history from before the engine's first start. Re-reading it, now or once the next event
  // moves the cursor, would raise it again: the cursor becomes a floor no re-read goes below.
  bool remembered = false;
  store_.scan(Table::incident_keys, detail::incidents::kSeenSecurityPrefix,
              [&](std::string_view k, std::string_view) {
                remembered = k.rfind(detail::incidents::kSeenSecurityPrefix, 0) == 0;
                return false;
              });
  auto floor = static_cast<std::int64_t>(engine_.cursor("security_floor"));
  if (!remembered && floor != cursor) {  // once: the next event processed leaves a memory
    engine_.set_cursors({{"security_floor", static_cast<std::uint64_t>(cursor)}});
    floor = cursor;
  }
  auto since = std::max({std::int64_t{1}, cursor - kSecurityReadMarginNs, floor});
  for (auto from = since;;) {
    auto page = store_.list_security_events(from, kFeedBatch);
    n += engine_.process_security_events(page);
    // A full page continues from its last time (events at that time again: already seen); a
    // page of one single nanosecond could not advance and ends the round.
    if (page.size() < kFeedBatch || page.back().time_ns == from) break;
    from = page.back().time_ns;
  }
  engine_.watch_silence(store_.list_agents());
  engine_.tick();
  return n;
}

}  // namespace tocsin::collector
