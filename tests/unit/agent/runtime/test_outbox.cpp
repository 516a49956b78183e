// The agent's durable outbox: chaining, acks, crash recovery, the byte cap, segment rolling and
// reconciliation with the collector's view of the chain.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/runtime/outbox.hpp"
#include "common/wire.hpp"
#include "tests/unit/temp_dir.hpp"

namespace fs = std::filesystem;
using tocsin::agent::Outbox;
using tocsin::agent::OutboxOptions;
using tocsin::common::compute_result_hash;
using tocsin::common::decode_body;
using tocsin::common::Digest;
using tocsin::common::encode_body;
using tocsin::common::kGenesisHash;
using tocsin::common::ResultBody;
using tocsin::common::ResultRecord;
using tocsin::test::TempDir;

namespace {

const std::string kAgent = "agent-one";
constexpr std::size_t kHeader = 4 + 8 + 32 + 32;  // on-disk record header (outbox.hpp)
constexpr std::size_t kAll = 1'000'000;

// A realistic body, distinct per `n` (0..999); its size depends only on `pad`.
std::string body(int n, std::size_t pad = 0) {
  ResultBody b;
  char id[16];
  std::snprintf(id, sizeof id, "test-%03d", n);
  b.test_id = id;
  b.probe = "tcp_connect";
  b.target = "127.0.0.1:" + std::to_string(1000 + n);
  b.verdict = "prevented";
  b.reason = "refused";
  b.evidence = {{"pad", std::string(pad, 'p')}};
  return encode_body(b);
}

// Bytes one record of body(n, pad) takes on disk and against the cap.
std::size_t record_size(std::size_t pad) {
  return kHeader + body(0, pad).size();
}

std::vector<std::string> bodies(int from, int to, std::size_t pad = 0) {
  std::vector<std::string> out;
  for (int n = from; n <= to; ++n) out.push_back(body(n, pad));
  return out;
}

struct Fixture {
  TempDir tmp{"outbox"};
  OutboxOptions opts;
  Fixture() { opts.dir = tmp / "outbox"; }
  std::unique_ptr<Outbox> open(const std::string& agent = kAgent) {
    return Outbox::open(opts, agent);
  }
};

std::vector<std::uint64_t> seqs(const std::vector<ResultRecord>& rs) {
  std::vector<std::uint64_t> out;
  for (const auto& r : rs) out.push_back(r.seq);
  return out;
}

std::vector<std::uint64_t> range(std::uint64_t from, std::uint64_t to) {
  std::vector<std::uint64_t> out;
  for (auto s = from; s <= to; ++s) out.push_back(s);
  return out;
}

std::vector<fs::path> segment_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.starts_with("seg-") && name.ends_with(".log")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every record hashes correctly and links to the one before; the first links to `prev`.
void check_chain(const std::vector<ResultRecord>& rs, Digest prev) {
  for (const auto& r : rs) {
    CAPTURE(r.seq);
    CHECK(r.agent_id == kAgent);
    CHECK(r.prev_hash == prev);
    CHECK(r.hash == compute_result_hash(kAgent, r.seq, r.prev_hash, r.body));
    prev = r.hash;
  }
}

Digest some_digest(std::uint8_t v) {
  Digest d{};
  d.fill(v);
  return d;
}

// Makes writes that would grow any file past `bytes` fail with EFBIG (RLIMIT_FSIZE), to
// simulate a full disk, until destroyed. Keep the scope tight: it limits every file.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGXFSZ, &ignore, &old_action_);  // EFBIG instead of a fatal signal
    ::getrlimit(RLIMIT_FSIZE, &old_limit_);
    rlimit limit = old_limit_;
    limit.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_limit_);
    ::sigaction(SIGXFSZ, &old_action_, nullptr);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit old_limit_{};
  struct sigaction old_action_ {};
};

// Runs `f` while files may not grow past `bytes`; returns whether it threw.
template <class F>
bool throws_with_file_limit(rlim_t bytes, F f) {
  FileSizeLimit limit(bytes);
  try {
    f();
  } catch (const std::exception&) {
    return true;
  }
  return false;
}

}  // namespace

