// Windows: CreateProcess with a quoted command line, anonymous pipes drained by two threads,
// a job object so that a timeout ends the whole process tree. Anonymous pipes cannot be read
// asynchronously, so the whole run is one blocking job on the probe pool (run_blocking).
#include <windows.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <thread>

#include "agent/probes/probe.hpp"
#include "agent/platform/process.hpp"
#include "agent/platform/win32.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

struct HandleCloser {
  void operator()(HANDLE h) const {
    if (h && h != INVALID_HANDLE_VALUE) ::CloseHandle(h);
  }
};
using Handle = std::unique_ptr<void, HandleCloser>;

std::string win32_message(DWORD code) {
  return win32::message(code);
}
// What a refused start means for a verdict: a policy or a scanner said no (EACCES), the
// program is not there (ENOENT), or something else went wrong (EIO).
int errno_for_spawn(DWORD code) {
  int e = win32::to_errno(code);
  return e == EACCES || e == ENOENT ? e : EIO;
}

// One argument as CommandLineToArgvW (and the C runtime) will read it back.
void append_quoted(std::wstring& cmd, const std::wstring& arg) {
  if (!cmd.empty()) cmd += L' ';
  if (!arg.empty() && arg.find_first_of(L" \t\n\v\"") == std::wstring::npos) {
    cmd += arg;
    return;
  }
  cmd += L'"';
  for (auto it = arg.begin();; ++it) {
    std::size_t backslashes = 0;
    while (it != arg.end() && *it == L'\\') {
      ++it;
      ++backslashes;
    }
    if (it == arg.end()) {
      cmd.append(backslashes * 2, L'\\');  // they precede the closing quote
      break;
    }
    if (*it == L'"') {
      cmd.append(backslashes * 2 + 1, L'\\');
      cmd += L'"';
    } else {
      cmd.append(backslashes, L'\\');
      cmd += *it;
    }
  }
  cmd += L'"';
}

std::wstring widen(const std::string& s) {
  if (s.empty()) return {};
  int n = ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), nullptr, 0);
  std::wstring w(static_cast<std::size_t>(n), L'\0');
  ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), w.data(), n);
  return w;
}

void drain(HANDLE pipe, std::string& sink, std::size_t cap) {
  char buf[4096];
  DWORD n = 0;
  while (::ReadFile(pipe, buf, sizeof buf, &n, nullptr) && n > 0)
    if (sink.size() < cap) sink.append(buf, std::min<std::size_t>(n, cap - sink.size()));
}

