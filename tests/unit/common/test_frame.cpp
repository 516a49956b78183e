// Length-prefixed framing: header layout, the size cap, and reading frames off a real socket.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <exception>
#include <optional>
#include <string>

#include "common/frame.hpp"

namespace asio = boost::asio;
using tocsin::common::decode_frame_length;
using tocsin::common::encode_frame;
using tocsin::common::kMaxFrameBytes;
using tocsin::common::ProtocolError;
using tocsin::common::read_frame;
using tocsin::common::write_frame;
using local_socket = asio::local::stream_protocol::socket;

namespace {

std::array<std::uint8_t, 4> header_of(const std::string& frame) {
  REQUIRE(frame.size() >= 4);
  return {static_cast<std::uint8_t>(frame[0]), static_cast<std::uint8_t>(frame[1]),
          static_cast<std::uint8_t>(frame[2]), static_cast<std::uint8_t>(frame[3])};
}

std::array<std::uint8_t, 4> be32(std::uint32_t n) {
  return {static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16),
          static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)};
}

// A connected pair of Unix stream sockets on one io_context.
struct SocketPair {
  asio::io_context io;
  local_socket a{io};
  local_socket b{io};
  SocketPair() { asio::local::connect_pair(a, b); }
};

// Runs one coroutine to completion on `io` and hands back its result or rethrows its exception.
std::string run_read(asio::io_context& io, local_socket& s, std::size_t cap = kMaxFrameBytes) {
  std::optional<std::string> got;
  std::exception_ptr error;
  asio::co_spawn(io, read_frame(s, cap), [&](std::exception_ptr e, std::string payload) {
    error = e;
    if (!e) got = std::move(payload);
  });
  io.run();
  io.restart();
  if (error) std::rethrow_exception(error);
  REQUIRE(got.has_value());
  return *got;
}

void run_write(asio::io_context& io, local_socket& s, std::string frame) {
  std::exception_ptr error;
  asio::co_spawn(io, write_frame(s, std::move(frame)), [&](std::exception_ptr e) { error = e; });
  io.run();
  io.restart();
  if (error) std::rethrow_exception(error);
}

}  // namespace

TEST_CASE("encode_frame prefixes the payload with its length as a big-endian u32") {
  std::string payload(0x010203, 'x');
  auto frame = encode_frame(payload);
  REQUIRE(frame.size() == 4 + payload.size());
  CHECK(static_cast<std::uint8_t>(frame[0]) == 0x00);
  CHECK(static_cast<std::uint8_t>(frame[1]) == 0x01);
  CHECK(static_cast<std::uint8_t>(frame[2]) == 0x02);
  CHECK(static_cast<std::uint8_t>(frame[3]) == 0x03);
  CHECK(frame.substr(4) == payload);
}

TEST_CASE("a frame round-trips through encode_frame and decode_frame_length") {
  for (std::size_t size :
       {std::size_t{1}, std::size_t{255}, std::size_t{256}, std::size_t{65537}, kMaxFrameBytes}) {
    CAPTURE(size);
    std::string payload(size, '\0');
    for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<char>(i * 7);
    auto frame = encode_frame(payload);
    auto len = decode_frame_length(header_of(frame));
    CHECK(len == size);
    CHECK(frame.substr(4, len) == payload);
  }
}

TEST_CASE("decode_frame_length refuses an empty frame") {
  CHECK_THROWS_AS(decode_frame_length(be32(0)), ProtocolError);
  CHECK_THROWS_WITH_AS(decode_frame_length(be32(0)), doctest::Contains("empty"), ProtocolError);
}

TEST_CASE("a header over the 1 MiB cap is refused with an error naming the size") {
  CHECK(decode_frame_length(be32(kMaxFrameBytes)) == kMaxFrameBytes);
  SUBCASE("one byte over") {
    CHECK_THROWS_WITH_AS(decode_frame_length(be32(kMaxFrameBytes + 1)),
                         doctest::Contains("1048577"), ProtocolError);
  }
  SUBCASE("the largest u32") {
    CHECK_THROWS_WITH_AS(decode_frame_length(be32(0xffffffffu)), doctest::Contains("4294967295"),
                         ProtocolError);
  }
  SUBCASE("a caller-supplied smaller cap") {
    CHECK(decode_frame_length(be32(100), 100) == 100);
    CHECK_THROWS_WITH_AS(decode_frame_length(be32(101), 100), doctest::Contains("101"),
                         ProtocolError);
  }
}

TEST_CASE("encode_frame refuses an empty or over-cap payload") {
  CHECK_THROWS_AS(encode_frame(""), std::length_error);
  CHECK_THROWS_AS(encode_frame(std::string(kMaxFrameBytes + 1, 'x')), std::length_error);
  CHECK_THROWS_AS(encode_frame(std::string(11, 'x'), 10), std::length_error);
  CHECK_NOTHROW(encode_frame(std::string(10, 'x'), 10));
}

TEST_CASE("read_frame reads frames written by write_frame over a connected socket pair") {
  SocketPair p;
  std::string first = "hello over the wire";
  std::string second(70000, '\x5a');  // larger than one socket read
  second[0] = '\0';
  // Both frames are queued before reading: read_frame must stop at each frame's end.
  run_write(p.io, p.a, encode_frame(first));
  std::string got_first, got_second;
  std::exception_ptr error;
  asio::co_spawn(p.io, write_frame(p.a, encode_frame(second)), [&](std::exception_ptr e) {
    if (e) error = e;
  });
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        got_first = co_await read_frame(p.b);
        got_second = co_await read_frame(p.b);
      },
      [&](std::exception_ptr e) {
        if (e) error = e;
      });
  p.io.run();
  if (error) std::rethrow_exception(error);
  CHECK(got_first == first);
  CHECK(got_second == second);
}

TEST_CASE("read_frame throws ProtocolError for an oversized header without reading the body") {
  SocketPair p;
  auto header = be32(kMaxFrameBytes + 1);
  asio::write(p.a, asio::buffer(header));
  asio::write(p.a, asio::buffer(std::string("BODY")));
  // A reader that wrongly waits for the body then gets EOF instead of hanging.
  p.a.shutdown(local_socket::shutdown_send);
  CHECK_THROWS_WITH_AS(run_read(p.io, p.b), doctest::Contains("1048577"), ProtocolError);
  // The bytes after the header are still unread in the socket.
  std::array<char, 4> rest{};
  asio::read(p.b, asio::buffer(rest));
  CHECK(std::string(rest.data(), rest.size()) == "BODY");
}

TEST_CASE("read_frame honours a caller-supplied cap") {
  SocketPair p;
  asio::write(p.a, asio::buffer(encode_frame(std::string(33, 'q'))));
  p.a.shutdown(local_socket::shutdown_send);
  CHECK_THROWS_AS(run_read(p.io, p.b, 32), ProtocolError);
}

TEST_CASE("read_frame fails when the peer closes in the middle of a frame") {
  SocketPair p;
  auto frame = encode_frame("truncated payload");
  asio::write(p.a, asio::buffer(frame.substr(0, frame.size() - 3)));
  p.a.close();
  CHECK_THROWS_AS(run_read(p.io, p.b), boost::system::system_error);
}
