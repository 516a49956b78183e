// Webhook and HEC requests: which alert source a request is for, whether it may speak, and
// what to answer. Pure functions; the API server does the I/O and awaits the correlator.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/alert_sink.hpp"
#include "collector/alerts/alert_sources.hpp"

namespace tocsin::collector {

inline constexpr std::string_view kHookPrefix = "/hooks/";
inline constexpr std::string_view kHecPath = "/services/collector/event";

bool is_hook_path(std::string_view path);  // /hooks/... or the HEC event paths

struct HookRequest {
  std::string_view path;           // without the query
  std::string_view query;          // raw, after '?'
  std::string_view authorization;  // the Authorization header
  std::string_view token_header;   // X-Tocsin-Token
  std::string_view body;
  std::int64_t arrival_ns = 0;
};

struct HookReply {
  int status = 200;
  std::string body;        // JSON
  bool challenge = false;  // add WWW-Authenticate
};

// The largest body any source on this path accepts (before authentication: the parser's cap).
std::size_t hook_body_limit(const std::vector<AlertSourceConfig>& sources, std::string_view path);
// The source name a path names, for counting a refused (e.g. oversized) request; "" if none.
std::string hook_source_name(const std::vector<AlertSourceConfig>& sources, std::string_view path);

// Authenticates from the request line and headers alone (the body may not be read yet), so
// an unauthenticated sender never gets a body buffer: the source, or the refusal to send.
std::variant<const AlertSourceConfig*, HookReply> authenticate_hook(
    const std::vector<AlertSourceConfig>& sources, const HookRequest& req, AlertSink& sink);

// Authenticates and parses. Returns the alerts to submit, or the reply for a refused request
// (the refusal is reported to `sink.rejected`). A token is compared in constant time.
struct HookAccepted {
  const AlertSourceConfig* source = nullptr;
  std::vector<Alert> alerts;
};
std::variant<HookAccepted, HookReply> prepare_hook(const std::vector<AlertSourceConfig>& sources,
                                                   const HookRequest& req, AlertSink& sink);
// The answer once the correlator stored the alerts (or failed to).
HookReply hook_reply(const AlertSourceConfig& source, const SubmitOutcome& outcome);

}  // namespace tocsin::collector
