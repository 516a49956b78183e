#include "common/payloads.hpp"

#include <boost/crc.hpp>

#include <cstdint>

namespace tocsin::common {

std::string eicar_test_string() {
  // XOR 0x5a of the standard string (https://www.eicar.org/download-anti-malware-testfile/).
  static constexpr unsigned char kMasked[] = {
      0x02, 0x6f, 0x15, 0x7b, 0x0a, 0x7f, 0x1a, 0x1b, 0x0a, 0x01, 0x6e, 0x06, 0x0a, 0x00, 0x02, 0x6f,
      0x6e, 0x72, 0x0a, 0x04, 0x73, 0x6d, 0x19, 0x19, 0x73, 0x6d, 0x27, 0x7e, 0x1f, 0x13, 0x19, 0x1b,
      0x08, 0x77, 0x09, 0x0e, 0x1b, 0x14, 0x1e, 0x1b, 0x08, 0x1e, 0x77, 0x1b, 0x14, 0x0e, 0x13, 0x0c,
      0x13, 0x08, 0x0f, 0x09, 0x77, 0x0e, 0x1f, 0x09, 0x0e, 0x77, 0x1c, 0x13, 0x16, 0x1f, 0x7b, 0x7e,
      0x12, 0x71, 0x12, 0x70};
  std::string s(sizeof kMasked, '\0');
  for (std::size_t i = 0; i < sizeof kMasked; ++i) s[i] = static_cast<char>(kMasked[i] ^ 0x5a);
  return s;
}

namespace {

void le16(std::string& s, std::uint32_t v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>((v >> 8) & 0xff));
}
void le32(std::string& s, std::uint32_t v) {
  le16(s, v & 0xffff);
  le16(s, v >> 16);
}

}  // namespace

std::string zip_stored(const std::string& name, const std::string& content) {
  // PKWARE APPNOTE 4.3: one local header + data, one central directory entry, the end record.
  boost::crc_32_type crc;
  crc.process_bytes(content.data(), content.size());
  const std::uint32_t sum = crc.checksum();
  const auto size = static_cast<std::uint32_t>(content.size());
  const std::uint32_t dos_time = 0, dos_date = (1 << 5) | 1;  // 1980-01-01 00:00
  std::string z;
  le32(z, 0x04034b50);  // local file header
  le16(z, 10);          // version needed: 1.0
  le16(z, 0);           // flags
  le16(z, 0);           // method: stored
  le16(z, dos_time);
  le16(z, dos_date);
  le32(z, sum);
  le32(z, size);
  le32(z, size);
  le16(z, static_cast<std::uint32_t>(name.size()));
  le16(z, 0);  // extra length
  z += name;
  z += content;
  const auto central_at = static_cast<std::uint32_t>(z.size());
  le32(z, 0x02014b50);  // central directory header
  le16(z, 10);          // made by
  le16(z, 10);          // needed
  le16(z, 0);
  le16(z, 0);
  le16(z, dos_time);
  le16(z, dos_date);
  le32(z, sum);
  le32(z, size);
  le32(z, size);
  le16(z, static_cast<std::uint32_t>(name.size()));
  le16(z, 0);  // extra
  le16(z, 0);  // comment
  le16(z, 0);  // disk
  le16(z, 0);  // internal attributes
  le32(z, 0);  // external attributes
  le32(z, 0);  // offset of the local header
  z += name;
  const auto central_size = static_cast<std::uint32_t>(z.size()) - central_at;
  le32(z, 0x06054b50);  // end of central directory
  le16(z, 0);
  le16(z, 0);
  le16(z, 1);
  le16(z, 1);
  le32(z, central_size);
  le32(z, central_at);
  le16(z, 0);  // comment length
  return z;
}

std::optional<Payload> builtin_payload(std::string_view path) {
  if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  constexpr std::string_view kPrefix = "/payloads/";
  if (path.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  auto rest = path.substr(kPrefix.size());
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    // One optional segment (the marker) before the name, and no more.
    auto name = rest.substr(slash + 1);
    if (slash == 0 || name.find('/') != std::string_view::npos) return std::nullopt;
    rest = name;
  }
  if (rest == "eicar.com") return Payload{"eicar.com", "application/octet-stream", eicar_test_string()};
  if (rest == "eicar.zip")
    return Payload{"eicar.zip", "application/zip", zip_stored("eicar.com", eicar_test_string())};
  if (rest == "benign.txt")
    return Payload{"benign.txt", "text/plain",
                   "Tocsin benign control payload: a proxy that blocks this blocks everything.\n"};
  return std::nullopt;
}

}  // namespace tocsin::common
