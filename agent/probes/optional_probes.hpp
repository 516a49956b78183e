// The probe kinds built on libcurl and c-ares (web_download, http_beacon, tls_policy,
// http_check, dns_lookup) are optional: CMake option TOCSIN_WEB_PROBES picks
// optional_probes.cpp (all of them) or optional_probes_none.cpp (none; the Windows build).
// The agent does not link libcurl: the first web probe run loads it (common/curl_loader.hpp).
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/runtime/config.hpp"

namespace tocsin::common {
class ConfigNode;
}

namespace tocsin::agent {

class Probe;
struct ClockState;
using ProbeSet = std::map<std::string, std::unique_ptr<Probe>>;

// The optional kinds, whether or not this build has them.
inline const std::vector<std::string> kOptionalProbeKinds = {
    "web_download", "http_beacon", "tls_policy", "http_check", "dns_lookup"};
bool optional_probes_built();

// Reads the params of an optional kind into `s`. For a kind this build lacks it fails with
// file:line: "probe kind 'X' is not available in this build".
void load_optional_params(const common::ConfigNode& t, const common::ConfigNode& params,
                          TestSpec& s, const Allowlist& allow);
void add_optional_probes(ProbeSet& probes, boost::asio::any_io_executor ex, const AgentConfig& cfg,
                         const ClockState& clock);

}  // namespace tocsin::agent
