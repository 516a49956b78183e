#include "collector/ingest/chain.hpp"

namespace tocsin::collector {

using common::Batch;
using common::compute_result_hash;

std::string outcome_name(BatchOutcome o) {
  switch (o) {
    case BatchOutcome::accepted: return "accepted";
    case BatchOutcome::replay: return "replay";
    case BatchOutcome::empty: return "empty_batch";
    case BatchOutcome::agent_mismatch: return "agent_mismatch";
    case BatchOutcome::broken_chain: return "broken_chain";
    case BatchOutcome::altered_result: return "altered_result";
    case BatchOutcome::forged_signature: return "forged_signature";
    case BatchOutcome::seq_gap: return "seq_gap";
    case BatchOutcome::fork: return "fork";
  }
  return "unknown";
}

BatchCheck check_batch(const ChainHead& head, const std::string& cert_agent_id,
                       const Batch& batch, const common::Ed25519Key& agent_key,
                       const StoredHashLookup& stored_hash) {
  auto fail = [](BatchOutcome o, std::string detail) {
    BatchCheck c;
    c.outcome = o;
    c.detail = std::move(detail);
    return c;
  };
  if (batch.results.empty()) return fail(BatchOutcome::empty, "batch has no results");
  if (batch.agent_id != cert_agent_id)
    return fail(BatchOutcome::agent_mismatch, "batch names agent '" + batch.agent_id +
                                                  "' but the certificate is '" + cert_agent_id +
                                                  "'");
  const auto& rs = batch.results;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    const auto& r = rs[i];
    std::string at = "seq " + std::to_string(r.seq);
    if (r.agent_id != cert_agent_id)
      return fail(BatchOutcome::agent_mismatch, at + " names agent '" + r.agent_id + "'");
    if (r.seq == 0) return fail(BatchOutcome::broken_chain, "seq 0 is not valid (seqs start at 1)");
    if (i > 0 && (r.seq != rs[i - 1].seq + 1 || r.prev_hash != rs[i - 1].hash))
      return fail(BatchOutcome::broken_chain,
                  at + " does not follow seq " + std::to_string(rs[i - 1].seq) + " in the chain");
    if (compute_result_hash(r.agent_id, r.seq, r.prev_hash, r.body) != r.hash)
      return fail(BatchOutcome::altered_result, at + ": content does not match its hash");
  }
  const auto& last = rs.back();
  auto msg = common::batch_signing_bytes(cert_agent_id, last.seq, last.hash);
  if (!agent_key.verify(msg, batch.signature))
    return fail(BatchOutcome::forged_signature,
                "signature over head seq " + std::to_string(last.seq) +
                    " does not verify with the agent's enrolled key");
  if (rs.front().seq > head.next_seq)
    return fail(BatchOutcome::seq_gap, "expected seq " + std::to_string(head.next_seq) +
                                           ", got " + std::to_string(rs.front().seq) + " (" +
                                           std::to_string(rs.front().seq - head.next_seq) +
                                           " missing)");
  std::size_t i = 0;
  for (; i < rs.size() && rs[i].seq < head.next_seq; ++i) {
    auto stored = stored_hash(rs[i].seq);
    if (!stored || *stored != rs[i].hash)
      return fail(BatchOutcome::fork, "seq " + std::to_string(rs[i].seq) +
                                          " differs from the stored result with that seq");
  }
  if (i == rs.size())
    return fail(BatchOutcome::replay, "seqs " + std::to_string(rs.front().seq) + ".." +
                                          std::to_string(last.seq) +
                                          " were already stored with the same content");
  if (rs[i].prev_hash != head.head_hash)
    return fail(BatchOutcome::fork, "seq " + std::to_string(rs[i].seq) +
                                        " does not link to the stored chain head");
  BatchCheck ok;
  ok.first_fresh = i;
  ok.ack_seq = last.seq;
  return ok;
}

std::string verify_stored_batch(const Store& store, const std::string& agent_id,
                                std::uint64_t head_seq, const common::Ed25519Key& agent_key) {
  auto batch = store.get_batch(agent_id, head_seq);
  if (!batch) return "no batch signature stored for head seq " + std::to_string(head_seq);
  std::optional<common::Digest> prev;
  for (std::uint64_t s = batch->first_seq; s <= head_seq; ++s) {
    auto r = store.get_result(agent_id, s);
    if (!r) return "result seq " + std::to_string(s) + " is missing";
    const auto& rec = r->record;
    if (compute_result_hash(agent_id, s, rec.prev_hash, rec.body) != rec.hash)
      return "result seq " + std::to_string(s) + " was modified after it was stored";
    if (prev && rec.prev_hash != *prev)
      return "result seq " + std::to_string(s) + " does not link to seq " + std::to_string(s - 1);
    prev = rec.hash;
  }
  if (!prev || *prev != batch->head_hash) return "stored batch head hash does not match";
  auto msg = common::batch_signing_bytes(agent_id, head_seq, batch->head_hash);
  if (!agent_key.verify(msg, batch->signature)) return "batch signature does not verify";
  return {};
}

}  // namespace tocsin::collector
