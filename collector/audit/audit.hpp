// The tamper-evident audit log: who did what to the collector, as a signed hash chain.
//
// Entries live in Table::audit under 'e' + big-endian seq, gap-free from 1. Each stored value
// is the entry's canonical encoding followed by its SHA-256, and the encoding includes the
// previous entry's hash, so changing, removing or reordering any entry breaks the chain at a
// place verify() can name. A chain alone cannot see its own tail cut off, so every append also
// rewrites a head anchor (key 'a', which sorts before the entries: head seq, head hash,
// Ed25519 signature by the collector's audit key) in the same synced write. See docs/AUDIT.md for
// what is and is not detected.
//
// Appends are serialised by one mutex that is held across the synced write: the log's order
// is the order of durable writes. Other modules' locks may be held while appending (the
// incident engine's is); the audit mutex is always the innermost lock.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "collector/store/store.hpp"
#include "common/crypto.hpp"

namespace tocsin::collector {

// What a caller wants recorded; the log adds seq, time, prev_hash and hash.
// actor: an API token's name, "system", or an agent id. action: a snake_case verb phrase
// (enrollment, token_created, incident_acknowledged, command_approved, ...); actions starting
// with "audit_" are the log's own. subject: what it was done to (an agent id, "incident #7").
// detail: a JSON object; never a secret (a token hash prefix at most).
struct AuditRecord {
  std::string actor;
  std::string action;
  std::string subject;
  nlohmann::json detail = nlohmann::json::object();
};

struct AuditEntry {
  std::uint64_t seq = 0;
  std::int64_t time_ns = 0;
  std::string actor, action, subject;
  nlohmann::json detail = nlohmann::json::object();
  common::Digest prev_hash{};  // all zero for seq 1
  common::Digest hash{};
};

// The bytes the hash covers (version tag, seq, time, length-prefixed actor, action, subject,
// compact detail JSON, prev_hash); the stored value is these bytes followed by the hash.
std::string audit_canonical_bytes(const AuditEntry& e);
// One export line's object: seq, time (RFC 3339), actor, action, subject, detail, prev_hash,
// hash.
nlohmann::json audit_entry_json(const AuditEntry& e);

struct AuditProblem {
  std::uint64_t seq = 0;  // the entry concerned (the first of a range); 0: the log as a whole
  std::string kind;       // modified, removed, reordered, broken_link, undecodable, anchor,
                          // recorded (a problem the collector found at startup and logged)
  std::string reason;     // plain words, naming the seq
};

struct AuditVerifyResult {
  bool ok() const { return problems.empty(); }
  std::uint64_t entries_checked = 0;
  std::uint64_t head_seq = 0;          // the anchored head
  std::string key_fingerprint;         // hex SHA-256 of the audit public key
  std::vector<AuditProblem> problems;  // in log order; at most kMaxAuditProblems
  bool problems_truncated = false;
};
inline constexpr std::size_t kMaxAuditProblems = 100;
nlohmann::json audit_verify_json(const AuditVerifyResult& r);

// Walks the whole log and the anchor, checking against `key` (its public half is enough).
// The anchor is read first. `stop_at_anchor`: entries after the anchored seq are not looked at
// (a running collector keeps appending while it verifies; the anchor and its entry are always
// written together); false (offline): entries after the anchor are reported.
AuditVerifyResult verify_audit_log(const Store& store, const common::Ed25519Key& key,
                                   bool stop_at_anchor = false);

// The audit signing key, `audit.key` (Ed25519, PEM, 0600) in the data directory. Created by
// `init`; a data directory from before the audit log gets one at its first start (`created`).
common::Ed25519Key load_or_create_audit_key(const std::filesystem::path& file, bool* created);
inline std::filesystem::path audit_key_path(const std::filesystem::path& data_dir) {
  return data_dir / "audit.key";
}
std::string audit_key_fingerprint(const common::Ed25519Key& key);

class AuditLog {
 public:
  using Clock = std::function<std::int64_t()>;
  // Loads the head. An empty log gets its first entry (audit_log_started, naming the public
  // key). If the stored anchor disagrees with the stored entries (tail cut off, entries added
  // without the key, anchor missing or signed by another key) the collector does not paper
  // over it: it appends an audit_tamper_detected entry saying what it found — after a cut tail
  // the chain continues after the anchored seq, so verify() keeps naming the missing range.
  AuditLog(Store& store, common::Ed25519Key key, Clock now = {});
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // One entry in its own synced write. Throws StoreError, std::invalid_argument for an empty
  // actor or action, a reserved action or a detail that is not an object.
  void append(const std::string& actor, const std::string& action, const std::string& subject,
              nlohmann::json detail = nlohmann::json::object());
  // `ws` and the entries for `records` (in order) in one synced write: the change and its
  // audit entries are durable together or not at all. Throws like append(); on failure the
  // log is unchanged.
  void commit(WriteSet ws, const std::vector<AuditRecord>& records);

  // verify_audit_log up to the current head, with this log's key.
  AuditVerifyResult verify() const;
  // Entries with seq >= from_seq and time >= since_ns, in seq order, at most limit.
  std::vector<AuditEntry> list(std::uint64_t from_seq, std::int64_t since_ns,
                               std::size_t limit) const;
  std::uint64_t head_seq() const;

 private:
  void check_anchor_at_start();
  void stage(WriteSet& ws, const AuditRecord& r, std::uint64_t& seq, common::Digest& prev) const;
  void commit_locked(WriteSet ws, const std::vector<AuditRecord>& records);

  Store& store_;
  common::Ed25519Key key_;
  Clock now_;
  mutable std::mutex mu_;
  std::uint64_t next_seq_ = 1;
  common::Digest head_hash_{};
};

// Decodes a stored entry value; nullopt when it is not a well-formed entry. For tests and
// tools that read Table::audit directly.
std::optional<AuditEntry> decode_audit_entry(std::string_view value);
std::string audit_entry_key(std::uint64_t seq);
inline const std::string kAuditAnchorKey = "a";

}  // namespace tocsin::collector
