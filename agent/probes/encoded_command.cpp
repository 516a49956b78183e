#include "agent/probes/encoded_command.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "common/clock.hpp"

namespace tocsin::agent {

std::string base64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string utf16le(const std::string& ascii) {
  std::string out;
  for (char c : ascii) {
    out.push_back(c);
    out.push_back('\0');
  }
  return out;
}

std::vector<std::string> encoded_command_argv(const std::string& interpreter_path,
                                              const std::string& interpreter,
                                              const std::string& marker) {
  if (interpreter == "sh") {
    // The marker is in the script text; base64 keeps it out of the plain command line, as the
    // technique does. Built in here: no text from the network ever reaches a shell.
    auto script = "echo 'Tocsin encoded-command test " + marker + "'\n";
    return {interpreter_path, "-c", "echo " + base64(script) + " | base64 -d | sh"};
  }
  auto script = "Write-Output 'Tocsin encoded-command test " + marker + "'";
  return {interpreter_path, "-NoProfile", "-NonInteractive", "-EncodedCommand",
          base64(utf16le(script))};
}

CommandVerdict command_verdict(const ProcessOutcome& o, const std::string& marker) {
  if (o.spawn_errno == EACCES || o.spawn_errno == EPERM) return {"prevented", "access_denied"};
  if (o.spawn_errno == ENOENT) return {"not_applicable", "interpreter_missing"};
  if (o.spawn_errno) return {"error", "spawn_failed"};
  if (o.timed_out) return {"error", "timeout"};
  if (o.out.find(marker) != std::string::npos) return {"not_prevented", "marker_in_output"};
  if (o.signal) return {"prevented", "killed"};
  std::string err = o.err;
  std::transform(err.begin(), err.end(), err.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* word : {"blocked", "access is denied", "permission denied", "not allowed",
                           "prohibited", "by policy", "malicious", "antivirus"})
    if (err.find(word) != std::string::npos) return {"prevented", "blocked_message"};
  return {"inconclusive", "no_marker_output"};
}

boost::asio::awaitable<std::vector<common::ResultBody>> EncodedCommandProbe::run(
    const TestSpec& test, std::string marker) {
  auto b = start_result(test, marker);
  b.target = test.interpreter;
  auto path = find_executable(test.interpreter);
  if (!path) {
    b.verdict = "not_applicable";
    b.reason = "interpreter_missing";
    b.evidence = {{"interpreter", test.interpreter}, {"detail", "not found in PATH"}};
  } else {
    auto argv = encoded_command_argv(path->string(), test.interpreter, marker);
    auto o = co_await run_process(ex_, argv, test.timeout);
    auto v = command_verdict(o, marker);
    b.verdict = v.verdict;
    b.reason = v.reason;
    std::string cmdline;
    for (const auto& a : argv) cmdline += (cmdline.empty() ? "" : " ") + a;
    b.evidence = {{"command_line", cmdline},
                  {"stdout", o.out.substr(0, 512)},
                  {"stderr", o.err.substr(0, 512)}};
    if (o.exited) b.evidence["exit_code"] = std::to_string(o.exit_code);
    if (o.signal) b.evidence["signal"] = signal_name(o.signal);
    if (o.spawn_errno) b.evidence["spawn_error"] = std::strerror(o.spawn_errno);
  }
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
