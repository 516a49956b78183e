// tocsin-bench-ingest: many simulated agents over real mutual TLS against a running collector,
// plus the two local limits the collector's ingest sits against (Ed25519 verify, synced writes).
//
// The collector is the real binary in another process; this tool only speaks the wire protocol
// (common/wire.hpp) the way agent/runtime/uplink.cpp does: Hello, HelloAck, one clock exchange, then
// Batch frames of chained results with one signature each, one batch in flight per connection.
// With --rate the sends are paced open-loop per agent and latency is measured from the
// *scheduled* send time, so a stalled collector cannot hide its stall by slowing the senders
// (no coordinated omission).
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "agent/runtime/identity.hpp"
#include "collector/cli/api_client.hpp"
#include "common/clock.hpp"
#include "common/crypto.hpp"
#include "common/frame.hpp"
#include "common/net.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"

namespace fs = std::filesystem;
namespace asio = boost::asio;
using namespace tocsin;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Stream = asio::ssl::stream<tcp::socket>;

namespace {

struct Options {
  fs::path collector_dir;
  fs::path work_dir;
  std::uint16_t agent_port = 0;
  std::uint16_t api_port = 0;
  std::size_t agents = 200;
  std::size_t batch = 200;
  double duration_s = 20;
  double warmup_s = 2;
  double rate = 0;  // results/s offered in total; 0 = closed loop, as fast as acks come back
  int collector_pid = 0;
  double micro_s = 2;
  std::size_t group = 8;  // batches per synced write in the group-commit variant
  bool skip_micro = false;
  double wait_idle_s = 0;  // wait up to this long for the machine to be idle before measuring
  fs::path summary_file;
};

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double cpu_seconds_self() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// utime + stime of another process, in seconds; nullopt when it cannot be read.
std::optional<double> cpu_seconds_of(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(s.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {  // field 3 is the state letter
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds of each thread of a process, keyed by thread id: {name, seconds}.
std::map<int, std::pair<std::string, double>> thread_cpu_of(int pid) {
  std::map<int, std::pair<std::string, double>> out;
  if (pid <= 0) return out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    int tid = std::atoi(e.path().filename().c_str());
    std::ifstream f(e.path() / "stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto open = s.find('('), close = s.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::istringstream rest(s.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    out[tid] = {s.substr(open + 1, close - open - 1),
                (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK))};
  }
  return out;
}

// Bytes written to the block device that holds `path`, since boot (/proc/diskstats).
std::optional<double> device_written_bytes(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  std::ifstream f("/proc/diskstats");
  unsigned maj = 0, min = 0;
  std::string name, line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::vector<unsigned long long> v;
    in >> maj >> min >> name;
    unsigned long long x = 0;
    while (in >> x) v.push_back(x);
    if (maj == major(st.st_dev) && min == minor(st.st_dev) && v.size() >= 7)
      return v[6] * 512.0;  // sectors written
  }
  return std::nullopt;
}

// Bytes a process caused to be written to storage (/proc/PID/io write_bytes).
std::optional<double> process_written_bytes(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f("/proc/" + std::to_string(pid) + "/io");
  std::string key;
  unsigned long long v = 0;
  while (f >> key >> v)
    if (key == "write_bytes:") return static_cast<double>(v);
  return std::nullopt;
}

// Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat.
double machine_busy_seconds() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  f >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto idx = static_cast<std::size_t>(p / 100.0 * (sorted.size() - 1) + 0.5);
  return sorted[std::min(idx, sorted.size() - 1)];
}

// A tcp_connect result as agent/probes/tcp_connect.cpp writes it, with its evidence.
std::string realistic_body(std::size_t i) {
  common::ResultBody b;
  b.test_id = "lateral-smb-" + std::to_string(i % 5);
  b.probe = "tcp_connect";
  b.technique = "T1021.002";
  b.target = "10.20." + std::to_string(i % 250) + "." + std::to_string(7 + i % 200) + ":445";
  b.marker = "tcn-" + common::random_id(10);
  b.verdict = i % 3 == 0 ? "not_prevented" : "prevented";
  b.reason = i % 3 == 0 ? "connected" : "refused";
  b.expect_prevent = true;
  b.evidence = {{"address", b.target},
                {"detail", i % 3 == 0 ? "connected" : "Connection refused"},
                {"elapsed_ms", std::to_string(0.2 + (i % 17) * 0.31)},
                {"timeout_ms", "3000"}};
  b.started_ns = common::now_ns();
  b.finished_ns = b.started_ns + 1'500'000;
  b.clock_offset_ns = -12'345;
  b.clock_error_ns = 48'000;
  return common::encode_body(b);
}

