// The fleet: enrollment and API tokens, agents, their verified results and security events.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <queue>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "collector/api/handlers.hpp"
#include "collector/incidents/watchdog.hpp"
#include "collector/ingest/chain.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/wire.hpp"

namespace tocsin::collector::detail::api {

namespace {

// Verifies each stored batch once per request, however many of its results are listed.
class BatchVerifier {
 public:
  explicit BatchVerifier(const Store& store) : store_(store) {}

  struct Verdict {
    std::string error;  // empty: the batch verifies
    std::string signature_hex;
    std::uint64_t first_seq = 0;
  };

  const Verdict& check(const std::string& agent_id, std::uint64_t head_seq) {
    auto key = std::make_pair(agent_id, head_seq);
    auto it = batches_.find(key);
    if (it == batches_.end()) it = batches_.emplace(key, verify(agent_id, head_seq)).first;
    return it->second;
  }

 private:
  struct AgentKey {
    std::optional<common::Ed25519Key> key;
    std::string error;
  };

  Verdict verify(const std::string& agent_id, std::uint64_t head_seq) {
    Verdict v;
    if (auto batch = store_.get_batch(agent_id, head_seq)) {
      v.signature_hex = common::to_hex(batch->signature);
      v.first_seq = batch->first_seq;
    }
    const AgentKey& ak = agent_key(agent_id);
    if (!ak.key) {
      v.error = ak.error;
      return v;
    }
    v.error = verify_stored_batch(store_, agent_id, head_seq, *ak.key);
    return v;
  }

  const AgentKey& agent_key(const std::string& agent_id) {
    auto it = keys_.find(agent_id);
    if (it != keys_.end()) return it->second;
    AgentKey ak;
    auto agent = store_.get_agent(agent_id);
    std::array<std::uint8_t, 32> raw{};
    if (!agent) {
      ak.error = "agent '" + agent_id + "' is not enrolled; no key to verify with";
    } else if (!common::from_hex(agent->public_key_hex, raw)) {
      ak.error = "the agent's stored public key is not 32 bytes of hex";
    } else {
      try {
        ak.key.emplace(common::Ed25519Key::from_public_raw(raw));
      } catch (const std::exception& e) {
        ak.error = std::string("the agent's stored public key is unusable: ") + e.what();
      }
    }
    return keys_.emplace(agent_id, std::move(ak)).first->second;
  }

