// The collector's own small CA: issues the server certificate and agent client certificates.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/crypto.hpp"
#include "common/x509.hpp"

namespace tocsin::collector {

class CertificateAuthority {
 public:
  // Creates ca.pem/ca.key (Ed25519, 10 years) and server.pem/server.key whose SANs are
  // `server_names` (DNS names or IP addresses) in `dir`. Keys are written 0600.
  static void initialize(const std::filesystem::path& dir,
                         const std::vector<std::string>& server_names);
  static CertificateAuthority load(const std::filesystem::path& ca_cert,
                                   const std::filesystem::path& ca_key);

  // Issues a client certificate (CN=agent_id, clientAuth) for the CSR's key. The CSR must be
  // self-signed by an Ed25519 key; throws std::invalid_argument naming what is wrong.
  std::string issue_agent_cert(const std::string& csr_pem, const std::string& agent_id,
                               std::chrono::hours validity) const;
  std::string ca_pem() const;

 private:
  CertificateAuthority(common::X509Ptr cert, common::Ed25519Key key)
      : cert_(std::move(cert)), key_(std::move(key)) {}
  common::X509Ptr cert_;
  common::Ed25519Key key_;
};

}  // namespace tocsin::collector
