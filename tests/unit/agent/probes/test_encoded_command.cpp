// The encoded_command probe: base64 and UTF-16LE encoding, the command lines it builds, how a
// run's outcome maps to a verdict, and real runs with sh and a missing interpreter.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <cerrno>
#include <csignal>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "agent/probes/encoded_command.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using tocsin::agent::base64;
using tocsin::agent::ClockState;
using tocsin::agent::command_verdict;
using tocsin::agent::encoded_command_argv;
using tocsin::agent::EncodedCommandProbe;
using tocsin::agent::find_executable;
using tocsin::agent::ProcessOutcome;
using tocsin::agent::TestSpec;
using tocsin::agent::utf16le;
using tocsin::common::ResultBody;

namespace {

const std::string kMarker = "tcn-0123456789";

// An independent RFC 4648 decoder, so the encoder is not checked against itself.
std::string decode_base64(const std::string& text) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  REQUIRE(text.size() % 4 == 0);
  std::string out;
  unsigned bits = 0;
  int nbits = 0;
  for (char c : text) {
    if (c == '=') break;
    auto v = kAlphabet.find(c);
    REQUIRE_MESSAGE(v != std::string::npos, "not base64: " << text);
    bits = (bits << 6) | static_cast<unsigned>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      out.push_back(static_cast<char>((bits >> nbits) & 0xff));
    }
  }
  return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::vector<ResultBody> run_probe(const TestSpec& t, const std::string& marker) {
  asio::io_context io;
  ClockState clock{42, 7};
  EncodedCommandProbe probe(io.get_executor(), clock);
  std::optional<std::vector<ResultBody>> out;
  std::exception_ptr error;
  asio::co_spawn(io, probe.run(t, marker), [&](std::exception_ptr e, std::vector<ResultBody> r) {
    error = e;
    if (!e) out = std::move(r);
  });
  io.run();
  if (error) std::rethrow_exception(error);
  REQUIRE(out.has_value());
  return *out;
}

TestSpec make_test(const std::string& interpreter) {
  TestSpec t;
  t.id = "encoded";
  t.probe = "encoded_command";
  t.interpreter = interpreter;
  t.timeout = 30s;  // a bound, never reached by a one-line script
  t.expect_prevent = true;
  return t;
}

}  // namespace

TEST_CASE("base64 matches the RFC 4648 test vectors") {
  CHECK(base64("") == "");
  CHECK(base64("f") == "Zg==");
  CHECK(base64("fo") == "Zm8=");
  CHECK(base64("foo") == "Zm9v");
  CHECK(base64("foob") == "Zm9vYg==");
  CHECK(base64("fooba") == "Zm9vYmE=");
  CHECK(base64("foobar") == "Zm9vYmFy");
  CHECK(base64(std::string("\xff\xfe\x00", 3)) == "//4A");
  std::string long_input(1000, 'x');  // no line breaks, however long
  CHECK_FALSE(contains(base64(long_input), "\n"));
  CHECK(decode_base64(base64(long_input)) == long_input);
}

TEST_CASE("utf16le widens each ASCII character to two bytes, low byte first") {
  CHECK(utf16le("") == "");
  CHECK(utf16le("Ab") == std::string("A\0b\0", 4));
}

TEST_CASE("the sh command line hides the marker in base64 that decodes to the script") {
  auto argv = encoded_command_argv("/bin/sh", "sh", kMarker);
  REQUIRE(argv.size() == 3);
  CHECK(argv[0] == "/bin/sh");
  CHECK(argv[1] == "-c");
  const std::string prefix = "echo ", suffix = " | base64 -d | sh";
  REQUIRE(argv[2].rfind(prefix, 0) == 0);
  REQUIRE(argv[2].size() > prefix.size() + suffix.size());
  REQUIRE(argv[2].substr(argv[2].size() - suffix.size()) == suffix);
  auto encoded = argv[2].substr(prefix.size(), argv[2].size() - prefix.size() - suffix.size());
  auto script = decode_base64(encoded);
  CHECK_MESSAGE(contains(script, kMarker), script);
  for (const auto& a : argv) CHECK_FALSE(contains(a, kMarker));
}

TEST_CASE("the PowerShell command line is -EncodedCommand with the script in UTF-16LE base64") {
  for (const char* interpreter : {"pwsh", "powershell.exe"}) {
    CAPTURE(std::string(interpreter));
    auto argv = encoded_command_argv("/opt/ps/pwsh", interpreter, kMarker);
    REQUIRE(argv.size() == 5);
    CHECK(argv[0] == "/opt/ps/pwsh");
    CHECK(argv[3] == "-EncodedCommand");
    auto wide = decode_base64(argv[4]);
    REQUIRE(wide.size() % 2 == 0);
    std::string narrow;
    for (std::size_t i = 0; i < wide.size(); i += 2) {
      CHECK(wide[i + 1] == '\0');
      narrow.push_back(wide[i]);
    }
    CHECK(utf16le(narrow) == wide);
    CHECK_MESSAGE(contains(narrow, kMarker), narrow);
    for (const auto& a : argv) CHECK_FALSE(contains(a, kMarker));
  }
}

