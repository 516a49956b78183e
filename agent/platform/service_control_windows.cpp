// Windows: the native form names a service of the Service Control Manager, restarted with the
// SCM's own calls (stop, wait until stopped, start, wait until running) rather than through a
// program such as sc.exe, so that each failure comes back as a Win32 error with its text. The
// SCM calls block, so one restart is one job on the blocking pool, bounded by the timeout.
#include <windows.h>

#include <algorithm>
#include <thread>
#include <utility>  // before Asio (probe.hpp): Boost 1.74's awaitable.hpp needs std::exchange

#include "agent/probes/probe.hpp"
#include "agent/platform/service_control.hpp"
#include "agent/platform/win32.hpp"

namespace tocsin::agent {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct ScHandle {
  explicit ScHandle(SC_HANDLE handle) : h(handle) {}
  ~ScHandle() {
    if (h) ::CloseServiceHandle(h);
  }
  ScHandle(const ScHandle&) = delete;
  ScHandle& operator=(const ScHandle&) = delete;
  SC_HANDLE h;
};

const char* state_name(DWORD state) {
  switch (state) {
    case SERVICE_STOPPED:
      return "stopped";
    case SERVICE_START_PENDING:
      return "start_pending";
    case SERVICE_STOP_PENDING:
      return "stop_pending";
    case SERVICE_RUNNING:
      return "running";
    case SERVICE_CONTINUE_PENDING:
      return "continue_pending";
    case SERVICE_PAUSE_PENDING:
      return "pause_pending";
    case SERVICE_PAUSED:
      return "paused";
    default:
      return "unknown";
  }
}

bool pending(DWORD state) {
  return state == SERVICE_START_PENDING || state == SERVICE_STOP_PENDING ||
         state == SERVICE_CONTINUE_PENDING || state == SERVICE_PAUSE_PENDING;
}

// One restart of one service. Every wait ends at `deadline_`.
class Restart {
 public:
  Restart(std::string name, milliseconds timeout)
      : name_(std::move(name)),
        wname_(name_.begin(), name_.end()),  // ASCII: service_name_problem checked it
        timeout_(timeout),
        deadline_(Clock::now() + timeout) {}

  ActionOutcome run() {
    ScHandle scm(::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT));
    if (!scm.h)
      return failed("scm_unavailable", ::GetLastError(), "cannot open the Service Control Manager");
    ScHandle svc(
        ::OpenServiceW(scm.h, wname_.c_str(), SERVICE_STOP | SERVICE_START | SERVICE_QUERY_STATUS));
    if (!svc.h) {
      DWORD code = ::GetLastError();
      bool missing = code == ERROR_SERVICE_DOES_NOT_EXIST || code == ERROR_INVALID_NAME;
      return failed(missing ? "no_such_service" : denied_or(code, "open_failed"), code,
                    "cannot open the service");
    }
    DWORD code = 0;
    if (!query(svc.h, code)) return failed("query_failed", code, "cannot query the service");
    out_.evidence["previous_state"] = state_name(status_.dwCurrentState);
    out_.evidence["previous_pid"] = std::to_string(status_.dwProcessId);
    auto previous = describe();

    // A service that is starting (or pausing, continuing) refuses a stop until it settles; one
    // that is already stopping is left to finish.
    if (pending(status_.dwCurrentState) && status_.dwCurrentState != SERVICE_STOP_PENDING &&
        !settle(svc.h, code))
      return code ? failed("query_failed", code, "cannot query the service")
                  : failed("stop_timeout", 0, "still " + describe() + " " + after_timeout());
    if (status_.dwCurrentState != SERVICE_STOPPED) {
      SERVICE_STATUS ignored{};
      if (status_.dwCurrentState != SERVICE_STOP_PENDING &&
          !::ControlService(svc.h, SERVICE_CONTROL_STOP, &ignored)) {
        code = ::GetLastError();
        if (code != ERROR_SERVICE_NOT_ACTIVE)
          return failed(denied_or(code, "stop_failed"), code, "cannot stop the service");
      }
      if (!wait_for(svc.h, SERVICE_STOPPED, code))
        return code ? failed("query_failed", code, "cannot query the service")
                    : failed("stop_timeout", 0,
                             "not stopped (" + describe() + ") " + after_timeout());
    }

    if (!::StartServiceW(svc.h, 0, nullptr)) {
      code = ::GetLastError();
      // Someone else (a recovery action, an administrator) started it meanwhile: still wait.
      if (code != ERROR_SERVICE_ALREADY_RUNNING)
        return failed(code == ERROR_SERVICE_DISABLED ? "disabled" : denied_or(code, "start_failed"),
                      code, "stopped, and cannot start it again");
    }
    if (!wait_for(svc.h, SERVICE_RUNNING, code)) {
      if (code) return failed("query_failed", code, "cannot query the service");
      if (status_.dwCurrentState == SERVICE_STOPPED) return exited_on_start();
      return failed("start_timeout", 0, "not running (" + describe() + ") " + after_timeout());
    }
    record_new_state();
    out_.verdict = "executed";
    out_.reason = "restarted";
    out_.exit_code = 0;
    out_.output = name_ + ": restarted: " + previous + " -> " + describe();
    return out_;
  }

