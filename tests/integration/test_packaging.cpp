// Checks the Debian systemd units: systemd-analyze must accept them without a single warning,
// and their hardening must not regress past a measured exposure score.
#include <doctest/doctest.h>

#include "tests/integration/harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern char** environ;

using namespace tocsin::test;  // run_command, TempDir, bin

namespace {


// Highest acceptable `systemd-analyze security` exposure, in tenths (the unit of --threshold).
// Measured with systemd 252 (Debian 12): agent 1.6 (root, network access, AF_UNIX), collector
// 1.1 (network access, AF_UNIX). One tenth of slack so that only a real weakening fails; if a
// probe needs a capability, raise the agent's number in the same change and say why.
constexpr int kAgentMaxExposure = 17;
constexpr int kCollectorMaxExposure = 12;


// The unit's `User=tocsin` does not exist on a build machine and we don't create users here.
// `daemon` is in base-passwd (on every Debian system) and is, like `tocsin`, a static non-root
// system user, so the exposure score equals the real unit's (checked: an unresolvable
// User=tocsin scores the same). `nobody` would make systemd warn "Special user nobody
// configured, this is not safe!" and cost 0.4 of exposure; with `daemon` no warning at all has to
// be tolerated.
constexpr const char* kStandInUser = "daemon";

// Pinned one by one: the exposure threshold has a tenth of slack, and several options weigh
// less than that (without MemoryDenyWriteExecute= the agent still scores 1.6).
constexpr std::pair<std::string_view, std::string_view> kHardening[] = {
    {"Service.NoNewPrivileges", "yes"},
    {"Service.ProtectSystem", "strict"},
    {"Service.ProtectHome", "yes"},
    {"Service.PrivateTmp", "yes"},
    {"Service.PrivateDevices", "yes"},
    {"Service.ProtectKernelTunables", "yes"},
    {"Service.ProtectKernelModules", "yes"},
    {"Service.ProtectKernelLogs", "yes"},
    {"Service.ProtectControlGroups", "yes"},
    {"Service.ProtectClock", "yes"},
    {"Service.ProtectHostname", "yes"},
    {"Service.RestrictNamespaces", "yes"},
    {"Service.RestrictRealtime", "yes"},
    {"Service.RestrictSUIDSGID", "yes"},
    {"Service.LockPersonality", "yes"},
    {"Service.MemoryDenyWriteExecute", "yes"},
    {"Service.SystemCallArchitectures", "native"},
    {"Service.RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
    {"Service.UMask", "0077"},
    {"Service.StateDirectoryMode", "0700"},
    // Empty for both today. A capability arrives with the probe that needs it, in the same
    // change as this expectation and the README entry that justifies it.
    {"Service.CapabilityBoundingSet", ""},
};

std::optional<fs::path> find_program(const std::string& name) {
  std::string search = std::getenv("PATH") ? std::getenv("PATH") : "";
  search += ":/usr/bin:/bin";  // systemd's own location, even with a minimal PATH
  std::stringstream dirs(search);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    auto candidate = fs::path(dir) / name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

fs::path systemd_analyze() {
  auto program = find_program("systemd-analyze");
  if (!program)
    FAIL(
        "systemd-analyze not found: install the Debian package `systemd` (scripts/deps installs "
        "it); the packaging tests cannot be skipped");
  return *program;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot read " << p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE_MESSAGE(out.good(), "cannot write " << p);
}

fs::path shipped_unit(const std::string& name) {
  return fs::path(TOCSIN_SOURCE_DIR) / "packaging" / "deb" / (name + ".service");
}

// Copies the shipped unit of binary `name` into `dir`, keeping its file name, with only what
// this machine cannot provide changed: ExecStart points at the freshly built binary instead of
// /usr/bin, and User=/Group=tocsin become kStandInUser.
fs::path prepare_unit(const std::string& name, const fs::path& dir) {
  const fs::path built = fs::path(TOCSIN_BIN_DIR) / name;
  REQUIRE_MESSAGE(access(built.c_str(), X_OK) == 0, built << " is missing: build " << name);
  // Unquoted in ExecStart=, so it must not need quoting or specifier escaping.
  REQUIRE_MESSAGE(built.string().find_first_of(" \t\"'%\\") == std::string::npos,
                  "TOCSIN_BIN_DIR " << TOCSIN_BIN_DIR << " needs quoting in ExecStart=");
  REQUIRE_MESSAGE(getpwnam(kStandInUser) != nullptr,
                  "user " << kStandInUser << " (base-passwd) is missing on this machine");

  const std::string shipped_exec = "ExecStart=/usr/bin/" + name + " ";
  std::istringstream in(read_text(shipped_unit(name)));
  std::string copy;
  int exec_lines = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(shipped_exec, 0) == 0) {
      line = "ExecStart=" + built.string() + line.substr(shipped_exec.size() - 1);
      ++exec_lines;
    } else if (line == "User=tocsin") {
      line = std::string("User=") + kStandInUser;
    } else if (line == "Group=tocsin") {
      line = std::string("Group=") + kStandInUser;
    }
    copy += line + "\n";
  }
  REQUIRE_MESSAGE(exec_lines == 1,
                  "expected exactly one line starting with '" << shipped_exec << "'");
  auto target = dir / (name + ".service");
  write_text(target, copy);
  return target;
}

// Replaces the first line equal to `from` in a prepared unit (for the negative controls).
void replace_line(const fs::path& unit, const std::string& from, const std::string& to) {
  std::istringstream in(read_text(unit));
  std::string text;
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    if (!found && line == from) {
      line = to;
      found = true;
    }
    text += line + "\n";
  }
  REQUIRE_MESSAGE(found, "no line '" << from << "' in " << unit);
  write_text(unit, text);
}