TEST_CASE("command_verdict maps each way a run can end to its verdict and reason") {
  auto spawn_error = [](int e) {
    ProcessOutcome o;
    o.spawn_errno = e;
    return o;
  };
  auto exited = [](int code, std::string out, std::string err) {
    ProcessOutcome o;
    o.exited = true;
    o.exit_code = code;
    o.out = std::move(out);
    o.err = std::move(err);
    return o;
  };
  ProcessOutcome timed_out;
  timed_out.timed_out = true;
  ProcessOutcome killed;
  killed.signal = SIGKILL;
  ProcessOutcome killed_after_output = killed;
  killed_after_output.out = kMarker + "\n";

  struct Case {
    const char* name;
    ProcessOutcome o;
    const char* verdict;
    const char* reason;
  } cases[] = {
      {"EACCES", spawn_error(EACCES), "prevented", "access_denied"},
      {"EPERM", spawn_error(EPERM), "prevented", "access_denied"},
      {"ENOENT", spawn_error(ENOENT), "not_applicable", "interpreter_missing"},
      {"E2BIG", spawn_error(E2BIG), "error", "spawn_failed"},
      {"ENOMEM", spawn_error(ENOMEM), "error", "spawn_failed"},
      {"timeout", timed_out, "error", "timeout"},
      {"marker", exited(0, "Tocsin encoded-command test " + kMarker + "\n", ""), "not_prevented",
       "marker_in_output"},
      {"marker despite exit 1", exited(1, kMarker, ""), "not_prevented", "marker_in_output"},
      {"killed", killed, "prevented", "killed"},
      {"marker then killed", killed_after_output, "not_prevented", "marker_in_output"},
      {"access denied", exited(1, "", "Program 'x': Access is denied.\n"), "prevented",
       "blocked_message"},
      {"policy", exited(1, "", "This script was BLOCKED BY POLICY\n"), "prevented",
       "blocked_message"},
      {"permission denied", exited(126, "", "sh: 1: base64: Permission denied\n"), "prevented",
       "blocked_message"},
      {"nothing", exited(0, "", ""), "inconclusive", "no_marker_output"},
      {"other output", exited(2, "something else\n", "syntax error\n"), "inconclusive",
       "no_marker_output"},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.name));
    auto v = command_verdict(c.o, kMarker);
    CHECK(v.verdict == c.verdict);
    CHECK(v.reason == c.reason);
  }
}

TEST_CASE("an encoded sh command that runs is not_prevented with the marker in its output") {
  REQUIRE(find_executable("sh").has_value());
  auto rs = run_probe(make_test("sh"), kMarker);
  REQUIRE(rs.size() == 1);
  const auto& r = rs[0];
  CHECK(r.verdict == "not_prevented");
  CHECK(r.reason == "marker_in_output");
  CHECK(r.probe == "encoded_command");
  CHECK(r.test_id == "encoded");
  CHECK(r.target == "sh");
  CHECK(r.marker == kMarker);
  CHECK(r.expect_prevent);
  CHECK_MESSAGE(contains(r.evidence.at("stdout"), kMarker), r.evidence.at("stdout"));
  CHECK(r.evidence.at("exit_code") == "0");
  CHECK(r.evidence.at("stderr").empty());
  CHECK(contains(r.evidence.at("command_line"), "base64 -d | sh"));
  CHECK_FALSE(contains(r.evidence.at("command_line"), kMarker));
  CHECK(r.started_ns > 0);
  CHECK(r.finished_ns >= r.started_ns);
  CHECK(r.clock_offset_ns == 42);
  CHECK(r.clock_error_ns == 7);
}

TEST_CASE("an interpreter that is not installed is not_applicable, and nothing runs") {
  SUBCASE("a name no system has") {
    auto rs = run_probe(make_test("no-such-interpreter-xyz"), kMarker);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].verdict == "not_applicable");
    CHECK(rs[0].reason == "interpreter_missing");
    CHECK(rs[0].evidence.at("interpreter") == "no-such-interpreter-xyz");
    CHECK(rs[0].evidence.count("command_line") == 0);
  }
  SUBCASE("pwsh, as this host has it or not") {
    auto rs = run_probe(make_test("pwsh"), kMarker);
    REQUIRE(rs.size() == 1);
    if (!find_executable("pwsh")) {
      CHECK(rs[0].verdict == "not_applicable");
      CHECK(rs[0].reason == "interpreter_missing");
    } else {
      MESSAGE("pwsh is installed here: checking that it ran instead");
      CHECK(rs[0].verdict == "not_prevented");
      CHECK(rs[0].reason == "marker_in_output");
    }
  }
}
