#include "common/crypto.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/file_io.hpp"

namespace tocsin::common {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

[[noreturn]] void fail(const std::string& what) {
  throw CryptoError(what + ": " + openssl_error_string());
}

std::string bio_to_string(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace

std::string openssl_error_string() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error reported" : out;
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) fail("sha256 init");
}
Sha256& Sha256::update(std::span<const std::uint8_t> data) {
  if (EVP_DigestUpdate(ctx_.get(), data.data(), data.size()) != 1) fail("sha256 update");
  return *this;
}
Sha256& Sha256::update(std::string_view data) {
  return update(std::span(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
}
Sha256& Sha256::update_u64(std::uint64_t v) {
  std::uint8_t b[8];
  for (int i = 7; i >= 0; --i, v >>= 8) b[i] = static_cast<std::uint8_t>(v & 0xff);
  return update(std::span<const std::uint8_t>(b, 8));
}
Digest Sha256::finish() {
  Digest d{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_.get(), d.data(), &len) != 1 || len != d.size()) fail("sha256 final");
  return d;
}

Digest sha256(std::span<const std::uint8_t> data) { return Sha256().update(data).finish(); }
Digest sha256(std::string_view data) { return Sha256().update(data).finish(); }

std::string to_hex(std::span<const std::uint8_t> data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(data.size() * 2, '0');
  for (std::size_t i = 0; i < data.size(); ++i) {
    s[2 * i] = kDigits[data[i] >> 4];
    s[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return s;
}

bool from_hex(std::string_view hex, std::span<std::uint8_t> out) {
  if (hex.size() != out.size() * 2) return false;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return true;
}

void random_bytes(std::span<std::uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) fail("RAND_bytes");
}

namespace {
constexpr char kB64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
}  // namespace

std::string base64url_encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : data) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kB64Url[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kB64Url[(acc << (6 - bits)) & 63]);
  return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
  if (text.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const char* p = std::strchr(kB64Url, c);
    if (c == '\0' || !p) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(p - kB64Url);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (acc & ((1u << bits) - 1)) return std::nullopt;  // non-canonical: leftover bits set
  return out;
}

std::string random_id(std::size_t len) {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";  // 36 symbols
  std::string s;
  s.reserve(len);
  while (s.size() < len) {
    std::uint8_t b[32];
    random_bytes(b);
    for (auto v : b) {
      if (v >= 252) continue;  // rejection sampling keeps the distribution uniform (252 = 7*36)
      s.push_back(kAlphabet[v % 36]);
      if (s.size() == len) break;
    }
  }
  return s;
}

std::string random_token() {
  std::array<std::uint8_t, 32> b{};
  random_bytes(b);
  return to_hex(b);
}

Ed25519Key Ed25519Key::generate() {
  EVP_PKEY* p = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (!p) fail("Ed25519 key generation");
  return Ed25519Key(PkeyPtr(p));
}

Ed25519Key Ed25519Key::from_pkey(PkeyPtr pkey) {
  if (!pkey || EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519)
    throw std::invalid_argument("key is not an Ed25519 key");
  return Ed25519Key(std::move(pkey));
}

Ed25519Key Ed25519Key::from_private_pem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PkeyPtr p(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!p) throw std::invalid_argument("not a PEM private key: " + openssl_error_string());
  return from_pkey(std::move(p));
}

Ed25519Key Ed25519Key::from_public_pem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PkeyPtr p(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!p) throw std::invalid_argument("not a PEM public key: " + openssl_error_string());
  return from_pkey(std::move(p));
}

Ed25519Key Ed25519Key::from_public_raw(std::span<const std::uint8_t> raw) {
  if (raw.size() != 32) throw std::invalid_argument("Ed25519 public key must be 32 bytes");
  PkeyPtr p(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw.data(), raw.size()));
  if (!p) throw std::invalid_argument("bad Ed25519 public key: " + openssl_error_string());
  return Ed25519Key(std::move(p));
}

std::string Ed25519Key::private_pem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), pkey_.get(), nullptr, nullptr, 0, nullptr, nullptr))
    fail("writing private key");
  return bio_to_string(bio.get());
}

std::string Ed25519Key::public_pem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PUBKEY(bio.get(), pkey_.get())) fail("writing public key");
  return bio_to_string(bio.get());
}

std::array<std::uint8_t, 32> Ed25519Key::public_raw() const {
  std::array<std::uint8_t, 32> out{};
  std::size_t len = out.size();
  if (EVP_PKEY_get_raw_public_key(pkey_.get(), out.data(), &len) != 1 || len != 32)
    fail("reading raw public key");
  return out;
}

Signature Ed25519Key::sign(std::span<const std::uint8_t> msg) const {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  Signature sig{};
  std::size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey_.get()) != 1 ||
      EVP_DigestSign(ctx.get(), sig.data(), &len, msg.data(), msg.size()) != 1 || len != 64)
    fail("Ed25519 sign");
  return sig;
}

bool Ed25519Key::verify(std::span<const std::uint8_t> msg,
                        std::span<const std::uint8_t> sig) const {
  if (sig.size() != 64) return false;
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey_.get()) != 1)
    fail("Ed25519 verify init");
  int rc = EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size());
  ERR_clear_error();  // a bad signature leaves an error on the queue; it is an outcome here
  return rc == 1;
}

void write_file_atomic(const std::filesystem::path& path, std::string_view content,
                       std::filesystem::perms perms) {
  namespace fio = file_io;
  auto tmp = path;
  tmp += ".tmp";
  int fd = fio::open(tmp, fio::Mode::create_truncate, perms);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(errno));
  std::size_t off = 0;
  while (off < content.size()) {
    auto n = fio::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      fio::close(fd);
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(e));
    }
    off += static_cast<std::size_t>(n);
  }
  int sync_rc = fio::sync(fd);
  int sync_errno = errno;
  if (fio::close(fd) != 0 && sync_rc == 0) {
    sync_rc = -1;
    sync_errno = errno;
  }
  if (sync_rc != 0) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw std::runtime_error("cannot sync " + tmp.string() + ": " + std::strerror(sync_errno));
  }
  fio::replace(tmp, path);
  fio::sync_dir(path.parent_path());
}

std::string read_file(const std::filesystem::path& path, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
  std::string s;
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    s.append(buf, static_cast<std::size_t>(in.gcount()));
    if (s.size() > max_bytes)
      throw std::runtime_error(path.string() + " is larger than " + std::to_string(max_bytes) +
                               " bytes");
  }
  return s;
}

}  // namespace tocsin::common
