// The audit log over the API: verifying its hash chain and exporting its entries.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>

#include "collector/api/handlers.hpp"
#include "collector/audit/audit.hpp"

namespace tocsin::collector::detail::api {

// docs/AUDIT.md. Approver and above: the log names people, agents and token hash prefixes.
// Both walk the log and run on the worker thread (handle_offloaded).

namespace {

AuditLog& audit_log(State& st) {
  if (!st.alerting.audit)
    throw HttpError(http::status::service_unavailable,
                    "the audit log is not enabled in this collector");
  return *st.alerting.audit;
}

}  // namespace

json get_audit_verify(State& st, const Params&) {
  return audit_verify_json(audit_log(st).verify());
}

json get_audit_export(State& st, const Params& p) {
  auto& audit = audit_log(st);
  std::int64_t since = since_param(p, "7d");
  auto text = param(p, "from_seq", "1");
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
  auto from = std::stoull(text);
  json list = json::array();
  auto entries = audit.list(from, since, limit_param(p));
  for (const auto& e : entries) list.push_back(audit_entry_json(e));
  return {{"entries", std::move(list)},
          {"next_from_seq", entries.empty() ? from : entries.back().seq + 1}};
}

}  // namespace tocsin::collector::detail::api