TEST_CASE("append assigns seqs 1..n, each chained to the previous hash") {
  Fixture f;
  auto ob = f.open();
  auto input = bodies(1, 5);
  CHECK(ob->append(input) == 5);
  auto rs = ob->pending(kAll, kAll);
  CHECK(seqs(rs) == range(1, 5));
  check_chain(rs, kGenesisHash);
  for (std::size_t i = 0; i < rs.size(); ++i) CHECK(rs[i].body == input[i]);
  CHECK(ob->head_seq() == 5);
  CHECK(ob->head_hash() == rs.back().hash);
  auto st = ob->stats();
  CHECK(st.head_seq == 5);
  CHECK(st.acked_seq == 0);
  CHECK(st.pending == 5);
  std::uint64_t bytes = 0;
  for (const auto& b : input) bytes += kHeader + b.size();
  CHECK(st.pending_bytes == bytes);
}

TEST_CASE("separate appends continue one chain") {
  Fixture f;
  auto ob = f.open();
  for (int n = 1; n <= 4; ++n) CHECK(ob->append({body(n)}) == 1);
  auto rs = ob->pending(kAll, kAll);
  CHECK(seqs(rs) == range(1, 4));
  check_chain(rs, kGenesisHash);
}

TEST_CASE("pending returns unacked records in order within max_count and max_bytes") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 5));
  auto record_size = kHeader + body(1).size();
  CHECK(seqs(ob->pending(2, kAll)) == range(1, 2));
  CHECK(ob->pending(0, kAll).empty());
  CHECK(seqs(ob->pending(kAll, 3 * record_size)) == range(1, 3));
  SUBCASE("a byte limit below one record still yields one record") {
    CHECK(seqs(ob->pending(kAll, 1)) == range(1, 1));
  }
  SUBCASE("pending does not consume") {
    CHECK(seqs(ob->pending(kAll, kAll)) == range(1, 5));
  }
}

TEST_CASE("ack removes records and the acked state survives reopening") {
  Fixture f;
  Digest head;
  std::vector<ResultRecord> before;
  {
    auto ob = f.open();
    ob->append(bodies(1, 5));
    ob->ack(3);
    before = ob->pending(kAll, kAll);
    CHECK(seqs(before) == range(4, 5));
    CHECK(ob->stats().acked_seq == 3);
    CHECK(ob->stats().pending == 2);
    CHECK(ob->stats().pending_bytes == 2 * (kHeader + body(4).size()));
    head = ob->head_hash();
    SUBCASE("an older ack is a no-op") {
      ob->ack(2);
      CHECK(seqs(ob->pending(kAll, kAll)) == range(4, 5));
      CHECK(ob->stats().acked_seq == 3);
    }
    SUBCASE("an ack beyond the head is refused") {
      CHECK_THROWS_AS(ob->ack(6), std::runtime_error);
      CHECK(seqs(ob->pending(kAll, kAll)) == range(4, 5));
    }
  }
  auto ob = f.open();
  CHECK(ob->head_seq() == 5);
  CHECK(ob->head_hash() == head);
  CHECK(ob->stats().acked_seq == 3);
  auto after = ob->pending(kAll, kAll);
  REQUIRE(seqs(after) == range(4, 5));
  for (std::size_t i = 0; i < after.size(); ++i) {
    CHECK(after[i].hash == before[i].hash);
    CHECK(after[i].body == before[i].body);
  }
}

TEST_CASE("acking everything leaves nothing pending, also after reopening") {
  Fixture f;
  {
    auto ob = f.open();
    ob->append(bodies(1, 3));
    ob->ack(3);
    CHECK(ob->pending(kAll, kAll).empty());
    CHECK(ob->stats().pending_bytes == 0);
  }
  auto ob = f.open();
  CHECK(ob->pending(kAll, kAll).empty());
  CHECK(ob->head_seq() == 3);
  CHECK(ob->stats().acked_seq == 3);
}