 private:
  static std::string denied_or(DWORD code, const char* reason) {
    return code == ERROR_ACCESS_DENIED ? "access_denied" : reason;
  }

  std::string describe() const {
    std::string s = state_name(status_.dwCurrentState);
    if (status_.dwProcessId) s += " (pid " + std::to_string(status_.dwProcessId) + ")";
    return s;
  }
  std::string after_timeout() const {
    return "after the action timeout of " + std::to_string(timeout_.count()) + " ms";
  }
  void record_new_state() {
    if (!queried_) return;
    out_.evidence["new_state"] = state_name(status_.dwCurrentState);
    out_.evidence["new_pid"] = std::to_string(status_.dwProcessId);
  }

  // code 0: no Win32 error to tell (a timeout).
  ActionOutcome failed(const std::string& reason, DWORD code, const std::string& what) {
    record_new_state();
    out_.verdict = "failed";
    out_.reason = reason;
    out_.exit_code = code ? static_cast<int>(code) : -1;
    out_.output = name_ + ": " + what;
    if (code) {
      out_.output += ": " + win32::message(code);
      out_.evidence["win32_error"] = std::to_string(code);
    }
    out_.output.resize(std::min(out_.output.size(), kMaxActionOutput));
    return out_;
  }

  // It stopped instead of running: its own exit code says why.
  ActionOutcome exited_on_start() {
    DWORD code = status_.dwWin32ExitCode;
    std::string why = "started, then stopped again";
    if (code == ERROR_SERVICE_SPECIFIC_ERROR) {
      out_.evidence["service_exit_code"] = std::to_string(status_.dwServiceSpecificExitCode);
      why +=
          " with service-specific exit code " + std::to_string(status_.dwServiceSpecificExitCode);
    }
    return failed("exited_on_start", code, why);
  }

  bool query(SC_HANDLE svc, DWORD& code) {
    DWORD needed = 0;
    if (::QueryServiceStatusEx(svc, SC_STATUS_PROCESS_INFO, reinterpret_cast<LPBYTE>(&status_),
                               sizeof status_, &needed)) {
      queried_ = true;
      return true;
    }
    code = ::GetLastError();
    return false;
  }

  // Sleeps for a tenth of the service's own wait hint (Microsoft's pattern for SCM waits; wine
  // does not implement NotifyServiceStatusChange fully), within [20 ms, 500 ms] and the
  // deadline. False when the deadline has passed.
  bool pause() {
    auto left = std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now());
    if (left <= milliseconds(0)) return false;
    milliseconds hint(status_.dwWaitHint / 10);
    std::this_thread::sleep_for(
        std::min({std::clamp(hint, milliseconds(20), milliseconds(500)), left}));
    return true;
  }

  // Until the service is in `target` (true), stops while starting (false, code 0), the deadline
  // passes (false, code 0) or a query fails (false, code set).
  bool wait_for(SC_HANDLE svc, DWORD target, DWORD& code) {
    code = 0;
    for (;;) {
      if (!query(svc, code)) return false;
      if (status_.dwCurrentState == target) return true;
      if (target == SERVICE_RUNNING && status_.dwCurrentState == SERVICE_STOPPED) return false;
      if (!pause()) return false;
    }
  }

  // Until the service is in no pending state.
  bool settle(SC_HANDLE svc, DWORD& code) {
    code = 0;
    while (pending(status_.dwCurrentState)) {
      if (!pause() || !query(svc, code)) return false;
    }
    return true;
  }

  std::string name_;
  std::wstring wname_;
  milliseconds timeout_;
  Clock::time_point deadline_;
  SERVICE_STATUS_PROCESS status_{};
  bool queried_ = false;
  ActionOutcome out_;
};

}  // namespace

std::string service_name_problem(std::string_view name) {
  bool ok =
      !name.empty() && name.size() <= 256 && std::all_of(name.begin(), name.end(), [](char ch) {
        return ch >= 0x20 && ch <= 0x7e && ch != '/' && ch != '\\';
      });
  if (ok) return {};
  return "is not a Windows service name (1-256 printable ASCII characters, no '/' or '\\'; give "
         "`exec:` for anything else)";
}

boost::asio::awaitable<ActionOutcome> restart_service_native(boost::asio::any_io_executor ex,
                                                             std::string name, milliseconds timeout,
                                                             std::string systemctl) {
  (void)ex;
  (void)systemctl;
  auto job = [name, timeout] { return Restart(name, timeout).run(); };
  co_return co_await run_blocking(job);
}

}  // namespace tocsin::agent
