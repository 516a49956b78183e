// The collector's durable state in RocksDB: one column family per domain, synced writes.
//
// Results, agent chain heads and batch signatures of one ingest step go into one WriteBatch
// so a crash can never leave a result without its head update (or the reverse). A single
// committer thread merges the batches of all connections into one synced write (group
// commit) and only then completes them, so an ack always follows a durable write.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/crypto.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

struct StoreError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct AgentRecord {
  std::string agent_id;
  std::string hostname;
  std::string os;
  std::string version;
  std::string cert_fingerprint;  // SHA-256 of the issued certificate (hex)
  std::string public_key_hex;    // raw Ed25519 public key (hex)
  std::int64_t enrolled_ns = 0;
  std::int64_t last_seen_ns = 0;
  std::uint64_t next_seq = 1;  // first seq not yet stored
  common::Digest head_hash{};  // hash of next_seq - 1
  std::int64_t clock_offset_ns = 0;
  std::int64_t clock_error_ns = -1;
  bool revoked = false;
  std::string last_address;  // peer address of the latest authenticated session (host hint)
};

struct StoredResult {
  common::ResultRecord record;
  std::uint64_t batch_head_seq = 0;  // the batch whose signature covers this result
  std::int64_t received_ns = 0;      // collector clock
};

struct StoredBatch {
  std::string agent_id;
  std::uint64_t first_seq = 0;
  std::uint64_t head_seq = 0;
  common::Digest head_hash{};
  common::Signature signature{};
  std::int64_t received_ns = 0;
};

struct SecurityEvent {
  std::int64_t time_ns = 0;
  std::string kind;      // forged_signature, altered_result, replay, seq_gap, fork, unknown_agent,
                         // bad_certificate, bad_token, protocol_error, agent_mismatch, ...
  std::string agent_id;  // may be empty (unauthenticated peer)
  std::string remote;    // peer address
  std::string detail;    // human-readable, names what was wrong
};

struct EnrollToken {
  std::string token_hash;  // hex SHA-256; the token itself is never stored
  std::int64_t created_ns = 0;
  std::int64_t expires_ns = 0;
  std::int64_t used_ns = 0;  // 0 = unused
  std::string used_by;       // agent id
  std::string created_by;    // API token name
};

enum class Role { viewer = 0, approver = 1, operator_ = 2, admin = 3 };
std::string role_name(Role r);
std::optional<Role> parse_role(const std::string& s);

struct ApiToken {
  std::string token_hash;
  std::string name;
  Role role = Role::viewer;
  std::int64_t created_ns = 0;
};

// Column families whose record formats belong to other modules (the correlator, incidents);
// the store only keeps their bytes. Keys sort bytewise.
enum class Table {
  runs,
  runs_by_time,
  runs_open,
  alerts,
  orphan_alerts,
  detection_events,
  incidents,        // incident id (big-endian) -> record
  incident_keys,    // dedup key -> id of the incident that key currently belongs to
  incident_events,  // gap-free seq (big-endian) -> change (what notifiers consume)
  notifications,    // delivery id (big-endian) -> one message to one channel and its fate
  notify_pending,   // channel '\0' delivery id -> "" while the delivery is pending
  notify_state,     // the notifier's cursor into incident_events and its status-mail state
  audit,            // 'e' + seq (big-endian) -> hash-chained entry, 'h' -> signed head
  commands,         // command id (big-endian) -> request, approvals, signed command, outcome
};

// Big-endian keys sort in numeric order; signed times after flipping the sign bit.
void put_be64(std::string& s, std::uint64_t v);
std::uint64_t get_be64(const char* p);
std::uint64_t time_key(std::int64_t t);

// One atomic, synced unit of work. Build it, then Store::commit it.
class WriteSet {
 public:
  void put(Table t, std::string key, std::string value);
  void erase(Table t, std::string key);
  void put_result(const StoredResult& r);
  void put_batch(const StoredBatch& b);
  void put_agent(const AgentRecord& a);
  void put_security_event(const SecurityEvent& e);
  void put_enroll_token(const EnrollToken& t);
  void put_api_token(const ApiToken& t);
  bool empty() const { return ops_.empty(); }

 private:
  friend class Store;
  struct Op {
    int cf;
    std::string key;
    std::string value;
    bool erase = false;
  };
  std::vector<Op> ops_;
};

class Store {
 public:
  static std::unique_ptr<Store> open(const std::filesystem::path& dir);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Synchronous synced write (enrollment, admin actions). Throws StoreError.
  void commit(WriteSet ws);
  // Group commit: `done` runs on the committer thread after the synced write that includes
  // `ws` (empty string) or with an error message. Callers post back to their own executor.
  void commit_async(WriteSet ws, std::function<void(std::string error)> done);

  std::optional<AgentRecord> get_agent(const std::string& agent_id) const;
  std::vector<AgentRecord> list_agents() const;
  std::optional<StoredResult> get_result(const std::string& agent_id, std::uint64_t seq) const;
  // Results received at or after since_ns, optionally of one agent, newest last, at most limit.
  std::vector<StoredResult> list_results(const std::string& agent_id, std::int64_t since_ns,
                                         std::size_t limit) const;
  // One agent's results in seq order starting at from_seq (pagination without duplicates).
  std::vector<StoredResult> list_results_by_seq(const std::string& agent_id,
                                                std::uint64_t from_seq, std::size_t limit) const;
  std::uint64_t count_results(const std::string& agent_id) const;
  std::optional<StoredBatch> get_batch(const std::string& agent_id, std::uint64_t head_seq) const;
  std::vector<SecurityEvent> list_security_events(std::int64_t since_ns, std::size_t limit) const;
  std::optional<EnrollToken> get_enroll_token(const std::string& token_hash) const;
  std::optional<ApiToken> get_api_token(const std::string& token_hash) const;

  std::optional<std::string> get(Table t, const std::string& key) const;
  // Visits keys >= from in order while `fn` returns true.
  void scan(Table t, const std::string& from,
            const std::function<bool(std::string_view key, std::string_view value)>& fn) const;
  // The greatest key of a table, if any.
  std::optional<std::string> last_key(Table t) const;

 private:
  Store() = default;
  void committer_loop();
  void apply(rocksdb::WriteBatch& wb, const WriteSet& ws);
  std::optional<std::string> get(int cf, const std::string& key) const;

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
  struct Pending {
    WriteSet ws;
    std::function<void(std::string)> done;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  std::thread committer_;
};

}  // namespace tocsin::collector
