#include "collector/store/store.hpp"

#include <pthread.h>

#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <nlohmann/json.hpp>

#include <cstring>

namespace tocsin::collector {
namespace {

using nlohmann::json;

// Column family indexes; the names are the on-disk contract.
enum Cf : int {
  kDefault,
  kAgents,
  kResults,
  kResultsByTime,
  kBatches,
  kSecurityEvents,
  kEnrollTokens,
  kApiTokens,
  kRuns,
  kRunsByTime,
  kRunsOpen,
  kAlerts,
  kOrphanAlerts,
  kDetectionEvents,
  kIncidents,
  kIncidentKeys,
  kIncidentEvents,
  kNotifications,
  kNotifyPending,
  kNotifyState,
  kAudit,
  kCommands,
  kCfCount
};
const char* const kCfNames[kCfCount] = {"default",         "agents",          "results",
                                        "results_by_time", "batches",         "security_events",
                                        "enroll_tokens",   "api_tokens",      "runs",
                                        "runs_by_time",    "runs_open",       "alerts",
                                        "orphan_alerts",   "detection_events", "incidents",
                                        "incident_keys",   "incident_events", "notifications",
                                        "notify_pending",  "notify_state",    "audit",
                                        "commands"};
int table_cf(Table t) {
  return kRuns + static_cast<int>(t);
}

std::string result_key(const std::string& agent, std::uint64_t seq) {
  std::string k = agent;
  k.push_back('\0');
  put_be64(k, seq);
  return k;
}

std::string hex(const common::Digest& d) {
  return common::to_hex(d);
}
common::Digest unhex32(const std::string& s) {
  common::Digest d{};
  if (!common::from_hex(s, d)) throw StoreError("corrupt digest in store: " + s);
  return d;
}

json to_json(const AgentRecord& a) {
  return {{"agent_id", a.agent_id},
          {"hostname", a.hostname},
          {"os", a.os},
          {"version", a.version},
          {"cert_fingerprint", a.cert_fingerprint},
          {"public_key", a.public_key_hex},
          {"enrolled_ns", a.enrolled_ns},
          {"last_seen_ns", a.last_seen_ns},
          {"next_seq", a.next_seq},
          {"head_hash", hex(a.head_hash)},
          {"clock_offset_ns", a.clock_offset_ns},
          {"clock_error_ns", a.clock_error_ns},
          {"revoked", a.revoked},
          {"last_address", a.last_address}};
}
AgentRecord agent_from_json(const json& j) {
  AgentRecord a;
  a.agent_id = j.value("agent_id", "");
  a.hostname = j.value("hostname", "");
  a.os = j.value("os", "");
  a.version = j.value("version", "");
  a.cert_fingerprint = j.value("cert_fingerprint", "");
  a.public_key_hex = j.value("public_key", "");
  a.enrolled_ns = j.value("enrolled_ns", std::int64_t{0});
  a.last_seen_ns = j.value("last_seen_ns", std::int64_t{0});
  a.next_seq = j.value("next_seq", std::uint64_t{1});
  a.head_hash = unhex32(j.value("head_hash", std::string(64, '0')));
  a.clock_offset_ns = j.value("clock_offset_ns", std::int64_t{0});
  a.clock_error_ns = j.value("clock_error_ns", std::int64_t{-1});
  a.revoked = j.value("revoked", false);
  a.last_address = j.value("last_address", std::string());
  return a;
}

std::string encode_result(const StoredResult& r) {
  std::string v;
  v.reserve(80 + r.record.body.size());
  put_be64(v, r.batch_head_seq);
  put_be64(v, static_cast<std::uint64_t>(r.received_ns));
  v.append(reinterpret_cast<const char*>(r.record.prev_hash.data()), 32);
  v.append(reinterpret_cast<const char*>(r.record.hash.data()), 32);
  v.append(r.record.body);
  return v;
}
StoredResult decode_result(const std::string& agent, std::uint64_t seq, const std::string& v) {
  if (v.size() < 80) throw StoreError("corrupt result record for " + agent);
  StoredResult r;
  r.record.agent_id = agent;
  r.record.seq = seq;
  r.batch_head_seq = get_be64(v.data());
  r.received_ns = static_cast<std::int64_t>(get_be64(v.data() + 8));
  std::memcpy(r.record.prev_hash.data(), v.data() + 16, 32);
  std::memcpy(r.record.hash.data(), v.data() + 48, 32);
  r.record.body = v.substr(80);
  return r;
}

// Peer-supplied text (hostnames, refusal details) may hold invalid UTF-8: never let that throw
// while recording it; the bytes are replaced, the record is kept.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void check(const rocksdb::Status& s, const std::string& what) {
  if (!s.ok()) throw StoreError(what + ": " + s.ToString());
}

}  // namespace

