// The audit log on a real RocksDB: appends, the chain and its anchor, and tampering with the
// stored bytes through the raw column family, each of which verify() must name by seq.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collector/audit/audit.hpp"
#include "collector/incidents/incidents.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::collector;
using tocsin::common::Ed25519Key;
using tocsin::test::TempDir;
using nlohmann::json;

namespace {

Ed25519Key copy_key(const Ed25519Key& k) {
  return Ed25519Key::from_private_pem(k.private_pem());
}

// A log in a temporary directory: entry 1 is audit_log_started, then `n` test entries.
struct Fixture {
  TempDir dir{"audit"};
  std::unique_ptr<Store> store = Store::open(dir / "db");
  Ed25519Key key = Ed25519Key::generate();
  std::unique_ptr<AuditLog> log = std::make_unique<AuditLog>(*store, copy_key(key));

  void fill(int n) {
    for (int i = 0; i < n; ++i)
      log->append("alice", "token_created", "enroll-token",
                  {{"n", i}, {"note", "entry " + std::to_string(i)}});
  }
  std::string raw(std::uint64_t seq) const {
    auto v = store->get(Table::audit, audit_entry_key(seq));
    REQUIRE(v);
    return *v;
  }
  void put_raw(const std::string& key, std::string value) {
    WriteSet ws;
    ws.put(Table::audit, key, std::move(value));
    store->commit(std::move(ws));
  }
  void erase_raw(const std::string& key) {
    WriteSet ws;
    ws.erase(Table::audit, key);
    store->commit(std::move(ws));
  }
  AuditVerifyResult verify() const { return verify_audit_log(*store, key); }
  // Simulates a restart of the collector on the same database and key.
  void reopen() {
    log.reset();
    log = std::make_unique<AuditLog>(*store, copy_key(key));
  }
};

std::string problems_text(const AuditVerifyResult& r) {
  std::string s;
  for (const auto& p : r.problems)
    s += "seq " + std::to_string(p.seq) + " " + p.kind + ": " + p.reason + "\n";
  return s;
}

// The stored form of an entry as a forger would write it: content and a correct hash of it.
std::string sealed(const AuditEntry& e) {
  auto bytes = audit_canonical_bytes(e);
  auto h = tocsin::common::sha256(bytes);
  bytes.append(reinterpret_cast<const char*>(h.data()), h.size());
  return bytes;
}

// An entry rewritten with a correct hash of its new content: only the chain can tell.
std::string rehashed(const std::string& raw, const std::string& new_actor) {
  auto e = decode_audit_entry(raw);
  REQUIRE(e);
  e->actor = new_actor;
  return sealed(*e);
}

}  // namespace

TEST_CASE("a fresh log starts with its key, appends chain up and verify passes") {
  Fixture f;
  f.fill(5);
  auto r = f.verify();
  INFO(problems_text(r));
  CHECK(r.ok());
  CHECK(r.entries_checked == 6);
  CHECK(r.head_seq == 6);
  CHECK(f.log->head_seq() == 6);
  CHECK(r.key_fingerprint == audit_key_fingerprint(f.key));
  CHECK(f.log->verify().ok());

  auto all = f.log->list(1, 0, 100);
  REQUIRE(all.size() == 6);
  CHECK(all[0].action == "audit_log_started");
  CHECK(all[0].detail["public_key"] == tocsin::common::to_hex(f.key.public_raw()));
  CHECK(all[0].prev_hash == tocsin::common::Digest{});
  for (std::size_t i = 1; i < all.size(); ++i) {
    CHECK(all[i].seq == i + 1);
    CHECK(all[i].prev_hash == all[i - 1].hash);
  }
  auto line = audit_entry_json(all[3]);
  for (const char* k : {"seq", "time", "actor", "action", "subject", "detail", "prev_hash", "hash"})
    CHECK(line.contains(k));
  CHECK(line["detail"]["n"] == 2);
  CHECK(line["time"].get<std::string>().back() == 'Z');
  CHECK(f.log->list(4, 0, 2).size() == 2);
  CHECK(f.log->list(1, all[5].time_ns + 1, 100).empty());
}

TEST_CASE("a restart on an intact log continues the chain without any finding") {
  Fixture f;
  f.fill(3);
  f.reopen();
  f.log->append("bob", "incident_acknowledged", "incident #1");
  auto r = f.verify();
  INFO(problems_text(r));
  CHECK(r.ok());
  CHECK(r.head_seq == 5);
}

