// The collector's RocksDB store: atomic write sets, reads and listings, group commit, reopen.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "collector/store/store.hpp"
#include "common/wire.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using namespace std::chrono_literals;
using tocsin::common::compute_result_hash;
using tocsin::common::Digest;
using tocsin::common::kGenesisHash;
using tocsin::common::ResultRecord;
using tocsin::common::Signature;
using tocsin::test::TempDir;

namespace {

// The hash chain of one agent, stored with receive times `t0 + seq`.
std::vector<StoredResult> results(const std::string& agent, std::uint64_t n, std::int64_t t0) {
  std::vector<StoredResult> out;
  Digest prev = kGenesisHash;
  for (std::uint64_t seq = 1; seq <= n; ++seq) {
    StoredResult r;
    r.record.agent_id = agent;
    r.record.seq = seq;
    r.record.prev_hash = prev;
    r.record.body = agent + " body " + std::to_string(seq) + std::string("\0\xff", 2);
    r.record.hash = compute_result_hash(agent, seq, prev, r.record.body);
    r.batch_head_seq = n;
    r.received_ns = t0 + static_cast<std::int64_t>(seq);
    prev = r.record.hash;
    out.push_back(r);
  }
  return out;
}

AgentRecord agent_record(const std::string& id) {
  AgentRecord a;
  a.agent_id = id;
  a.hostname = id + ".lab";
  a.os = "linux";
  a.version = "0.1.0";
  a.cert_fingerprint = std::string(64, 'f');
  a.public_key_hex = std::string(64, '1');
  a.enrolled_ns = 111;
  a.last_seen_ns = 222;
  a.next_seq = 4;
  a.head_hash.fill(0x3c);
  a.clock_offset_ns = -1500;
  a.clock_error_ns = 250;
  a.revoked = true;
  return a;
}

void check_same(const StoredResult& got, const StoredResult& want) {
  CHECK(got.record.agent_id == want.record.agent_id);
  CHECK(got.record.seq == want.record.seq);
  CHECK(got.record.prev_hash == want.record.prev_hash);
  CHECK(got.record.hash == want.record.hash);
  CHECK(got.record.body == want.record.body);
  CHECK(got.batch_head_seq == want.batch_head_seq);
  CHECK(got.received_ns == want.received_ns);
}

std::vector<std::uint64_t> seqs(const std::vector<StoredResult>& rs) {
  std::vector<std::uint64_t> out;
  for (const auto& r : rs) out.push_back(r.record.seq);
  return out;
}

// Fills a store with two agents' results (a1: 3 at t 1001.., a10: 2 at t 2001..), a batch each
// and their agent records.
struct Filled {
  TempDir tmp{"store"};
  std::unique_ptr<Store> store = Store::open(tmp / "db");
  std::vector<StoredResult> a1 = results("a1", 3, 1000);
  std::vector<StoredResult> a10 = results("a10", 2, 2000);
  StoredBatch batch;
  Filled() {
    WriteSet ws;
    for (const auto& r : a1) ws.put_result(r);
    for (const auto& r : a10) ws.put_result(r);
    batch.agent_id = "a1";
    batch.first_seq = 1;
    batch.head_seq = 3;
    batch.head_hash = a1.back().record.hash;
    for (std::size_t i = 0; i < batch.signature.size(); ++i)
      batch.signature[i] = static_cast<std::uint8_t>(255 - i);
    batch.received_ns = 1004;
    ws.put_batch(batch);
    ws.put_agent(agent_record("a1"));
    ws.put_agent(agent_record("a10"));
    CHECK_FALSE(ws.empty());
    store->commit(std::move(ws));
  }
};

}  // namespace

TEST_CASE("committed results read back exactly") {
  Filled f;
  for (const auto& r : f.a1) {
    auto got = f.store->get_result("a1", r.record.seq);
    REQUIRE(got.has_value());
    check_same(*got, r);
  }
  CHECK_FALSE(f.store->get_result("a1", 4).has_value());
  CHECK_FALSE(f.store->get_result("a", 1).has_value());
  CHECK_FALSE(f.store->get_result("nobody", 1).has_value());
}