void put_be64(std::string& s, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint64_t get_be64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint64_t time_key(std::int64_t t) {
  return static_cast<std::uint64_t>(t) ^ (1ULL << 63);
}

void WriteSet::put(Table t, std::string key, std::string value) {
  ops_.push_back({table_cf(t), std::move(key), std::move(value)});
}
void WriteSet::erase(Table t, std::string key) {
  ops_.push_back({table_cf(t), std::move(key), {}, true});
}

std::string role_name(Role r) {
  switch (r) {
    case Role::viewer:
      return "viewer";
    case Role::approver:
      return "approver";
    case Role::operator_:
      return "operator";
    case Role::admin:
      return "admin";
  }
  return "viewer";
}

std::optional<Role> parse_role(const std::string& s) {
  if (s == "viewer") return Role::viewer;
  if (s == "approver") return Role::approver;
  if (s == "operator") return Role::operator_;
  if (s == "admin") return Role::admin;
  return std::nullopt;
}

void WriteSet::put_result(const StoredResult& r) {
  ops_.push_back({kResults, result_key(r.record.agent_id, r.record.seq), encode_result(r)});
  std::string tk;
  put_be64(tk, time_key(r.received_ns));
  tk += result_key(r.record.agent_id, r.record.seq);
  ops_.push_back({kResultsByTime, std::move(tk), {}});
}

void WriteSet::put_batch(const StoredBatch& b) {
  json j = {{"first_seq", b.first_seq},
            {"head_hash", hex(b.head_hash)},
            {"signature", common::to_hex(b.signature)},
            {"received_ns", b.received_ns}};
  ops_.push_back({kBatches, result_key(b.agent_id, b.head_seq), dump(j)});
}

void WriteSet::put_agent(const AgentRecord& a) {
  ops_.push_back({kAgents, a.agent_id, dump(to_json(a))});
}

void WriteSet::put_security_event(const SecurityEvent& e) {
  std::string k;
  put_be64(k, time_key(e.time_ns));
  k += common::random_id(8);  // several events in one nanosecond stay distinct
  json j = {{"time_ns", e.time_ns},
            {"kind", e.kind},
            {"agent_id", e.agent_id},
            {"remote", e.remote},
            {"detail", e.detail}};
  ops_.push_back({kSecurityEvents, std::move(k), dump(j)});
}

void WriteSet::put_enroll_token(const EnrollToken& t) {
  json j = {{"created_ns", t.created_ns},
            {"expires_ns", t.expires_ns},
            {"used_ns", t.used_ns},
            {"used_by", t.used_by},
            {"created_by", t.created_by}};
  ops_.push_back({kEnrollTokens, t.token_hash, dump(j)});
}

void WriteSet::put_api_token(const ApiToken& t) {
  json j = {{"name", t.name}, {"role", role_name(t.role)}, {"created_ns", t.created_ns}};
  ops_.push_back({kApiTokens, t.token_hash, dump(j)});
}

std::unique_ptr<Store> Store::open(const std::filesystem::path& dir) {
  std::unique_ptr<Store> s(new Store());
  rocksdb::DBOptions opts;
  opts.create_if_missing = true;
  opts.create_missing_column_families = true;
  opts.max_background_jobs = 2;
  opts.paranoid_checks = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  // Runs and alerts take a point lookup per result and per alert (is this marker a run? was
  // this alert seen?): default 64 MB memtables with a small bloom filter on the memtable, so
  // the answer "no" costs no walk, and bloom filters in their files. Every other column family
  // gets RocksDB's small-database profile (2 MB memtables, small files), the busy append-only
  // ones (results, batches, runs_open, detection_events...) included: measured on this 2-core
  // machine (docs/BENCHMARKS.md, session 6), 64 MB memtables for those raised closed-loop
  // ingest from ~68k to ~90k results/s but pushed ack p99 at 10,000 results/s from ~10 ms to
  // 42-128 ms and lowered alert intake; small memtables keep each flush short.
  auto cache = rocksdb::NewLRUCache(64 << 20);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  for (int cf = 0; cf < kCfCount; ++cf) {
    rocksdb::ColumnFamilyOptions cfo;
    if (cf == kRuns || cf == kAlerts) {
      cfo.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
      cfo.memtable_whole_key_filtering = true;
      cfo.memtable_prefix_bloom_size_ratio = 0.02;
    } else {
      cfo.OptimizeForSmallDb(&cache);
    }
    descs.emplace_back(kCfNames[cf], cfo);
  }
  rocksdb::DB* raw = nullptr;
  check(rocksdb::DB::Open(opts, dir.string(), descs, &s->cfs_, &raw),
        "cannot open database " + dir.string());
  s->db_.reset(raw);
  s->committer_ = std::thread([p = s.get()] {
    pthread_setname_np(pthread_self(), "store-commit");
    p->committer_loop();
  });
  return s;
}

Store::~Store() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (committer_.joinable()) committer_.join();
  for (auto* h : cfs_) db_->DestroyColumnFamilyHandle(h);  // handles before the DB
  cfs_.clear();
  if (db_) db_->Close();
}

