// Wire messages and result bodies: round trips, tolerance of other versions, hostile input, and
// the result hash chain.
#include <doctest/doctest.h>

#include <msgpack.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <variant>

#include "common/wire.hpp"

using namespace tocsin::common;

namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

std::string bytes(const msgpack::sbuffer& buf) {
  return std::string(buf.data(), buf.size());
}

Digest digest_of(std::uint8_t seed) {
  Digest d{};
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<std::uint8_t>(seed + i);
  return d;
}

template <class T>
T round_trip(const T& m) {
  auto decoded = decode_message(encode_message(Message{m}));
  REQUIRE(std::holds_alternative<T>(decoded));
  return std::get<T>(decoded);
}

ResultBody full_body() {
  ResultBody b;
  b.kind = "probe";
  b.test_id = "smb-lateral";
  b.probe = "tcp_connect";
  b.target = "10.0.0.5:445";
  b.marker = "tcn-abcdefghij";
  b.verdict = "prevented";
  b.reason = "refused";
  b.evidence = {{"address", "10.0.0.5"}, {"detail", "Connection refused"}, {"elapsed_ms", "1.2"}};
  b.expect_prevent = true;
  b.started_ns = 1'700'000'000'123'456'789;
  b.finished_ns = 1'700'000'000'223'456'789;
  b.clock_offset_ns = -42'000;
  b.clock_error_ns = 1'500;
  return b;
}

void check_same(const ResultBody& a, const ResultBody& b) {
  CHECK(a.kind == b.kind);
  CHECK(a.test_id == b.test_id);
  CHECK(a.probe == b.probe);
  CHECK(a.target == b.target);
  CHECK(a.marker == b.marker);
  CHECK(a.verdict == b.verdict);
  CHECK(a.reason == b.reason);
  CHECK(a.evidence == b.evidence);
  CHECK(a.expect_prevent == b.expect_prevent);
  CHECK(a.started_ns == b.started_ns);
  CHECK(a.finished_ns == b.finished_ns);
  CHECK(a.clock_offset_ns == b.clock_offset_ns);
  CHECK(a.clock_error_ns == b.clock_error_ns);
}

ResultRecord record(std::uint64_t seq, const Digest& prev, const std::string& body) {
  ResultRecord r;
  r.agent_id = "agent-1";
  r.seq = seq;
  r.prev_hash = prev;
  r.body = body;
  r.hash = compute_result_hash(r.agent_id, r.seq, r.prev_hash, r.body);
  return r;
}

// A message map built by hand: {"t": type, <extra fields packed by `fill`>}.
template <class Fill>
std::string message_map(const std::string& type, std::uint32_t extra_fields, Fill fill) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(1 + extra_fields);
  p.pack(std::string("t"));
  p.pack(type);
  fill(p);
  return bytes(buf);
}

void pack_bin(Packer& p, std::size_t n, char fill = 'x') {
  std::string b(n, fill);
  p.pack_bin(static_cast<std::uint32_t>(n));
  p.pack_bin_body(b.data(), static_cast<std::uint32_t>(n));
}

}  // namespace

