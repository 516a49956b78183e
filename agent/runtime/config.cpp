#include "agent/runtime/config.hpp"

#include <algorithm>
#include <regex>
#include <set>

#include <boost/asio/ip/address_v4.hpp>

#include "agent/platform/platform.hpp"
#include "agent/probes/optional_probes.hpp"
#include "common/config.hpp"

namespace tocsin::agent {

namespace {

common::HostPort endpoint(const common::ConfigNode& node, const std::string& key,
                          const std::string& text) {
  try {
    return common::parse_host_port(text);
  } catch (const std::invalid_argument& e) {
    node.fail(key, e.what());
  }
}

}  // namespace

std::vector<common::HostPort> expand_targets(const std::string& spec, std::size_t cap) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("target '" + spec + "': " + why);
  };
  std::string host, ports;
  if (!spec.empty() && spec[0] == '[') {
    auto close = spec.find(']');
    if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':')
      throw bad("expected [ipv6]:port");
    host = spec.substr(1, close - 1);
    ports = spec.substr(close + 2);
  } else {
    auto colon = spec.rfind(':');
    if (colon == std::string::npos || spec.find(':') != colon) throw bad("expected host:port");
    host = spec.substr(0, colon);
    ports = spec.substr(colon + 1);
  }
  auto number = [&](const std::string& t) {
    if (t.empty() || t.size() > 5 || t.find_first_not_of("0123456789") != std::string::npos)
      throw bad("'" + t + "' is not a port");
    auto v = std::stoul(t);
    if (v < 1 || v > 65535) throw bad("port " + t + " is outside 1-65535");
    return static_cast<std::uint16_t>(v);
  };
  auto dash = ports.find('-');
  std::uint16_t lo = number(ports.substr(0, dash));
  std::uint16_t hi = dash == std::string::npos ? lo : number(ports.substr(dash + 1));
  if (lo > hi) throw bad("port range is reversed");
  std::vector<std::string> hosts;
  if (auto slash = host.find('/'); slash != std::string::npos) {
    boost::system::error_code ec;
    auto net = boost::asio::ip::make_address_v4(host.substr(0, slash), ec);
    if (ec) throw bad("only IPv4 networks can be expanded");
    auto plen = host.substr(slash + 1);
    if (plen.empty() || plen.size() > 2 || plen.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(plen) > 32)
      throw bad("bad prefix length");
    unsigned prefix = static_cast<unsigned>(std::stoul(plen));
    std::uint64_t count = std::uint64_t{1} << (32 - prefix);
    if (count * (hi - lo + 1u) > cap)
      throw bad("expands to " + std::to_string(count * (hi - lo + 1u)) + " targets, over the cap of " +
                std::to_string(cap));
    std::uint32_t base = net.to_uint() & (prefix ? ~std::uint32_t{0} << (32 - prefix) : 0);
    for (std::uint64_t i = 0; i < count; ++i)
      hosts.push_back(boost::asio::ip::address_v4(base + static_cast<std::uint32_t>(i)).to_string());
  } else {
    if (host.empty()) throw bad("no host");
    hosts.push_back(host);
  }
  if (hosts.size() * (hi - lo + 1u) > cap)
    throw bad("expands to " + std::to_string(hosts.size() * (hi - lo + 1u)) +
              " targets, over the cap of " + std::to_string(cap));
  std::vector<common::HostPort> out;
  for (const auto& h : hosts)
    for (unsigned p = lo; p <= hi; ++p) out.push_back({h, static_cast<std::uint16_t>(p)});
  return out;
}