TEST_CASE("reopening keeps the chain head so new appends chain on") {
  Fixture f;
  Digest head;
  {
    auto ob = f.open();
    ob->append(bodies(1, 3));
    head = ob->head_hash();
  }
  auto ob = f.open();
  CHECK(ob->head_seq() == 3);
  CHECK(ob->head_hash() == head);
  ob->append({body(4)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(seqs(rs) == range(1, 4));
  CHECK(rs[3].prev_hash == head);
  check_chain(rs, kGenesisHash);
}

TEST_CASE("a torn tail is truncated on reopen and the chain continues from the last whole record") {
  Fixture f;
  Digest head_of_3, head_of_4;
  std::uintmax_t whole_size = 0;
  {
    auto ob = f.open();
    ob->append(bodies(1, 3));
    head_of_3 = ob->head_hash();
    ob->append({body(4)});
    head_of_4 = ob->head_hash();
  }
  auto segs = segment_files(f.opts.dir);
  REQUIRE(segs.size() == 1);
  auto seg = segs.front();
  auto full_size = fs::file_size(seg);
  whole_size = full_size - record_size(0);
  std::uint64_t expect_head = 3;
  Digest expect_hash = head_of_3;

  SUBCASE("the last record cut short by a few bytes") {
    fs::resize_file(seg, full_size - 5);
  }
  SUBCASE("the last record cut inside its header") {
    fs::resize_file(seg, whole_size + 10);
  }
  SUBCASE("the last record's body overwritten") {
    std::fstream io(seg, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(full_size - 3));
    io.write("zzz", 3);
  }
  SUBCASE("garbage appended after the last whole record") {
    std::ofstream(seg, std::ios::app | std::ios::binary) << std::string(10, '\x7f');
    whole_size = full_size;
    expect_head = 4;
    expect_hash = head_of_4;
  }
  SUBCASE("a whole-looking record with a bad length appended") {
    std::string junk(kHeader + 20, '\0');
    junk[0] = '\x7f';  // length far beyond the file
    std::ofstream(seg, std::ios::app | std::ios::binary) << junk;
    whole_size = full_size;
    expect_head = 4;
    expect_hash = head_of_4;
  }

  auto ob = f.open();
  CHECK(fs::file_size(seg) == whole_size);
  CHECK(ob->head_seq() == expect_head);
  CHECK(ob->head_hash() == expect_hash);
  ob->append({body(99)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(seqs(rs) == range(1, expect_head + 1));
  check_chain(rs, kGenesisHash);
  CHECK(rs.back().body == body(99));
  // A second reopen finds a clean file.
  ob.reset();
  auto again = f.open();
  CHECK(again->head_seq() == expect_head + 1);
  CHECK(seqs(again->pending(kAll, kAll)) == range(1, expect_head + 1));
}

TEST_CASE("a corrupt record in an older segment is an error, not silently dropped") {
  Fixture f;
  f.opts.segment_bytes = 512;
  {
    auto ob = f.open();
    for (int n = 1; n <= 6; ++n) ob->append({body(n, 200)});
  }
  auto segs = segment_files(f.opts.dir);
  REQUIRE(segs.size() >= 2);
  {
    std::fstream io(segs.front(), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(kHeader + 5));
    io.write("!", 1);
  }
  CHECK_THROWS_AS(f.open(), std::runtime_error);
}

TEST_CASE("the byte cap drops new results, counts them, and reports them once there is room") {
  Fixture f;
  const auto rec = record_size(200);
  f.opts.max_bytes = 3 * rec + rec / 2;  // three records fit, a fourth does not
  auto ob = f.open();
  CHECK(ob->append(bodies(1, 3, 200)) == 3);
  CHECK(ob->append(bodies(4, 6, 200)) == 0);
  auto st = ob->stats();
  CHECK(st.head_seq == 3);  // dropped results get no seq: the chain stays gap-free
  CHECK(st.dropped_total == 3);
  CHECK(st.dropped_unreported == 3);
  CHECK(seqs(ob->pending(kAll, kAll)) == range(1, 3));

  auto head_of_3 = ob->head_hash();
  ob->ack(3);
  CHECK(ob->append({body(7, 200)}) == 1);
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(seqs(rs) == range(4, 5));
  auto report = decode_body(rs[0].body);
  CHECK(report.kind == "outbox_overflow");
  CHECK(report.evidence["dropped"] == "3");
  CHECK(report.evidence["dropped_total"] == "3");
  CHECK(report.evidence["max_bytes"] == std::to_string(f.opts.max_bytes));
  CHECK(rs[1].body == body(7, 200));
  check_chain(rs, head_of_3);
  st = ob->stats();
  CHECK(st.dropped_total == 3);
  CHECK(st.dropped_unreported == 0);

  SUBCASE("no second report without new drops") {
    ob->ack(5);
    ob->append({body(8, 200)});
    auto next = ob->pending(kAll, kAll);
    REQUIRE(next.size() == 1);
    CHECK(decode_body(next[0].body).kind == "probe");
  }
}

TEST_CASE("results keep being counted while there is room for neither report nor result") {
  Fixture f;
  f.opts.max_bytes = 3 * record_size(200) + record_size(200) / 2;
  auto ob = f.open();
  ob->append(bodies(1, 3, 200));
  ob->append({body(4, 200)});
  ob->append({body(5, 200)});  // still full: counted, no report yet
  CHECK(ob->stats().dropped_unreported == 2);
  CHECK(ob->head_seq() == 3);
  ob->ack(3);
  ob->append({body(6, 200)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 2);
  CHECK(decode_body(rs[0].body).evidence["dropped"] == "2");
}

TEST_CASE("drop counters survive reopening and are reported afterwards") {
  Fixture f;
  f.opts.max_bytes = 3 * record_size(200) + record_size(200) / 2;
  {
    auto ob = f.open();
    ob->append(bodies(1, 5, 200));
    CHECK(ob->stats().dropped_total == 2);
  }
  auto ob = f.open();
  CHECK(ob->stats().dropped_total == 2);
  CHECK(ob->stats().dropped_unreported == 2);
  ob->ack(3);
  ob->append({body(6, 200)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 2);
  auto report = decode_body(rs[0].body);
  CHECK(report.kind == "outbox_overflow");
  CHECK(report.evidence["dropped"] == "2");
}

// Regression: the drop times were not persisted with the counters, so a report written after a
// restart claimed the drops happened at the Unix epoch.
TEST_CASE("an overflow report after a restart keeps the real drop times") {
  Fixture f;
  f.opts.max_bytes = 3 * record_size(200) + record_size(200) / 2;
  {
    auto ob = f.open();
    ob->append(bodies(1, 4, 200));
  }
  auto ob = f.open();
  ob->ack(3);
  ob->append({body(5, 200)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 2);
  auto report = decode_body(rs[0].body);
  REQUIRE(report.kind == "outbox_overflow");
  CHECK(report.evidence["first_dropped_at"] != "1970-01-01T00:00:00.000Z");
  CHECK(report.started_ns > 0);
}

TEST_CASE("an ack that makes room writes the overflow report at once") {
  Fixture f;
  const auto rec = record_size(200);
  f.opts.max_bytes = 3 * rec + rec / 2;
  auto ob = f.open();
  ob->append(bodies(1, 4, 200));
  CHECK(ob->stats().dropped_unreported == 1);
  ob->ack(3);
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 1);  // the report is pending before any new result arrives
  CHECK(rs[0].seq == 4);
  CHECK(decode_body(rs[0].body).kind == "outbox_overflow");
  CHECK(ob->stats().dropped_unreported == 0);
  CHECK(ob->stats().dropped_total == 1);
}

TEST_CASE("each overflow report counts the drops since the previous report") {
  Fixture f;
  const auto rec = record_size(200);
  f.opts.max_bytes = 3 * rec + rec / 2;
  auto ob = f.open();
  ob->append(bodies(1, 6, 200));   // 1..3 kept, 3 dropped
  ob->ack(3);                      // report of 3 as seq 4
  ob->append(bodies(7, 8, 200));   // seqs 5, 6
  ob->append(bodies(9, 10, 200));  // full again: 2 dropped
  CHECK(ob->stats().dropped_unreported == 2);
  ob->ack(6);  // report of 2 as seq 7
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 1);
  auto report = decode_body(rs[0].body);
  CHECK(report.kind == "outbox_overflow");
  CHECK(report.evidence["dropped"] == "2");
  CHECK(report.evidence["dropped_total"] == "5");
  CHECK(report.started_ns > 0);
  CHECK(report.finished_ns >= report.started_ns);
}

TEST_CASE("a failed write leaves the outbox as it was before the append") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 3));
  auto head = ob->head_hash();
  auto seg = segment_files(f.opts.dir).front();
  auto size = fs::file_size(seg);
  // Room for part of one record only: the write starts, then fails like a full disk.
  CHECK(throws_with_file_limit(size + 10, [&] { ob->append(bodies(4, 5)); }));
  CHECK(fs::file_size(seg) == size);
  CHECK(ob->head_seq() == 3);
  CHECK(ob->head_hash() == head);
  CHECK(ob->stats().pending_bytes == 3 * record_size(0));
  CHECK(seqs(ob->pending(kAll, kAll)) == range(1, 3));
  ob->append({body(6)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(seqs(rs) == range(1, 4));
  CHECK(rs[3].body == body(6));
  check_chain(rs, kGenesisHash);
  ob.reset();
  auto again = f.open();
  CHECK(again->head_seq() == 4);
  check_chain(again->pending(kAll, kAll), kGenesisHash);
}

// BUG (agent/runtime/outbox.cpp report_overflow_if_room + flush): the report sets dropped_unreported_
// to 0 before it is written; when the write then fails, flush() rolls the report back out of
// the chain but not the counter, so the loss is never reported (and the 0 is persisted by the
// next successful flush). Fix: zero the counter only after the flush succeeds, or restore it
// in flush()'s rollback when the rolled-back records include the report.
TEST_CASE("an overflow report whose write fails is written later") {
  Fixture f;
  const auto rec = record_size(200);
  f.opts.max_bytes = 3 * rec + rec / 2;
  auto ob = f.open();
  ob->append(bodies(1, 5, 200));  // 2 dropped
  auto seg = segment_files(f.opts.dir).front();
  CHECK(throws_with_file_limit(fs::file_size(seg), [&] { ob->ack(3); }));
  CHECK(ob->stats().acked_seq == 3);
  CHECK(ob->stats().dropped_unreported == 2);
  ob->append({body(6, 200)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 2);
  CHECK(decode_body(rs[0].body).kind == "outbox_overflow");
  CHECK(decode_body(rs[0].body).evidence["dropped"] == "2");
}

TEST_CASE("a read-only outbox shows what is pending without changing anything") {
  Fixture f;
  {
    auto ob = f.open();
    ob->append(bodies(1, 3));
    ob->ack(1);
  }
  auto seg = segment_files(f.opts.dir).front();
  std::ofstream(seg, std::ios::app | std::ios::binary) << std::string(10, '\x7f');  // torn tail
  auto size = fs::file_size(seg);
  auto ro = f.opts;
  ro.read_only = true;
  {
    auto ob = Outbox::open(ro, kAgent);
    CHECK(ob->head_seq() == 3);
    CHECK(ob->stats().acked_seq == 1);
    CHECK(seqs(ob->pending(kAll, kAll)) == range(2, 3));
    CHECK_THROWS_AS(ob->append({body(4)}), std::logic_error);
  }
  CHECK(fs::file_size(seg) == size);  // a running agent may be mid-append: never truncate
  CHECK(f.open()->head_seq() == 3);   // a writable open still repairs the tail
  CHECK(fs::file_size(seg) == size - 10);
}

TEST_CASE("a read-only outbox of a directory that does not exist is empty and creates nothing") {
  Fixture f;
  auto ro = f.opts;
  ro.read_only = true;
  auto ob = Outbox::open(ro, kAgent);
  CHECK(ob->head_seq() == 0);
  CHECK(ob->pending(kAll, kAll).empty());
  CHECK_FALSE(fs::exists(f.opts.dir));
}

// BUG (agent/runtime/outbox.cpp ack, reconcile): only append() checks opts_.read_only; ack() and
// reconcile() on a read-only outbox rewrite the "acked" marker, delete segment files and can
// try to append an overflow report through fd_ == -1. Both should throw std::logic_error like
// append() and touch nothing.
TEST_CASE("a read-only outbox refuses to ack or reconcile") {
  Fixture f;
  {
    auto ob = f.open();
    ob->append(bodies(1, 3));
  }
  auto ro = f.opts;
  ro.read_only = true;
  auto ob = Outbox::open(ro, kAgent);
  CHECK_THROWS_AS(ob->ack(2), std::logic_error);
  CHECK_THROWS_AS(ob->reconcile(4, ob->head_hash()), std::logic_error);
  CHECK_FALSE(fs::exists(f.opts.dir / "acked"));
  CHECK(f.open()->stats().acked_seq == 0);
}

TEST_CASE("segments roll past segment_bytes and fully acked old segments are deleted") {
  Fixture f;
  const auto rec = record_size(200);
  f.opts.segment_bytes = 3 * rec + rec / 2;
  auto ob = f.open();
  // A segment passes segment_bytes with its fourth record; the next append rolls.
  for (int n = 1; n <= 10; ++n) ob->append({body(n, 200)});
  auto segs = segment_files(f.opts.dir);
  REQUIRE(segs.size() == 3);
  CHECK(segs[0].filename() == "seg-00000000000000000001.log");
  CHECK(segs[1].filename() == "seg-00000000000000000005.log");
  CHECK(segs[2].filename() == "seg-00000000000000000009.log");
  auto rs = ob->pending(kAll, kAll);
  CHECK(seqs(rs) == range(1, 10));
  check_chain(rs, kGenesisHash);

  ob->ack(3);  // segment 1 still holds seq 4
  CHECK(segment_files(f.opts.dir).size() == 3);
  ob->ack(4);
  CHECK(segment_files(f.opts.dir).size() == 2);
  CHECK_FALSE(fs::exists(segs[0]));
  ob->ack(10);  // the current segment is kept for appends
  CHECK(segment_files(f.opts.dir) == std::vector<fs::path>{segs[2]});

  ob.reset();
  ob = f.open();
  CHECK(ob->head_seq() == 10);
  CHECK(ob->pending(kAll, kAll).empty());
  ob->append({body(11, 200)});
  auto next = ob->pending(kAll, kAll);
  REQUIRE(next.size() == 1);
  CHECK(next[0].seq == 11);
  CHECK(next[0].prev_hash == rs.back().hash);
}

TEST_CASE("records spread over several segments survive reopening") {
  Fixture f;
  f.opts.segment_bytes = 1024;
  Digest head;
  {
    auto ob = f.open();
    for (int n = 1; n <= 9; ++n) ob->append({body(n, 200)});
    ob->ack(2);
    head = ob->head_hash();
  }
  auto ob = f.open();
  CHECK(ob->head_hash() == head);
  auto rs = ob->pending(kAll, kAll);
  CHECK(seqs(rs) == range(3, 9));
  REQUIRE(!rs.empty());
  check_chain(rs, rs.front().prev_hash);
}

// Regression: earlier bodies of the same call were chained in memory but never written, so the
// next append chained onto seqs that did not exist and pending() read past the file end.
TEST_CASE("a body over the record cap is refused without corrupting the outbox") {
  Fixture f;
  auto ob = f.open();
  ob->append({body(1)});
  std::string huge(1 << 20, 'x');
  CHECK_THROWS_AS(ob->append({body(2), huge}), std::length_error);
  CHECK(ob->head_seq() == 1);
  ob->append({body(3)});
  std::vector<ResultRecord> rs;
  CHECK_NOTHROW(rs = ob->pending(kAll, kAll));
  CHECK(seqs(rs) == range(1, 2));
  check_chain(rs, kGenesisHash);
}

TEST_CASE("reconcile agrees with a collector that has everything and acks it all") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 5));
  CHECK(ob->reconcile(6, ob->head_hash()) == "");
  CHECK(ob->pending(kAll, kAll).empty());
  CHECK(ob->stats().acked_seq == 5);
}

TEST_CASE("reconcile with a collector that is behind keeps what it lacks pending") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 5));
  auto rs = ob->pending(kAll, kAll);
  SUBCASE("collector has nothing") {
    CHECK(ob->reconcile(1, kGenesisHash) == "");
    CHECK(seqs(ob->pending(kAll, kAll)) == range(1, 5));
  }
  SUBCASE("collector has the first three") {
    CHECK(ob->reconcile(4, rs[2].hash) == "");
    CHECK(seqs(ob->pending(kAll, kAll)) == range(4, 5));
    CHECK(ob->stats().acked_seq == 3);
  }
}