// Every result names its own run, as a real agent's do (the collector refuses to correlate a
// reused marker and records it): overwrite the 10 marker characters of a pre-encoded body with
// the agent index and seq in base 36, which is unique per (agent, seq).
void set_marker(std::string& body, std::size_t agent_index, std::uint64_t seq) {
  auto pos = body.find("tcn-");
  if (pos == std::string::npos || pos + 14 > body.size()) return;
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::uint64_t v = seq + (static_cast<std::uint64_t>(agent_index) << 40);
  for (int i = 13; i >= 4; --i, v /= 36) body[pos + i] = kDigits[v % 36];
}

struct SimAgent {
  std::string agent_id;
  std::optional<common::Ed25519Key> key;
  std::unique_ptr<asio::ssl::context> tls;
  std::vector<std::string> bodies;  // pre-encoded; reused round-robin with a fresh marker
  std::size_t index = 0;            // which simulated agent (part of every marker)
  std::uint64_t next_seq = 1;       // next seq to send
  common::Digest head{};            // hash of next_seq - 1
  std::uint64_t acked_seq = 0;
};

// Enrolls an agent into work_dir/agents/N, or reuses an identity from an earlier phase.
SimAgent make_agent(const Options& o, const collector::ApiClient& api, std::size_t index) {
  auto dir = o.work_dir / "agents" / ("a" + std::to_string(index));
  std::string server = "127.0.0.1:" + std::to_string(o.agent_port);
  std::optional<agent::Identity> id;
  if (fs::exists(dir / "identity.yaml")) {
    auto existing = agent::Identity::load(dir);
    if (existing.server == server) id = existing;
  }
  if (!id) {
    auto token = api.post("/api/v1/enroll-tokens", {{"ttl", "1h"}}).at("token").get<std::string>();
    agent::EnrollOptions eo;
    eo.server = server;
    eo.token = token;
    eo.ca_file = o.collector_dir / "ca.pem";
    eo.state_dir = dir;
    eo.force = true;
    id = agent::enroll(eo);
  }
  SimAgent a;
  a.agent_id = id->agent_id;
  a.key = common::Ed25519Key::from_private_pem(common::read_file(id->key_file()));
  a.tls = std::make_unique<asio::ssl::context>(
      common::make_client_context({id->ca_file(), id->cert_file(), id->key_file()}));
  for (std::size_t i = 0; i < 32; ++i) a.bodies.push_back(realistic_body(index * 32 + i));
  a.index = index;
  return a;
}

// The frame of the next batch, chained on from a.head and signed like agent/runtime/uplink.cpp does.
std::string next_batch_frame(SimAgent& a, std::size_t n, std::uint64_t& last_seq) {
  common::Batch b;
  b.agent_id = a.agent_id;
  b.results.reserve(n);
  auto prev = a.head;
  for (std::size_t i = 0; i < n; ++i) {
    common::ResultRecord r;
    r.agent_id = a.agent_id;
    r.seq = a.next_seq + i;
    r.prev_hash = prev;
    r.body = a.bodies[r.seq % a.bodies.size()];
    set_marker(r.body, a.index, r.seq);
    r.hash = common::compute_result_hash(r.agent_id, r.seq, r.prev_hash, r.body);
    prev = r.hash;
    b.results.push_back(std::move(r));
  }
  const auto& last = b.results.back();
  b.signature = a.key->sign(common::batch_signing_bytes(a.agent_id, last.seq, last.hash));
  last_seq = last.seq;
  a.next_seq = last.seq + 1;
  a.head = last.hash;
  return common::frame_message(b);
}

struct LoadRun {
  const Options& opt;
  asio::io_context& io;
  std::vector<SimAgent>& agents;
  asio::steady_timer connected;  // a condition variable: expires once every agent is connected
  asio::steady_timer gate;       // expires when the clock starts: the senders' go signal
  std::size_t ready = 0, failed = 0;
  Clock::time_point start, measure_from, end;
  // Counted only for acks inside [measure_from, end].
  std::uint64_t window_results = 0, window_batches = 0;
  std::vector<double> latency_ms;              // batches scheduled (or sent) inside the window
  std::vector<double> send_lag_ms;             // rate mode: how late each send left after its slot
  std::map<long, std::size_t> slow_by_second;  // acks over 50 ms, by second of the window
  std::vector<std::string> errors;             // the first few, for the report
  std::size_t error_count = 0;
  double collector_cpu0 = 0, collector_cpu1 = 0, self_cpu0 = 0, self_cpu1 = 0;
  double machine0 = 0, machine1 = 0;
  std::map<int, std::pair<std::string, double>> threads0, threads1;
  std::optional<double> disk0, disk1, coll_io0, coll_io1;
  std::string window_start_utc;
  bool collector_cpu_known = false;

