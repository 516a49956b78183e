#include "common/frame.hpp"

namespace tocsin::common {

std::string encode_frame(std::string_view payload, std::size_t cap) {
  if (payload.empty() || payload.size() > cap)
    throw std::length_error("frame payload of " + std::to_string(payload.size()) +
                            " bytes is outside 1.." + std::to_string(cap));
  std::string out(4 + payload.size(), '\0');
  auto n = static_cast<std::uint32_t>(payload.size());
  out[0] = static_cast<char>(n >> 24);
  out[1] = static_cast<char>(n >> 16);
  out[2] = static_cast<char>(n >> 8);
  out[3] = static_cast<char>(n);
  out.replace(4, payload.size(), payload);
  return out;
}

std::size_t decode_frame_length(const std::array<std::uint8_t, 4>& h, std::size_t cap) {
  std::size_t n = (std::size_t{h[0]} << 24) | (std::size_t{h[1]} << 16) |
                  (std::size_t{h[2]} << 8) | std::size_t{h[3]};
  if (n == 0) throw ProtocolError("empty frame");
  if (n > cap)
    throw ProtocolError("frame of " + std::to_string(n) + " bytes exceeds the cap of " +
                        std::to_string(cap) + " bytes");
  return n;
}

}  // namespace tocsin::common
