// The collector's CA: files it creates, the agent certificates it issues, what it refuses.
#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <filesystem>
#include <memory>
#include <string>

#include "collector/ingest/ca.hpp"
#include "common/crypto.hpp"
#include "common/x509.hpp"
#include "tests/unit/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using tocsin::collector::CertificateAuthority;
using tocsin::common::cert_common_name;
using tocsin::common::cert_public_key;
using tocsin::common::Ed25519Key;
using tocsin::common::make_csr_pem;
using tocsin::common::parse_cert_pem;
using tocsin::common::PkeyPtr;
using tocsin::common::read_file;
using tocsin::common::X509Ptr;
using tocsin::common::X509ReqPtr;
using tocsin::test::TempDir;

namespace {

struct CaDir {
  TempDir tmp{"ca"};
  CaDir() { CertificateAuthority::initialize(tmp.path(), {"collector.lab", "127.0.0.1"}); }
  CertificateAuthority load() const {
    return CertificateAuthority::load(tmp / "ca.pem", tmp / "ca.key");
  }
  X509Ptr cert(const std::string& name) const { return parse_cert_pem(read_file(tmp / name)); }
};

fs::perms mode_of(const fs::path& p) {
  return fs::status(p).permissions() & fs::perms::all;
}

// Verifies `leaf` up to `ca` as OpenSSL would for a TLS peer with the given purpose.
bool chain_verifies(X509* leaf, X509* ca, int purpose) {
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), X509_STORE_free);
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(),
                                                                      X509_STORE_CTX_free);
  REQUIRE(X509_STORE_add_cert(store.get(), ca) == 1);
  REQUIRE(X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr) == 1);
  X509_STORE_CTX_set_purpose(ctx.get(), purpose);
  bool ok = X509_verify_cert(ctx.get()) == 1;
  if (!ok) MESSAGE(X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get())));
  return ok;
}

std::string csr_to_pem(X509_REQ* req) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  REQUIRE(PEM_write_bio_X509_REQ(bio.get(), req) == 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

// A CSR for `subject_key`, signed with `signing_key` (the same key for an honest CSR).
std::string hand_made_csr(EVP_PKEY* subject_key, EVP_PKEY* signing_key, const EVP_MD* md) {
  X509ReqPtr req(X509_REQ_new());
  REQUIRE(req);
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  REQUIRE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>("agent"), -1, -1,
                                     0) == 1);
  REQUIRE(X509_REQ_set_pubkey(req.get(), subject_key) == 1);
  REQUIRE(X509_REQ_sign(req.get(), signing_key, md) > 0);
  return csr_to_pem(req.get());
}

}  // namespace

TEST_CASE("initialize writes the CA and server certificates with private keys at 0600") {
  CaDir d;
  const auto owner_rw = fs::perms::owner_read | fs::perms::owner_write;
  for (const char* name : {"ca.pem", "ca.key", "server.pem", "server.key"}) {
    CAPTURE(std::string(name));
    CHECK(fs::is_regular_file(d.tmp / name));
  }
  CHECK(mode_of(d.tmp / "ca.key") == owner_rw);
  CHECK(mode_of(d.tmp / "server.key") == owner_rw);
  CHECK((mode_of(d.tmp / "ca.pem") & fs::perms::owner_read) == fs::perms::owner_read);
  // The keys are Ed25519 private keys.
  CHECK_NOTHROW(Ed25519Key::from_private_pem(read_file(d.tmp / "ca.key")));
  CHECK_NOTHROW(Ed25519Key::from_private_pem(read_file(d.tmp / "server.key")));
}

TEST_CASE("the CA certificate is a self-signed CA") {
  CaDir d;
  auto ca = d.cert("ca.pem");
  CHECK(X509_check_ca(ca.get()) > 0);
  CHECK(X509_verify(ca.get(), X509_get0_pubkey(ca.get())) == 1);
  CHECK(X509_NAME_cmp(X509_get_subject_name(ca.get()), X509_get_issuer_name(ca.get())) == 0);
}

TEST_CASE("the server certificate is issued by the CA for the requested names") {
  CaDir d;
  auto ca = d.cert("ca.pem");
  auto srv = d.cert("server.pem");
  CHECK(chain_verifies(srv.get(), ca.get(), X509_PURPOSE_SSL_SERVER));
  CHECK(X509_check_ca(srv.get()) == 0);
  CHECK(X509_check_host(srv.get(), "collector.lab", 0, 0, nullptr) == 1);
  CHECK(X509_check_ip_asc(srv.get(), "127.0.0.1", 0) == 1);
  CHECK(X509_check_host(srv.get(), "other.lab", 0, 0, nullptr) != 1);
  CHECK(X509_check_private_key(
            srv.get(), Ed25519Key::from_private_pem(read_file(d.tmp / "server.key")).get()) == 1);
}