  LoadRun(const Options& o, asio::io_context& io, std::vector<SimAgent>& a)
      : opt(o),
        io(io),
        agents(a),
        connected(io, Clock::time_point::max()),
        gate(io, Clock::time_point::max()) {}

  void one_settled() {
    // Expired rather than cancelled, so a wait that starts after this returns at once too.
    if (ready + failed == agents.size()) connected.expires_at(Clock::time_point::min());
  }

  awaitable<common::Message> read_msg(Stream& s, common::Watchdog& wd) {
    wd.arm(std::chrono::seconds(30));
    auto payload = co_await common::read_frame(s);
    wd.disarm();
    auto m = common::decode_message(payload);
    if (auto* err = std::get_if<common::ErrorMsg>(&m))
      throw std::runtime_error("collector refused: " + err->code + ": " + err->message);
    co_return m;
  }

  awaitable<void> write_bytes(Stream& s, common::Watchdog& wd, std::string bytes) {
    wd.arm(std::chrono::seconds(30));
    co_await common::write_frame(s, std::move(bytes));
    wd.disarm();
  }

  awaitable<void> agent_loop(std::size_t index) {
    SimAgent& a = agents[index];
    auto ex = co_await asio::this_coro::executor;
    Stream s(ex, *a.tls);
    common::Watchdog wd(ex, [&s] {
      boost::system::error_code ignored;
      s.lowest_layer().close(ignored);
    });
    bool counted = false;
    try {
      wd.arm(std::chrono::seconds(30));
      tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), opt.agent_port);
      co_await s.lowest_layer().async_connect(ep, use_awaitable);
      s.lowest_layer().set_option(tcp::no_delay(true));
      common::set_expected_peer_name(s.native_handle(), "127.0.0.1");
      co_await s.async_handshake(Stream::client, use_awaitable);
      wd.disarm();
      common::Hello hello{a.agent_id, TOCSIN_VERSION, common::kProtocolVersion};
      co_await write_bytes(s, wd, common::frame_message(hello));
      auto hm = co_await read_msg(s, wd);
      auto* ack = std::get_if<common::HelloAck>(&hm);
      if (!ack)
        throw std::runtime_error("expected hello_ack, got " + common::message_type_name(hm));
      a.next_seq = ack->next_seq;
      a.head = ack->head_hash;
      a.acked_seq = ack->next_seq - 1;
      common::TimeReq tr{common::now_ns()};
      co_await write_bytes(s, wd, common::frame_message(tr));
      auto tm = co_await read_msg(s, wd);
      if (!std::holds_alternative<common::TimeResp>(tm))
        throw std::runtime_error("expected time_resp, got " + common::message_type_name(tm));
      ++ready;
      counted = true;
      one_settled();
      boost::system::error_code ec;
      co_await gate.async_wait(asio::redirect_error(use_awaitable, ec));
      co_await send_loop(s, wd, a, index);
    } catch (const std::exception& e) {
      if (++error_count <= 5) errors.push_back(a.agent_id + ": " + e.what());
      if (!counted) {
        ++failed;
        one_settled();
      }
    }
    boost::system::error_code ignored;
    s.lowest_layer().close(ignored);
  }

  awaitable<void> send_loop(Stream& s, common::Watchdog& wd, SimAgent& a, std::size_t index) {
    asio::steady_timer pace(s.get_executor());
    const bool paced = opt.rate > 0;
    // Each agent offers rate/N results/s in batches of `batch`; slots are staggered across
    // agents so the offered load is smooth rather than 200 simultaneous bursts.
    const auto interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
        paced ? opt.batch * static_cast<double>(agents.size()) / opt.rate : 0.0));
    auto slot = start + interval * static_cast<long>(index) / static_cast<long>(agents.size());
    for (;;) {
      auto now = Clock::now();
      if (paced) {
        if (slot >= end) break;
        if (now < slot) {
          pace.expires_at(slot);
          co_await pace.async_wait(use_awaitable);
        }
      } else if (now >= end) {
        break;
      }
      auto sent_at = Clock::now();
      auto reference = paced ? slot : sent_at;
      std::uint64_t last_seq = 0;
      co_await write_bytes(s, wd, next_batch_frame(a, opt.batch, last_seq));
      auto am = co_await read_msg(s, wd);
      auto acked_at = Clock::now();
      auto* ack = std::get_if<common::Ack>(&am);
      if (!ack) throw std::runtime_error("expected ack, got " + common::message_type_name(am));
      if (ack->seq != last_seq)
        throw std::runtime_error("collector acked seq " + std::to_string(ack->seq) + ", expected " +
                                 std::to_string(last_seq));
      a.acked_seq = ack->seq;
      if (acked_at >= measure_from && acked_at <= end) {
        window_results += opt.batch;
        ++window_batches;
      }
      if (reference >= measure_from && reference < end) {
        double ms = std::chrono::duration<double, std::milli>(acked_at - reference).count();
        latency_ms.push_back(ms);
        if (ms > 50) ++slow_by_second[static_cast<long>(seconds_between(measure_from, reference))];
        if (paced)
          send_lag_ms.push_back(std::chrono::duration<double, std::milli>(sent_at - slot).count());
      }
      if (paced) slot += interval;
    }
  }

  awaitable<void> sampler() {
    asio::steady_timer t(io);
    t.expires_at(measure_from);
    co_await t.async_wait(use_awaitable);
    self_cpu0 = cpu_seconds_self();
    window_start_utc = common::format_time(common::now_ns());
    machine0 = machine_busy_seconds();
    if (auto c = cpu_seconds_of(opt.collector_pid)) collector_cpu0 = *c;
    threads0 = thread_cpu_of(opt.collector_pid);
    disk0 = device_written_bytes(opt.work_dir);
    coll_io0 = process_written_bytes(opt.collector_pid);
    t.expires_at(end);
    co_await t.async_wait(use_awaitable);
    self_cpu1 = cpu_seconds_self();
    machine1 = machine_busy_seconds();
    threads1 = thread_cpu_of(opt.collector_pid);
    disk1 = device_written_bytes(opt.work_dir);
    coll_io1 = process_written_bytes(opt.collector_pid);
    if (auto c = cpu_seconds_of(opt.collector_pid)) {
      collector_cpu1 = *c;
      collector_cpu_known = true;
    }
  }
};

