// Local peers that unit tests start as child processes: a program that prints its port on its
// first stdout line (bound to 127.0.0.1 port 0), and on top of it the scripted HTTP server
// tests/peers/siem_mock.py (SIEM APIs, notification receivers), and the SMTP sink
// tests/peers/smtp_sink.py (aiosmtpd).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/unit/temp_dir.hpp"

namespace tocsin::test {

inline constexpr std::chrono::seconds kWait{20};  // generous: only reached when something is broken

inline bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout = kWait) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // files a peer appends to: no event to await
  }
  return cond();
}

// A child process that prints its port first; SIGTERM (then SIGKILL) at scope end.
class PortPeer {
 public:
  explicit PortPeer(const std::vector<std::string>& args) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    port_ = read_port(fds[0], args.size() > 1 ? args[1] : args[0]);
    ::close(fds[0]);
  }
  ~PortPeer() {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  PortPeer(const PortPeer&) = delete;
  PortPeer& operator=(const PortPeer&) = delete;
  int port() const { return port_; }

 private:
  static int read_port(int fd, const std::string& what) {
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[64];
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<std::size_t>(n));
    }
    REQUIRE_MESSAGE(line.find('\n') != std::string::npos, what << " did not print its port");
    return std::stoi(line);
  }
  pid_t pid_ = -1;
  int port_ = 0;
};

// "METHOD /path" -> the responses it gives, in order (the last one repeats).
using Routes = std::vector<std::pair<std::string, std::vector<nlohmann::json>>>;

// tests/peers/siem_mock.py: answers from a scenario, records every request.
class SiemMock {
 public:
  explicit SiemMock(const Routes& routes) : dir_("siem"), peer_(args(routes, dir_)) {}

  std::string url() const { return "http://127.0.0.1:" + std::to_string(peer_.port()); }

  std::vector<nlohmann::json> requests(const std::string& method, const std::string& path) const {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir_ / "requests.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j["method"] == method && j["path"] == path) out.push_back(j);
    }
    return out;
  }

  std::vector<nlohmann::json> wait_requests(const std::string& method, const std::string& path,
                                            std::size_t n) const {
    std::vector<nlohmann::json> got;
    wait_until([&] { return (got = requests(method, path)).size() >= n; });
    REQUIRE(got.size() >= n);
    return got;
  }

 private:
  static std::vector<std::string> args(const Routes& routes, const TempDir& dir) {
    nlohmann::json scenario = {{"routes", nlohmann::json::object()}};
    for (const auto& [key, responses] : routes) scenario["routes"][key] = responses;
    std::ofstream(dir / "scenario.json") << scenario.dump();
    return {"/usr/bin/python3",
            std::string(TOCSIN_SOURCE_DIR) + "/tests/peers/siem_mock.py",
            (dir / "scenario.json").string(),
            (dir / "requests.jsonl").string(),
            "--max-seconds",
            "120"};
  }
  TempDir dir_;
  PortPeer peer_;
};

// Runs a shell command, returning its stdout; the command must succeed.
inline std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  REQUIRE_MESSAGE(::pclose(p) == 0, cmd);
  return out;
}

// The SMTP sink: aiosmtpd, optionally with a certificate (STARTTLS or SMTPS) and AUTH.
struct SmtpSink {
  TempDir dir{"smtp"};
  std::unique_ptr<PortPeer> peer;

  explicit SmtpSink(std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"/usr/bin/python3",
                                  std::string(TOCSIN_SOURCE_DIR) + "/tests/peers/smtp_sink.py",
                                  (dir / "mail").string(), "--max-seconds", "120"};
    args.insert(args.end(), extra.begin(), extra.end());
    peer = std::make_unique<PortPeer>(args);
  }
  std::string url(const char* scheme = "smtp") const {
    return std::string(scheme) + "://127.0.0.1:" + std::to_string(peer->port());
  }
  std::size_t count() const {
    std::size_t n = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir / "mail", ec))
      n += e.path().extension() == ".json";
    return n;
  }
  nlohmann::json meta(int n) const {
    char name[16];
    std::snprintf(name, sizeof name, "%04d.json", n);
    return nlohmann::json::parse(std::ifstream(dir / "mail" / name));
  }
  nlohmann::json mail(int n) const {
    char name[16];
    std::snprintf(name, sizeof name, "%04d.eml", n);
    return nlohmann::json::parse(run("/usr/bin/python3 " + std::string(TOCSIN_SOURCE_DIR) +
                           "/tests/peers/eml_summary.py " + (dir / "mail" / name).string()));
  }
};

}  // namespace tocsin::test