TEST_CASE("reconcile reports chains that disagree and changes nothing") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 5));
  auto rs = ob->pending(kAll, kAll);
  std::string error;
  SUBCASE("a different hash at our head") {
    error = ob->reconcile(6, some_digest(7));
  }
  SUBCASE("a different hash in the middle") {
    error = ob->reconcile(3, some_digest(7));
  }
  SUBCASE("a collector beyond our head while we still have unsent results") {
    error = ob->reconcile(10, some_digest(7));
  }
  SUBCASE("a collector behind what it acked before") {
    ob->ack(3);
    rs = ob->pending(kAll, kAll);
    error = ob->reconcile(2, rs.front().prev_hash);
  }
  CHECK_FALSE(error.empty());
  CHECK(ob->head_seq() == 5);
  CHECK(seqs(ob->pending(kAll, kAll)) == seqs(rs));
}

TEST_CASE("a fresh outbox continues the collector's chain and keeps doing so after reopening") {
  Fixture f;
  auto collector_head = some_digest(0xab);
  {
    auto ob = f.open();
    CHECK(ob->reconcile(101, collector_head) == "");
    CHECK(ob->head_seq() == 100);
    CHECK(ob->head_hash() == collector_head);
    CHECK(ob->stats().acked_seq == 100);
  }
  auto ob = f.open();
  CHECK(ob->head_seq() == 100);
  CHECK(ob->head_hash() == collector_head);
  ob->append({body(1)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].seq == 101);
  CHECK(rs[0].prev_hash == collector_head);
  CHECK(rs[0].hash == compute_result_hash(kAgent, 101, collector_head, rs[0].body));
  ob.reset();
  CHECK(seqs(f.open()->pending(kAll, kAll)) == range(101, 101));
}

