// Verification of signed, hash-chained result batches, on ingest and again when read back.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "collector/store/store.hpp"
#include "common/crypto.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

struct ChainHead {
  std::uint64_t next_seq = 1;
  common::Digest head_hash{};
};

enum class BatchOutcome {
  accepted,          // fresh results to store (possibly after some duplicates)
  replay,            // every result is already stored, identical: nothing new
  empty,             // no results
  agent_mismatch,    // a result or the batch names another agent than the certificate
  broken_chain,      // seqs not consecutive or prev_hash not linking inside the batch
  altered_result,    // a result's content does not hash to the hash it carries
  forged_signature,  // the batch signature does not verify with the agent's key
  seq_gap,           // first fresh seq is beyond the next expected one
  fork,              // same seq as a stored result but a different hash
};
std::string outcome_name(BatchOutcome o);

struct BatchCheck {
  BatchOutcome outcome = BatchOutcome::accepted;
  std::string detail;                // names the seq and what was wrong
  std::size_t first_fresh = 0;       // index into batch.results of the first new result
  std::uint64_t ack_seq = 0;         // last seq of the batch when accepted
};

// Looks up the hash of an already stored result (for duplicate and fork detection).
using StoredHashLookup = std::function<std::optional<common::Digest>(std::uint64_t seq)>;

BatchCheck check_batch(const ChainHead& head, const std::string& cert_agent_id,
                       const common::Batch& batch, const common::Ed25519Key& agent_key,
                       const StoredHashLookup& stored_hash);

// Re-verifies a stored batch from disk: every result's hash, the links between them, and the
// signature over the head. Returns an empty string when valid, else what is wrong.
std::string verify_stored_batch(const Store& store, const std::string& agent_id,
                                std::uint64_t head_seq, const common::Ed25519Key& agent_key);

}  // namespace tocsin::collector
