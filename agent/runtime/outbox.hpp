// The agent's durable outbox: every result is chained, hashed and fsynced here before it is
// sent, and removed only after the collector acked it (at-least-once on the wire).
//
// Layout: <dir>/seg-<first seq>.log segments of records [u32 len][u64 seq][prev 32][hash 32]
// [body]; <dir>/acked holds the highest acked seq and its hash. A torn record at the tail (a crash during
// append) is detected by its hash and truncated on open. The byte cap applies to unacked
// records; past it new results are dropped *before* they get a seq (so the chain stays
// gap-free), counted, and reported by an "outbox_overflow" result as soon as an ack makes
// room for it.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/wire.hpp"

namespace tocsin::agent {

struct OutboxOptions {
  std::filesystem::path dir;
  std::uint64_t max_bytes = 64ull << 20;      // cap on unacked bytes
  std::uint64_t segment_bytes = 4ull << 20;   // roll to a new segment file past this
  bool read_only = false;  // inspect only (status): never truncate, create or append
};

struct OutboxStats {
  std::uint64_t head_seq = 0;   // last appended
  std::uint64_t acked_seq = 0;  // last acked by the collector
  std::uint64_t pending = 0;    // head - acked
  std::uint64_t pending_bytes = 0;
  std::uint64_t dropped_total = 0;   // ever dropped for the cap (persisted)
  std::uint64_t dropped_unreported = 0;
};

class Outbox {
 public:
  static std::unique_ptr<Outbox> open(const OutboxOptions& opts, const std::string& agent_id);
  ~Outbox();

  // Chains, hashes and durably appends the bodies (one fsync for all). Bodies that do not fit
  // under the cap are dropped and counted; returns how many were appended.
  std::size_t append(const std::vector<std::string>& bodies);
  // Unacked records in seq order, at most max_count / about max_bytes of body.
  std::vector<common::ResultRecord> pending(std::size_t max_count, std::size_t max_bytes) const;
  // The collector durably stored everything up to `seq`.
  void ack(std::uint64_t seq);
  // Reconciles with the collector's view after a (re)connect. Returns an error text when the
  // two chains disagree (the agent must not send then), else empty.
  std::string reconcile(std::uint64_t collector_next_seq, const common::Digest& collector_head);

  OutboxStats stats() const;
  std::uint64_t head_seq() const { return head_seq_; }
  const common::Digest& head_hash() const { return head_hash_; }

 private:
  Outbox(OutboxOptions opts, std::string agent_id);
  struct Index {
    std::uint64_t seq;
    std::uint64_t segment;  // first seq of its segment (key of segments_)
    std::uint64_t offset;
    std::uint32_t size;  // whole record
  };
  struct Segment {
    std::uint64_t first_seq;
    std::filesystem::path path;
    std::uint64_t size = 0;
    std::uint64_t last_seq = 0;
  };
  void load();
  void load_segment(Segment& seg, bool is_last);
  void open_current();
  void roll_segment();
  void write_acked();
  void drop_acked_segments();
  std::string overflow_body();
  common::ResultRecord read_record(const Index& ix) const;
  bool append_one(const std::string& body, std::string& buf);
  void report_overflow_if_room(std::string& buf);
  void flush(const std::string& buf);  // write + fdatasync, then persist drop counters

  OutboxOptions opts_;
  std::string agent_id_;
  std::map<std::uint64_t, Segment> segments_;  // by first seq, oldest first
  std::deque<Index> index_;        // unacked records
  int fd_ = -1;                    // current (last) segment, append-only
  std::uint64_t head_seq_ = 0;
  common::Digest head_hash_{};
  std::uint64_t acked_seq_ = 0;
  common::Digest acked_hash_{};
  std::uint64_t pending_bytes_ = 0;
  std::uint64_t dropped_total_ = 0;
  std::uint64_t dropped_unreported_ = 0;
  std::int64_t first_drop_ns_ = 0;
  std::int64_t last_drop_ns_ = 0;
  bool counters_dirty_ = false;
  std::uint64_t reporting_ = 0;  // drops covered by a report appended but not yet flushed
};

}  // namespace tocsin::agent
