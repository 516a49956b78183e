// Length-prefixed framing: 4-byte big-endian length + payload, capped before any allocation.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tocsin::common {

inline constexpr std::size_t kMaxFrameBytes = 1 << 20;  // 1 MiB, the wire protocol's hard cap

// The peer sent something that is not a valid frame or message. The connection is unusable.
struct ProtocolError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string encode_frame(std::string_view payload, std::size_t cap = kMaxFrameBytes);
// Parses a 4-byte header; throws ProtocolError for zero or over-cap lengths.
std::size_t decode_frame_length(const std::array<std::uint8_t, 4>& header,
                                std::size_t cap = kMaxFrameBytes);

template <class Stream>
boost::asio::awaitable<std::string> read_frame(Stream& stream, std::size_t cap = kMaxFrameBytes) {
  std::array<std::uint8_t, 4> header{};
  co_await boost::asio::async_read(stream, boost::asio::buffer(header),
                                   boost::asio::use_awaitable);
  std::size_t len = decode_frame_length(header, cap);  // before allocating
  std::string payload(len, '\0');
  co_await boost::asio::async_read(stream, boost::asio::buffer(payload),
                                   boost::asio::use_awaitable);
  co_return payload;
}

template <class Stream>
boost::asio::awaitable<void> write_frame(Stream& stream, std::string frame_bytes) {
  co_await boost::asio::async_write(stream, boost::asio::buffer(frame_bytes),
                                    boost::asio::use_awaitable);
}

}  // namespace tocsin::common
