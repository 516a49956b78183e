#include "common/wire.hpp"

#include <msgpack.hpp>

#include <cstring>
#include <type_traits>

namespace tocsin::common {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

// Limits applied to every unpack: bound the work a hostile peer can cause before validation.
msgpack::unpack_limit wire_limits() {
  return msgpack::unpack_limit(/*array=*/8192, /*map=*/256, /*str=*/kMaxFrameBytes,
                               /*bin=*/kMaxFrameBytes, /*ext=*/0, /*depth=*/8);
}

void pack_bin(Packer& p, const void* data, std::size_t n) {
  p.pack_bin(static_cast<std::uint32_t>(n));
  p.pack_bin_body(static_cast<const char*>(data), static_cast<std::uint32_t>(n));
}
void key(Packer& p, std::string_view k) { p.pack(k); }

// Read-only view of a msgpack map: typed lookups with defaults; wrong types are errors.
class Fields {
 public:
  Fields(const msgpack::object& o, std::string_view what) : what_(what) {
    if (o.type != msgpack::type::MAP) throw ProtocolError(std::string(what) + " is not a map");
    map_ = &o.via.map;
  }
  const msgpack::object* find(std::string_view k) const {
    for (std::uint32_t i = 0; i < map_->size; ++i) {
      const auto& kv = map_->ptr[i];
      if (kv.key.type == msgpack::type::STR &&
          std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == k)
        return &kv.val;
    }
    return nullptr;
  }
  std::string str(std::string_view k, std::string def = {}) const {
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return def;
    if (v->type == msgpack::type::STR) return std::string(v->via.str.ptr, v->via.str.size);
    if (v->type == msgpack::type::BIN) return std::string(v->via.bin.ptr, v->via.bin.size);
    throw bad(k, "a string");
  }
  std::int64_t i64(std::string_view k, std::int64_t def = 0) const {
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return def;
    if (v->type == msgpack::type::POSITIVE_INTEGER) {
      if (v->via.u64 > static_cast<std::uint64_t>(INT64_MAX)) throw bad(k, "an int64");
      return static_cast<std::int64_t>(v->via.u64);
    }
    if (v->type == msgpack::type::NEGATIVE_INTEGER) return v->via.i64;
    throw bad(k, "an integer");
  }
  std::uint64_t u64(std::string_view k, std::uint64_t def = 0) const {
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return def;
    if (v->type == msgpack::type::POSITIVE_INTEGER) return v->via.u64;
    throw bad(k, "an unsigned integer");
  }
  bool boolean(std::string_view k, bool def = false) const {
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return def;
    if (v->type == msgpack::type::BOOLEAN) return v->via.boolean;
    throw bad(k, "a boolean");
  }
  template <std::size_t N>
  std::array<std::uint8_t, N> fixed(std::string_view k) const {
    std::array<std::uint8_t, N> out{};
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return out;
    if (v->type != msgpack::type::BIN || v->via.bin.size != N)
      throw bad(k, std::to_string(N) + " bytes of binary");
    std::memcpy(out.data(), v->via.bin.ptr, N);
    return out;
  }
  std::map<std::string, std::string> str_map(std::string_view k) const {
    std::map<std::string, std::string> out;
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return out;
    Fields m(*v, k);
    for (std::uint32_t i = 0; i < m.map_->size; ++i) {
      const auto& kv = m.map_->ptr[i];
      if (kv.key.type != msgpack::type::STR || kv.val.type != msgpack::type::STR)
        throw bad(k, "a map of strings");
      out.emplace(std::string(kv.key.via.str.ptr, kv.key.via.str.size),
                  std::string(kv.val.via.str.ptr, kv.val.via.str.size));
    }
    return out;
  }
  std::vector<std::string> str_list(std::string_view k) const {
    std::vector<std::string> out;
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return out;
    if (v->type != msgpack::type::ARRAY) throw bad(k, "a list of strings");
    for (std::uint32_t i = 0; i < v->via.array.size; ++i) {
      const auto& e = v->via.array.ptr[i];
      if (e.type != msgpack::type::STR) throw bad(k, "a list of strings");
      out.emplace_back(e.via.str.ptr, e.via.str.size);
    }
    return out;
  }
  const msgpack::object_array* array(std::string_view k) const {
    auto* v = find(k);
    if (!v || v->type == msgpack::type::NIL) return nullptr;
    if (v->type != msgpack::type::ARRAY) throw bad(k, "an array");
    return &v->via.array;
  }