TEST_CASE("a fully acked outbox behind the collector continues the collector's chain") {
  Fixture f;
  auto ob = f.open();
  ob->append(bodies(1, 3));
  ob->ack(3);
  CHECK(ob->reconcile(51, some_digest(5)) == "");
  ob->append({body(4)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].seq == 51);
  CHECK(rs[0].prev_hash == some_digest(5));
}

// Regression: next_seq comes from the network; 0 underflowed to a head of 2^64-1 and the next
// seq wrapped to 0.
TEST_CASE("reconcile refuses a collector next_seq of 0") {
  Fixture f;
  auto ob = f.open();
  CHECK_FALSE(ob->reconcile(0, some_digest(1)).empty());
  CHECK(ob->head_seq() == 0);
}

TEST_CASE("an outbox owned by another agent id is moved aside") {
  Fixture f;
  {
    auto ob = f.open("agent-old");
    ob->append(bodies(1, 2));
  }
  auto ob = f.open("agent-new");
  CHECK(ob->head_seq() == 0);
  CHECK(ob->pending(kAll, kAll).empty());
  fs::path aside;  // named with the old id and a timestamp, so repeated moves never collide
  for (auto& e : fs::directory_iterator(f.tmp.path()))
    if (e.path().filename().string().rfind("outbox.orphaned-agent-old-", 0) == 0) aside = e.path();
  REQUIRE(fs::is_directory(aside));
  CHECK(segment_files(aside).size() == 1);
  CHECK(tocsin::common::read_file(f.opts.dir / "agent_id") == "agent-new\n");
  ob->append({body(1)});
  auto rs = ob->pending(kAll, kAll);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].agent_id == "agent-new");
  CHECK(rs[0].prev_hash == kGenesisHash);
}

TEST_CASE("the outbox directory is private to its owner") {
  Fixture f;
  auto ob = f.open();
  CHECK((fs::status(f.opts.dir).permissions() & fs::perms::all) == fs::perms::owner_all);
}