void Store::commit(WriteSet ws) {
  rocksdb::WriteBatch wb;
  apply(wb, ws);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  check(db_->Write(wo, &wb), "synced write");
}

void Store::commit_async(WriteSet ws, std::function<void(std::string)> done) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back({std::move(ws), std::move(done)});
  }
  cv_.notify_one();
}

void Store::committer_loop() {
  for (;;) {
    std::deque<Pending> group;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      group.swap(queue_);
    }
    rocksdb::WriteBatch wb;
    for (auto& p : group) apply(wb, p.ws);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    auto st = db_->Write(wo, &wb);
    std::string err = st.ok() ? std::string() : "synced write failed: " + st.ToString();
    for (auto& p : group) p.done(err);
  }
}

void Store::apply(rocksdb::WriteBatch& wb, const WriteSet& ws) {
  for (auto& op : ws.ops_) {
    if (op.erase)
      wb.Delete(cfs_[op.cf], op.key);
    else
      wb.Put(cfs_[op.cf], op.key, op.value);
  }
}

std::optional<std::string> Store::get(Table t, const std::string& key) const {
  return get(table_cf(t), key);
}

void Store::scan(Table t, const std::string& from,
                 const std::function<bool(std::string_view, std::string_view)>& fn) const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cfs_[table_cf(t)]));
  for (it->Seek(from); it->Valid(); it->Next()) {
    auto k = it->key();
    auto v = it->value();
    if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
  }
  check(it->status(), "scan");
}

std::optional<std::string> Store::last_key(Table t) const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cfs_[table_cf(t)]));
  it->SeekToLast();
  if (!it->Valid()) return std::nullopt;
  return it->key().ToString();
}

std::optional<std::string> Store::get(int cf, const std::string& key) const {
  std::string v;
  auto st = db_->Get(rocksdb::ReadOptions(), cfs_[cf], key, &v);
  if (st.IsNotFound()) return std::nullopt;
  check(st, "read");
  return v;
}

std::optional<AgentRecord> Store::get_agent(const std::string& agent_id) const {
  auto v = get(kAgents, agent_id);
  if (!v) return std::nullopt;
  return agent_from_json(json::parse(*v));
}

std::vector<AgentRecord> Store::list_agents() const {
  std::vector<AgentRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kAgents]));
  for (it->SeekToFirst(); it->Valid(); it->Next())
    out.push_back(agent_from_json(json::parse(it->value().ToString())));
  return out;
}