TEST_CASE("every message type round-trips through encode_message and decode_message") {
  SUBCASE("hello") {
    auto m = round_trip(Hello{"agent-1", "0.1.0", 7});
    CHECK(m.agent_id == "agent-1");
    CHECK(m.version == "0.1.0");
    CHECK(m.protocol == 7);
  }
  SUBCASE("hello_ack") {
    auto m = round_trip(HelloAck{101, digest_of(3)});
    CHECK(m.next_seq == 101);
    CHECK(m.head_hash == digest_of(3));
  }
  SUBCASE("time_req") {
    CHECK(round_trip(TimeReq{-5}).t1 == -5);
  }
  SUBCASE("time_resp") {
    auto m = round_trip(TimeResp{1, std::numeric_limits<std::int64_t>::max(),
                                 std::numeric_limits<std::int64_t>::min()});
    CHECK(m.t1 == 1);
    CHECK(m.t2 == std::numeric_limits<std::int64_t>::max());
    CHECK(m.t3 == std::numeric_limits<std::int64_t>::min());
  }
  SUBCASE("batch") {
    Batch b;
    b.agent_id = "agent-1";
    b.results.push_back(record(1, kGenesisHash, encode_body(full_body())));
    b.results.push_back(record(2, b.results[0].hash, std::string("\0\xff binary", 9)));
    for (std::size_t i = 0; i < b.signature.size(); ++i)
      b.signature[i] = static_cast<std::uint8_t>(i);
    auto m = round_trip(b);
    CHECK(m.agent_id == "agent-1");
    CHECK(m.signature == b.signature);
    REQUIRE(m.results.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK(m.results[i].agent_id == b.results[i].agent_id);
      CHECK(m.results[i].seq == b.results[i].seq);
      CHECK(m.results[i].prev_hash == b.results[i].prev_hash);
      CHECK(m.results[i].hash == b.results[i].hash);
      CHECK(m.results[i].body == b.results[i].body);
    }
  }
  SUBCASE("ack") {
    CHECK(round_trip(Ack{std::numeric_limits<std::uint64_t>::max()}).seq ==
          std::numeric_limits<std::uint64_t>::max());
  }
  SUBCASE("error") {
    auto m = round_trip(ErrorMsg{"seq_gap", "expected seq 4"});
    CHECK(m.code == "seq_gap");
    CHECK(m.message == "expected seq 4");
  }
  SUBCASE("enroll") {
    auto m = round_trip(
        EnrollReq{"tok", "-----BEGIN CERTIFICATE REQUEST-----", "host1", "linux", "0.1.0"});
    CHECK(m.token == "tok");
    CHECK(m.csr_pem == "-----BEGIN CERTIFICATE REQUEST-----");
    CHECK(m.hostname == "host1");
    CHECK(m.os == "linux");
    CHECK(m.version == "0.1.0");
  }
  SUBCASE("enroll_ok") {
    auto m = round_trip(EnrollResp{"agent-9", "-----BEGIN CERTIFICATE-----", "key"});
    CHECK(m.agent_id == "agent-9");
    CHECK(m.cert_pem == "-----BEGIN CERTIFICATE-----");
  }
}

TEST_CASE("message_type_name names each variant as it appears on the wire") {
  CHECK(message_type_name(Hello{}) == "hello");
  CHECK(message_type_name(HelloAck{}) == "hello_ack");
  CHECK(message_type_name(Batch{}) == "batch");
  CHECK(message_type_name(EnrollResp{}) == "enroll_ok");
}

TEST_CASE("a ResultBody round-trips through encode_body and decode_body") {
  auto b = full_body();
  check_same(decode_body(encode_body(b)), b);
  SUBCASE("defaults survive too") {
    ResultBody d;
    check_same(decode_body(encode_body(d)), d);
  }
}

TEST_CASE("clock_stepped is sent only when true and round-trips") {
  auto b = full_body();
  b.clock_stepped = false;
  auto plain = encode_body(b);
  CHECK(plain.find("clock_stepped") == std::string::npos);  // bodies (and hashes) as before
  CHECK_FALSE(decode_body(plain).clock_stepped);
  b.clock_stepped = true;
  auto stepped = encode_body(b);
  CHECK(stepped.find("clock_stepped") != std::string::npos);
  CHECK(decode_body(stepped).clock_stepped);
}

