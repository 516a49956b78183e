// encoded_command: does the endpoint stop a benign script run from an encoded command line?
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include "agent/platform/process.hpp"
#include "agent/probes/probe.hpp"

namespace tocsin::agent {

// The command line an attacker would use, for a benign script that prints the marker.
// sh: ["sh", "-c", "echo <base64> | base64 -d | sh"]; pwsh/powershell.exe: -EncodedCommand with
// the script in UTF-16LE base64, as PowerShell expects.
std::vector<std::string> encoded_command_argv(const std::string& interpreter_path,
                                              const std::string& interpreter,
                                              const std::string& marker);
std::string base64(const std::string& bytes);
std::string utf16le(const std::string& ascii);

struct CommandVerdict {
  std::string verdict;
  std::string reason;
};
// marker in stdout: not_prevented; killed, access denied or a blocking message: prevented;
// timeout: error; otherwise inconclusive. Pure, so it is table-tested.
CommandVerdict command_verdict(const ProcessOutcome& o, const std::string& marker);

class EncodedCommandProbe : public Probe {
 public:
  EncodedCommandProbe(boost::asio::any_io_executor ex, const ClockState& clock)
      : ex_(std::move(ex)), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
