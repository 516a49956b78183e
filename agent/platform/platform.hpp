// What the agent needs from its operating system, one implementation per platform
// (platform_posix.cpp, platform_windows.cpp; CMake picks one): default paths, the host's
// description, the service manager, and the file operations of eicar_drop, whose failures a
// verdict must tell apart.
#pragma once

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

namespace tocsin::agent::platform {

// Linux: /etc/tocsin/agent.yaml, /var/lib/tocsin-agent, /etc/tocsin/disabled.
// Windows: %ProgramData%\Tocsin\agent.yaml, ...\Tocsin\state, ...\Tocsin\disabled.
std::filesystem::path default_config_file();
std::filesystem::path default_state_dir();
std::filesystem::path default_kill_switch();

std::string hostname();
std::string os_description();  // e.g. "Linux 6.1.0 x86_64", "Windows 10.0.19045 x64"

// The outcome of a file operation: 0 or an errno value (EACCES/EPERM when something refused
// it: permissions, or on Windows an anti-malware scanner), and the OS's own words for evidence.
struct FileStatus {
  int error = 0;
  std::string detail;   // empty on success
  bool opened = false;  // read_file_head: the file was opened, and then reading it failed
};
// Creates a new file (never following or replacing an existing one) holding `content`.
FileStatus create_new_file(const std::filesystem::path& p, const std::string& content);
// Reads up to `max` bytes; ENOENT when the file is gone.
FileStatus read_file_head(const std::filesystem::path& p, std::string& out, std::size_t max);
FileStatus remove_file(const std::filesystem::path& p);
bool exists_no_follow(const std::filesystem::path& p);

// The agent's side of the service manager: systemd (sd_notify; SIGTERM/SIGINT) or the Windows
// Service Control Manager (stop and shutdown requests, status reports; Ctrl-C on a console).
class ServiceHost {
 public:
  explicit ServiceHost(boost::asio::io_context& io);
  ~ServiceHost();
  // Called once, on the io_context's thread, when the OS asks the agent to stop.
  void on_stop(std::function<void(const std::string& why)> handler);
  void ready(const std::string& status);
  void stopping();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs `body` as a service of the platform's service manager (Windows: connects to the SCM,
// which must have started the process; its exit code becomes the service's). On POSIX, where
// systemd starts `run` directly, it just calls body.
int run_as_service(const std::string& name, const std::function<int()>& body);
// Where the log goes when the agent runs as a service without a console: Windows under the
// SCM, %ProgramData%\Tocsin\agent.log; otherwise empty (stderr; journald under systemd).
std::filesystem::path service_log_file();

// Windows: the SCM restarts the installed service `name` 60 s after it fails (a crash or a
// non-zero exit), and forgets failures after a day. POSIX: systemd's unit does that
// (Restart=on-failure); this throws std::runtime_error saying so.
void set_service_recovery(const std::string& name);

}  // namespace tocsin::agent::platform