TEST_CASE("count_results counts one agent only, not agents sharing its prefix") {
  Filled f;
  CHECK(f.store->count_results("a1") == 3);
  CHECK(f.store->count_results("a10") == 2);
  CHECK(f.store->count_results("a") == 0);
  CHECK(f.store->count_results("nobody") == 0);
}

TEST_CASE("list_results filters by agent and receive time, oldest first, within the limit") {
  Filled f;
  SUBCASE("one agent") {
    CHECK(seqs(f.store->list_results("a1", 0, 100)) == std::vector<std::uint64_t>{1, 2, 3});
    CHECK(seqs(f.store->list_results("a10", 0, 100)) == std::vector<std::uint64_t>{1, 2});
    CHECK(f.store->list_results("a", 0, 100).empty());
  }
  SUBCASE("every agent, in receive-time order") {
    auto all = f.store->list_results("", 0, 100);
    REQUIRE(all.size() == 5);
    for (std::size_t i = 1; i < all.size(); ++i)
      CHECK(all[i - 1].received_ns <= all[i].received_ns);
    CHECK(all[0].record.agent_id == "a1");
    CHECK(all[4].record.agent_id == "a10");
    check_same(all[0], f.a1[0]);
  }
  SUBCASE("since is inclusive") {
    CHECK(seqs(f.store->list_results("a1", 1002, 100)) == std::vector<std::uint64_t>{2, 3});
    CHECK(seqs(f.store->list_results("", 2002, 100)) == std::vector<std::uint64_t>{2});
    CHECK(f.store->list_results("", 2003, 100).empty());
  }
  SUBCASE("limit") {
    CHECK(seqs(f.store->list_results("a1", 0, 2)) == std::vector<std::uint64_t>{1, 2});
    CHECK(f.store->list_results("", 0, 0).empty());
  }
}

