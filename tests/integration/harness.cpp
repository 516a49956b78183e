#include "tests/integration/harness.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "collector/cli/api_client.hpp"

namespace tocsin::test {

fs::path bin(const std::string& name) { return fs::path(TOCSIN_BIN_DIR) / name; }

namespace {

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void replace_line(const fs::path& file, const std::string& key, const std::string& value) {
  auto text = read_text(file);
  std::regex re("(^|\n)(\\s*" + key + ":)[^\n]*");
  auto out = std::regex_replace(text, re, "$1$2 " + value);
  if (out == text && text.find(key + ":") == std::string::npos)
    throw std::runtime_error("no key " + key + " in " + file.string());
  std::ofstream(file, std::ios::trunc) << out;
}

// The last non-empty line of a CLI's output (where it prints a new token).
std::string last_line(std::string out) {
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out.substr(out.rfind('\n') + 1);
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe failed");
  auto args = c_argv(argv);
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  CommandResult r;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, static_cast<int>(left)) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  int status = 0;
  waitpid(pid, &status, 0);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

Process::Process(const std::vector<std::string>& argv, const fs::path& log) : log_(log) {
  auto args = c_argv(argv);
  pid_ = fork();
  if (pid_ == 0) {
    setpgid(0, 0);  // its own group, so a kill reaches everything it started (pipelines)
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    int devnull = ::open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  reaped_ = false;
}

Process::Process(Process&& o) noexcept { *this = std::move(o); }
Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    kill9();
    pid_ = o.pid_;
    status_ = o.status_;
    reaped_ = o.reaped_;
    log_ = o.log_;
    o.reaped_ = true;
    o.pid_ = -1;
  }
  return *this;
}
Process::~Process() { kill9(); }

bool Process::running() {
  if (reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
  return !reaped_;
}

void Process::signal(int sig) {
  if (!reaped_) ::kill(pid_, sig);
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  if (!wait_until([&] { return !running(); }, timeout)) return std::nullopt;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
}

void Process::kill9() {
  if (reaped_) return;
  ::kill(-pid_, SIGKILL);
  ::kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  reaped_ = true;
}

std::string Process::log() const { return read_text(log_); }

bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return cond();
}

Collector::Collector(CollectorOptions opts) {
  auto r = run_command({bin("tocsin-collector").string(), "init", "--data-dir", dir().string(),
                        "--agent-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"});
  if (r.rc != 0) throw std::runtime_error("collector init failed: " + r.err);
  auto cfg = dir() / "collector.yaml";
  replace_line(cfg, "frame_timeout", opts.frame_timeout);
  replace_line(cfg, "idle_timeout", opts.idle_timeout);
  replace_line(cfg, "handshake_timeout", opts.handshake_timeout);
  if (!opts.extra_yaml.empty()) std::ofstream(cfg, std::ios::app) << opts.extra_yaml << "\n";
  start();
}

Collector::~Collector() { proc_.kill9(); }

void Collector::start() {
  auto ready = tmp_.path() / "ready.json";
  fs::remove(ready);
  // After the first start the ports are fixed, so agents find a restarted collector.
  if (agent_port_) {
    replace_line(dir() / "collector.yaml", "agent_listen", agent_endpoint());
    replace_line(dir() / "collector.yaml", "api_listen", "127.0.0.1:" + std::to_string(api_port_));
  }
  proc_ = Process({bin("tocsin-collector").string(), "run", "--config",
                   (dir() / "collector.yaml").string(), "--ready-file", ready.string()},
                  tmp_.path() / ("collector-" + std::to_string(++starts_) + ".log"));
  if (!wait_until([&] { return fs::exists(ready) || !proc_.running(); }, 30s) || !fs::exists(ready))
    throw std::runtime_error("collector did not start: " + proc_.log());
  auto j = nlohmann::json::parse(read_text(ready));
  agent_port_ = j["agent_port"].get<std::uint16_t>();
  api_port_ = j["api_port"].get<std::uint16_t>();
}

void Collector::kill9() { proc_.kill9(); }

void Collector::stop() {
  proc_.signal(SIGTERM);
  if (!proc_.wait(30s)) FAIL("collector did not stop on SIGTERM within 30 s");
}

CommandResult Collector::cli(std::vector<std::string> args) {
  return cli_as(admin_token(), std::move(args));
}

CommandResult Collector::cli_as(const fs::path& token_file, std::vector<std::string> args) {
  std::vector<std::string> argv = {bin("tocsin").string(),
                                   "--server",
                                   "https://127.0.0.1:" + std::to_string(api_port_),
                                   "--token-file",
                                   token_file.string(),
                                   "--ca",
                                   ca_pem().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv);
}

std::string Collector::create_token(const std::string& ttl) {
  auto r = cli({"token", "create", "--ttl", ttl});
  if (r.rc != 0) throw std::runtime_error("token create failed: " + r.err);
  return last_line(r.out);
}

fs::path Collector::api_token(const std::string& name, const std::string& role) {
  auto r = cli({"api-token", "create", "--name", name, "--role", role});
  if (r.rc != 0) throw std::runtime_error("api-token create failed: " + r.err);
  auto file = tmp_.path() / (name + ".token");
  common::write_file_atomic(file, last_line(r.out) + "\n");
  return file;
}

nlohmann::json Collector::api_get(const std::string& path, const std::string& token) {
  auto t = token;
  if (t.empty()) {
    t = read_text(admin_token());
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  }
  collector::ApiClient client("https://127.0.0.1:" + std::to_string(api_port_), t, ca_pem());
  return client.get(path);
}

std::uint64_t Collector::stored_results(const std::string& agent_id) {
  auto agents = api_get("/api/v1/agents")["agents"];  // a temporary's member dangles in range-for
  for (auto& a : agents)
    if (a["agent_id"] == agent_id) return a["results"].get<std::uint64_t>();
  return 0;
}

void Collector::set_grace(const std::string& grace) {
  stop();
  auto cfg = dir() / "collector.yaml";
  auto text = common::read_file(cfg);
  auto pos = text.find("\n  grace: ");
  REQUIRE_MESSAGE(pos != std::string::npos, "no correlation.grace in " << cfg);
  auto end = text.find('\n', pos + 1);
  text.replace(pos, end - pos, "\n  grace: " + grace);
  common::write_file_atomic(cfg, text);
  start();
}

nlohmann::json Collector::security_events() {
  return api_get("/api/v1/security-events?since=1d&limit=10000")["events"];
}

Agent::Agent(Collector& c, std::string outbox_max) : c_(c), outbox_max_(std::move(outbox_max)) {
  auto token = c.create_token();
  auto r = run_command({bin("tocsin-agent").string(), "enroll", "--server", c.agent_endpoint(),
                        "--token", token, "--ca", c.ca_pem().string(), "--state-dir",
                        state_dir().string()});
  if (r.rc != 0) throw std::runtime_error("enroll failed: " + r.err);
  auto pos = r.out.find("agt-");
  id_ = r.out.substr(pos, r.out.find(' ', pos) - pos);
  write_config({});
}

std::string Agent::config_header(const std::string& server) const {
  std::ostringstream o;
  o << "state_dir: " << state_dir().string() << "\n";
  // Tests run their probes every few ms to seconds: below the production floor of 10 s.
  o << "min_every: 10ms\n";
  if (!server.empty()) o << "server: \"" << server << "\"\n";
  o << "outbox:\n  max_bytes: " << outbox_max_ << "\n"
    << "uplink:\n  backoff_initial: 50ms\n  backoff_max: 500ms\n  connect_timeout: 5s\n"
    << "  io_timeout: 20s\n  batch_max_results: " << batch_max_results_ << "\n";
  if (!command_poll_.empty()) o << "  command_poll: " << command_poll_ << "\n";
  return o.str();
}

void Agent::write_config_yaml(const std::string& allowlist_and_tests) {
  std::ofstream(config(), std::ios::trunc) << config_header({}) << allowlist_and_tests << "\n";
}

void Agent::write_config(const std::vector<AgentTest>& tests, const std::string& server) {
  std::ostringstream o;
  o << config_header(server)
    << "allowlist:\n  tcp_connect: [\"127.0.0.1\"]\n"
    << "tests:" << (tests.empty() ? " []\n" : "\n");
  for (const auto& t : tests) {
    o << "  - id: " << t.id << "\n    probe: tcp_connect\n    every: " << t.every
      << "\n    timeout: 2s\n    expect: {prevent: " << (t.expect_prevent ? "true" : "false")
      << "}\n    targets: [";
    for (std::size_t i = 0; i < t.targets.size(); ++i) o << (i ? ", " : "") << '"' << t.targets[i] << '"';
    o << "]\n";
  }
  std::ofstream(config(), std::ios::trunc) << o.str();
}

void Agent::start(const std::vector<std::string>& extra, const std::vector<std::string>& prefix) {
  std::vector<std::string> argv = prefix;
  for (auto a : {bin("tocsin-agent").string(), std::string("run"), std::string("--config"),
                 config().string()})
    argv.push_back(a);
  argv.insert(argv.end(), extra.begin(), extra.end());
  proc_ = Process(argv, tmp_.path() / ("agent-" + std::to_string(++starts_) + ".log"));
}

void Agent::stop() {
  proc_.signal(SIGTERM);
  if (!proc_.wait(30s)) FAIL("agent did not stop on SIGTERM within 30 s");
}

nlohmann::json Agent::status() {
  auto r = run_command({bin("tocsin-agent").string(), "status", "--config", config().string()});
  if (r.rc != 0) throw std::runtime_error("agent status failed: " + r.err);
  return nlohmann::json::parse(r.out);
}

OpenPort::OpenPort() {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd_, 1024) != 0)
    throw std::runtime_error("cannot listen on loopback");
  socklen_t len = sizeof a;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  int fd = fd_;
  thread_ = new std::thread([fd] {
    for (;;) {
      int c = accept(fd, nullptr, nullptr);
      if (c < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // closed by the destructor
      }
      close(c);
    }
  });
}

OpenPort::~OpenPort() {
  shutdown(fd_, SHUT_RDWR);
  close(fd_);
  thread_->join();
  delete thread_;
}

std::uint16_t closed_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::optional<fs::path> build_timerfd_shim(const fs::path& dir) {
  const fs::path cc = "/usr/bin/cc";
  if (!fs::exists(cc)) return std::nullopt;
  auto src = dir / "timerfd_passthrough.c";
  auto so = dir / "timerfd_passthrough.so";
  std::ofstream(src) << "#define _GNU_SOURCE\n#include <sys/syscall.h>\n#include <sys/timerfd.h>\n"
                        "#include <unistd.h>\n"
                        "int timerfd_settime(int fd, int flags, const struct itimerspec* v,\n"
                        "                    struct itimerspec* old) {\n"
                        "  return (int)syscall(SYS_timerfd_settime, fd, flags, v, old);\n}\n";
  auto r = run_command({cc.string(), "-shared", "-fPIC", "-O2", "-o", so.string(), src.string()});
  if (r.rc != 0) throw std::runtime_error("cannot build the timerfd shim: " + r.err);
  return so;
}

}  // namespace tocsin::test
