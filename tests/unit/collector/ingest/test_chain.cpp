// Batch verification on ingest (check_batch) and re-verification of stored batches.
#include <doctest/doctest.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "collector/ingest/chain.hpp"
#include "collector/store/store.hpp"
#include "common/wire.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using tocsin::common::Batch;
using tocsin::common::batch_signing_bytes;
using tocsin::common::compute_result_hash;
using tocsin::common::Digest;
using tocsin::common::Ed25519Key;
using tocsin::common::kGenesisHash;
using tocsin::common::ResultRecord;
using tocsin::test::TempDir;

namespace {

const std::string kAgent = "agent-7";

// An honest agent: a key and a growing hash chain, from which it cuts signed batches.
struct AgentChain {
  std::string agent_id = kAgent;
  Ed25519Key key = Ed25519Key::generate();
  std::vector<ResultRecord> records;  // records[i].seq == i + 1

  explicit AgentChain(std::size_t n, const std::string& salt = "") {
    for (std::size_t i = 0; i < n; ++i) append("result " + std::to_string(i + 1) + salt);
  }
  void append(const std::string& body) {
    ResultRecord r;
    r.agent_id = agent_id;
    r.seq = records.size() + 1;
    r.prev_hash = records.empty() ? kGenesisHash : records.back().hash;
    r.body = body;
    r.hash = compute_result_hash(r.agent_id, r.seq, r.prev_hash, r.body);
    records.push_back(r);
  }
  const Digest& hash(std::uint64_t seq) const { return records.at(seq - 1).hash; }
  ChainHead head_after(std::uint64_t seq) const {
    return {seq + 1, seq == 0 ? kGenesisHash : hash(seq)};
  }
  // Seqs from..to, signed over the last one.
  Batch batch(std::uint64_t from, std::uint64_t to) const {
    Batch b;
    b.agent_id = agent_id;
    for (auto s = from; s <= to; ++s) b.results.push_back(records.at(s - 1));
    sign(b, key);
    return b;
  }
  static void sign(Batch& b, const Ed25519Key& k) {
    const auto& last = b.results.back();
    b.signature = k.sign(batch_signing_bytes(b.agent_id, last.seq, last.hash));
  }
  // What the collector has stored: seqs 1..n of this chain.
  std::map<std::uint64_t, Digest> stored(std::uint64_t n) const {
    std::map<std::uint64_t, Digest> m;
    for (std::uint64_t s = 1; s <= n; ++s) m[s] = hash(s);
    return m;
  }
};

StoredHashLookup lookup(std::map<std::uint64_t, Digest> m) {
  return [m = std::move(m)](std::uint64_t seq) -> std::optional<Digest> {
    auto it = m.find(seq);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}

BatchCheck check(const AgentChain& a, const ChainHead& head, const Batch& b,
                 const std::map<std::uint64_t, Digest>& stored = {}) {
  return check_batch(head, kAgent, b, a.key, lookup(stored));
}

bool names(const BatchCheck& c, const std::string& text) {
  return c.detail.find(text) != std::string::npos;
}

}  // namespace

TEST_CASE("an honest first batch is accepted") {
  AgentChain a(3);
  auto c = check(a, a.head_after(0), a.batch(1, 3));
  CHECK(outcome_name(c.outcome) == "accepted");
  CHECK(c.first_fresh == 0);
  CHECK(c.ack_seq == 3);
  CHECK(c.detail.empty());
}

TEST_CASE("an honest batch continuing the stored chain is accepted") {
  AgentChain a(6);
  auto stored = a.stored(3);
  auto c = check(a, a.head_after(3), a.batch(4, 6), stored);
  CHECK(c.outcome == BatchOutcome::accepted);
  CHECK(c.first_fresh == 0);
  CHECK(c.ack_seq == 6);
}

TEST_CASE("a batch that is entirely stored already is a replay") {
  AgentChain a(3);
  auto stored = a.stored(3);
  auto c = check(a, a.head_after(3), a.batch(1, 3), stored);
  CHECK(c.outcome == BatchOutcome::replay);
  CHECK_MESSAGE(names(c, "1..3"), c.detail);
  SUBCASE("also for a single old result") {
    auto one = check(a, a.head_after(3), a.batch(2, 2), stored);
    CHECK(one.outcome == BatchOutcome::replay);
    CHECK_MESSAGE(names(one, "2..2"), one.detail);
  }
}

TEST_CASE("a batch overlapping the stored chain is accepted from its first fresh result") {
  AgentChain a(5);
  auto stored = a.stored(2);
  auto c = check(a, a.head_after(2), a.batch(1, 5), stored);
  CHECK(c.outcome == BatchOutcome::accepted);
  CHECK(c.first_fresh == 2);
  CHECK(c.ack_seq == 5);
}

TEST_CASE("a batch starting beyond the next expected seq is a seq_gap") {
  AgentChain a(5);
  auto stored = a.stored(1);
  auto c = check(a, a.head_after(1), a.batch(4, 5), stored);
  CHECK(c.outcome == BatchOutcome::seq_gap);
  CHECK_MESSAGE(names(c, "expected seq 2"), c.detail);
  CHECK_MESSAGE(names(c, "got 4"), c.detail);
  CHECK_MESSAGE(names(c, "2 missing"), c.detail);
}

TEST_CASE("a result with the seq of a stored one but a different hash is a fork") {
  AgentChain a(4), other(4, " (rewritten)");
  SUBCASE("inside the stored part") {
    auto stored = other.stored(2);  // the collector holds a different history
    auto c = check(a, other.head_after(2), a.batch(1, 4), stored);
    CHECK(c.outcome == BatchOutcome::fork);
    CHECK_MESSAGE(names(c, "seq 1"), c.detail);
  }
  SUBCASE("a stored seq the lookup cannot find") {
    std::map<std::uint64_t, Digest> stored;
    auto c = check(a, a.head_after(2), a.batch(1, 4), stored);
    CHECK(c.outcome == BatchOutcome::fork);
    CHECK_MESSAGE(names(c, "seq 1"), c.detail);
  }
  SUBCASE("a fresh result not linking to the stored head") {
    auto stored = other.stored(2);
    auto c = check(a, other.head_after(2), a.batch(3, 4), stored);
    CHECK(c.outcome == BatchOutcome::fork);
    CHECK_MESSAGE(names(c, "seq 3"), c.detail);
  }
}

TEST_CASE("a batch signed by another key is a forged_signature") {
  AgentChain a(3);
  auto b = a.batch(1, 3);
  AgentChain::sign(b, Ed25519Key::generate());
  auto c = check(a, a.head_after(0), b);
  CHECK(c.outcome == BatchOutcome::forged_signature);
  CHECK_MESSAGE(names(c, "seq 3"), c.detail);
  SUBCASE("a signature over a different head also fails") {
    auto b2 = a.batch(1, 3);
    b2.signature = a.batch(1, 2).signature;
    auto c2 = check(a, a.head_after(0), b2);
    CHECK(c2.outcome == BatchOutcome::forged_signature);
  }
}

TEST_CASE("a result changed after it was hashed is an altered_result") {
  AgentChain a(3);
  auto b = a.batch(1, 3);
  b.results[1].body = "result 2, edited";
  AgentChain::sign(b, a.key);  // even a valid signature does not cover the edit
  auto c = check(a, a.head_after(0), b);
  CHECK(c.outcome == BatchOutcome::altered_result);
  CHECK_MESSAGE(names(c, "seq 2"), c.detail);
}

TEST_CASE("results that do not link to each other are a broken_chain") {
  AgentChain a(4);
  Batch b;
  SUBCASE("a missing result in the middle") {
    b = a.batch(1, 4);
    b.results.erase(b.results.begin() + 2);
    AgentChain::sign(b, a.key);
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::broken_chain);
    CHECK_MESSAGE(names(c, "seq 4"), c.detail);
    CHECK_MESSAGE(names(c, "seq 2"), c.detail);
  }
  SUBCASE("a prev_hash that does not point at the previous result") {
    b = a.batch(1, 3);
    b.results[2].prev_hash = b.results[0].hash;
    b.results[2].hash = compute_result_hash(kAgent, 3, b.results[2].prev_hash, b.results[2].body);
    AgentChain::sign(b, a.key);
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::broken_chain);
    CHECK_MESSAGE(names(c, "seq 3"), c.detail);
  }
  SUBCASE("results out of order") {
    b = a.batch(1, 3);
    std::swap(b.results[1], b.results[2]);
    AgentChain::sign(b, a.key);
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::broken_chain);
    CHECK_MESSAGE(names(c, "seq 3"), c.detail);
  }
  SUBCASE("seq 0") {
    b = a.batch(1, 1);
    b.results[0].seq = 0;
    b.results[0].hash = compute_result_hash(kAgent, 0, kGenesisHash, b.results[0].body);
    AgentChain::sign(b, a.key);
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::broken_chain);
    CHECK_MESSAGE(names(c, "seq 0"), c.detail);
  }
}

