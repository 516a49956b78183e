// No-loss, no-duplicate delivery across crashes of either side, with real binaries.
#include <doctest/doctest.h>

#include <memory>
#include <set>

#include "tests/integration/harness.hpp"

using namespace tocsin::test;

namespace {

std::vector<std::string> repeat_target(std::uint16_t port, int n) {
  return std::vector<std::string>(static_cast<std::size_t>(n), "127.0.0.1:" + std::to_string(port));
}

// Every seq 1..head stored exactly once and every one re-verifies (hash chain + signature).
nlohmann::json all_results(Collector& c, const std::string& agent_id) {
  auto all = nlohmann::json::array();
  for (std::uint64_t from = 1;;) {
    auto page = c.api_get("/api/v1/results?agent=" + agent_id + "&from_seq=" +
                          std::to_string(from) + "&limit=10000")["results"];
    if (page.empty()) return all;
    from = page.back()["seq"].get<std::uint64_t>() + 1;
    for (auto& r : page) all.push_back(std::move(r));
  }
}

void check_exactly_once(Collector& c, const std::string& agent_id, std::uint64_t head) {
  auto results = all_results(c, agent_id);
  std::set<std::uint64_t> seqs;
  std::size_t unverified = 0;
  for (auto& r : results) {
    seqs.insert(r["seq"].get<std::uint64_t>());
    if (!r["verified"].get<bool>()) ++unverified;
  }
  INFO("agent " << agent_id << " head " << head);
  CHECK(results.size() == head);  // no duplicates ...
  CHECK(seqs.size() == head);
  CHECK(*seqs.begin() == 1);      // ... and no gaps
  CHECK(*seqs.rbegin() == head);
  CHECK(unverified == 0);
  CHECK(c.stored_results(agent_id) == head);
}

std::uint64_t total_stored(Collector& c) {
  std::uint64_t n = 0;
  auto agents = c.api_get("/api/v1/agents")["agents"];  // a temporary's member dangles in range-for
  for (auto& a : agents) n += a["results"].get<std::uint64_t>();
  return n;
}

}  // namespace

TEST_CASE("collector kill -9 with 20000 results in flight from four agents loses and duplicates nothing") {
  Collector c;
  OpenPort open;
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < 4; ++i) {
    agents.push_back(std::make_unique<Agent>(c));
    agents.back()->set_batch_max_results(100);
    agents.back()->write_config({{"burst", "20ms", repeat_target(open.port(), 25)}});
  }
  // Collector down: the agents keep probing and their outboxes fill.
  c.kill9();
  for (auto& a : agents) a->start();
  for (auto& a : agents) {
    REQUIRE(wait_until([&] { return a->status()["head_seq"].get<std::uint64_t>() >= 5000; }, 180s));
    a->stop();
  }
  std::uint64_t generated = 0;
  for (auto& a : agents) {
    generated += a->status()["head_seq"].get<std::uint64_t>();
    a->write_config({});  // from now on only deliver
    a->start();
  }
  REQUIRE(generated >= 20000);

  c.start();
  REQUIRE(wait_until([&] { return total_stored(c) > 0; }, 60s));
  c.kill9();  // mid-flight
  std::uint64_t before_crash = 0;
  {
    // The durable count as of the crash, read after restart.
    c.start();
    before_crash = total_stored(c);
  }
  INFO("stored when killed: " << before_crash << " of " << generated);
  CHECK(before_crash < generated);  // the kill really happened with results in flight

  for (auto& a : agents)
    REQUIRE(wait_until([&] { return c.stored_results(a->id()) ==
                                    a->status()["head_seq"].get<std::uint64_t>(); },
                       180s));
  for (auto& a : agents) {
    a->stop();
    auto st = a->status();
    CHECK(st["pending"].get<int>() == 0);
    check_exactly_once(c, a->id(), st["head_seq"].get<std::uint64_t>());
  }
  CHECK(c.security_events().empty());
}

