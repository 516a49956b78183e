#include "collector/ingest/registry.hpp"

#include "common/clock.hpp"
#include "common/x509.hpp"

namespace tocsin::collector {

using nlohmann::json;

std::string Registry::hash_token(const std::string& token) {
  return common::to_hex(common::sha256(token));
}

bool Registry::well_formed_token(const std::string& token) {
  return token.size() == 64 &&
         token.find_first_not_of("0123456789abcdef") == std::string::npos;
}

namespace {
// Enough to tell tokens apart in the audit log; useless for guessing one.
std::string hash_prefix(const std::string& token_hash) {
  return token_hash.substr(0, 12);
}
}  // namespace

void Registry::commit(WriteSet ws, std::vector<AuditRecord> records) {
  if (audit_)
    audit_->commit(std::move(ws), records);
  else
    store_.commit(std::move(ws));
}

Registry::CreatedToken Registry::create_enroll_token(std::chrono::seconds ttl,
                                                     const std::string& created_by) {
  if (ttl.count() <= 0) throw std::invalid_argument("token ttl must be positive");
  if (ttl > max_ttl_)
    throw std::invalid_argument("token ttl exceeds the configured maximum (enrollment.max_token_ttl)");
  CreatedToken out;
  out.token = common::random_token();
  EnrollToken t;
  t.token_hash = hash_token(out.token);
  t.created_ns = common::now_ns();
  t.expires_ns = t.created_ns + std::chrono::duration_cast<std::chrono::nanoseconds>(ttl).count();
  t.created_by = created_by;
  out.expires_ns = t.expires_ns;
  WriteSet ws;
  ws.put_enroll_token(t);
  commit(std::move(ws), {{created_by,
                          "token_created",
                          "enroll-token",
                          {{"token_hash_prefix", hash_prefix(t.token_hash)},
                           {"expires_at", common::format_time(t.expires_ns)}}}});
  return out;
}

Registry::EnrollOutcome Registry::enroll(const common::EnrollReq& req, const std::string& remote) {
  EnrollOutcome out;
  auto refuse = [&](std::string code, std::string message) {
    out.error_code = std::move(code);
    out.message = std::move(message);
    WriteSet ws;
    ws.put_security_event({common::now_ns(), "enrollment_refused", "", remote,
                           out.error_code + ": " + out.message});
    // Not on the I/O thread's critical path: a flood of bad tokens must not stall acks.
    store_.commit_async(std::move(ws), [](std::string) {});
    return out;
  };
  if (!well_formed_token(req.token))
    return refuse("bad_token", "malformed enrollment token (expected 64 hex digits)");
  auto tok = store_.get_enroll_token(hash_token(req.token));
  if (!tok) return refuse("bad_token", "unknown enrollment token");
  auto now = common::now_ns();
  // Only someone who held this real token can get here: worth an audit entry (unknown tokens
  // are anyone's to send, and stay security events only).
  auto refuse_real = [&](std::string code, std::string message) {
    if (audit_)
      audit_->append("remote:" + remote, "token_rejected", "enroll-token",
                     {{"token_hash_prefix", hash_prefix(tok->token_hash)}, {"reason", code}});
    return refuse(std::move(code), std::move(message));
  };
  if (tok->used_ns)
    return refuse_real("token_used", "enrollment token was already used at " +
                                         common::format_time(tok->used_ns) + " by " + tok->used_by);
  if (now >= tok->expires_ns)
    return refuse_real("token_expired",
                       "enrollment token expired at " + common::format_time(tok->expires_ns));

  AgentRecord a;
  a.agent_id = "agt-" + common::random_id(12);
  try {
    out.cert_pem = ca_.issue_agent_cert(req.csr_pem, a.agent_id, cert_validity_);
  } catch (const std::invalid_argument& e) {
    return refuse("bad_csr", e.what());
  }
  auto cert = common::parse_cert_pem(out.cert_pem);
  a.hostname = req.hostname.substr(0, 255);  // may cut UTF-8; the store tolerates that
  a.os = req.os.substr(0, 255);
  a.version = req.version.substr(0, 64);
  a.cert_fingerprint = common::cert_fingerprint_hex(cert.get());
  a.public_key_hex = common::to_hex(common::cert_public_key(cert.get()).public_raw());
  a.enrolled_ns = now;
  tok->used_ns = now;
  tok->used_by = a.agent_id;
  WriteSet ws;  // token use and registration are one synced write: single use survives a crash
  ws.put_enroll_token(*tok);
  ws.put_agent(a);
  json token_detail = {{"token_hash_prefix", hash_prefix(tok->token_hash)},
                       {"token_created_by", tok->created_by}};
  json detail = token_detail;
  detail.update({{"hostname", a.hostname},
                 {"os", a.os},
                 {"version", a.version},
                 {"remote", remote},
                 {"cert_fingerprint", a.cert_fingerprint}});
  commit(std::move(ws), {{a.agent_id, "enrollment", a.agent_id, std::move(detail)},
                         {a.agent_id, "token_used", "enroll-token", std::move(token_detail)}});
  out.agent_id = a.agent_id;
  return out;
}

std::string Registry::create_api_token(const std::string& name, Role role,
                                       const std::string& created_by) {
  auto token = common::random_token();
  WriteSet ws;
  auto hash = hash_token(token);
  ws.put_api_token({hash, name, role, common::now_ns()});
  commit(std::move(ws), {{created_by,
                          "api_token_created",
                          name,
                          {{"role", role_name(role)}, {"token_hash_prefix", hash_prefix(hash)}}}});
  return token;
}

std::optional<ApiToken> Registry::authenticate_api(const std::string& token) const {
  if (!well_formed_token(token)) return std::nullopt;
  return store_.get_api_token(hash_token(token));
}

}  // namespace tocsin::collector
