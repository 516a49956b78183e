// Hashing, hex, Ed25519 keys and signatures, random ids and atomic file writes.
#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/x509.hpp"
#include "tests/unit/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace tocsin::common;
using tocsin::test::TempDir;

namespace {

std::vector<std::uint8_t> bytes_of(std::string_view s) {
  return {s.begin(), s.end()};
}

// Restores the process umask at scope end so one test cannot leak it into the next.
class UmaskGuard {
 public:
  explicit UmaskGuard(mode_t mask) : old_(::umask(mask)) {}
  ~UmaskGuard() { ::umask(old_); }

 private:
  mode_t old_;
};

fs::perms mode_of(const fs::path& p) {
  return fs::status(p).permissions() & fs::perms::all;
}

}  // namespace

TEST_CASE("sha256 matches the FIPS 180-2 test vectors") {
  CHECK(to_hex(sha256(std::string_view("abc"))) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(to_hex(sha256(std::string_view(""))) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(to_hex(
            sha256(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_CASE("incremental Sha256 equals the one-shot hash of the concatenation") {
  auto whole = sha256(std::string_view("hello, world"));
  auto parts =
      Sha256().update(std::string_view("hello")).update(std::string_view(", world")).finish();
  CHECK(parts == whole);
}

TEST_CASE("Sha256::update_u64 feeds the value big-endian") {
  std::array<std::uint8_t, 8> be{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
  CHECK(Sha256().update_u64(0x0102030405060708ull).finish() == sha256(be));
}

TEST_CASE("hex encoding round-trips and is lower case") {
  std::array<std::uint8_t, 5> in{0x00, 0x0f, 0xa5, 0xff, 0x10};
  auto hex = to_hex(in);
  CHECK(hex == "000fa5ff10");
  std::array<std::uint8_t, 5> out{};
  REQUIRE(from_hex(hex, out));
  CHECK(out == in);
  SUBCASE("upper-case digits are accepted") {
    std::array<std::uint8_t, 2> up{};
    REQUIRE(from_hex("ABcd", up));
    CHECK(up == std::array<std::uint8_t, 2>{0xab, 0xcd});
  }
}

TEST_CASE("from_hex rejects a wrong length or a non-hex digit") {
  std::array<std::uint8_t, 2> out{};
  const char* bad[] = {"", "abc", "abcdef", "abcg", "ab c", "0x12", "zz00", "ab\xff\x01"};
  for (const char* text : bad) {
    CAPTURE(std::string(text));
    CHECK_FALSE(from_hex(text, out));
  }
}

TEST_CASE("an Ed25519 signature verifies for its message and key") {
  auto key = Ed25519Key::generate();
  auto msg = bytes_of("the quick brown fox");
  auto sig = key.sign(msg);
  CHECK(key.verify(msg, sig));
  SUBCASE("an empty message signs and verifies") {
    std::vector<std::uint8_t> empty;
    CHECK(key.verify(empty, key.sign(empty)));
  }
  SUBCASE("a public-only copy of the key verifies") {
    auto pub = Ed25519Key::from_public_raw(key.public_raw());
    CHECK(pub.verify(msg, sig));
  }
}

TEST_CASE("an Ed25519 signature fails for any change to message, signature or key") {
  auto key = Ed25519Key::generate();
  auto msg = bytes_of("the quick brown fox");
  auto sig = key.sign(msg);
  SUBCASE("a flipped bit in the message") {
    for (std::size_t bit : {std::size_t{0}, std::size_t{77}, msg.size() * 8 - 1}) {
      auto m = msg;
      m[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      CHECK_FALSE(key.verify(m, sig));
    }
  }
  SUBCASE("a flipped bit in the signature") {
    for (std::size_t bit : {std::size_t{0}, std::size_t{255}, std::size_t{511}}) {
      auto s = sig;
      s[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
      CHECK_FALSE(key.verify(msg, s));
    }
  }
  SUBCASE("another key") {
    CHECK_FALSE(Ed25519Key::generate().verify(msg, sig));
  }
  SUBCASE("a 63-byte or 65-byte signature") {
    std::vector<std::uint8_t> short_sig(sig.begin(), sig.end() - 1);
    CHECK_FALSE(key.verify(msg, short_sig));
    std::vector<std::uint8_t> long_sig(sig.begin(), sig.end());
    long_sig.push_back(0);
    CHECK_FALSE(key.verify(msg, long_sig));
  }
  SUBCASE("an all-zero signature") {
    Signature zero{};
    CHECK_FALSE(key.verify(msg, zero));
  }
}

TEST_CASE("Ed25519 keys round-trip through private and public PEM") {
  auto key = Ed25519Key::generate();
  auto msg = bytes_of("round trip");
  auto priv = Ed25519Key::from_private_pem(key.private_pem());
  auto pub = Ed25519Key::from_public_pem(key.public_pem());
  CHECK(key.private_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
  CHECK(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
  CHECK(priv.public_raw() == key.public_raw());
  CHECK(pub.public_raw() == key.public_raw());
  // The reloaded private key signs what the original public key accepts, and vice versa.
  CHECK(pub.verify(msg, priv.sign(msg)));
  CHECK(priv.verify(msg, key.sign(msg)));
}

TEST_CASE("loading a key from garbage or the wrong kind of PEM throws std::invalid_argument") {
  auto key = Ed25519Key::generate();
  SUBCASE("garbage") {
    CHECK_THROWS_AS(Ed25519Key::from_private_pem("not a key at all"), std::invalid_argument);
    CHECK_THROWS_AS(Ed25519Key::from_public_pem("not a key at all"), std::invalid_argument);
    CHECK_THROWS_AS(Ed25519Key::from_private_pem(""), std::invalid_argument);
  }
  SUBCASE("a truncated PEM") {
    auto pem = key.private_pem();
    CHECK_THROWS_AS(Ed25519Key::from_private_pem(pem.substr(0, pem.size() / 2)),
                    std::invalid_argument);
  }
  SUBCASE("a public PEM where a private key is expected") {
    CHECK_THROWS_AS(Ed25519Key::from_private_pem(key.public_pem()), std::invalid_argument);
  }
  SUBCASE("an EC P-256 key is not an Ed25519 key") {
    PkeyPtr ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    REQUIRE(ec);
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    REQUIRE(PEM_write_bio_PrivateKey(bio.get(), ec.get(), nullptr, nullptr, 0, nullptr, nullptr));
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    std::string pem(data, static_cast<std::size_t>(len));
    CHECK_THROWS_AS(Ed25519Key::from_private_pem(pem), std::invalid_argument);
    CHECK_THROWS_AS(Ed25519Key::from_pkey(std::move(ec)), std::invalid_argument);
  }
  SUBCASE("a raw public key of the wrong length") {
    std::array<std::uint8_t, 31> raw{};
    CHECK_THROWS_AS(Ed25519Key::from_public_raw(raw), std::invalid_argument);
  }
}

TEST_CASE("random_id has the requested length and only [a-z0-9]") {
  for (std::size_t len : {std::size_t{0}, std::size_t{1}, std::size_t{10}, std::size_t{200}}) {
    CAPTURE(len);
    auto id = random_id(len);
    CHECK(id.size() == len);
    CHECK(id.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") == std::string::npos);
  }
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) seen.insert(random_id(12));
  CHECK(seen.size() == 100);
}

TEST_CASE("random_id uses the whole alphabet") {
  std::string all;
  for (int i = 0; i < 20; ++i) all += random_id(500);
  std::set<char> chars(all.begin(), all.end());
  CHECK(chars.size() == 36);  // 10000 draws over 36 symbols: missing one has odds ~1e-118
}

TEST_CASE("random_token is 32 random bytes in hex") {
  auto a = random_token(), b = random_token();
  CHECK(a.size() == 64);
  CHECK(a.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(a != b);
}

TEST_CASE("write_file_atomic sets the requested permissions regardless of umask") {
  TempDir tmp("crypto");
  auto file = tmp / "secret.key";
  SUBCASE("0600 under a permissive umask") {
    UmaskGuard guard(0);
    write_file_atomic(file, "secret");
    CHECK(mode_of(file) == (fs::perms::owner_read | fs::perms::owner_write));
  }
  SUBCASE("0644 under a restrictive umask") {
    UmaskGuard guard(077);
    auto wanted = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                  fs::perms::others_read;
    write_file_atomic(file, "public", wanted);
    CHECK(mode_of(file) == wanted);
  }
  SUBCASE("replacing a world-readable file narrows it to 0600") {
    write_file_atomic(file, "old", fs::perms::all);
    write_file_atomic(file, "new");
    CHECK(mode_of(file) == (fs::perms::owner_read | fs::perms::owner_write));
  }
  CHECK_FALSE(fs::exists(tmp / "secret.key.tmp"));
}

TEST_CASE("write_file_atomic replaces the whole content and read_file reads it back") {
  TempDir tmp("crypto");
  auto file = tmp / "data";
  write_file_atomic(file, std::string(10000, 'a'));
  std::string binary("x\0y\xff", 4);
  write_file_atomic(file, binary);
  CHECK(read_file(file) == binary);
}

TEST_CASE("read_file refuses a file over its size limit and a missing file") {
  TempDir tmp("crypto");
  write_file_atomic(tmp / "big", std::string(100, 'b'));
  CHECK(read_file(tmp / "big", 100).size() == 100);
  CHECK_THROWS_AS(read_file(tmp / "big", 99), std::runtime_error);
  CHECK_THROWS_AS(read_file(tmp / "missing"), std::runtime_error);
}

TEST_CASE("whole_days rounds ASN1_TIME_diff's span down, negative from the first second past") {
  using tocsin::common::whole_days;
  CHECK(whole_days(0, 0) == 0);
  CHECK(whole_days(0, 86399) == 0);
  CHECK(whole_days(1, 0) == 1);
  CHECK(whole_days(30, 5) == 30);
  CHECK(whole_days(0, -1) == -1);
  CHECK(whole_days(-1, 0) == -1);
  CHECK(whole_days(-1, -1) == -2);
}
