// Running the cross-built Windows agent under wine64 (Debian's wine 8) from a test.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "tests/integration/harness.hpp"

namespace firedrill::test {

// The prefix prepared once by the `wine_prefix` CTest fixture (tests/windows/wine-prefix).
inline fs::path wine_prefix() {
  return FIREDRILL_WINE_PREFIX;
}
inline fs::path windows_agent() {
  return FIREDRILL_WINDOWS_AGENT;
}

// A Linux path as the Windows program sees it (wine maps / to drive Z:).
inline std::string winpath(const fs::path& p) {
  auto s = "Z:" + fs::absolute(p).string();
  std::replace(s.begin(), s.end(), '/', '\\');
  return s;
}

// Runs a Windows program (or a wine builtin such as msiexec, sc) in `prefix`.
inline CommandResult wine(const std::vector<std::string>& args,
                          std::chrono::milliseconds timeout = 120s,
                          const fs::path& prefix = wine_prefix()) {
  std::vector<std::string> argv = {"/usr/bin/env", "WINEPREFIX=" + prefix.string(),
                                   "WINEDEBUG=-all", "/usr/lib/wine/wine64"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, timeout);
}

}  // namespace firedrill::test
