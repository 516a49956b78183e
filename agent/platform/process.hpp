// Running a local program for a probe: argv only (never a shell string from outside), bounded
// in time and output, with how it ended reported as data.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace tocsin::agent {

struct ProcessOutcome {
  int spawn_errno = 0;  // non-zero: the program could not be started
  bool timed_out = false;
  bool exited = false;
  int exit_code = -1;
  int signal = 0;  // killed by this signal (not by our timeout)
  std::string out, err;  // capped
};

// Finds a program by name in PATH (or checks an absolute path): a regular file with an execute
// bit, whether or not policy will let it run.
std::optional<std::filesystem::path> find_executable(const std::string& name);

// "Killed", "Terminated" ... for evidence (POSIX signals; Windows has none).
std::string signal_name(int signal);

// POSIX: posix_spawn in its own process group (a timeout kills the group). Windows:
// CreateProcess with the argv quoted for CommandLineToArgvW, in a job object (a timeout
// terminates the job), on the blocking pool.
boost::asio::awaitable<ProcessOutcome> run_process(boost::asio::any_io_executor ex,
                                                   std::vector<std::string> argv,
                                                   std::chrono::milliseconds timeout,
                                                   std::size_t max_output = 64 * 1024);

}  // namespace tocsin::agent