  const Store& store_;
  std::map<std::string, AgentKey> keys_;
  std::map<std::pair<std::string, std::uint64_t>, Verdict> batches_;
};

json body_json(const common::ResultBody& b) {
  json j = {{"kind", b.kind},
            {"test_id", b.test_id},
            {"probe", b.probe},
            {"target", b.target},
            {"marker", b.marker},
            {"verdict", b.verdict},
            {"reason", b.reason},
            {"evidence", b.evidence},
            {"expect_prevent", b.expect_prevent},
            {"started_at", time_or_null(b.started_ns)},
            {"finished_at", time_or_null(b.finished_ns)},
            {"clock_offset_ms", ns_to_ms(b.clock_offset_ns)},
            {"clock_error_ms", error_ms_or_null(b.clock_error_ns)}};
  // Agent-supplied numbers: an absurd offset must not overflow, it shows as null instead.
  std::int64_t corrected = 0;
  j["action_time_corrected"] =
      b.started_ns == 0 || __builtin_add_overflow(b.started_ns, b.clock_offset_ns, &corrected)
          ? json(nullptr)
          : json(common::format_time(corrected));
  return j;
}

json result_json(const StoredResult& r, BatchVerifier& verifier) {
  const auto& rec = r.record;
  json j = {{"agent_id", rec.agent_id},
            {"seq", rec.seq},
            {"received_at", common::format_time(r.received_ns)},
            {"hash", common::to_hex(rec.hash)},
            {"batch_head_seq", r.batch_head_seq}};
  std::string error;
  try {
    j.update(body_json(common::decode_body(rec.body)));
  } catch (const std::exception& e) {
    error = std::string("result body cannot be decoded: ") + e.what();
  }
  const auto& batch = verifier.check(rec.agent_id, r.batch_head_seq);
  j["signature"] = batch.signature_hex;
  std::string batch_error = batch.error;
  if (batch_error.empty() && (rec.seq < batch.first_seq || rec.seq > r.batch_head_seq))
    batch_error = "seq " + std::to_string(rec.seq) +
                  " is not covered by the batch signed at head seq " +
                  std::to_string(r.batch_head_seq);
  if (!batch_error.empty()) error = error.empty() ? batch_error : batch_error + "; " + error;
  j["verified"] = error.empty();
  if (!error.empty()) j["verify_error"] = error;
  return j;
}

// The newest `limit` results received at or after since_ns, newest first, and how many there
// are in all. An agent's results are stored in seq order as they arrive, so within one agent
// the receive time grows with seq: a binary search finds where the window starts and its size
// is a subtraction. The newest rows come from merging each agent's tail, read backwards in
// chunks, so a request reads about `limit` results rather than the whole window.
struct NewestResults {
  std::vector<StoredResult> rows;
  std::uint64_t total = 0;
};

NewestResults newest_results(const Store& store, const std::vector<AgentRecord>& agents,
                             std::int64_t since_ns, std::size_t limit) {
  struct Tail {
    std::string agent;
    std::uint64_t first = 1, end = 1;  // [first, end): seqs in the window not yet read
    std::vector<StoredResult> buf;     // read but not taken, oldest first
  };
  std::vector<Tail> tails;
  NewestResults out;
  for (const auto& a : agents) {
    Tail t{a.agent_id, 1, a.next_seq, {}};
    std::uint64_t lo = 1, hi = a.next_seq;
    while (lo < hi) {  // the first seq received at or after since_ns
      auto mid = lo + (hi - lo) / 2;
      auto r = store.list_results_by_seq(a.agent_id, mid, 1);
      if (r.empty() || r[0].record.seq >= hi || r[0].received_ns >= since_ns)
        hi = mid;
      else
        lo = r[0].record.seq + 1;
    }
    t.first = lo;
    if (t.end > t.first) {
      out.total += t.end - t.first;
      tails.push_back(std::move(t));
    }
  }
  std::size_t chunk = std::clamp<std::size_t>(limit / std::max<std::size_t>(tails.size(), 1) + 1,
                                              16, std::max<std::size_t>(limit, 16));
  auto refill = [&](Tail& t) {
    while (t.buf.empty() && t.end > t.first) {
      auto from = t.end - std::min<std::uint64_t>(chunk, t.end - t.first);
      t.buf = store.list_results_by_seq(t.agent, from, t.end - from);
      t.end = from;
    }
  };
  auto newest_of = [&](std::size_t i) {
    return std::make_pair(tails[i].buf.back().received_ns, tails[i].buf.back().record.seq);
  };
  auto older = [&](std::size_t a, std::size_t b) { return newest_of(a) < newest_of(b); };
  std::priority_queue<std::size_t, std::vector<std::size_t>, decltype(older)> heap(older);
  for (std::size_t i = 0; i < tails.size(); ++i) {
    refill(tails[i]);
    if (!tails[i].buf.empty()) heap.push(i);
  }
  while (out.rows.size() < limit && !heap.empty()) {
    auto i = heap.top();
    heap.pop();
    out.rows.push_back(std::move(tails[i].buf.back()));
    tails[i].buf.pop_back();
    refill(tails[i]);
    if (!tails[i].buf.empty()) heap.push(i);
  }
  return out;
}

}  // namespace

json post_enroll_token(State& st, const Request& req, const ApiToken& who) {
  json body = parse_body_object(req, {"ttl"});
  std::string ttl_text = string_field(body, "ttl").value_or("1h");
  try {
    auto ttl = std::chrono::duration_cast<std::chrono::seconds>(common::parse_duration(ttl_text));
    auto created = st.registry.create_enroll_token(ttl, who.name);
    spdlog::info("api: '{}' created an enrollment token valid until {}", who.name,
                 common::format_time(created.expires_ns));
    return {{"token", created.token}, {"expires_at", common::format_time(created.expires_ns)}};
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, std::string("invalid 'ttl': ") + e.what());
  }
}