TEST_CASE("changing any single byte of any stored entry is found and named by its seq") {
  Fixture f;
  f.fill(4);
  for (std::uint64_t seq = 1; seq <= 5; ++seq) {
    auto original = f.raw(seq);
    for (std::size_t i = 0; i < original.size(); ++i) {
      auto changed = original;
      changed[i] = static_cast<char>(changed[i] ^ 0x20);
      f.put_raw(audit_entry_key(seq), changed);
      auto r = f.verify();
      CAPTURE(seq);
      CAPTURE(i);
      REQUIRE_FALSE(r.ok());
      CHECK(r.problems.front().seq == seq);
      CHECK(r.problems.front().reason.find(std::to_string(seq)) != std::string::npos);
    }
    f.put_raw(audit_entry_key(seq), original);
  }
  CHECK(f.verify().ok());
}

TEST_CASE("a removed entry is named as a gap") {
  Fixture f;
  f.fill(5);
  SUBCASE("one entry") {
    f.erase_raw(audit_entry_key(3));
    auto r = f.verify();
    REQUIRE(r.problems.size() == 1);
    CHECK(r.problems[0].kind == "removed");
    CHECK(r.problems[0].seq == 3);
    CHECK(r.problems[0].reason == "entry 3 missing: removed from the log");
  }
  SUBCASE("a range, the first entry included") {
    f.erase_raw(audit_entry_key(1));
    f.erase_raw(audit_entry_key(2));
    auto r = f.verify();
    REQUIRE(r.problems.size() == 1);
    CHECK(r.problems[0].reason == "entries 1..2 missing: removed from the log");
  }
}

TEST_CASE("two swapped entries are both named as reordered") {
  Fixture f;
  f.fill(5);
  auto a = f.raw(2), b = f.raw(4);
  f.put_raw(audit_entry_key(2), b);
  f.put_raw(audit_entry_key(4), a);
  auto r = f.verify();
  INFO(problems_text(r));
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].seq == 2);
  CHECK(r.problems[0].kind == "reordered");
  CHECK(r.problems[1].seq == 4);
  CHECK(r.problems[1].kind == "reordered");
}

TEST_CASE("an entry replaced with a freshly computed hash is caught by the chain or the anchor") {
  Fixture f;
  f.fill(4);  // seq 1..5
  struct Case {
    std::uint64_t replaced, named;
    const char* kind;
  };
  // In the middle the next entry no longer links to it; the newest is checked by the anchor.
  for (auto c : {Case{3, 4, "broken_link"}, Case{5, 5, "anchor"}}) {
    CAPTURE(c.replaced);
    auto original = f.raw(c.replaced);
    f.put_raw(audit_entry_key(c.replaced), rehashed(original, "mallory"));
    auto r = f.verify();
    INFO(problems_text(r));
    REQUIRE(r.problems.size() == 1);
    CHECK(r.problems[0].kind == c.kind);
    CHECK(r.problems[0].seq == c.named);
    f.put_raw(audit_entry_key(c.replaced), original);
  }
}

TEST_CASE("a cut-off tail is found through the anchor, also after a restart on the cut log") {
  Fixture f;
  f.fill(5);  // seq 1..6
  f.erase_raw(audit_entry_key(6));
  f.erase_raw(audit_entry_key(5));
  auto r = f.verify();
  INFO(problems_text(r));
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].kind == "anchor");
  CHECK(r.problems[0].seq == 5);
  CHECK(r.problems[0].reason.find("entries 5..6 were cut off the end") != std::string::npos);

  f.reopen();  // the collector restarts: it must not sign the shorter log as if nothing happened
  f.log->append("alice", "token_created", "enroll-token");
  r = f.verify();
  INFO(problems_text(r));
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].kind == "removed");
  CHECK(r.problems[0].reason == "entries 5..6 missing: removed from the log");
  CHECK(r.problems[1].kind == "recorded");
  CHECK(r.problems[1].seq == 7);
  CHECK(r.problems[1].reason.find("cut off") != std::string::npos);
  CHECK(f.log->head_seq() == 8);
}

