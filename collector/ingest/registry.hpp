// Enrollment tokens, agent registration and API tokens: who may talk to the collector.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "collector/audit/audit.hpp"
#include "collector/ingest/ca.hpp"
#include "collector/store/store.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

class Registry {
 public:
  Registry(Store& store, const CertificateAuthority& ca, std::chrono::milliseconds max_token_ttl,
           std::chrono::hours cert_validity)
      : store_(store), ca_(ca), max_ttl_(max_token_ttl), cert_validity_(cert_validity) {}

  struct CreatedToken {
    std::string token;  // shown once; only its hash is stored
    std::int64_t expires_ns = 0;
  };
  // Throws std::invalid_argument if ttl is not positive or exceeds the configured maximum.
  CreatedToken create_enroll_token(std::chrono::seconds ttl, const std::string& created_by);

  struct EnrollOutcome {
    std::string error_code;  // empty on success: bad_token, token_used, token_expired, bad_csr
    std::string message;     // what the agent's operator reads
    std::string agent_id;
    std::string cert_pem;
  };
  // Single-use: the token is marked used in the same synced write that registers the agent.
  EnrollOutcome enroll(const common::EnrollReq& req, const std::string& remote);

  std::string create_api_token(const std::string& name, Role role,
                               const std::string& created_by = "system");
  std::optional<ApiToken> authenticate_api(const std::string& token) const;

  // With an audit log, token creation, enrollment and refusals of real tokens are recorded in
  // the same synced write as the change (docs/AUDIT.md). Set before serving; must outlive this.
  void set_audit(AuditLog* audit) { audit_ = audit; }

  static std::string hash_token(const std::string& token);
  static bool well_formed_token(const std::string& token);  // 64 lower-case hex digits

 private:
  Store& store_;
  const CertificateAuthority& ca_;
  std::chrono::milliseconds max_ttl_;
  std::chrono::hours cert_validity_;
  AuditLog* audit_ = nullptr;

  void commit(WriteSet ws, std::vector<AuditRecord> records);
};

}  // namespace tocsin::collector