TEST_CASE("a batch or result naming another agent is an agent_mismatch") {
  AgentChain a(2);
  SUBCASE("the batch") {
    auto b = a.batch(1, 2);
    b.agent_id = "agent-8";
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::agent_mismatch);
    CHECK_MESSAGE(names(c, "agent-8"), c.detail);
  }
  SUBCASE("a result") {
    auto b = a.batch(1, 2);
    b.results[1].agent_id = "agent-8";
    auto c = check(a, a.head_after(0), b);
    CHECK(c.outcome == BatchOutcome::agent_mismatch);
    CHECK_MESSAGE(names(c, "seq 2"), c.detail);
    CHECK_MESSAGE(names(c, "agent-8"), c.detail);
  }
  SUBCASE("another agent's honest batch on this agent's connection") {
    AgentChain other(0);
    other.agent_id = "agent-8";
    other.append("x");
    auto c = check_batch(a.head_after(0), kAgent, other.batch(1, 1), other.key, lookup({}));
    CHECK(c.outcome == BatchOutcome::agent_mismatch);
  }
}

TEST_CASE("a batch without results is empty") {
  AgentChain a(1);
  Batch b;
  b.agent_id = kAgent;
  auto c = check(a, a.head_after(0), b);
  CHECK(c.outcome == BatchOutcome::empty);
  CHECK(outcome_name(c.outcome) == "empty_batch");
}

