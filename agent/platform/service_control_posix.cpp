// POSIX: the native form is a systemd unit, restarted by running `systemctl restart UNIT`
// (argv, no shell) like any other action program.
#include "agent/actions/actions.hpp"
#include "agent/platform/process.hpp"
#include "agent/platform/service_control.hpp"

namespace tocsin::agent {

std::string service_name_problem(std::string_view name) {
  if (!valid_action_name(name))
    return "is not a valid name (1-255 of A-Z a-z 0-9 @ . _ : -, not starting with '-')";
  if (!valid_unit_name(name))
    return "is not a systemd unit name (it must end in a unit suffix such as .service; give "
           "`exec:` for anything else)";
  return {};
}

boost::asio::awaitable<ActionOutcome> restart_service_native(boost::asio::any_io_executor ex,
                                                             std::string name,
                                                             std::chrono::milliseconds timeout,
                                                             std::string systemctl) {
  std::vector<std::string> argv{systemctl, "restart", name};
  auto p = co_await run_process(ex, argv, timeout, kMaxActionOutput);
  co_return outcome_of_process(p, systemctl);
}

}  // namespace tocsin::agent