TEST_CASE("list_results_by_seq pages through one agent's results in seq order") {
  Filled f;
  CHECK(seqs(f.store->list_results_by_seq("a1", 1, 100)) == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(seqs(f.store->list_results_by_seq("a1", 2, 100)) == std::vector<std::uint64_t>{2, 3});
  CHECK(seqs(f.store->list_results_by_seq("a1", 0, 2)) == std::vector<std::uint64_t>{1, 2});
  CHECK(f.store->list_results_by_seq("a1", 4, 100).empty());
  CHECK(f.store->list_results_by_seq("a1", 1, 0).empty());
  // Neither an agent whose id has this one as a prefix, nor a prefix of it, leaks in.
  CHECK(seqs(f.store->list_results_by_seq("a10", 1, 100)) == std::vector<std::uint64_t>{1, 2});
  CHECK(f.store->list_results_by_seq("a", 0, 100).empty());
  auto page = f.store->list_results_by_seq("a10", 2, 1);
  REQUIRE(page.size() == 1);
  check_same(page[0], f.a10[1]);
  SUBCASE("paging by the last seq seen visits every result exactly once") {
    std::vector<std::uint64_t> seen;
    for (std::uint64_t next = 1;;) {
      auto batch = f.store->list_results_by_seq("a1", next, 2);
      if (batch.empty()) break;
      for (const auto& r : batch) seen.push_back(r.record.seq);
      next = batch.back().record.seq + 1;
    }
    CHECK(seen == std::vector<std::uint64_t>{1, 2, 3});
  }
}

TEST_CASE("results received before 1970 sort before later ones") {
  TempDir tmp("store");
  auto store = Store::open(tmp / "db");
  WriteSet ws;
  auto rs = results("a1", 3, 0);
  rs[0].received_ns = 5;
  rs[1].received_ns = -5;
  rs[2].received_ns = 0;
  for (const auto& r : rs) ws.put_result(r);
  store->commit(std::move(ws));
  auto all = store->list_results("a1", std::numeric_limits<std::int64_t>::min(), 10);
  CHECK(seqs(all) == std::vector<std::uint64_t>{2, 3, 1});
  CHECK(seqs(store->list_results("a1", 0, 10)) == std::vector<std::uint64_t>{3, 1});
}

TEST_CASE("a stored batch reads back by agent and head seq") {
  Filled f;
  auto b = f.store->get_batch("a1", 3);
  REQUIRE(b.has_value());
  CHECK(b->agent_id == "a1");
  CHECK(b->first_seq == 1);
  CHECK(b->head_seq == 3);
  CHECK(b->head_hash == f.batch.head_hash);
  CHECK(b->signature == f.batch.signature);
  CHECK(b->received_ns == 1004);
  CHECK_FALSE(f.store->get_batch("a1", 2).has_value());
  CHECK_FALSE(f.store->get_batch("a10", 3).has_value());
}

TEST_CASE("agent records read back in full and list in id order") {
  Filled f;
  auto a = f.store->get_agent("a1");
  REQUIRE(a.has_value());
  auto want = agent_record("a1");
  CHECK(a->agent_id == want.agent_id);
  CHECK(a->hostname == want.hostname);
  CHECK(a->os == want.os);
  CHECK(a->version == want.version);
  CHECK(a->cert_fingerprint == want.cert_fingerprint);
  CHECK(a->public_key_hex == want.public_key_hex);
  CHECK(a->enrolled_ns == want.enrolled_ns);
  CHECK(a->last_seen_ns == want.last_seen_ns);
  CHECK(a->next_seq == want.next_seq);
  CHECK(a->head_hash == want.head_hash);
  CHECK(a->clock_offset_ns == want.clock_offset_ns);
  CHECK(a->clock_error_ns == want.clock_error_ns);
  CHECK(a->revoked == want.revoked);
  CHECK_FALSE(f.store->get_agent("a").has_value());
  auto all = f.store->list_agents();
  REQUIRE(all.size() == 2);
  CHECK(all[0].agent_id == "a1");
  CHECK(all[1].agent_id == "a10");
}

TEST_CASE("a later put of an agent replaces the earlier record") {
  Filled f;
  auto a = agent_record("a1");
  a.next_seq = 99;
  a.revoked = false;
  WriteSet ws;
  ws.put_agent(a);
  f.store->commit(std::move(ws));
  CHECK(f.store->get_agent("a1")->next_seq == 99);
  CHECK_FALSE(f.store->get_agent("a1")->revoked);
  CHECK(f.store->list_agents().size() == 2);
}

TEST_CASE("security events list in time order with a since filter and a limit") {
  TempDir tmp("store");
  auto store = Store::open(tmp / "db");
  WriteSet ws;
  for (std::int64_t t : {300, 100, 200, 200, -50})
    ws.put_security_event(
        {t, "forged_signature", "a1", "127.0.0.1:5555", "seq " + std::to_string(t)});
  store->commit(std::move(ws));
  auto all = store->list_security_events(std::numeric_limits<std::int64_t>::min(), 100);
  REQUIRE(all.size() == 5);  // two in the same nanosecond are both kept
  std::vector<std::int64_t> times;
  for (const auto& e : all) times.push_back(e.time_ns);
  CHECK(times == std::vector<std::int64_t>{-50, 100, 200, 200, 300});
  CHECK(all[0].kind == "forged_signature");
  CHECK(all[0].agent_id == "a1");
  CHECK(all[0].remote == "127.0.0.1:5555");
  CHECK(all[0].detail == "seq -50");
  CHECK(store->list_security_events(200, 100).size() == 3);
  CHECK(store->list_security_events(301, 100).empty());
  auto limited = store->list_security_events(0, 2);
  REQUIRE(limited.size() == 2);
  CHECK(limited[0].time_ns == 100);
  CHECK(limited[1].time_ns == 200);
}

TEST_CASE("enrollment and API tokens read back by their hash") {
  TempDir tmp("store");
  auto store = Store::open(tmp / "db");
  WriteSet ws;
  ws.put_enroll_token({"hash-e", 10, 20, 15, "agent-3", "ops"});
  ws.put_api_token({"hash-a", "ci bot", Role::operator_, 30});
  store->commit(std::move(ws));
  auto e = store->get_enroll_token("hash-e");
  REQUIRE(e.has_value());
  CHECK(e->token_hash == "hash-e");
  CHECK(e->created_ns == 10);
  CHECK(e->expires_ns == 20);
  CHECK(e->used_ns == 15);
  CHECK(e->used_by == "agent-3");
  CHECK(e->created_by == "ops");
  auto a = store->get_api_token("hash-a");
  REQUIRE(a.has_value());
  CHECK(a->name == "ci bot");
  CHECK(a->role == Role::operator_);
  CHECK(a->created_ns == 30);
  CHECK_FALSE(store->get_enroll_token("hash-a").has_value());
  CHECK_FALSE(store->get_api_token("hash-e").has_value());
}

TEST_CASE("role names round-trip and unknown ones are refused") {
  for (auto r : {Role::viewer, Role::approver, Role::operator_, Role::admin})
    CHECK(parse_role(role_name(r)) == r);
  CHECK(role_name(Role::operator_) == "operator");
  CHECK_FALSE(parse_role("root").has_value());
  CHECK_FALSE(parse_role("").has_value());
}

TEST_CASE("commit_async completes its callback with an empty error after the write") {
  TempDir tmp("store");
  auto store = Store::open(tmp / "db");
  auto rs = results("a1", 2, 0);
  WriteSet ws;
  for (const auto& r : rs) ws.put_result(r);
  std::promise<std::string> done;
  auto fut = done.get_future();
  store->commit_async(std::move(ws), [&](std::string error) {
    // The data is readable by the time the callback runs.
    CHECK(store->get_result("a1", 2).has_value());
    done.set_value(std::move(error));
  });
  REQUIRE(fut.wait_for(60s) == std::future_status::ready);  // a bound, not a timing check
  CHECK(fut.get() == "");
  CHECK(store->count_results("a1") == 2);
}

TEST_CASE("commit_async from several threads completes every write") {
  TempDir tmp("store");
  auto store = Store::open(tmp / "db");
  constexpr int kThreads = 4, kPerThread = 25;
  std::vector<std::promise<std::string>> done(kThreads * kPerThread);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto agent = "agent-" + std::to_string(t);
      auto rs = results(agent, kPerThread, 0);
      for (int i = 0; i < kPerThread; ++i) {
        WriteSet ws;
        ws.put_result(rs[static_cast<std::size_t>(i)]);
        auto& p = done[static_cast<std::size_t>(t * kPerThread + i)];
        store->commit_async(std::move(ws), [&p](std::string e) { p.set_value(std::move(e)); });
      }
    });
  for (auto& th : threads) th.join();
  for (auto& p : done) {
    auto fut = p.get_future();
    REQUIRE(fut.wait_for(60s) == std::future_status::ready);
    CHECK(fut.get() == "");
  }
  for (int t = 0; t < kThreads; ++t)
    CHECK(store->count_results("agent-" + std::to_string(t)) == kPerThread);
}