TEST_CASE("entries added or an anchor changed without the audit key are found") {
  Fixture f;
  f.fill(3);
  SUBCASE("an entry appended by hand after the anchor") {
    auto e = decode_audit_entry(f.raw(4));
    REQUIRE(e);
    e->seq = 5;
    e->prev_hash = e->hash;
    f.put_raw(audit_entry_key(5), sealed(*e));
    auto r = f.verify();
    INFO(problems_text(r));
    REQUIRE(r.problems.size() == 1);
    CHECK(r.problems[0].kind == "anchor");
    CHECK(r.problems[0].reason.find("added without the audit key") != std::string::npos);
    CHECK(f.log->verify().ok());  // online, entries beyond the collector's own head wait
    f.reopen();
    CHECK_FALSE(f.verify().ok());  // ...but a restart records them for good
  }
  SUBCASE("the anchor deleted") {
    f.erase_raw(kAuditAnchorKey);
    auto r = f.verify();
    REQUIRE(r.problems.size() == 1);
    CHECK(r.problems[0].reason.find("anchor is missing") != std::string::npos);
  }
  SUBCASE("the anchor re-signed with another key") {
    Fixture g;  // the same log shape under another key gives a validly formed foreign anchor
    g.fill(3);
    f.put_raw(kAuditAnchorKey, *g.store->get(Table::audit, kAuditAnchorKey));
    auto r = f.verify();
    REQUIRE_FALSE(r.ok());
    CHECK(r.problems[0].kind == "anchor");
    CHECK(r.problems[0].reason.find("not signed by the audit key") != std::string::npos);
  }
  SUBCASE("verified with a key the log never announced") {
    auto r = verify_audit_log(*f.store, Ed25519Key::generate());
    REQUIRE_FALSE(r.ok());
    CHECK(r.problems[0].kind == "anchor");
  }
}

TEST_CASE("appends from several threads at once stay one gap-free chain") {
  Fixture f;
  constexpr int kThreads = 4, kEach = 40;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&f, t] {
      for (int i = 0; i < kEach; ++i)
        f.log->append("thread-" + std::to_string(t), "incident_noted", "incident #1", {{"i", i}});
    });
  for (auto& t : threads) t.join();
  auto r = f.verify();
  INFO(problems_text(r));
  CHECK(r.ok());
  CHECK(r.entries_checked == 1 + kThreads * kEach);
  CHECK(f.log->head_seq() == 1 + kThreads * kEach);
}

TEST_CASE("commit writes a change and its entries together and bad records are refused") {
  Fixture f;
  WriteSet ws;
  ws.put(Table::incident_keys, "x", "y");
  f.log->commit(std::move(ws), {{"alice", "token_created", "a"}, {"alice", "token_used", "b"}});
  CHECK(f.store->get(Table::incident_keys, "x") == std::optional<std::string>("y"));
  CHECK(f.log->head_seq() == 3);
  CHECK_THROWS_AS(f.log->append("", "x", ""), std::invalid_argument);
  CHECK_THROWS_AS(f.log->append("a", "", ""), std::invalid_argument);
  CHECK_THROWS_AS(f.log->append("a", "audit_log_started", ""), std::invalid_argument);
  CHECK_THROWS_AS(f.log->append("a", "x", "", json::array()), std::invalid_argument);
  CHECK(f.log->head_seq() == 3);
  CHECK(f.verify().ok());
}

TEST_CASE("invalid UTF-8 from a peer is replaced before hashing, so export matches the hash") {
  Fixture f;
  f.log->append("agt-1", "enrollment", "agt-1", {{"hostname", std::string("bad\xff\xfe")}});
  CHECK(f.verify().ok());
  auto e = f.log->list(2, 0, 1).at(0);
  auto line = audit_entry_json(e).dump();  // must not throw
  CHECK(line.find("hostname") != std::string::npos);
}

TEST_CASE("incident changes are audited in the same write but mere occurrences are not") {
  Fixture f;
  IncidentEngine engine(*f.store);
  engine.set_audit(f.log.get());
  Signal s;
  s.kind = IncidentKind::prevention_failed;
  s.key = dedup_key(s.kind, "t1", "agt-1");
  s.test_id = "t1";
  s.agent_id = "agt-1";
  auto opened = engine.apply(s);
  REQUIRE(opened);
  engine.apply(s);  // an occurrence
  engine.ack(opened->id, "alice");
  engine.resolve(opened->id, "bob", "fixed the firewall");
  std::vector<std::string> actions;
  for (const auto& e : f.log->list(2, 0, 100)) actions.push_back(e.actor + " " + e.action);
  CHECK(actions == std::vector<std::string>{"system incident_opened", "alice incident_acknowledged",
                                            "bob incident_resolved"});
  auto last = f.log->list(4, 0, 1).at(0);
  CHECK(last.subject == "incident #" + std::to_string(opened->id));
  CHECK(last.detail["detail"] == "fixed the firewall");
  CHECK(last.detail["event_seq"] == 4);  // opened, occurrence, acknowledged, resolved
  CHECK(f.verify().ok());
}
