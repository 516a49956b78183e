// Restarting a service through the platform's own service manager, for the native form of an
// allowed_actions.restart_service entry: systemd (`systemctl restart UNIT`, by argv) on Linux,
// the Service Control Manager on Windows. One implementation per platform
// (service_control_posix.cpp, service_control_windows.cpp; CMake picks one).
#pragma once

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>

namespace tocsin::agent {

// How an action ran.
struct ActionOutcome {
  std::string verdict;  // executed | failed
  // exec and systemd: exit_<n>, timeout, signal_<n>, spawn_failed. Windows SCM: restarted, or
  // a failure reason (see docs/COMMANDS-agent.md).
  std::string reason;
  int exit_code = -1;  // the program's; SCM: 0, or the Win32 error of the call that failed
  std::string output;  // stdout then stderr (SCM: what happened, in words), capped
  std::map<std::string, std::string> evidence;  // added to the result (SCM: states and pids)
};
inline constexpr std::size_t kMaxActionOutput = 4096;

// Why `name` cannot be the native form's service name here, as a phrase that follows the quoted
// name in a config error ("is not a systemd unit name ..."); empty when it can.
// POSIX: a systemd unit name (valid_unit_name). Windows: a service name of 1-256 printable
// ASCII characters without '/' or '\'.
std::string service_name_problem(std::string_view name);

// Restarts service `name` (already checked by service_name_problem) within `timeout`.
// POSIX: runs `systemctl restart NAME` (argv, no shell) with `systemctl` as the program.
// Windows: stops the service through the SCM, waits for it to stop, starts it, waits for it to
// run; `systemctl` is not used. Never throws for the service's or the OS's failures: they are
// a `failed` outcome with a reason.
boost::asio::awaitable<ActionOutcome> restart_service_native(boost::asio::any_io_executor ex,
                                                             std::string name,
                                                             std::chrono::milliseconds timeout,
                                                             std::string systemctl);

}  // namespace tocsin::agent