TEST_CASE("data survives closing and reopening the store") {
  TempDir tmp("store");
  auto rs = results("a1", 3, 500);
  {
    auto store = Store::open(tmp / "db");
    WriteSet ws;
    for (const auto& r : rs) ws.put_result(r);
    ws.put_agent(agent_record("a1"));
    ws.put_security_event({7, "replay", "a1", "127.0.0.1:1", "seqs 1..3"});
    ws.put_api_token({"h", "admin", Role::admin, 1});
    store->commit(std::move(ws));
  }
  auto store = Store::open(tmp / "db");
  CHECK(store->count_results("a1") == 3);
  check_same(*store->get_result("a1", 2), rs[1]);
  CHECK(seqs(store->list_results("a1", 0, 10)) == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(store->get_agent("a1")->next_seq == 4);
  CHECK(store->list_security_events(0, 10).size() == 1);
  CHECK(store->get_api_token("h")->role == Role::admin);
}

TEST_CASE("closing the store completes queued async commits first and they are durable") {
  TempDir tmp("store");
  constexpr int kWrites = 20;
  auto rs = results("a1", kWrites, 0);
  std::vector<std::string> errors;
  {
    auto store = Store::open(tmp / "db");
    for (const auto& r : rs) {
      WriteSet ws;
      ws.put_result(r);
      store->commit_async(std::move(ws), [&](std::string e) { errors.push_back(std::move(e)); });
    }
  }  // the destructor drains the queue before closing
  CHECK(errors == std::vector<std::string>(kWrites, ""));
  auto store = Store::open(tmp / "db");
  CHECK(store->count_results("a1") == kWrites);
}

TEST_CASE("opening a store that another handle holds fails with a StoreError") {
  TempDir tmp("store");
  auto first = Store::open(tmp / "db");
  CHECK_THROWS_AS(Store::open(tmp / "db"), StoreError);
}
