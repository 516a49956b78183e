// Windows: paths under %ProgramData%\Tocsin, the Service Control Manager, and file
// operations whose refusals by an anti-malware scanner (ERROR_VIRUS_INFECTED, access denied)
// read as EACCES with the Win32 error kept as evidence.
#include <windows.h>
// After windows.h:
#include <knownfolders.h>
#include <shlobj.h>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <cerrno>
#include <csignal>
#include <iostream>
#include <mutex>
#include <stdexcept>

#include "agent/platform/platform.hpp"
#include "agent/platform/win32.hpp"

namespace tocsin::agent::platform {

namespace fs = std::filesystem;

namespace {

fs::path program_data() {
  PWSTR path = nullptr;
  fs::path out = "C:\\ProgramData";
  if (SUCCEEDED(::SHGetKnownFolderPath(FOLDERID_ProgramData, 0, nullptr, &path)) && path)
    out = path;
  ::CoTaskMemFree(path);
  return out / "Tocsin";
}

FileStatus status_of(DWORD code) {
  if (code == ERROR_SUCCESS) return {};
  return {win32::to_errno(code), win32::message(code)};
}

}  // namespace

fs::path default_config_file() {
  return program_data() / "agent.yaml";
}
fs::path default_state_dir() {
  return program_data() / "state";
}
fs::path default_kill_switch() {
  return program_data() / "disabled";
}

std::string hostname() {
  char h[256] = {0};
  DWORD n = sizeof h - 1;
  if (!::GetComputerNameExA(ComputerNameDnsHostname, h, &n)) return "unknown";
  return h;
}

std::string os_description() {
  // GetVersionEx answers what the manifest allows; ntdll's RtlGetVersion says what runs.
  using RtlGetVersionFn = LONG(WINAPI*)(OSVERSIONINFOW*);
  OSVERSIONINFOW v{};
  v.dwOSVersionInfoSize = sizeof v;
  auto ntdll = ::GetModuleHandleW(L"ntdll.dll");
  auto fn = ntdll ? reinterpret_cast<RtlGetVersionFn>(
                        reinterpret_cast<void*>(::GetProcAddress(ntdll, "RtlGetVersion")))
                  : nullptr;
  if (!fn || fn(&v) != 0) return "Windows x64";
  return "Windows " + std::to_string(v.dwMajorVersion) + "." + std::to_string(v.dwMinorVersion) +
         "." + std::to_string(v.dwBuildNumber) + " x64";
}

FileStatus create_new_file(const fs::path& p, const std::string& content) {
  HANDLE h = ::CreateFileW(p.c_str(), GENERIC_WRITE, 0, nullptr, CREATE_NEW,
                           FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (h == INVALID_HANDLE_VALUE) return status_of(::GetLastError());
  DWORD written = 0;
  DWORD code = ERROR_SUCCESS;
  if (!::WriteFile(h, content.data(), static_cast<DWORD>(content.size()), &written, nullptr))
    code = ::GetLastError();
  else if (written != content.size())
    code = ERROR_WRITE_FAULT;
  // A scanner often acts when the handle closes: that refusal counts as the write's.
  if (!::CloseHandle(h) && code == ERROR_SUCCESS) code = ::GetLastError();
  return status_of(code);
}

FileStatus read_file_head(const fs::path& p, std::string& out, std::size_t max) {
  HANDLE h = ::CreateFileW(
      p.c_str(), GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
      OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (h == INVALID_HANDLE_VALUE) {
    DWORD code = ::GetLastError();
    // A file being deleted (a scanner removing it) answers "access denied" until it is gone.
    if (code == ERROR_DELETE_PENDING) code = ERROR_FILE_NOT_FOUND;
    return status_of(code);
  }
  out.assign(max, '\0');
  DWORD got = 0;
  BOOL ok = ::ReadFile(h, out.data(), static_cast<DWORD>(out.size()), &got, nullptr);
  DWORD code = ok ? ERROR_SUCCESS : ::GetLastError();
  ::CloseHandle(h);
  if (!ok) {
    out.clear();
    auto s = status_of(code);
    s.opened = true;
    return s;
  }
  out.resize(got);
  return {};
}

FileStatus remove_file(const fs::path& p) {
  if (::DeleteFileW(p.c_str())) return {};
  return status_of(::GetLastError());
}

bool exists_no_follow(const fs::path& p) {
  return ::GetFileAttributesW(p.c_str()) != INVALID_FILE_ATTRIBUTES;
}

// ---- Service Control Manager ----------------------------------------------------------------
// The SCM calls back into plain functions without context: this one process-wide record is
// what they share with the ServiceHost of the running agent.
namespace {

struct Scm {
  std::mutex mu;
  std::wstring name;
  const std::function<int()>* body = nullptr;
  SERVICE_STATUS_HANDLE handle = nullptr;
  SERVICE_STATUS status{};
  std::function<void()> request_stop;  // set while a ServiceHost exists
  bool stop_requested = false;
  int exit_code = 0;
};

Scm& scm() {
  static Scm s;
  return s;
}

void report(DWORD state, DWORD exit_code = NO_ERROR, DWORD wait_hint_ms = 0) {
  auto& s = scm();
  std::lock_guard lock(s.mu);
  if (!s.handle) return;
  s.status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
  s.status.dwCurrentState = state;
  s.status.dwControlsAccepted =
      state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
  if (exit_code != NO_ERROR) {
    s.status.dwWin32ExitCode = ERROR_SERVICE_SPECIFIC_ERROR;
    s.status.dwServiceSpecificExitCode = exit_code;
  } else {
    s.status.dwWin32ExitCode = NO_ERROR;
    s.status.dwServiceSpecificExitCode = 0;
  }
  s.status.dwWaitHint = wait_hint_ms;
  bool pending = state == SERVICE_START_PENDING || state == SERVICE_STOP_PENDING;
  s.status.dwCheckPoint = pending ? s.status.dwCheckPoint + 1 : 0;
  ::SetServiceStatus(s.handle, &s.status);
}

DWORD WINAPI control_handler(DWORD control, DWORD, void*, void*) {
  switch (control) {
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN: {
      report(SERVICE_STOP_PENDING, NO_ERROR, 10000);
      auto& s = scm();
      std::lock_guard lock(s.mu);
      s.stop_requested = true;
      if (s.request_stop) s.request_stop();
      return NO_ERROR;
    }
    case SERVICE_CONTROL_INTERROGATE:
      return NO_ERROR;
    default:
      return ERROR_CALL_NOT_IMPLEMENTED;
  }
}

void WINAPI service_main(DWORD, LPWSTR*) {
  auto& s = scm();

  s.handle = ::RegisterServiceCtrlHandlerExW(s.name.c_str(), control_handler, nullptr);
  if (!s.handle) {
    s.exit_code = 1;
    return;
  }
  report(SERVICE_START_PENDING, NO_ERROR, 30000);
  // Restart on failure is the service's own setting, renewed at every start: it holds even
  // if the installer could not set it, and before the first failure.
  try {
    std::string name(s.name.begin(), s.name.end());
    set_service_recovery(name);
  } catch (const std::exception& e) {
    std::cerr << "tocsin-agent: " << e.what() << "\n";
  }
  int rc = 1;
  try {
    rc = (*s.body)();
  } catch (const std::exception& e) {
    std::cerr << "tocsin-agent: " << e.what() << "\n";
  }
  s.exit_code = rc;
  // A non-zero code is a failure: the SCM's recovery actions (restart) apply to it.
  report(SERVICE_STOPPED, static_cast<DWORD>(rc));
}

}  // namespace

struct ServiceHost::Impl {
  explicit Impl(boost::asio::io_context& io) : io(io), signals(io, SIGINT, SIGTERM) {}
  boost::asio::io_context& io;
  boost::asio::signal_set signals;  // Ctrl-C / Ctrl-Break on a console
  std::shared_ptr<std::function<void(const std::string&)>> handler;
  bool stopped = false;
};

ServiceHost::ServiceHost(boost::asio::io_context& io) : impl_(std::make_unique<Impl>(io)) {}

ServiceHost::~ServiceHost() {
  auto& s = scm();
  std::lock_guard lock(s.mu);
  s.request_stop = nullptr;
}

void ServiceHost::on_stop(std::function<void(const std::string&)> handler) {
  auto* impl = impl_.get();
  impl->handler = std::make_shared<std::function<void(const std::string&)>>(std::move(handler));
  auto once = [impl](const std::string& why) {
    if (impl->stopped) return;
    impl->stopped = true;
    (*impl->handler)(why);
  };
  impl->signals.async_wait([once](boost::system::error_code ec, int sig) {
    if (!ec) once(sig == SIGINT ? "received Ctrl-C" : "received SIGTERM");
  });
  auto& s = scm();
  std::lock_guard lock(s.mu);
  // The SCM's thread only posts: the agent's state is touched on its own io thread.
  s.request_stop = [impl, once] {
    boost::asio::post(impl->io, [once] { once("the Service Control Manager asked to stop"); });
  };
  if (s.stop_requested) s.request_stop();  // asked before we were listening
}

void ServiceHost::ready(const std::string&) {
  report(SERVICE_RUNNING);
}

void ServiceHost::stopping() {
  report(SERVICE_STOP_PENDING, NO_ERROR, 10000);
  impl_->signals.cancel();
}

fs::path service_log_file() {
  if (!scm().handle) return {};
  std::error_code ec;
  fs::create_directories(program_data(), ec);
  return program_data() / "agent.log";
}

int run_as_service(const std::string& name, const std::function<int()>& body) {
  auto& s = scm();
  s.name.assign(name.begin(), name.end());
  s.body = &body;
  SERVICE_TABLE_ENTRYW table[] = {{s.name.data(), service_main}, {nullptr, nullptr}};
  if (!::StartServiceCtrlDispatcherW(table)) {
    DWORD code = ::GetLastError();
    if (code == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
      std::cerr << "tocsin-agent: `service` is for the Service Control Manager (sc start "
                << name << "); on a console use `run`\n";
    else
      std::cerr << "tocsin-agent: cannot connect to the Service Control Manager: "
                << win32::message(code) << "\n";
    return 2;
  }
  return s.exit_code;
}

void set_service_recovery(const std::string& name) {
  struct ScHandle {
    SC_HANDLE h;
    ~ScHandle() {
      if (h) ::CloseServiceHandle(h);
    }
  };
  ScHandle manager{::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT)};
  if (!manager.h)
    throw std::runtime_error("cannot open the Service Control Manager: " +
                             win32::message(::GetLastError()));
  std::wstring wname(name.begin(), name.end());
  ScHandle service{::OpenServiceW(manager.h, wname.c_str(), SERVICE_CHANGE_CONFIG | SERVICE_START)};
  if (!service.h)
    throw std::runtime_error("cannot open service " + name + ": " +
                             win32::message(::GetLastError()));
  SC_ACTION actions[3] = {
      {SC_ACTION_RESTART, 60'000}, {SC_ACTION_RESTART, 60'000}, {SC_ACTION_RESTART, 60'000}};
  SERVICE_FAILURE_ACTIONSW fa{};
  fa.dwResetPeriod = 86'400;  // seconds
  fa.cActions = 3;
  fa.lpsaActions = actions;
  if (!::ChangeServiceConfig2W(service.h, SERVICE_CONFIG_FAILURE_ACTIONS, &fa))
    throw std::runtime_error("cannot set the recovery actions of " + name + ": " +
                             win32::message(::GetLastError()));
  // The agent reports a failed start (e.g. not enrolled yet) as SERVICE_STOPPED with a
  // non-zero code, not as a crash: count that as a failure too.
  // (wine 8 does not know this level: ERROR_INVALID_LEVEL, tolerated.)
  SERVICE_FAILURE_ACTIONS_FLAG flag{TRUE};
  if (!::ChangeServiceConfig2W(service.h, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &flag) &&
      ::GetLastError() != ERROR_INVALID_LEVEL)
    throw std::runtime_error("cannot set the failure-actions flag of " + name + ": " +
                             win32::message(::GetLastError()));
}

}  // namespace tocsin::agent::platform
