// Agent <-> collector messages (msgpack maps keyed by name) and the result hash chain.
//
// Every message is a msgpack map with a "t" (type) key. Unknown keys are ignored and missing
// keys take defaults, so agents and collectors of different versions can talk. A result's
// hash covers its agent, seq, previous hash and its body *bytes* (not a re-encoding), so a
// collector that does not know a newer body field still verifies it and keeps it verbatim.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/crypto.hpp"
#include "common/frame.hpp"

namespace tocsin::common {

inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr Digest kGenesisHash{};  // prev_hash of seq 1

// What one probe run observed. Encoded as a msgpack map into ResultRecord::body.
struct ResultBody {
  std::string kind = "probe";  // "probe" | "outbox_overflow" | future kinds
  std::string test_id;
  std::string probe;
  std::string technique;  // ATT&CK id from the test definition, if any
  std::string target;
  std::string marker;
  std::string verdict;  // prevented | not_prevented | inconclusive | error | not_applicable
  std::string reason;   // reason code, e.g. connected, refused, timeout, dns_failure
  std::map<std::string, std::string> evidence;
  bool expect_prevent = false;
  std::int64_t alert_within_ns = 0;     // the test's alert SLA; 0 = no alert expected
  std::vector<std::string> detections;  // rule names the test expects to fire
  // The agent's frame time (common::TimeFrame: its wall clock at process start plus the
  // monotonic time since), not corrected; a wall-clock step does not move it. Older agents
  // sent their raw wall clock here, read the same way.
  std::int64_t started_ns = 0;
  std::int64_t finished_ns = 0;
  std::int64_t clock_offset_ns = 0;  // collector_time - frame_time at the last exchange
  std::int64_t clock_error_ns = -1;  // error bound of that offset; -1 = never synchronised
  // A step of the host's wall clock (against the monotonic clock) was seen since that exchange
  // with no exchange confirming the mapping yet, or during the run (after started_ns): the
  // bound includes the steps' sizes. Sent only when true (older bodies decode as false).
  bool clock_stepped = false;
  // Which frame the times are in (random per agent process, 16 hex digits) and how many steps
  // its agent had seen when it stamped them: an offset measured later applies to this result
  // only with the same frame and count. Sent only when clock_frame is set ("" and 0 from older
  // agents).
  std::string clock_frame;
  std::uint64_t clock_steps = 0;
};

std::string encode_body(const ResultBody& body);
ResultBody decode_body(std::string_view bytes);  // throws ProtocolError

struct ResultRecord {
  std::string agent_id;
  std::uint64_t seq = 0;
  Digest prev_hash{};
  Digest hash{};
  std::string body;  // msgpack bytes of a ResultBody
};

// SHA-256 over "tcn-result-v1", agent_id, seq, prev_hash and body (length-prefixed parts).
Digest compute_result_hash(std::string_view agent_id, std::uint64_t seq, const Digest& prev_hash,
                           std::string_view body);
// What the agent signs for a batch: binds agent, head seq and head hash.
Bytes batch_signing_bytes(std::string_view agent_id, std::uint64_t head_seq,
                          const Digest& head_hash);

struct Hello {
  std::string agent_id;
  std::string version;
  std::uint32_t protocol = kProtocolVersion;
};
struct HelloAck {
  std::uint64_t next_seq = 1;  // first seq the collector does not have yet
  Digest head_hash{};          // hash of next_seq - 1 (genesis if none)
};
struct TimeReq {
  std::int64_t t1 = 0;
};
struct TimeResp {
  std::int64_t t1 = 0, t2 = 0, t3 = 0;
};
struct Batch {
  std::string agent_id;
  std::vector<ResultRecord> results;  // consecutive seqs
  Signature signature{};              // over batch_signing_bytes(agent, last seq, last hash)
};
struct Ack {
  std::uint64_t seq = 0;  // everything up to and including seq is durably stored
};
struct ErrorMsg {
  std::string code;  // machine-readable: bad_token, forged_signature, seq_gap, ...
  std::string message;
};
struct EnrollReq {
  std::string token;
  std::string csr_pem;
  std::string hostname;
  std::string os;
  std::string version;
};
struct EnrollResp {
  std::string agent_id;
  std::string cert_pem;
  std::string command_key_pem;  // the collector's command public key, pinned by the agent
};

// A command from the collector (restart_service today), signed with the collector's command
// key over command_signing_bytes. The agent checks signature, agent, expiry, nonce (never twice),
// its own allowlist and the approvals before acting, and never runs a shell string.
struct Command {
  std::string id;  // "cmd-<n>", unique per collector
  std::string agent_id;
  std::string kind;    // restart_service
  std::string target;  // a name on the agent's allowlist, e.g. nginx.service
  std::string requester;
  std::vector<std::string> approvals;  // who approved, in order (never the requester)
  std::string nonce;                   // 32 hex characters, random
  std::int64_t issued_ns = 0, expires_ns = 0;  // collector clock
  std::string recheck_test;  // run this test once, recheck_after_ns after acting ("": none)
  std::int64_t recheck_after_ns = 0;
  Signature signature{};
};
// SHA-256 over "tcn-command-v1" and every field but the signature (length-prefixed).
Bytes command_signing_bytes(const Command& c);

// Agent -> collector when idle: any commands for me? Answered with Commands.
struct CommandPoll {};
struct Commands {
  std::vector<Command> commands;
  std::string command_key_pem;  // for agents enrolled before command keys existed
};

using Message = std::variant<Hello, HelloAck, TimeReq, TimeResp, Batch, Ack, ErrorMsg, EnrollReq,
                             EnrollResp, CommandPoll, Commands>;

std::string encode_message(const Message& m);  // msgpack payload (not framed)
Message decode_message(std::string_view payload);  // throws ProtocolError naming what was wrong
std::string message_type_name(const Message& m);

inline std::string frame_message(const Message& m) { return encode_frame(encode_message(m)); }

}  // namespace tocsin::common