json post_api_token(State& st, const Request& req, const ApiToken& who) {
  json body = parse_body_object(req, {"name", "role"});
  auto name = string_field(body, "name");
  auto role_text = string_field(body, "role");
  if (!name || name->empty()) throw HttpError(http::status::bad_request, "'name' is required");
  if (name->size() > 128)
    throw HttpError(http::status::bad_request, "'name' is longer than 128 characters");
  // The collector's own actors: a person named like them could pass for them in the audit log
  // (and a "watchdog" token's requests would be taken for the watchdog's own).
  if (*name == "system" || *name == Watchdog::kRequester)
    throw HttpError(http::status::bad_request, "'" + *name + "' is reserved for the collector itself");
  if (!role_text) throw HttpError(http::status::bad_request, "'role' is required");
  auto role = parse_role(*role_text);
  if (!role)
    throw HttpError(http::status::bad_request,
                    "unknown role '" + *role_text + "' (use viewer, approver, operator, admin)");
  std::string token;
  try {
    token = st.registry.create_api_token(*name, *role, who.name);
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, e.what());
  }
  spdlog::info("api: '{}' created API token '{}' with role {}", who.name, *name, role_name(*role));
  return {{"token", token}, {"name", *name}, {"role", role_name(*role)}};
}

json get_agents(State& st, const Params&) {
  json list = json::array();
  for (const auto& a : st.store.list_agents()) {
    list.push_back({{"agent_id", a.agent_id},
                    {"hostname", a.hostname},
                    {"os", a.os},
                    {"version", a.version},
                    {"enrolled_at", time_or_null(a.enrolled_ns)},
                    {"last_seen", time_or_null(a.last_seen_ns)},
                    {"results", a.next_seq - 1},
                    {"clock_offset_ms", ns_to_ms(a.clock_offset_ns)},
                    {"clock_error_ms", error_ms_or_null(a.clock_error_ns)},
                    {"clock_synced", a.clock_error_ns >= 0},
                    {"revoked", a.revoked}});
  }
  return {{"agents", std::move(list)}};
}

json get_results(State& st, const Params& p) {
  std::string agent = param(p, "agent", "");
  std::int64_t since = since_param(p, "24h");
  std::size_t limit = limit_param(p);
  if (!agent.empty() && !st.store.get_agent(agent))
    throw HttpError(http::status::not_found, "no agent '" + agent + "' is enrolled");
  BatchVerifier verifier(st.store);
  json list = json::array();
  if (p.count("from_seq")) {
    // Seq order for one agent: pages never overlap or skip, whatever the arrival times.
    if (agent.empty()) throw HttpError(http::status::bad_request, "'from_seq' needs 'agent'");
    auto text = param(p, "from_seq", "1");
    if (text.empty() || text.size() > 19 ||
        text.find_first_not_of("0123456789") != std::string::npos)
      throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
    for (const auto& r : st.store.list_results_by_seq(agent, std::stoull(text), limit))
      list.push_back(result_json(r, verifier));
    return {{"results", std::move(list)}};
  }
  std::vector<AgentRecord> agents;
  if (agent.empty()) agents = st.store.list_agents();
  else agents.push_back(*st.store.get_agent(agent));
  auto newest = newest_results(st.store, agents, since, limit);
  for (const auto& r : newest.rows) list.push_back(result_json(r, verifier));
  return {{"results", std::move(list)}, {"total", newest.total}};
}

json get_security_events(State& st, const Params& p) {
  std::int64_t since = since_param(p, "7d");
  std::size_t limit = limit_param(p);
  json list = json::array();
  for (const auto& e : st.store.list_security_events(since, limit))
    list.push_back({{"time", common::format_time(e.time_ns)},
                    {"kind", e.kind},
                    {"agent_id", e.agent_id},
                    {"remote", e.remote},
                    {"detail", e.detail}});
  return {{"events", std::move(list)}};
}

}  // namespace tocsin::collector::detail::api