TEST_CASE("clock_frame and clock_steps are sent only with a frame and round-trip") {
  auto b = full_body();
  auto plain = encode_body(b);
  CHECK(plain.find("clock_frame") == std::string::npos);  // older bodies, and their hashes
  CHECK(plain.find("clock_steps") == std::string::npos);
  auto d = decode_body(plain);
  CHECK(d.clock_frame.empty());
  CHECK(d.clock_steps == 0);
  b.clock_frame = "0123456789abcdef";
  b.clock_steps = 3;
  b.clock_stepped = true;
  d = decode_body(encode_body(b));
  CHECK(d.clock_frame == "0123456789abcdef");
  CHECK(d.clock_steps == 3);
  CHECK(d.clock_stepped);
  b.clock_steps = 0;  // a frame with no step yet still says so
  d = decode_body(encode_body(b));
  CHECK(d.clock_frame == "0123456789abcdef");
  CHECK(d.clock_steps == 0);
}

TEST_CASE("unknown keys are ignored and missing keys take their defaults") {
  SUBCASE("in a message") {
    auto payload = message_map("hello", 2, [](Packer& p) {
      p.pack(std::string("agent_id"));
      p.pack(std::string("agent-1"));
      p.pack(std::string("from_the_future"));
      p.pack_array(2);
      p.pack(1);
      p.pack_map(0);
    });
    auto m = decode_message(payload);
    REQUIRE(std::holds_alternative<Hello>(m));
    CHECK(std::get<Hello>(m).agent_id == "agent-1");
    CHECK(std::get<Hello>(m).version == "");
    CHECK(std::get<Hello>(m).protocol == kProtocolVersion);
  }
  SUBCASE("in a hello_ack a missing next_seq defaults to 1") {
    auto m = decode_message(message_map("hello_ack", 0, [](Packer&) {}));
    REQUIRE(std::holds_alternative<HelloAck>(m));
    CHECK(std::get<HelloAck>(m).next_seq == 1);
    CHECK(std::get<HelloAck>(m).head_hash == kGenesisHash);
  }
  SUBCASE("in a result body") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(3);
    p.pack(std::string("test_id"));
    p.pack(std::string("t1"));
    p.pack(std::string("new_field"));
    p.pack(std::string("whatever"));
    p.pack(std::string("started_ns"));
    p.pack(std::int64_t{-7});
    auto b = decode_body(bytes(buf));
    CHECK(b.test_id == "t1");
    CHECK(b.started_ns == -7);
    CHECK(b.kind == "probe");
    CHECK(b.clock_error_ns == -1);
    CHECK(b.evidence.empty());
    CHECK_FALSE(b.expect_prevent);
  }
}