TEST_CASE("initialize refuses to create a server certificate without a name") {
  TempDir tmp("ca");
  CHECK_THROWS_AS(CertificateAuthority::initialize(tmp.path(), {}), std::invalid_argument);
}

TEST_CASE(
    "an agent certificate carries the agent id and the CSR's key and verifies against the CA") {
  CaDir d;
  auto ca = d.load();
  auto agent_key = Ed25519Key::generate();
  // The CN the agent asks for is ignored: the CA decides the identity.
  auto pem = ca.issue_agent_cert(make_csr_pem(agent_key, "i-am-the-admin"), "agent-42", 24h * 30);
  auto cert = parse_cert_pem(pem);
  auto ca_cert = d.cert("ca.pem");
  CHECK(cert_common_name(cert.get()) == "agent-42");
  CHECK(cert_public_key(cert.get()).public_raw() == agent_key.public_raw());
  CHECK(X509_verify(cert.get(), X509_get0_pubkey(ca_cert.get())) == 1);
  CHECK(X509_NAME_cmp(X509_get_issuer_name(cert.get()), X509_get_subject_name(ca_cert.get())) == 0);
  CHECK(chain_verifies(cert.get(), ca_cert.get(), X509_PURPOSE_SSL_CLIENT));
  CHECK(X509_check_ca(cert.get()) == 0);
  CHECK(ca.ca_pem() == read_file(d.tmp / "ca.pem"));
  SUBCASE("it does not verify against another CA") {
    CaDir other;
    auto other_ca = other.cert("ca.pem");
    CHECK(X509_verify(cert.get(), X509_get0_pubkey(other_ca.get())) != 1);
  }
  SUBCASE("two certificates get different serial numbers") {
    auto again = parse_cert_pem(ca.issue_agent_cert(make_csr_pem(agent_key, "x"), "agent-42", 24h));
    CHECK(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert.get()),
                           X509_get0_serialNumber(again.get())) != 0);
  }
}

TEST_CASE("an agent certificate is valid from just before now for the requested time") {
  CaDir d;
  auto ca = d.load();
  auto cert = parse_cert_pem(
      ca.issue_agent_cert(make_csr_pem(Ed25519Key::generate(), "a"), "agent-1", 48h));
  int days = 0, secs = 0;
  REQUIRE(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert.get()),
                         X509_get0_notAfter(cert.get())) == 1);
  // 48 h plus the 300 s of skew allowance before now; the two stamps come from separate calls.
  auto span = static_cast<long>(days) * 86400 + secs;
  CHECK(span >= 48 * 3600 + 300);
  CHECK(span < 48 * 3600 + 300 + 60);
  CHECK(X509_cmp_current_time(X509_get0_notBefore(cert.get())) < 0);
  CHECK(X509_cmp_current_time(X509_get0_notAfter(cert.get())) > 0);
}

TEST_CASE("a CSR for a non-Ed25519 key is refused with std::invalid_argument") {
  CaDir d;
  auto ca = d.load();
  PkeyPtr ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  REQUIRE(ec);
  auto csr = hand_made_csr(ec.get(), ec.get(), EVP_sha256());
  CHECK_THROWS_WITH_AS(ca.issue_agent_cert(csr, "agent-1", 24h), doctest::Contains("Ed25519"),
                       std::invalid_argument);
}

TEST_CASE("a CSR whose self-signature does not verify is refused") {
  CaDir d;
  auto ca = d.load();
  auto claimed = Ed25519Key::generate(), signer = Ed25519Key::generate();
  // Asks for a certificate on `claimed` without holding its private key.
  auto csr = hand_made_csr(claimed.get(), signer.get(), nullptr);
  CHECK_THROWS_WITH_AS(ca.issue_agent_cert(csr, "agent-1", 24h), doctest::Contains("signature"),
                       std::invalid_argument);
}

TEST_CASE("a garbage CSR is refused with std::invalid_argument") {
  CaDir d;
  auto ca = d.load();
  auto good = make_csr_pem(Ed25519Key::generate(), "a");
  for (const std::string& csr : {std::string(), std::string("not a csr"),
                                 good.substr(0, good.size() / 2), read_file(d.tmp / "ca.pem")}) {
    CAPTURE(csr);
    CHECK_THROWS_AS(ca.issue_agent_cert(csr, "agent-1", 24h), std::invalid_argument);
  }
}

TEST_CASE("load refuses a CA key that does not belong to the CA certificate") {
  CaDir a, b;
  CHECK_NOTHROW(a.load());
  CHECK_THROWS_AS(CertificateAuthority::load(a.tmp / "ca.pem", b.tmp / "ca.key"),
                  std::runtime_error);
  SUBCASE("nor a missing file") {
    CHECK_THROWS(CertificateAuthority::load(a.tmp / "ca.pem", a.tmp / "missing.key"));
  }
}