 private:
  ProtocolError bad(std::string_view k, const std::string& expected) const {
    return ProtocolError(std::string(what_) + " field '" + std::string(k) + "' is not " +
                         expected);
  }
  const msgpack::object_map* map_ = nullptr;
  std::string_view what_;
};

msgpack::object_handle unpack_checked(std::string_view bytes, std::string_view what) {
  try {
    std::size_t off = 0;
    auto oh = msgpack::unpack(bytes.data(), bytes.size(), off, nullptr, nullptr, wire_limits());
    if (off != bytes.size())
      throw ProtocolError(std::string(what) + " has " + std::to_string(bytes.size() - off) +
                          " trailing bytes");
    return oh;
  } catch (const ProtocolError&) {
    throw;
  } catch (const std::exception& e) {
    throw ProtocolError("malformed msgpack in " + std::string(what) + ": " + e.what());
  }
}

void pack_record(Packer& p, const ResultRecord& r) {
  p.pack_map(5);
  key(p, "agent_id"), p.pack(r.agent_id);
  key(p, "seq"), p.pack(r.seq);
  key(p, "prev_hash"), pack_bin(p, r.prev_hash.data(), r.prev_hash.size());
  key(p, "hash"), pack_bin(p, r.hash.data(), r.hash.size());
  key(p, "body"), pack_bin(p, r.body.data(), r.body.size());
}

ResultRecord unpack_record(const msgpack::object& o) {
  Fields f(o, "result");
  ResultRecord r;
  r.agent_id = f.str("agent_id");
  r.seq = f.u64("seq");
  r.prev_hash = f.fixed<32>("prev_hash");
  r.hash = f.fixed<32>("hash");
  r.body = f.str("body");
  return r;
}

void pack_command(Packer& p, const Command& c) {
  p.pack_map(12);
  key(p, "id"), p.pack(c.id);
  key(p, "agent_id"), p.pack(c.agent_id);
  key(p, "kind"), p.pack(c.kind);
  key(p, "target"), p.pack(c.target);
  key(p, "requester"), p.pack(c.requester);
  key(p, "approvals"), p.pack(c.approvals);
  key(p, "nonce"), p.pack(c.nonce);
  key(p, "issued_ns"), p.pack(c.issued_ns);
  key(p, "expires_ns"), p.pack(c.expires_ns);
  key(p, "recheck_test"), p.pack(c.recheck_test);
  key(p, "recheck_after_ns"), p.pack(c.recheck_after_ns);
  key(p, "sig"), pack_bin(p, c.signature.data(), c.signature.size());
}

Command unpack_command(const msgpack::object& o) {
  Fields f(o, "command");
  Command c;
  c.id = f.str("id");
  c.agent_id = f.str("agent_id");
  c.kind = f.str("kind");
  c.target = f.str("target");
  c.requester = f.str("requester");
  c.approvals = f.str_list("approvals");
  c.nonce = f.str("nonce");
  c.issued_ns = f.i64("issued_ns");
  c.expires_ns = f.i64("expires_ns");
  c.recheck_test = f.str("recheck_test");
  c.recheck_after_ns = f.i64("recheck_after_ns");
  c.signature = f.fixed<64>("sig");
  return c;
}

struct Encoder {
  Packer& p;
  void operator()(const Hello& m) {
    p.pack_map(4);
    key(p, "t"), p.pack("hello");
    key(p, "agent_id"), p.pack(m.agent_id);
    key(p, "version"), p.pack(m.version);
    key(p, "protocol"), p.pack(m.protocol);
  }
  void operator()(const HelloAck& m) {
    p.pack_map(3);
    key(p, "t"), p.pack("hello_ack");
    key(p, "next_seq"), p.pack(m.next_seq);
    key(p, "head_hash"), pack_bin(p, m.head_hash.data(), m.head_hash.size());
  }
  void operator()(const TimeReq& m) {
    p.pack_map(2);
    key(p, "t"), p.pack("time_req");
    key(p, "t1"), p.pack(m.t1);
  }
  void operator()(const TimeResp& m) {
    p.pack_map(4);
    key(p, "t"), p.pack("time_resp");
    key(p, "t1"), p.pack(m.t1);
    key(p, "t2"), p.pack(m.t2);
    key(p, "t3"), p.pack(m.t3);
  }
  void operator()(const Batch& m) {
    p.pack_map(4);
    key(p, "t"), p.pack("batch");
    key(p, "agent_id"), p.pack(m.agent_id);
    key(p, "results"), p.pack_array(static_cast<std::uint32_t>(m.results.size()));
    for (const auto& r : m.results) pack_record(p, r);
    key(p, "sig"), pack_bin(p, m.signature.data(), m.signature.size());
  }
  void operator()(const Ack& m) {
    p.pack_map(2);
    key(p, "t"), p.pack("ack");
    key(p, "seq"), p.pack(m.seq);
  }
  void operator()(const ErrorMsg& m) {
    p.pack_map(3);
    key(p, "t"), p.pack("error");
    key(p, "code"), p.pack(m.code);
    key(p, "message"), p.pack(m.message);
  }
  void operator()(const EnrollReq& m) {
    p.pack_map(6);
    key(p, "t"), p.pack("enroll");
    key(p, "token"), p.pack(m.token);
    key(p, "csr"), p.pack(m.csr_pem);
    key(p, "hostname"), p.pack(m.hostname);
    key(p, "os"), p.pack(m.os);
    key(p, "version"), p.pack(m.version);
  }
  void operator()(const EnrollResp& m) {
    p.pack_map(4);
    key(p, "t"), p.pack("enroll_ok");
    key(p, "agent_id"), p.pack(m.agent_id);
    key(p, "cert"), p.pack(m.cert_pem);
    key(p, "command_key"), p.pack(m.command_key_pem);
  }
  void operator()(const CommandPoll&) {
    p.pack_map(1);
    key(p, "t"), p.pack("command_poll");
  }
  void operator()(const Commands& m) {
    p.pack_map(3);
    key(p, "t"), p.pack("commands");
    key(p, "commands"), p.pack_array(static_cast<std::uint32_t>(m.commands.size()));
    for (const auto& c : m.commands) pack_command(p, c);
    key(p, "command_key"), p.pack(m.command_key_pem);
  }
};

}  // namespace