TEST_CASE("malformed input is refused with a ProtocolError naming the problem") {
  SUBCASE("bytes that are not msgpack") {
    CHECK_THROWS_WITH_AS(decode_message(std::string("\xc1", 1)), doctest::Contains("malformed"),
                         ProtocolError);
  }
  SUBCASE("an empty payload") {
    CHECK_THROWS_WITH_AS(decode_message(""), doctest::Contains("malformed"), ProtocolError);
  }
  SUBCASE("a truncated message") {
    auto full = encode_message(ErrorMsg{"code", "a message that gets cut"});
    CHECK_THROWS_WITH_AS(decode_message(full.substr(0, full.size() - 5)),
                         doctest::Contains("malformed"), ProtocolError);
  }
  SUBCASE("a string claiming far more bytes than there are") {
    std::string s("\x81\xa1t\xdb\x7f\xff\xff\xffhello", 12);
    CHECK_THROWS_AS(decode_message(s), ProtocolError);
  }
  SUBCASE("trailing bytes") {
    CHECK_THROWS_WITH_AS(decode_message(encode_message(Ack{1}) + "xy"),
                         doctest::Contains("2 trailing bytes"), ProtocolError);
    CHECK_THROWS_WITH_AS(decode_body(encode_body(ResultBody{}) + "z"),
                         doctest::Contains("trailing"), ProtocolError);
  }
  SUBCASE("a message that is not a map") {
    msgpack::sbuffer buf;
    Packer(buf).pack_array(1).pack(std::string("hello"));
    CHECK_THROWS_WITH_AS(decode_message(bytes(buf)), doctest::Contains("not a map"), ProtocolError);
    CHECK_THROWS_WITH_AS(decode_body(bytes(buf)), doctest::Contains("not a map"), ProtocolError);
  }
  SUBCASE("a wrong-typed field") {
    auto payload = message_map("ack", 1, [](Packer& p) {
      p.pack(std::string("seq"));
      p.pack(std::string("five"));
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'seq'"), ProtocolError);
  }
  SUBCASE("a negative value where an unsigned one is expected") {
    auto payload = message_map("ack", 1, [](Packer& p) {
      p.pack(std::string("seq"));
      p.pack(std::int64_t{-1});
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'seq'"), ProtocolError);
  }
  SUBCASE("an unsigned value beyond int64 where a signed one is expected") {
    auto payload = message_map("time_req", 1, [](Packer& p) {
      p.pack(std::string("t1"));
      p.pack(std::uint64_t{1} << 63);
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'t1'"), ProtocolError);
  }
  SUBCASE("a wrong-typed body field") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(1);
    p.pack(std::string("expect_prevent"));
    p.pack(std::string("yes"));
    CHECK_THROWS_WITH_AS(decode_body(bytes(buf)), doctest::Contains("'expect_prevent'"),
                         ProtocolError);
  }
  SUBCASE("evidence that is not a map of strings") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(1);
    p.pack(std::string("evidence"));
    p.pack_map(1);
    p.pack(std::string("count"));
    p.pack(3);
    CHECK_THROWS_WITH_AS(decode_body(bytes(buf)), doctest::Contains("'evidence'"), ProtocolError);
  }
  SUBCASE("an unknown message type") {
    CHECK_THROWS_WITH_AS(decode_message(message_map("bogus", 0, [](Packer&) {})),
                         doctest::Contains("unknown message type 'bogus'"), ProtocolError);
  }
  SUBCASE("a message without a type") {
    msgpack::sbuffer buf;
    Packer(buf).pack_map(0);
    CHECK_THROWS_WITH_AS(decode_message(bytes(buf)), doctest::Contains("no type"), ProtocolError);
  }
  SUBCASE("a digest of the wrong length") {
    for (std::size_t n : {std::size_t{0}, std::size_t{31}, std::size_t{33}}) {
      CAPTURE(n);
      auto payload = message_map("hello_ack", 1, [n](Packer& p) {
        p.pack(std::string("head_hash"));
        pack_bin(p, n);
      });
      CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'head_hash'"),
                           ProtocolError);
    }
  }
  SUBCASE("a digest sent as a string instead of binary") {
    auto payload = message_map("hello_ack", 1, [](Packer& p) {
      p.pack(std::string("head_hash"));
      p.pack(std::string(32, 'x'));
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'head_hash'"), ProtocolError);
  }
  SUBCASE("a batch signature of the wrong length") {
    auto payload = message_map("batch", 1, [](Packer& p) {
      p.pack(std::string("sig"));
      pack_bin(p, 63);
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'sig'"), ProtocolError);
  }
  SUBCASE("a batch result whose hash has the wrong length") {
    auto payload = message_map("batch", 1, [](Packer& p) {
      p.pack(std::string("results"));
      p.pack_array(1);
      p.pack_map(1);
      p.pack(std::string("hash"));
      pack_bin(p, 16);
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'hash'"), ProtocolError);
  }
  SUBCASE("batch results that are not an array") {
    auto payload = message_map("batch", 1, [](Packer& p) {
      p.pack(std::string("results"));
      p.pack(std::string("none"));
    });
    CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'results'"), ProtocolError);
  }
}

TEST_CASE("msgpack beyond the unpack limits is refused before it is used") {
  SUBCASE("a map with more entries than allowed") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(300);
    for (int i = 0; i < 300; ++i) {
      p.pack("k" + std::to_string(i));
      p.pack(i);
    }
    CHECK_THROWS_AS(decode_message(bytes(buf)), ProtocolError);
  }
  SUBCASE("nesting deeper than allowed") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(2);
    p.pack(std::string("t"));
    p.pack(std::string("ack"));
    p.pack(std::string("deep"));
    for (int i = 0; i < 20; ++i) p.pack_array(1);
    p.pack(1);
    CHECK_THROWS_AS(decode_message(bytes(buf)), ProtocolError);
  }
  SUBCASE("an extension type") {
    msgpack::sbuffer buf;
    Packer p(buf);
    p.pack_map(2);
    p.pack(std::string("t"));
    p.pack(std::string("ack"));
    p.pack(std::string("x"));
    p.pack_ext(4, 1);
    p.pack_ext_body("abcd", 4);
    CHECK_THROWS_AS(decode_message(bytes(buf)), ProtocolError);
  }
}

// Regression: the u64 "protocol" was cast to u32 unchecked, so 2^32 + 1 decoded as protocol 1.
TEST_CASE("a hello whose protocol does not fit in 32 bits is refused") {
  auto payload = message_map("hello", 1, [](Packer& p) {
    p.pack(std::string("protocol"));
    p.pack((std::uint64_t{1} << 32) + 1);
  });
  CHECK_THROWS_WITH_AS(decode_message(payload), doctest::Contains("'protocol'"), ProtocolError);
}

TEST_CASE("compute_result_hash changes when any part of the result changes") {
  const std::string agent = "agent-1", body = encode_body(full_body());
  const auto prev = digest_of(9);
  const auto base = compute_result_hash(agent, 5, prev, body);
  CHECK(compute_result_hash(agent, 5, prev, body) == base);
  SUBCASE("agent_id") {
    CHECK(compute_result_hash("agent-2", 5, prev, body) != base);
  }
  SUBCASE("seq") {
    CHECK(compute_result_hash(agent, 6, prev, body) != base);
  }
  SUBCASE("prev_hash") {
    auto other = prev;
    other[31] ^= 1;
    CHECK(compute_result_hash(agent, 5, other, body) != base);
  }
  SUBCASE("body") {
    auto other = body;
    other.back() ^= 1;
    CHECK(compute_result_hash(agent, 5, prev, other) != base);
    CHECK(compute_result_hash(agent, 5, prev, body + '\0') != base);
  }
  SUBCASE("moving bytes between agent_id and body") {
    // Length prefixes keep "ab" + "c" apart from "a" + "bc".
    CHECK(compute_result_hash("ab", 1, prev, "c") != compute_result_hash("a", 1, prev, "bc"));
  }
}

TEST_CASE("batch_signing_bytes binds the agent, the head seq and the head hash") {
  auto base = batch_signing_bytes("agent-1", 10, digest_of(1));
  CHECK(base.size() == 32);
  CHECK(batch_signing_bytes("agent-1", 10, digest_of(1)) == base);
  CHECK(batch_signing_bytes("agent-2", 10, digest_of(1)) != base);
  CHECK(batch_signing_bytes("agent-1", 11, digest_of(1)) != base);
  CHECK(batch_signing_bytes("agent-1", 10, digest_of(2)) != base);
}

TEST_CASE("encode_body is deterministic whatever the evidence insertion order") {
  auto a = full_body();
  CHECK(encode_body(a) == encode_body(a));
  ResultBody b = a;
  b.evidence.clear();
  b.evidence.emplace("elapsed_ms", "1.2");
  b.evidence.emplace("detail", "Connection refused");
  b.evidence.emplace("address", "10.0.0.5");
  CHECK(encode_body(b) == encode_body(a));
  b.evidence["address"] = "10.0.0.6";
  CHECK(encode_body(b) != encode_body(a));
}

TEST_CASE("frame_message wraps the encoded message in one frame") {
  Message m = Ack{42};
  auto framed = frame_message(m);
  auto payload = encode_message(m);
  REQUIRE(framed.size() == payload.size() + 4);
  CHECK(framed.substr(4) == payload);
}