struct UnitCheck {
  CommandResult verify, security;
  std::optional<double> exposure;
  std::vector<std::string> problems;

  bool passed() const { return problems.empty(); }
  std::string describe() const {
    std::string s;
    for (const auto& p : problems) s += "  - " + p + "\n";
    return s;
  }
};

// The packaging gate. systemd-analyze verify reports parse errors (unknown keys, bad booleans,
// unknown users) only as warnings with exit code 0, so any stderr output fails the check.
UnitCheck check_unit(const fs::path& unit, int max_exposure_tenths) {
  const auto analyze = systemd_analyze().string();
  UnitCheck c;
  c.verify = run_command({analyze, "--no-pager", "verify", unit.string()});
  if (c.verify.rc != 0)
    c.problems.push_back("verify exited with " + std::to_string(c.verify.rc));
  if (!c.verify.err.empty()) c.problems.push_back("verify wrote to stderr:\n" + c.verify.err);

  c.security = run_command({analyze, "--no-pager", "security", "--offline=true",
                            "--threshold=" + std::to_string(max_exposure_tenths), unit.string()});
  static const std::regex overall(R"(Overall exposure level for \S+: ([0-9]+\.[0-9]))");
  std::smatch m;
  if (std::regex_search(c.security.out, m, overall))
    c.exposure = std::stod(m[1].str());
  else
    c.problems.push_back("no overall exposure level in the security output");
  if (c.security.rc != 0) {
    std::ostringstream why;
    why << std::fixed << std::setprecision(1) << "security exited with " << c.security.rc
        << " (exposure " << c.exposure.value_or(-1) << ", allowed " << max_exposure_tenths / 10.0
        << ")";
    c.problems.push_back(why.str());
  }
  if (!c.security.err.empty()) c.problems.push_back("security wrote to stderr:\n" + c.security.err);
  return c;
}

using Section = std::multimap<std::string, std::string>;

// "Section.Key" -> values, in file order; comments and blank lines dropped.
Section parse_unit(const fs::path& unit) {
  Section keys;
  std::istringstream in(read_text(unit));
  std::string section;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) FAIL("not a key=value line in " << unit << ": " << line);
    keys.emplace(section + "." + line.substr(0, eq), line.substr(eq + 1));
  }
  return keys;
}

std::vector<std::string> all(const Section& keys, const std::string& key) {
  std::vector<std::string> values;
  for (auto [it, last] = keys.equal_range(key); it != last; ++it) values.push_back(it->second);
  return values;
}

// The value of a key that must be set exactly once; otherwise a marker that fails the CHECK
// comparing it and shows what was found.
std::string single(const Section& keys, const std::string& key) {
  auto values = all(keys, key);
  if (values.size() == 1) return values.front();
  if (values.empty()) return "<" + key + " not set>";
  std::string found = "<" + key + " set " + std::to_string(values.size()) + " times:";
  for (const auto& v : values) found += " '" + v + "'";
  return found + ">";
}

