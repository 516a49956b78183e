// A build without libcurl and c-ares (TOCSIN_WEB_PROBES=OFF, the Windows agent): a test of
// one of those kinds is refused when the configuration is loaded, never at run time.
#include "agent/probes/optional_probes.hpp"

#include "common/config.hpp"

namespace tocsin::agent {

bool optional_probes_built() {
  return false;
}

void load_optional_params(const common::ConfigNode& t, const common::ConfigNode&, TestSpec& s,
                          const Allowlist&) {
  t.fail(t.has("probe") ? "probe" : "kind",
         "probe kind '" + s.probe +
             "' is not available in this build (built without libcurl and c-ares)");
}

void add_optional_probes(ProbeSet&, boost::asio::any_io_executor, const AgentConfig&,
                         const ClockState&) {}

}  // namespace tocsin::agent