TEST_CASE("agent kill -9 while appending and while sending loses and duplicates nothing") {
  Collector c;
  OpenPort open;
  Agent a(c);
  a.set_batch_max_results(20);
  a.write_config({{"burst", "20ms", repeat_target(open.port(), 50)}});
  c.kill9();
  a.start();
  REQUIRE(wait_until([&] { return a.status()["head_seq"].get<std::uint64_t>() >= 3000; }, 120s));
  a.kill9();  // possibly in the middle of an append: a torn tail must be repaired on start

  c.start();
  a.write_config({});
  a.start();
  REQUIRE(wait_until([&] { return c.stored_results(a.id()) > 0; }, 60s));
  a.kill9();  // mid-batch
  auto stored_at_kill = c.stored_results(a.id());
  auto head = a.status()["head_seq"].get<std::uint64_t>();
  INFO("stored at kill " << stored_at_kill << " of " << head);
  CHECK(stored_at_kill < head);

  a.start();
  REQUIRE(wait_until([&] { return c.stored_results(a.id()) == head; }, 120s));
  a.stop();
  CHECK(a.status()["pending"].get<int>() == 0);
  check_exactly_once(c, a.id(), head);
  CHECK(c.security_events().empty());
}

TEST_CASE("while the collector is down results wait in the outbox, past the cap drops are counted and reported") {
  Collector c;
  OpenPort open;
  Agent a(c, "64KiB");
  a.write_config({{"fill", "20ms", repeat_target(open.port(), 10)}});
  c.kill9();
  a.start();
  // Keeps working while the collector is away ...
  REQUIRE(wait_until([&] { return a.status()["dropped_total"].get<std::uint64_t>() >= 50; }, 120s));
  a.stop();
  auto st = a.status();
  auto dropped = st["dropped_total"].get<std::uint64_t>();
  auto waiting = st["pending"].get<std::uint64_t>();
  CHECK(waiting > 0);
  CHECK(st["pending_bytes"].get<std::uint64_t>() <= 64 * 1024);
  CHECK(st["dropped_unreported"].get<std::uint64_t>() == dropped);

  // ... and everything waiting is delivered once it returns, followed by the drop report.
  c.start();
  a.write_config({});
  a.start();
  REQUIRE(wait_until([&] {
    auto s = a.status();
    return s["pending"].get<int>() == 0 && s["dropped_unreported"].get<int>() == 0;
  }, 60s));
  a.stop();
  auto head = a.status()["head_seq"].get<std::uint64_t>();
  CHECK(head == waiting + 1);  // the waiting results plus one overflow report
  check_exactly_once(c, a.id(), head);
  auto results = all_results(c, a.id());
  int reports = 0;
  for (auto& r : results)
    if (r["kind"] == "outbox_overflow") {
      ++reports;
      CHECK(r["reason"] == "outbox_full");
      CHECK(r["evidence"]["dropped"] == std::to_string(dropped));
      CHECK(r["seq"].get<std::uint64_t>() == head);
    }
  CHECK(reports == 1);
}

TEST_CASE("SIGTERM stops the collector cleanly and every acked result survives the restart") {
  Collector c;
  OpenPort open;
  Agent a(c);
  a.write_config({{"steady", "50ms", repeat_target(open.port(), 5)}});
  a.start();
  REQUIRE(wait_until([&] { return c.stored_results(a.id()) >= 100; }, 60s));
  c.stop();  // SIGTERM; fails the test if the collector does not exit within the bound
  CHECK(c.log().find("shutting down") != std::string::npos);
  a.stop();
  auto acked = a.status()["acked_seq"].get<std::uint64_t>();
  c.start();
  CHECK(c.stored_results(a.id()) >= acked);  // nothing the agent was told is stored went missing
  auto head = a.status()["head_seq"].get<std::uint64_t>();
  a.write_config({});  // deliver what is left, produce nothing new
  a.start();
  REQUIRE(wait_until([&] { return c.stored_results(a.id()) == head; }, 60s));
  a.stop();
  check_exactly_once(c, a.id(), head);
}