void check_passes(const std::string& name, int max_exposure_tenths) {
  TempDir tmp;
  auto unit = prepare_unit(name, tmp.path());
  auto c = check_unit(unit, max_exposure_tenths);
  std::ostringstream score;
  score << std::fixed << std::setprecision(1) << name << ".service: exposure "
        << c.exposure.value_or(-1) << " (allowed " << max_exposure_tenths / 10.0 << ")";
  MESSAGE(score.str());
  CHECK_MESSAGE(c.passed(), name << ".service fails the packaging check:\n" << c.describe());
}

}  // namespace

TEST_CASE("the agent unit passes systemd-analyze verify and security without a warning") {
  check_passes("tocsin-agent", kAgentMaxExposure);
}

TEST_CASE("the collector unit passes systemd-analyze verify and security without a warning") {
  check_passes("tocsin-collector", kCollectorMaxExposure);
}

TEST_CASE("a unit with a misspelt key fails the packaging check although verify exits 0") {
  TempDir tmp;
  auto unit = prepare_unit("tocsin-agent", tmp.path());
  replace_line(unit, "ProtectSystem=strict", "ProtectSystm=strict");
  // A threshold nothing can exceed, so only the verify warning can fail the check.
  auto c = check_unit(unit, 100);
  CHECK(c.verify.rc == 0);
  CHECK(c.verify.err.find("ProtectSystm") != std::string::npos);
  CHECK_FALSE(c.passed());
}

TEST_CASE("a unit with weaker hardening fails the exposure threshold") {
  TempDir tmp;
  auto unit = prepare_unit("tocsin-collector", tmp.path());
  // Still a valid unit: verify stays silent, only the score gets worse.
  replace_line(unit, "SystemCallFilter=~@privileged @resources", "");
  replace_line(unit, "SystemCallFilter=@system-service", "");
  auto c = check_unit(unit, kCollectorMaxExposure);
  CHECK(c.verify.rc == 0);
  CHECK(c.verify.err.empty());
  REQUIRE(c.exposure.has_value());
  CHECK(*c.exposure * 10 > kCollectorMaxExposure);
  CHECK(c.security.rc != 0);
  CHECK_FALSE(c.passed());
}

// The exposure score does not weigh restart policy, watchdog, limits or the service identity,
// which the binaries and the design rely on; and its slack lets small weakenings through.
TEST_CASE("both units keep the service contract and every listed hardening option") {
  for (const std::string name : {"tocsin-agent", "tocsin-collector"}) {
    CAPTURE(name);
    auto keys = parse_unit(shipped_unit(name));
    const std::string config = name.substr(std::string("tocsin-").size()) + ".yaml";
    CHECK(single(keys, "Service.ExecStart") ==
          "/usr/bin/" + name + " run --config /etc/tocsin/" + config);
    CHECK(single(keys, "Service.Type") == "notify");
    CHECK(single(keys, "Service.Restart") == "on-failure");
    for (const char* key : {"Service.RestartSec", "Service.WatchdogSec", "Service.TimeoutStopSec",
                            "Unit.StartLimitIntervalSec", "Unit.StartLimitBurst"}) {
      CAPTURE(key);
      CHECK(all(keys, key).size() == 1);
    }
    CHECK(single(keys, "Unit.After") == "network-online.target");
    CHECK(single(keys, "Unit.Wants") == "network-online.target");
    CHECK(single(keys, "Install.WantedBy") == "multi-user.target");
    CHECK(single(keys, "Service.StateDirectory") ==
          (name == "tocsin-agent" ? "tocsin-agent" : "tocsin"));
    for (const auto& [key, value] : kHardening) {
      CAPTURE(key);
      CHECK(single(keys, std::string(key)) == value);
    }
    CHECK(all(keys, "Service.SystemCallFilter") ==
          std::vector<std::string>{"@system-service", "~@privileged @resources"});
  }
  // The package enables and starts the agent on install; until `enroll` wrote its identity the
  // unit is skipped (condition failed) instead of failing into the start limit at every boot.
  auto agent = parse_unit(shipped_unit("tocsin-agent"));
  CHECK(single(agent, "Unit.ConditionPathExists") == "/var/lib/tocsin-agent/identity.yaml");
  auto collector = parse_unit(shipped_unit("tocsin-collector"));
  CHECK(single(collector, "Service.User") == "tocsin");
  CHECK(single(collector, "Service.Group") == "tocsin");
  // One TLS connection per agent, tens of thousands of agents, plus RocksDB's files.
  CHECK(std::atol(single(collector, "Service.LimitNOFILE").c_str()) >= 65536);
}