bool is_program(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

ProcessOutcome run_blocking_process(const std::vector<std::string>& argv,
                                    std::chrono::milliseconds timeout, std::size_t max_output) {
  ProcessOutcome o;
  std::wstring cmd;
  for (const auto& a : argv) append_quoted(cmd, widen(a));
  SECURITY_ATTRIBUTES inherit{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  HANDLE out_r = nullptr, out_w = nullptr, err_r = nullptr, err_w = nullptr;
  if (!::CreatePipe(&out_r, &out_w, &inherit, 0)) {
    o.spawn_errno = EIO;
    o.err = "[tocsin] " + win32_message(::GetLastError());
    return o;
  }
  Handle hout_r(out_r), hout_w(out_w);
  if (!::CreatePipe(&err_r, &err_w, &inherit, 0)) {
    o.spawn_errno = EIO;
    o.err = "[tocsin] " + win32_message(::GetLastError());
    return o;
  }
  Handle herr_r(err_r), herr_w(err_w);
  ::SetHandleInformation(out_r, HANDLE_FLAG_INHERIT, 0);  // only the write ends go to the child
  ::SetHandleInformation(err_r, HANDLE_FLAG_INHERIT, 0);
  Handle nul(::CreateFileW(L"NUL", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE, &inherit,
                           OPEN_EXISTING, 0, nullptr));

  Handle job(::CreateJobObjectW(nullptr, nullptr));
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits{};
  limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
  if (job)
    ::SetInformationJobObject(job.get(), JobObjectExtendedLimitInformation, &limits, sizeof limits);

  STARTUPINFOW si{};
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = nul.get();
  si.hStdOutput = out_w;
  si.hStdError = err_w;
  PROCESS_INFORMATION pi{};
  std::wstring app = widen(argv.at(0));
  if (!::CreateProcessW(app.c_str(), cmd.data(), nullptr, nullptr, TRUE,
                        CREATE_NO_WINDOW | CREATE_SUSPENDED, nullptr, nullptr, &si, &pi)) {
    DWORD code = ::GetLastError();
    o.spawn_errno = errno_for_spawn(code);
    o.err = "[tocsin] CreateProcess: " + win32_message(code);
    return o;
  }
  Handle process(pi.hProcess), thread(pi.hThread);
  if (job) ::AssignProcessToJobObject(job.get(), pi.hProcess);
  ::ResumeThread(pi.hThread);
  hout_w.reset();  // the child holds its own copies; EOF comes when every holder is gone
  herr_w.reset();

  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto remaining = [&] {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return static_cast<DWORD>(std::max<std::int64_t>(0, left.count()));
  };
  std::atomic<int> draining{2};  // readers end when every holder of the write ends is gone
  std::thread err_reader([&] {
    drain(err_r, o.err, max_output);
    --draining;
  });
  std::thread out_reader([&] {
    drain(out_r, o.out, max_output);
    --draining;
  });
  bool fired = false;
  if (::WaitForSingleObject(pi.hProcess, remaining()) == WAIT_TIMEOUT) {
    fired = true;
    if (job) ::TerminateJobObject(job.get(), 1);
    ::TerminateProcess(pi.hProcess, 1);
    ::WaitForSingleObject(pi.hProcess, INFINITE);
  }
  // The child exited; a grandchild may still hold the pipes until the deadline. (Not
  // PeekNamedPipe: on a synchronous handle it waits behind the reader's blocked ReadFile.)
  while (!fired && draining > 0) {
    if (remaining() == 0) {
      fired = true;
      if (job) ::TerminateJobObject(job.get(), 1);
      break;
    }
    ::Sleep(5);
  }
  out_reader.join();
  err_reader.join();
  DWORD code = 0;
  ::GetExitCodeProcess(pi.hProcess, &code);
  o.timed_out = fired;
  if (!fired) {
    o.exited = true;
    o.exit_code = static_cast<int>(code);
  }
  return o;
}

}  // namespace

std::string signal_name(int signal) {
  return "signal " + std::to_string(signal);
}

std::optional<fs::path> find_executable(const std::string& name) {
  if (name.find_first_of("/\\") != std::string::npos)
    return is_program(name) ? std::optional<fs::path>(name) : std::nullopt;
  const char* env = std::getenv("PATH");
  std::string path = env ? env : "";
  // Where Windows keeps PowerShell 5.1, which a service's PATH may lack.
  if (const char* root = std::getenv("SystemRoot"))
    path += std::string(";") + root + "\\System32\\WindowsPowerShell\\v1.0";
  std::vector<std::string> names{name};
  if (fs::path(name).extension().empty()) names = {name + ".exe", name};
  std::stringstream dirs(path);
  for (std::string d; std::getline(dirs, d, ';');) {
    if (d.empty()) continue;
    for (const auto& n : names) {
      auto p = fs::path(d) / n;
      if (is_program(p)) return p;
    }
  }
  return std::nullopt;
}

asio::awaitable<ProcessOutcome> run_process(asio::any_io_executor ex, std::vector<std::string> argv,
                                            std::chrono::milliseconds timeout,
                                            std::size_t max_output) {
  (void)ex;
  // Owns copies of everything: it runs to its own bounded end even if this frame is destroyed.
  auto job = [argv, timeout, max_output] {
    return run_blocking_process(argv, timeout, max_output);
  };
  co_return co_await run_blocking(job);
}

}  // namespace tocsin::agent
