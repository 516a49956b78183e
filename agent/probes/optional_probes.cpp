#include "agent/probes/optional_probes.hpp"

#include "agent/probes/dns_lookup.hpp"
#include "agent/probes/http_beacon.hpp"
#include "agent/probes/http_check.hpp"
#include "agent/probes/tls_policy.hpp"
#include "agent/probes/web_download.hpp"
#include "agent/runtime/agent.hpp"
#include "common/config.hpp"

namespace tocsin::agent {

bool optional_probes_built() {
  return true;
}

void load_optional_params(const common::ConfigNode& t, const common::ConfigNode& params,
                          TestSpec& s, const Allowlist& allow) {
  if (s.probe == "web_download")
    load_web_download(t, params, s, allow);
  else if (s.probe == "http_beacon")
    load_http_beacon(t, params, s, allow);
  else if (s.probe == "tls_policy")
    load_tls_policy(t, params, s, allow);
  else if (s.probe == "http_check")
    load_http_check(t, params, s, allow);
  else if (s.probe == "dns_lookup")
    load_dns_lookup(t, params, s, allow);
}

void add_optional_probes(ProbeSet& probes, boost::asio::any_io_executor ex, const AgentConfig& cfg,
                         const ClockState& clock) {
  probes["web_download"] = std::make_unique<WebDownloadProbe>(ex, cfg.allowlist, clock);
  probes["http_beacon"] = std::make_unique<HttpBeaconProbe>(ex, cfg.allowlist, clock);
  probes["tls_policy"] = std::make_unique<TlsPolicyProbe>(ex, cfg.allowlist, clock);
  probes["http_check"] = std::make_unique<HttpCheckProbe>(ex, cfg.allowlist, clock);
  probes["dns_lookup"] = std::make_unique<DnsLookupProbe>(ex, cfg.allowlist, clock);
}

}  // namespace tocsin::agent