std::optional<StoredResult> Store::get_result(const std::string& agent_id,
                                              std::uint64_t seq) const {
  auto v = get(kResults, result_key(agent_id, seq));
  if (!v) return std::nullopt;
  return decode_result(agent_id, seq, *v);
}

std::vector<StoredResult> Store::list_results(const std::string& agent_id, std::int64_t since_ns,
                                              std::size_t limit) const {
  std::vector<StoredResult> out;
  std::string start;
  put_be64(start, time_key(since_ns));
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cfs_[kResultsByTime]));
  for (it->Seek(start); it->Valid() && out.size() < limit; it->Next()) {
    auto k = it->key();
    if (k.size() < 8 + 1 + 8) continue;
    std::string agent(k.data() + 8, k.size() - 8 - 9);
    if (!agent_id.empty() && agent != agent_id) continue;
    std::uint64_t seq = get_be64(k.data() + k.size() - 8);
    if (auto r = get_result(agent, seq)) out.push_back(std::move(*r));
  }
  return out;
}

std::vector<StoredResult> Store::list_results_by_seq(const std::string& agent_id,
                                                     std::uint64_t from_seq,
                                                     std::size_t limit) const {
  std::vector<StoredResult> out;
  std::string prefix = agent_id;
  prefix.push_back('\0');
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kResults]));
  for (it->Seek(result_key(agent_id, from_seq));
       it->Valid() && it->key().starts_with(prefix) && out.size() < limit; it->Next()) {
    auto k = it->key();
    out.push_back(
        decode_result(agent_id, get_be64(k.data() + k.size() - 8), it->value().ToString()));
  }
  return out;
}

std::uint64_t Store::count_results(const std::string& agent_id) const {
  std::uint64_t n = 0;
  std::string prefix = agent_id;
  prefix.push_back('\0');
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cfs_[kResults]));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) ++n;
  return n;
}

std::optional<StoredBatch> Store::get_batch(const std::string& agent_id,
                                            std::uint64_t head_seq) const {
  auto v = get(kBatches, result_key(agent_id, head_seq));
  if (!v) return std::nullopt;
  auto j = json::parse(*v);
  StoredBatch b;
  b.agent_id = agent_id;
  b.head_seq = head_seq;
  b.first_seq = j.value("first_seq", std::uint64_t{0});
  b.head_hash = unhex32(j.value("head_hash", ""));
  if (!common::from_hex(j.value("signature", ""), b.signature))
    throw StoreError("corrupt batch signature for " + agent_id);
  b.received_ns = j.value("received_ns", std::int64_t{0});
  return b;
}

std::vector<SecurityEvent> Store::list_security_events(std::int64_t since_ns,
                                                       std::size_t limit) const {
  std::vector<SecurityEvent> out;
  std::string start;
  put_be64(start, time_key(since_ns));
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cfs_[kSecurityEvents]));
  for (it->Seek(start); it->Valid() && out.size() < limit; it->Next()) {
    auto j = json::parse(it->value().ToString());
    out.push_back({j.value("time_ns", std::int64_t{0}), j.value("kind", ""),
                   j.value("agent_id", ""), j.value("remote", ""), j.value("detail", "")});
  }
  return out;
}

std::optional<EnrollToken> Store::get_enroll_token(const std::string& token_hash) const {
  auto v = get(kEnrollTokens, token_hash);
  if (!v) return std::nullopt;
  auto j = json::parse(*v);
  return EnrollToken{token_hash,
                     j.value("created_ns", std::int64_t{0}),
                     j.value("expires_ns", std::int64_t{0}),
                     j.value("used_ns", std::int64_t{0}),
                     j.value("used_by", ""),
                     j.value("created_by", "")};
}

std::optional<ApiToken> Store::get_api_token(const std::string& token_hash) const {
  auto v = get(kApiTokens, token_hash);
  if (!v) return std::nullopt;
  auto j = json::parse(*v);
  return ApiToken{token_hash, j.value("name", ""),
                  parse_role(j.value("role", "viewer")).value_or(Role::viewer),
                  j.value("created_ns", std::int64_t{0})};
}

}  // namespace tocsin::collector
