// Running the cross-built Windows agent under wine64 (Debian's wine 8) from a test.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/integration/harness.hpp"

namespace tocsin::test {

// The prefix prepared once by the `wine_prefix` CTest fixture (tests/windows/wine-prefix).
inline fs::path wine_prefix() {
  return TOCSIN_WINE_PREFIX;
}
inline fs::path windows_agent() {
  return TOCSIN_WINDOWS_AGENT;
}

// A Linux path as the Windows program sees it (wine maps / to drive Z:).
inline std::string winpath(const fs::path& p) {
  auto s = "Z:" + fs::absolute(p).string();
  std::replace(s.begin(), s.end(), '/', '\\');
  return s;
}

// The Linux argv that runs a Windows program (or a wine builtin such as msiexec, sc) in
// `prefix`.
inline std::vector<std::string> wine_argv(const std::vector<std::string>& args,
                                          const fs::path& prefix = wine_prefix()) {
  std::vector<std::string> argv = {"/usr/bin/env", "WINEPREFIX=" + prefix.string(),
                                   "WINEDEBUG=-all", "/usr/lib/wine/wine64"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// Runs a Windows program (or a wine builtin) in `prefix` to completion.
inline CommandResult wine(const std::vector<std::string>& args,
                          std::chrono::milliseconds timeout = 120s,
                          const fs::path& prefix = wine_prefix()) {
  return run_command(wine_argv(args, prefix), timeout);
}

// Enrolls the Windows agent at `c` into `state_dir`; returns the agent id.
inline std::string enroll(Collector& c, const fs::path& state_dir,
                          const fs::path& prefix = wine_prefix()) {
  auto r = wine({windows_agent().string(), "enroll", "--server", c.agent_endpoint(), "--token",
                 c.create_token(), "--ca", winpath(c.ca_pem()), "--state-dir", winpath(state_dir)},
                120s, prefix);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  auto pos = r.out.find("agt-");
  REQUIRE(pos != std::string::npos);
  return r.out.substr(pos, r.out.find(' ', pos) - pos);
}

// A copy of the shared prefix for one test that installs things, with its own wineserver
// kept alive between commands (a service runs only while its wineserver lives), for 30 s
// after the last one, so that even a killed test leaves nothing running for long.
struct OwnPrefix {
  explicit OwnPrefix(const fs::path& dir) : path(dir) {
    auto r = run_command({"/bin/cp", "-a", wine_prefix().string(), path.string()});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    server({"-p30"});
    // services.exe, and the services it starts, outlive each command: start them with their
    // output away from run_command's pipes, which they would otherwise hold open.
    auto boot = run_command({"/bin/sh", "-c",
                             "WINEPREFIX='" + path.string() +
                                 "' WINEDEBUG=-all /usr/lib/wine/wine64 wineboot >/dev/null 2>&1"},
                            120s);
    REQUIRE(boot.rc == 0);
  }
  ~OwnPrefix() {
    server({"-k"});
    server({"-w"});
  }
  OwnPrefix(const OwnPrefix&) = delete;
  OwnPrefix& operator=(const OwnPrefix&) = delete;
  void server(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"/usr/bin/env", "WINEPREFIX=" + path.string(),
                                     "/usr/bin/wineserver"};
    argv.insert(argv.end(), args.begin(), args.end());
    run_command(argv, 30s);
  }
  CommandResult run(const std::vector<std::string>& args, std::chrono::milliseconds t = 120s) {
    return wine(args, t, path);
  }
  fs::path c(const std::string& rel) const { return path / "drive_c" / rel; }
  // `sc query NAME` reports `state` (RUNNING, STOPPED ...), within `timeout`.
  bool service_reaches(const std::string& name, const std::string& state,
                       std::chrono::milliseconds timeout = 60s) {
    return wait_until(
        [&] {
          return run({"sc", "query", name}).out.find(state) != std::string::npos;
        },
        timeout);
  }
  // Stops the service through the SCM and waits until it reports STOPPED. Windows' msiexec
  // does that itself (ServiceControl Wait="yes"); wine's does not wait, and would then fail
  // to replace or remove a program file that is still running.
  void stop_service(const std::string& name = "tocsin-agent") {
    auto r = run({"sc", "stop", name});
    INFO(r.out << r.err);
    CHECK(service_reaches(name, "STOPPED"));
  }
  fs::path path;
};

}  // namespace tocsin::test
