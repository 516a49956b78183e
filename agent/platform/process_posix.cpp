#include "agent/platform/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdlib>
#include <cstring>
#include <sstream>

extern char** environ;

namespace tocsin::agent {

namespace asio = boost::asio;

namespace {
// A regular file with an execute bit is a program. Not access(X_OK): a program that policy
// forbids to run (a noexec mount, an LSM) answers EACCES there too, and would be reported as
// missing; the spawn finds the refusal instead, which is what a probe is for.
bool is_program(const std::filesystem::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         (st.st_mode & (S_IXUSR | S_IXGRP | S_IXOTH)) != 0;
}
}  // namespace

std::optional<std::filesystem::path> find_executable(const std::string& name) {
  if (name.find('/') != std::string::npos)
    return is_program(name) ? std::optional<std::filesystem::path>(name) : std::nullopt;
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin";
  std::stringstream dirs(path);
  for (std::string d; std::getline(dirs, d, ':');) {
    if (d.empty()) continue;
    auto p = std::filesystem::path(d) / name;
    if (is_program(p)) return p;
  }
  return std::nullopt;
}

std::string signal_name(int signal) { return ::strsignal(signal); }

namespace {

asio::awaitable<void> read_all(asio::posix::stream_descriptor& d, std::string& sink,
                               std::size_t cap) {
  char buf[4096];
  for (;;) {
    boost::system::error_code ec;
    auto n = co_await d.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // EOF, or closed because of the timeout
    if (sink.size() < cap) sink.append(buf, std::min(n, cap - sink.size()));
  }
}

}  // namespace

asio::awaitable<ProcessOutcome> run_process(asio::any_io_executor ex, std::vector<std::string> argv,
                                            std::chrono::milliseconds timeout,
                                            std::size_t max_output) {
  ProcessOutcome o;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    o.spawn_errno = errno;
    co_return o;
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    o.spawn_errno = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    co_return o;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);  // so a timeout kills its children too
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  asio::posix::stream_descriptor out(ex, out_pipe[0]), err(ex, err_pipe[0]);
  if (rc != 0) {
    o.spawn_errno = rc;
    co_return o;
  }
  struct KillIfAbandoned {  // the frame may be destroyed on shutdown: leave no child behind
    pid_t pid;
    bool reaped = false;
    ~KillIfAbandoned() {
      if (reaped) return;
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } child{pid};
  asio::steady_timer timer(ex);
  timer.expires_after(timeout);
  bool timed_out = false;
  struct Watch {
    bool output_done = false;
    bool fired = false;
    bool fired_during_output = false;
  };
  auto watch = std::make_shared<Watch>();
  timer.async_wait([pid, watch](boost::system::error_code ec) {
    if (ec) return;
    watch->fired = true;
    watch->fired_during_output = !watch->output_done;
    ::kill(-pid, SIGKILL);  // the whole group: children holding the pipes die too
  });
  // Drain both pipes at once: a child blocked on a full stderr pipe never closes stdout.
  auto err_done = std::make_shared<bool>(false);
  asio::steady_timer err_wait(ex, asio::steady_timer::time_point::max());
  asio::co_spawn(ex, read_all(err, o.err, max_output), [err_done, &err_wait](std::exception_ptr) {
    *err_done = true;
    err_wait.cancel();
  });
  co_await read_all(out, o.out, max_output);
  if (!*err_done) {
    boost::system::error_code ec;
    co_await err_wait.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  watch->output_done = true;
  int status = 0;
  asio::steady_timer poll(ex);
  pid_t waited = 0;
  while ((waited = ::waitpid(pid, &status, WNOHANG)) == 0) {  // pipes closed; exit follows
    poll.expires_after(std::chrono::milliseconds(5));
    co_await poll.async_wait(asio::use_awaitable);
  }
  child.reaped = true;
  if (waited < 0) {  // e.g. ECHILD: we cannot say how it ended, so do not claim "exit 0"
    timer.cancel();
    o.spawn_errno = 0;
    o.timed_out = watch->fired;
    o.err += "\n[tocsin] could not collect the exit status: " + std::string(std::strerror(errno));
    co_return o;
  }
  timer.cancel();
  // Timed out: our kill cut the output short (a grandchild held the pipes) or the child itself.
  // A child that exited on its own after its output ended, just before the kill, did not.
  timed_out = watch->fired && (watch->fired_during_output || !WIFEXITED(status));
  o.timed_out = timed_out;
  if (WIFEXITED(status)) {
    o.exited = true;
    o.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status) && !timed_out) {
    o.signal = WTERMSIG(status);
  }
  co_return o;
}

}  // namespace tocsin::agent