struct MicroResults {
  double verify_per_s = 0;
  double hash_per_s = 0;
  double synced_tiny_per_s = 0;          // one small put per synced write: the fixed cost of a sync
  double synced_writes_per_s = 0;        // one batch's worth of puts per synced write
  double synced_group_writes_per_s = 0;  // `group` batches per synced write
  double unsynced_writes_per_s = 0;      // one batch per write, sync=false: the CPU part
  double write_mb_per_s = 0;
};

template <class F>
double ops_per_second(double seconds, F&& op) {
  auto t0 = Clock::now();
  auto stop =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::uint64_t n = 0;
  Clock::time_point now;
  do {
    for (int i = 0; i < 16; ++i) op();
    n += 16;
    now = Clock::now();
  } while (now < stop);
  return n / seconds_between(t0, now);
}

std::string fake_agent_id(std::size_t i) {
  return "agt-bench" + std::to_string(1000 + i);
}

// A scratch RocksDB configured like collector/store/store.cpp: one column family per kind of record,
// each OptimizeForSmallDb, two background jobs. Fresh for each measurement so that one
// measurement's flush and compaction debt does not slow the next.
class ScratchDb {
 public:
  explicit ScratchDb(fs::path dir) : dir_(std::move(dir)) {
    fs::remove_all(dir_);
    rocksdb::DBOptions opts;
    opts.create_if_missing = true;
    opts.create_missing_column_families = true;
    opts.max_background_jobs = 2;
    std::vector<rocksdb::ColumnFamilyDescriptor> descs;
    for (const char* name : {"default", "results", "results_by_time", "batches", "agents"}) {
      rocksdb::ColumnFamilyOptions cfo;
      cfo.OptimizeForSmallDb();
      descs.emplace_back(name, cfo);
    }
    rocksdb::DB* raw = nullptr;
    auto st = rocksdb::DB::Open(opts, dir_.string(), descs, &cfs_, &raw);
    if (!st.ok()) throw std::runtime_error("scratch RocksDB: " + st.ToString());
    db_.reset(raw);
  }
  ~ScratchDb() {
    for (auto* h : cfs_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
    db_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write(rocksdb::WriteBatch& wb, bool sync) {
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Write(wo, &wb);
    if (!st.ok()) throw std::runtime_error("scratch RocksDB write: " + st.ToString());
  }
  // Mirrors collector/store/store.cpp WriteSet for one ingested batch: per result its record and a
  // time index entry, then the batch signature and the agent's head.
  void add_batch(rocksdb::WriteBatch& wb, const std::string& agent, std::uint64_t& seq,
                 std::size_t n, const std::string& value) {
    for (std::size_t i = 0; i < n; ++i, ++seq) {
      std::string k = agent + '\0' + std::to_string(seq);
      wb.Put(cfs_[1], k, value);
      wb.Put(cfs_[2], std::to_string(common::now_ns()) + k, "");
    }
    wb.Put(cfs_[3], agent + '\0' + std::to_string(seq), std::string(200, 'b'));
    wb.Put(cfs_[4], agent, std::string(400, 'a'));
  }
  void add_agent_only(rocksdb::WriteBatch& wb, const std::string& agent) {
    wb.Put(cfs_[4], agent, std::string(400, 'a'));
  }

 private:
  fs::path dir_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
  std::unique_ptr<rocksdb::DB> db_;
};

// Writes/s into a fresh scratch DB: `batches` result batches per write (0: one small put).
double rocksdb_rate(const Options& o, std::size_t batches, bool sync, double* mb_per_s = nullptr) {
  ScratchDb db(o.work_dir / "rocksdb-scratch");
  std::string value(80 + realistic_body(1).size(), 'v');  // 80 header bytes + body
  std::uint64_t seq = 1, bytes = 0;
  std::size_t agent_no = 0;
  auto t0 = Clock::now();
  double rate = ops_per_second(o.micro_s, [&] {
    rocksdb::WriteBatch wb;
    if (batches == 0) db.add_agent_only(wb, fake_agent_id(agent_no++ % 1000));
    for (std::size_t b = 0; b < batches; ++b)
      db.add_batch(wb, fake_agent_id(agent_no++ % 1000), seq, o.batch, value);
    bytes += wb.GetDataSize();
    db.write(wb, sync);
  });
  if (mb_per_s) *mb_per_s = bytes / 1e6 / seconds_between(t0, Clock::now());
  return rate;
}

MicroResults run_micro(const Options& o) {
  MicroResults m;
  auto key = common::Ed25519Key::generate();
  common::Digest head{};
  head.fill(0x5a);
  auto msg = common::batch_signing_bytes("agt-bench", 12345, head);
  auto sig = key.sign(msg);
  bool all_ok = true;
  m.verify_per_s = ops_per_second(o.micro_s, [&] { all_ok &= key.verify(msg, sig); });
  if (!all_ok) throw std::runtime_error("Ed25519 verify failed on a valid signature");

  auto body = realistic_body(1);
  std::uint64_t seq = 1;
  m.hash_per_s = ops_per_second(
      o.micro_s / 2, [&] { head = common::compute_result_hash("agt-bench", seq++, head, body); });

  m.synced_tiny_per_s = rocksdb_rate(o, 0, true);
  m.synced_writes_per_s = rocksdb_rate(o, 1, true, &m.write_mb_per_s);
  m.unsynced_writes_per_s = rocksdb_rate(o, 1, false);
  m.synced_group_writes_per_s = rocksdb_rate(o, o.group, true);
  return m;
}

void print_micro(const Options& o, const MicroResults& m, std::FILE* sum) {
  std::printf("\n== Local limits (measured in this run, single thread) ==\n");
  std::printf("Ed25519 verify (OpenSSL, common::Ed25519Key):  %9.0f verifies/s\n", m.verify_per_s);
  std::printf(
      "  -> ceiling from verification alone: %.0f results/s (one verify per %zu-result "
      "batch)\n",
      m.verify_per_s * o.batch, o.batch);
  std::printf("Result hash (compute_result_hash, %zu B body):  %9.0f results/s\n",
              realistic_body(1).size(), m.hash_per_s);
  double fixed_ms = 1e3 / m.synced_tiny_per_s;
  double one_ms = 1e3 / m.synced_writes_per_s;
  double group_ms = 1e3 / m.synced_group_writes_per_s;
  std::printf(
      "RocksDB synced write, one 400 B put:            %9.0f writes/s (%.2f ms each: the "
      "fixed cost of a sync)\n",
      m.synced_tiny_per_s, fixed_ms);
  std::printf(
      "RocksDB synced WriteBatch of 1 batch (%zu results): %6.0f writes/s (%.2f ms, %.1f "
      "MB/s)\n",
      o.batch, m.synced_writes_per_s, one_ms, m.write_mb_per_s);
  std::printf("  -> ceiling without group commit: %.0f results/s\n",
              m.synced_writes_per_s * o.batch);
  std::printf(
      "RocksDB WriteBatch of 1 batch, sync=false:        %6.0f writes/s (%.2f ms: the CPU "
      "part of a write)\n",
      m.unsynced_writes_per_s, 1e3 / m.unsynced_writes_per_s);
  std::printf("RocksDB synced WriteBatch of %zu batches:         %6.0f writes/s (%.2f ms)\n",
              o.group, m.synced_group_writes_per_s, group_ms);
  std::printf("  -> ceiling with group commit of %zu: %.0f results/s\n", o.group,
              m.synced_group_writes_per_s * o.group * o.batch);
  // Group commit (collector/store/store.cpp) puts every batch that queued during one sync into the
  // next one, so it amortises the fixed cost; the per-byte cost it cannot amortise.
  double per_batch_ms = std::max(0.0, (group_ms - fixed_ms) / o.group);
  std::printf(
      "  Group commit amortises only the fixed %.2f ms per sync; each batch still costs "
      "about %.2f ms\n  of WAL write, memtable insert and sync bandwidth, so the "
      "storage ceiling is about %.0f results/s\n  however many connections wait.\n",
      fixed_ms, per_batch_ms, per_batch_ms > 0 ? 1e3 / per_batch_ms * o.batch : 0.0);
  if (sum) {
    std::fprintf(sum,
                 "verify_per_s=%.0f\nhash_per_s=%.0f\nsynced_tiny_per_s=%.0f\n"
                 "synced_writes_per_s=%.0f\nsynced_group_writes_per_s=%.0f\ngroup=%zu\n"
                 "unsynced_writes_per_s=%.0f\nstorage_ceiling_rps=%.0f\n",
                 m.verify_per_s, m.hash_per_s, m.synced_tiny_per_s, m.synced_writes_per_s,
                 m.synced_group_writes_per_s, o.group, m.unsynced_writes_per_s,
                 per_batch_ms > 0 ? 1e3 / per_batch_ms * o.batch : 0.0);
  }
}

std::vector<SimAgent> enroll_all(const Options& o) {
  auto token = common::read_file(o.collector_dir / "admin.token", 4096);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  collector::ApiClient api("https://127.0.0.1:" + std::to_string(o.api_port), token,
                           o.collector_dir / "ca.pem");
  std::vector<SimAgent> agents;
  agents.reserve(o.agents);
  auto t0 = Clock::now();
  for (std::size_t i = 0; i < o.agents; ++i) agents.push_back(make_agent(o, api, i));
  std::printf("%zu agents ready (enrolled or reused) in %.1f s\n", agents.size(),
              seconds_between(t0, Clock::now()));
  return agents;
}

// Every ack promised durability: the collector's stored head must be at least what it acked.
std::string durability_check(const Options& o, const std::vector<SimAgent>& agents) {
  auto token = common::read_file(o.collector_dir / "admin.token", 4096);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  collector::ApiClient api("https://127.0.0.1:" + std::to_string(o.api_port), token,
                           o.collector_dir / "ca.pem");
  auto list = api.get("/api/v1/agents").at("agents");
  std::map<std::string, std::uint64_t> stored;
  for (auto& a : list)
    stored[a.at("agent_id").get<std::string>()] = a.at("results").get<std::uint64_t>();
  std::size_t bad = 0;
  for (auto& a : agents)
    if (stored[a.agent_id] < a.acked_seq) ++bad;
  return bad == 0 ? "ok" : std::to_string(bad) + " agents have acked results the collector lacks";
}

// Other work on a small machine skews every figure: wait (bounded) until the machine has been
// under 15% busy for 2 s. Our own connections are open but idle at this point.
awaitable<void> wait_until_idle(double max_s) {
  if (max_s <= 0) co_return;
  asio::steady_timer t(co_await asio::this_coro::executor);
  auto give_up = Clock::now() +
                 std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(max_s));
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  for (;;) {
    double b0 = machine_busy_seconds();
    t.expires_after(std::chrono::seconds(2));
    co_await t.async_wait(use_awaitable);
    double busy = (machine_busy_seconds() - b0) / 2.0 / cores;
    if (busy < 0.15) {
      std::printf("machine %.0f%% busy; starting\n", busy * 100);
      break;
    }
    if (Clock::now() >= give_up) {
      std::printf("machine still %.0f%% busy after waiting %.0f s; measuring anyway\n", busy * 100,
                  max_s);
      break;
    }
  }
  std::fflush(stdout);
}

int run(const Options& o) {
  fs::create_directories(o.work_dir);
  std::FILE* sum = o.summary_file.empty() ? nullptr : std::fopen(o.summary_file.c_str(), "w");
  if (!o.summary_file.empty() && !sum)
    throw std::runtime_error("cannot write " + o.summary_file.string());
  std::printf(
      "tocsin-bench-ingest: %zu agents x batch %zu, %s, %.0f s (+%.0f s warm-up "
      "excluded), collector 127.0.0.1:%u\n",
      o.agents, o.batch,
      o.rate > 0 ? ("offered " + std::to_string(static_cast<long>(o.rate)) + " results/s").c_str()
                 : "closed loop (as fast as acks return)",
      o.duration_s, o.warmup_s, o.agent_port);
  if (!o.skip_micro) print_micro(o, run_micro(o), sum);

  std::printf("\n== Ingest over TLS ==\n");
  auto agents = enroll_all(o);
  asio::io_context io(1);
  LoadRun run(o, io, agents);
  for (std::size_t i = 0; i < agents.size(); ++i)
    asio::co_spawn(io, run.agent_loop(i), asio::detached);
  // Start the clock only once every connection is up; handshakes are not what we measure.
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        boost::system::error_code ec;
        co_await run.connected.async_wait(asio::redirect_error(use_awaitable, ec));
        co_await wait_until_idle(o.wait_idle_s);
        run.start = Clock::now();
        auto d = [](double s) {
          return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
        };
        run.measure_from = run.start + d(o.warmup_s);
        run.end = run.measure_from + d(o.duration_s);
        std::printf("%zu connections up (%zu failed); measuring\n", run.ready, run.failed);
        std::fflush(stdout);
        run.gate.expires_at(Clock::time_point::min());
        co_await run.sampler();
      },
      asio::detached);
  io.run();

  double window = o.duration_s;
  auto lat = run.latency_ms;
  std::sort(lat.begin(), lat.end());
  auto lag = run.send_lag_ms;
  std::sort(lag.begin(), lag.end());
  double rps = run.window_results / window;
  std::printf("connections: %zu ok, %zu failed\n", run.ready, run.failed);
  for (auto& e : run.errors) std::printf("  error: %s\n", e.c_str());
  if (run.error_count > run.errors.size())
    std::printf("  ... %zu agent errors in all\n", run.error_count);
  std::printf("durably acked: %.0f results/s, %.1f batches/s (%" PRIu64 " results in %.0f s)\n",
              rps, run.window_batches / window, run.window_results, window);
  std::printf("ack latency%s: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%zu batches)\n",
              o.rate > 0 ? " from scheduled send" : " from send (closed loop)", percentile(lat, 50),
              percentile(lat, 99), lat.empty() ? 0 : lat.back(), lat.size());
  if (!run.slow_by_second.empty() && o.rate > 0) {
    std::printf("acks over 50 ms by second of the window (which began %s):",
                run.window_start_utc.c_str());
    for (auto& [sec, n] : run.slow_by_second) std::printf(" t=%lds:%zu", sec, n);
    std::printf("\n");
  }
  if (o.rate > 0)
    std::printf(
        "send lag behind schedule: p50 %.2f ms, p99 %.2f ms (includes waiting for the "
        "previous ack)\n",
        percentile(lag, 50), percentile(lag, 99));
  double self_cpu = run.self_cpu1 - run.self_cpu0;
  std::printf("CPU in the window: load generator %.2f cores", self_cpu / window);
  double coll_cpu = run.collector_cpu1 - run.collector_cpu0;
  if (run.collector_cpu_known)
    std::printf(", collector %.2f cores (%.1f us CPU per result)", coll_cpu / window,
                rps > 0 ? coll_cpu / run.window_results * 1e6 : 0.0);
  if (run.collector_cpu_known) {
    // Which collector thread is the bottleneck: one near 1.00 core is saturated.
    std::printf("\ncollector threads (cores):");
    for (auto& [tid, t1] : run.threads1) {
      auto it = run.threads0.find(tid);
      double d = t1.second - (it == run.threads0.end() ? 0.0 : it->second.second);
      if (d / window >= 0.01)
        std::printf(" %s%s %.2f", t1.first.c_str(),
                    tid == o.collector_pid ? "[main]" : ("[" + std::to_string(tid) + "]").c_str(),
                    d / window);
    }
  }
  double machine = (run.machine1 - run.machine0) / window;
  double others = machine - self_cpu / window - (run.collector_cpu_known ? coll_cpu / window : 0);
  std::printf("\nmachine busy %.2f of %ld cores; other processes %.2f cores%s\n", machine,
              sysconf(_SC_NPROCESSORS_ONLN), std::max(0.0, others),
              others > 0.25 ? " (WARNING: other work on this machine skews these figures)" : "");
  if (run.disk0 && run.disk1) {
    double disk_mb = (*run.disk1 - *run.disk0) / 1e6;
    double coll_mb = run.coll_io0 && run.coll_io1 ? (*run.coll_io1 - *run.coll_io0) / 1e6 : 0;
    // Others' writes share the disk and, on ext4, the journal commits our fsyncs wait for.
    std::printf(
        "disk writes in the window: %.0f MB to the data disk, %.0f MB of them by the "
        "collector%s\n",
        disk_mb, coll_mb,
        disk_mb - coll_mb > std::max(50.0, 0.2 * coll_mb)
            ? " (WARNING: others wrote to the same disk; fsync latency suffers)"
            : "");
  }
  std::string durable = durability_check(o, agents);
  std::printf("durability check via API (stored head >= acked seq for every agent): %s\n",
              durable.c_str());
  if (sum) {
    std::fprintf(sum,
                 "agents=%zu\nbatch=%zu\nrate=%.0f\nduration=%.0f\nconnections_ok=%zu\n"
                 "connections_failed=%zu\nresults_per_s=%.0f\nbatches_per_s=%.1f\n"
                 "p50_ms=%.2f\np99_ms=%.2f\nmax_ms=%.2f\nlatency_samples=%zu\n"
                 "loadgen_cores=%.2f\ncollector_cores=%.2f\nother_cores=%.2f\ndurable=%s\n",
                 o.agents, o.batch, o.rate, window, run.ready, run.failed, rps,
                 run.window_batches / window, percentile(lat, 50), percentile(lat, 99),
                 lat.empty() ? 0 : lat.back(), lat.size(), self_cpu / window,
                 run.collector_cpu_known ? coll_cpu / window : -1.0, std::max(0.0, others),
                 durable == "ok" ? "ok" : "FAILED");
    std::fclose(sum);
  }
  if (run.window_batches == 0) std::printf("FAILED: no batch was acknowledged in the window\n");
  return run.failed == 0 && run.error_count == 0 && run.window_batches > 0 && durable == "ok" ? 0
                                                                                              : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Load a running Tocsin collector with simulated agents over mutual TLS and "
      "report durable results/s and ack latency, next to the Ed25519 verify and "
      "synced RocksDB write rates of this machine."};
  Options o;
  app.add_option("--collector-dir", o.collector_dir,
                 "Data directory of an initialised, running collector (ca.pem, admin.token)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--agent-port", o.agent_port, "Collector agent port on 127.0.0.1")->required();
  app.add_option("--api-port", o.api_port, "Collector API port on 127.0.0.1")->required();
  app.add_option("--agents", o.agents, "Simulated agents, one TLS connection each")
      ->capture_default_str()
      ->check(CLI::Range(1, 20000));
  app.add_option("--batch", o.batch, "Results per batch (one signature each)")
      ->capture_default_str()
      ->check(CLI::Range(1, 2000));
  app.add_option("--duration", o.duration_s, "Measured seconds")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 600.0));
  app.add_option("--warmup", o.warmup_s, "Seconds of load before measuring")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 60.0));
  app.add_option("--rate", o.rate, "Results/s offered in total, paced per agent; 0 = closed loop")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--work-dir", o.work_dir, "Scratch directory (agent identities, scratch RocksDB)")
      ->required();
  app.add_option("--collector-pid", o.collector_pid,
                 "Collector PID, to report its CPU use during the window");
  app.add_option("--micro-seconds", o.micro_s, "Seconds per local micro-benchmark")
      ->capture_default_str();
  app.add_option("--group", o.group, "Batches per synced write in the group-commit variant")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_flag("--skip-micro", o.skip_micro, "Skip the Ed25519 and RocksDB micro-benchmarks");
  app.add_option("--wait-idle", o.wait_idle_s,
                 "Once connected, wait up to this many seconds for the machine to be idle "
                 "(<15% busy) before measuring")
      ->capture_default_str();
  app.add_option("--summary", o.summary_file, "Also write key=value figures to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tocsin-bench-ingest: %s\n", e.what());
    return 2;
  }
}
