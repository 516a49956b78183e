// Hashing, Ed25519 keys and signatures, randomness: thin RAII over OpenSSL 3 EVP.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tocsin::common {

using Bytes = std::vector<std::uint8_t>;
using Digest = std::array<std::uint8_t, 32>;
using Signature = std::array<std::uint8_t, 64>;

// Raised when OpenSSL fails for a reason that is not the caller's input (allocation, RNG).
struct CryptoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string openssl_error_string();

Digest sha256(std::span<const std::uint8_t> data);
Digest sha256(std::string_view data);

// Incremental SHA-256 for values made of several parts (the result chain).
class Sha256 {
 public:
  Sha256();
  Sha256& update(std::span<const std::uint8_t> data);
  Sha256& update(std::string_view data);
  Sha256& update_u64(std::uint64_t v);  // big-endian
  Digest finish();

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

std::string to_hex(std::span<const std::uint8_t> data);
// Returns false when `hex` is not exactly out.size()*2 hex digits.
bool from_hex(std::string_view hex, std::span<std::uint8_t> out);

void random_bytes(std::span<std::uint8_t> out);
// RFC 4648 §5 base64url without padding (URL path safe). The decoder returns nullopt for
// anything that is not exactly such an encoding.
std::string base64url_encode(std::string_view data);
std::optional<std::string> base64url_decode(std::string_view text);
// Lower-case base32-ish id of `len` characters from [a-z0-9], uniformly random.
std::string random_id(std::size_t len);
// A secret suitable for tokens: 32 random bytes, hex.
std::string random_token();

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// An Ed25519 key; holds either a private key (can sign) or only a public key.
class Ed25519Key {
 public:
  static Ed25519Key generate();
  static Ed25519Key from_private_pem(std::string_view pem);
  static Ed25519Key from_public_pem(std::string_view pem);
  static Ed25519Key from_public_raw(std::span<const std::uint8_t> raw);
  static Ed25519Key from_pkey(PkeyPtr pkey);  // takes ownership; must be Ed25519

  std::string private_pem() const;
  std::string public_pem() const;
  std::array<std::uint8_t, 32> public_raw() const;

  Signature sign(std::span<const std::uint8_t> msg) const;
  // An invalid signature is an expected outcome, not an exception.
  bool verify(std::span<const std::uint8_t> msg, std::span<const std::uint8_t> sig) const;

  EVP_PKEY* get() const { return pkey_.get(); }

 private:
  explicit Ed25519Key(PkeyPtr p) : pkey_(std::move(p)) {}
  PkeyPtr pkey_;
};

// Writes a file atomically (tmp + fsync + rename) with the given permission bits.
void write_file_atomic(const std::filesystem::path& path, std::string_view content,
                       std::filesystem::perms perms = std::filesystem::perms::owner_read |
                                                      std::filesystem::perms::owner_write);
std::string read_file(const std::filesystem::path& path, std::size_t max_bytes = 16 << 20);

}  // namespace tocsin::common