namespace {

void load_tcp_connect(const common::ConfigNode& t, const common::ConfigNode& where,
                      TestSpec& s, const Allowlist& allow) {
  auto check_allowed = [&](const std::string& key, const common::HostPort& hp) {
    if (!allow.allows_name(hp.host, hp.port))
      where.fail(key, "target " + hp.to_string() +
                          " is not on the allowlist (add it under allowlist.network)");
  };
  for (auto& item : where["targets"].items()) {
    std::vector<common::HostPort> expanded;
    try {
      expanded = expand_targets(item.scalar(), kMaxTargets - std::min(kMaxTargets, s.targets.size()));
    } catch (const std::invalid_argument& e) {
      where.fail("targets", e.what());
    }
    for (auto& hp : expanded) {
      check_allowed("targets", hp);
      s.targets.push_back(hp);
    }
  }
  if (s.targets.empty()) where.fail("targets", "at least one host:port is required");
  if (where.has("control")) {
    s.control = endpoint(where, "control", where.str("control"));
    check_allowed("control", *s.control);
  }
}

void load_params(const common::ConfigNode& t, TestSpec& s, const Allowlist& allow) {
  auto params = t["params"];
  if (s.probe == "tcp_connect") {
    bool flat = t.has("targets") || t.has("control");
    if (flat && params.defined()) t.fail("params", "give targets either here or at the top level, not both");
    if (!flat) params.check_keys({"targets", "control", "handshake"});
    load_tcp_connect(t, flat ? t : params, s, allow);
    s.handshake = params.boolean("handshake", false);
  } else if (s.probe == "tcp_listen") {
    params.check_keys({"listen", "window"});
    for (auto& item : params["listen"].items()) {
      auto hp = endpoint(params, "listen", item.scalar());
      if (hp.port == 0) params.fail("listen", "give a port to listen on, not 0");
      if (!allow.allows_name(hp.host, hp.port))
        params.fail("listen", hp.to_string() +
                                  " is not on the allowlist (add it under allowlist.network)");
      s.listen.push_back(hp);
    }
    if (s.listen.empty()) params.fail("listen", "at least one address:port to listen on is required");
    if (s.listen.size() > 16) params.fail("listen", "at most 16 addresses");
    s.window = params.duration("window", s.window);
    if (s.window < 100ms || s.window > 10min) params.fail("window", "must be between 100ms and 10m");
    if (!t.has("timeout")) s.timeout = s.window + 10s;
    if (s.timeout < s.window) t.fail("timeout", "must be at least the listen window");
    s.summary = "listen " + s.listen.front().to_string() +
                (s.listen.size() > 1 ? " +" + std::to_string(s.listen.size() - 1) : "");
  } else if (s.probe == "eicar_drop") {
    params.check_keys({"directory", "observe"});
    s.directory = params.str("directory");
    if (!s.directory.is_absolute()) params.fail("directory", "must be an absolute path");
    s.observe = params.duration("observe", s.observe);
    if (s.observe < 0ms || s.observe > 10min) params.fail("observe", "must be between 0s and 10m");
    if (!t.has("timeout")) s.timeout = s.observe + 30s;
  } else if (s.probe == "encoded_command") {
    params.check_keys({"interpreter"});
    s.interpreter = params.str("interpreter", "sh");
    if (s.interpreter != "sh" && s.interpreter != "pwsh" && s.interpreter != "powershell.exe")
      params.fail("interpreter", "'" + s.interpreter + "' is not one of sh, pwsh, powershell.exe");
    if (!t.has("timeout")) s.timeout = 30s;
  }
  else load_optional_params(t, params, s, allow);  // the kinds built on libcurl and c-ares
  if (s.summary.empty())
    s.summary = s.probe == "tcp_connect"  ? std::to_string(s.targets.size()) + " target(s)"
                : s.probe == "eicar_drop" ? s.directory.string()
                                          : s.interpreter;
  if (s.probe != "tcp_connect" && (t.has("targets") || t.has("control")))
    t.fail(t.has("targets") ? "targets" : "control", "only tcp_connect takes targets");
}

// Fails with the value and the bound it broke, written as a reader writes durations ("30d").
void check_range(const common::ConfigNode& n, const std::string& key,
                 std::chrono::milliseconds value, std::chrono::milliseconds lo,
                 std::chrono::milliseconds hi, const std::string& why = "") {
  if (value < lo)
    n.fail(key, common::format_duration(value) + " is too short: must be at least " +
                    common::format_duration(lo) + why);
  if (value > hi)
    n.fail(key, common::format_duration(value) + " is too long: must be at most " +
                    common::format_duration(hi));
}

TestSpec load_test(const common::ConfigNode& t, const Allowlist& allow,
                   std::chrono::milliseconds min_every) {
  t.check_keys({"id", "kind", "probe", "every", "jitter", "timeout", "technique", "expect",
                "params", "targets", "control"});
  TestSpec s;
  s.id = t.str("id");
  if (s.id.empty() || s.id.size() > 64 ||
      s.id.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_.") != std::string::npos)
    t.fail("id", "must be 1-64 characters of a-z, 0-9, '-', '_', '.'");
  if (t.has("kind") && t.has("probe")) t.fail("probe", "'probe' is an old name of 'kind'; give one");
  std::string kind_key = t.has("probe") ? "probe" : "kind";
  s.probe = t.str(kind_key);
  if (std::find(kProbeKinds.begin(), kProbeKinds.end(), s.probe) == kProbeKinds.end()) {
    std::string known;
    for (const auto& k : kProbeKinds) known += (known.empty() ? "" : ", ") + k;
    t.fail(kind_key, "unknown probe kind '" + s.probe + "' (known: " + known + ")");
  }
  s.technique = t.str("technique", "");
  static const std::regex kTechnique("T[0-9]{4}(\\.[0-9]{3})?");
  if (!s.technique.empty() && !std::regex_match(s.technique, kTechnique))
    t.fail("technique", "'" + s.technique + "' is not an ATT&CK technique id like T1105 or T1059.001");
  s.every = t.duration("every", s.every);
  check_range(t, "every", s.every, min_every, kMaxEvery,
              min_every == kDefaultMinEvery
                  ? " (each run is an attack step the SIEM must ingest; top-level min_every "
                    "lowers the floor in a lab)"
                  : " (top-level min_every is " + common::format_duration(min_every) + ")");
  s.jitter = t.duration("jitter", s.every / 10);  // default: 10% of the interval
  if (s.jitter >= s.every) t.fail("jitter", "must be shorter than 'every'");
  s.timeout = t.duration("timeout", s.timeout);
  if (s.timeout <= 0ms || s.timeout > 15min) t.fail("timeout", "must be between 1ms and 15m");
  auto expect = t["expect"];
  expect.check_keys({"prevent", "alert_within", "detections"});
  s.expect_prevent = expect.boolean("prevent", false);
  if (expect.has("alert_within")) {
    s.alert_within = expect.duration("alert_within");
    check_range(expect, "alert_within", *s.alert_within, kMinAlertWithin, kMaxAlertWithin);
  }
  s.detections = expect.str_list("detections");
  load_params(t, s, allow);
  return s;
}

}  // namespace

AgentConfig AgentConfig::load(const std::filesystem::path& file) {
  auto root = common::ConfigNode::load_file(file);
  root.check_keys({"state_dir", "server", "log_level", "kill_switch", "outbox", "uplink",
                   "allowlist", "allowed_actions", "min_every", "tests"});
  AgentConfig c;
  c.state_dir = root.str("state_dir");
  if (c.state_dir.is_relative()) c.state_dir = std::filesystem::absolute(file.parent_path() / c.state_dir);
  c.server = root.str("server", "");
  if (!c.server.empty()) endpoint(root, "server", c.server);
  c.log_level = root.str("log_level", c.log_level);
  c.kill_switch = root.str("kill_switch", platform::default_kill_switch().string());
  c.min_every = root.duration("min_every", c.min_every);
  check_range(root, "min_every", c.min_every, kMinEveryFloor, kMaxEvery);

  auto outbox = root["outbox"];
  outbox.check_keys({"max_bytes"});
  c.outbox_max_bytes = outbox.size("max_bytes", c.outbox_max_bytes);
  if (c.outbox_max_bytes < 64 * 1024) outbox.fail("max_bytes", "must be at least 64KiB");

  auto up = root["uplink"];
  up.check_keys({"connect_timeout", "io_timeout", "backoff_initial", "backoff_max",
                 "clock_sync_interval", "batch_max_results", "command_poll"});
  auto& u = c.uplink;
  u.connect_timeout = up.duration("connect_timeout", u.connect_timeout);
  u.io_timeout = up.duration("io_timeout", u.io_timeout);
  u.backoff_initial = up.duration("backoff_initial", u.backoff_initial);
  u.backoff_max = up.duration("backoff_max", u.backoff_max);
  u.clock_sync_interval = up.duration("clock_sync_interval", u.clock_sync_interval);
  u.command_poll_interval = up.duration("command_poll", u.command_poll_interval);
  if (u.command_poll_interval < 0ms ||
      (u.command_poll_interval > 0ms && u.command_poll_interval < 100ms))
    up.fail("command_poll", "must be 0s (never) or at least 100ms");
  u.batch_max_results = static_cast<std::size_t>(
      up.integer("batch_max_results", static_cast<std::int64_t>(u.batch_max_results)));
  if (u.backoff_initial <= 0ms) up.fail("backoff_initial", "must be positive");
  if (u.backoff_max < u.backoff_initial) up.fail("backoff_max", "must be at least backoff_initial");
  if (u.batch_max_results < 1 || u.batch_max_results > 4096)
    up.fail("batch_max_results", "must be between 1 and 4096");

  auto allow = root["allowlist"];
  // `network` is what every probe may contact; `tcp_connect` is its older name. Both merge.
  allow.check_keys({"network", "tcp_connect"});
  std::vector<std::string> entries;
  for (const char* key : {"network", "tcp_connect"}) {
    auto list = allow.str_list(key);
    try {
      Allowlist::parse(list);
    } catch (const std::invalid_argument& e) {
      allow.fail(key, e.what());
    }
    entries.insert(entries.end(), list.begin(), list.end());
  }
  c.allowlist = Allowlist::parse(entries);
  c.actions = ActionPolicy::load(root["allowed_actions"]);
  std::set<std::string> ids;
  for (auto& t : root["tests"].items()) {
    c.tests.push_back(load_test(t, c.allowlist, c.min_every));
    if (!ids.insert(c.tests.back().id).second) t.fail("id", "duplicate test id '" + c.tests.back().id + "'");
  }
  return c;
}

}  // namespace tocsin::agent