TEST_CASE("outcome_name names every outcome") {
  CHECK(outcome_name(BatchOutcome::replay) == "replay");
  CHECK(outcome_name(BatchOutcome::agent_mismatch) == "agent_mismatch");
  CHECK(outcome_name(BatchOutcome::broken_chain) == "broken_chain");
  CHECK(outcome_name(BatchOutcome::altered_result) == "altered_result");
  CHECK(outcome_name(BatchOutcome::forged_signature) == "forged_signature");
  CHECK(outcome_name(BatchOutcome::seq_gap) == "seq_gap");
  CHECK(outcome_name(BatchOutcome::fork) == "fork");
}

namespace {

// Stores an accepted batch the way ingest does: results, batch signature, agent head.
void store_batch(Store& store, const Batch& b) {
  WriteSet ws;
  for (const auto& r : b.results) ws.put_result({r, b.results.back().seq, 1000});
  ws.put_batch({b.agent_id, b.results.front().seq, b.results.back().seq, b.results.back().hash,
                b.signature, 1000});
  store.commit(std::move(ws));
}

}  // namespace

TEST_CASE("verify_stored_batch accepts an intact stored batch") {
  TempDir tmp("chain");
  auto store = Store::open(tmp / "db");
  AgentChain a(5);
  store_batch(*store, a.batch(1, 3));
  store_batch(*store, a.batch(4, 5));
  CHECK(verify_stored_batch(*store, kAgent, 3, a.key) == "");
  CHECK(verify_stored_batch(*store, kAgent, 5, a.key) == "");
}

TEST_CASE("verify_stored_batch reports what was tampered with on disk") {
  TempDir tmp("chain");
  auto store = Store::open(tmp / "db");
  AgentChain a(3);
  auto b = a.batch(1, 3);
  store_batch(*store, b);
  SUBCASE("a result body edited in the database") {
    auto r = b.results[1];
    r.body = "edited";
    WriteSet ws;
    ws.put_result({r, 3, 1000});
    store->commit(std::move(ws));
    auto why = verify_stored_batch(*store, kAgent, 3, a.key);
    CHECK_MESSAGE(why.find("seq 2") != std::string::npos, why);
  }
  SUBCASE("another key") {
    CHECK_FALSE(verify_stored_batch(*store, kAgent, 3, Ed25519Key::generate()).empty());
  }
  SUBCASE("no batch at that head") {
    CHECK(verify_stored_batch(*store, kAgent, 2, a.key).find("seq 2") != std::string::npos);
  }
}