std::string encode_body(const ResultBody& b) {
  msgpack::sbuffer buf;
  Packer p(buf);
  bool framed = !b.clock_frame.empty();
  p.pack_map(16 + (b.clock_stepped ? 1 : 0) + (framed ? 2 : 0));
  key(p, "kind"), p.pack(b.kind);
  key(p, "test_id"), p.pack(b.test_id);
  key(p, "probe"), p.pack(b.probe);
  key(p, "technique"), p.pack(b.technique);
  key(p, "target"), p.pack(b.target);
  key(p, "marker"), p.pack(b.marker);
  key(p, "verdict"), p.pack(b.verdict);
  key(p, "reason"), p.pack(b.reason);
  key(p, "evidence"), p.pack(b.evidence);  // std::map: sorted keys, deterministic bytes
  key(p, "expect_prevent"), p.pack(b.expect_prevent);
  key(p, "alert_within_ns"), p.pack(b.alert_within_ns);
  key(p, "detections"), p.pack(b.detections);
  key(p, "started_ns"), p.pack(b.started_ns);
  key(p, "finished_ns"), p.pack(b.finished_ns);
  key(p, "clock_offset_ns"), p.pack(b.clock_offset_ns);
  key(p, "clock_error_ns"), p.pack(b.clock_error_ns);
  if (b.clock_stepped) key(p, "clock_stepped"), p.pack(true);
  if (framed) {
    key(p, "clock_frame"), p.pack(b.clock_frame);
    key(p, "clock_steps"), p.pack(b.clock_steps);
  }
  return std::string(buf.data(), buf.size());
}

ResultBody decode_body(std::string_view bytes) {
  auto oh = unpack_checked(bytes, "result body");
  Fields f(oh.get(), "result body");
  ResultBody b;
  b.kind = f.str("kind", "probe");
  b.test_id = f.str("test_id");
  b.probe = f.str("probe");
  b.technique = f.str("technique");
  b.target = f.str("target");
  b.marker = f.str("marker");
  b.verdict = f.str("verdict");
  b.reason = f.str("reason");
  b.evidence = f.str_map("evidence");
  b.expect_prevent = f.boolean("expect_prevent");
  b.alert_within_ns = f.i64("alert_within_ns");
  b.detections = f.str_list("detections");
  b.started_ns = f.i64("started_ns");
  b.finished_ns = f.i64("finished_ns");
  b.clock_offset_ns = f.i64("clock_offset_ns");
  b.clock_error_ns = f.i64("clock_error_ns", -1);
  b.clock_stepped = f.boolean("clock_stepped");
  b.clock_frame = f.str("clock_frame");
  b.clock_steps = f.u64("clock_steps");
  return b;
}

Digest compute_result_hash(std::string_view agent_id, std::uint64_t seq, const Digest& prev_hash,
                           std::string_view body) {
  Sha256 h;
  h.update(std::string_view("tcn-result-v1"));
  h.update_u64(agent_id.size()).update(agent_id);
  h.update_u64(seq);
  h.update(prev_hash);
  h.update_u64(body.size()).update(body);
  return h.finish();
}

Bytes batch_signing_bytes(std::string_view agent_id, std::uint64_t head_seq,
                          const Digest& head_hash) {
  Sha256 h;
  h.update(std::string_view("tcn-batch-v1"));
  h.update_u64(agent_id.size()).update(agent_id);
  h.update_u64(head_seq);
  h.update(head_hash);
  auto d = h.finish();
  return Bytes(d.begin(), d.end());
}

Bytes command_signing_bytes(const Command& c) {
  Sha256 h;
  h.update(std::string_view("tcn-command-v1"));
  for (const std::string* f : {&c.id, &c.agent_id, &c.kind, &c.target, &c.requester})
    h.update_u64(f->size()).update(*f);
  h.update_u64(c.approvals.size());
  for (const auto& a : c.approvals) h.update_u64(a.size()).update(a);
  h.update_u64(c.nonce.size()).update(c.nonce);
  h.update_u64(static_cast<std::uint64_t>(c.issued_ns));
  h.update_u64(static_cast<std::uint64_t>(c.expires_ns));
  h.update_u64(c.recheck_test.size()).update(c.recheck_test);
  h.update_u64(static_cast<std::uint64_t>(c.recheck_after_ns));
  auto d = h.finish();
  return Bytes(d.begin(), d.end());
}

std::string encode_message(const Message& m) {
  msgpack::sbuffer buf;
  Packer p(buf);
  std::visit(Encoder{p}, m);
  return std::string(buf.data(), buf.size());
}

Message decode_message(std::string_view payload) {
  auto oh = unpack_checked(payload, "message");
  Fields f(oh.get(), "message");
  std::string t = f.str("t");
  if (t == "hello") {
    auto protocol = f.u64("protocol", 1);
    if (protocol > UINT32_MAX) throw ProtocolError("hello field 'protocol' is out of range");
    return Hello{f.str("agent_id"), f.str("version"), static_cast<std::uint32_t>(protocol)};
  }
  if (t == "hello_ack") return HelloAck{f.u64("next_seq", 1), f.fixed<32>("head_hash")};
  if (t == "time_req") return TimeReq{f.i64("t1")};
  if (t == "time_resp") return TimeResp{f.i64("t1"), f.i64("t2"), f.i64("t3")};
  if (t == "batch") {
    Batch b;
    b.agent_id = f.str("agent_id");
    if (auto* arr = f.array("results")) {
      b.results.reserve(arr->size);
      for (std::uint32_t i = 0; i < arr->size; ++i) b.results.push_back(unpack_record(arr->ptr[i]));
    }
    b.signature = f.fixed<64>("sig");
    return b;
  }
  if (t == "ack") return Ack{f.u64("seq")};
  if (t == "error") return ErrorMsg{f.str("code"), f.str("message")};
  if (t == "enroll")
    return EnrollReq{f.str("token"), f.str("csr"), f.str("hostname"), f.str("os"),
                     f.str("version")};
  if (t == "enroll_ok") return EnrollResp{f.str("agent_id"), f.str("cert"), f.str("command_key")};
  if (t == "command_poll") return CommandPoll{};
  if (t == "commands") {
    Commands c;
    if (auto* arr = f.array("commands")) {
      c.commands.reserve(arr->size);
      for (std::uint32_t i = 0; i < arr->size; ++i) c.commands.push_back(unpack_command(arr->ptr[i]));
    }
    c.command_key_pem = f.str("command_key");
    return c;
  }
  throw ProtocolError(t.empty() ? "message has no type ('t')" : "unknown message type '" + t + "'");
}

std::string message_type_name(const Message& m) {
  static constexpr const char* kNames[] = {"hello", "hello_ack", "time_req",     "time_resp",
                                           "batch", "ack",       "error",        "enroll",
                                           "enroll_ok", "command_poll", "commands"};
  return kNames[m.index()];
}

}  // namespace tocsin::common
