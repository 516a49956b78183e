// agent.yaml: identity location, collector address, outbox and uplink limits, allowlist, tests.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/actions/actions.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/net.hpp"

namespace tocsin::agent {

using namespace std::chrono_literals;

// The probe kinds this agent knows; each lives in its own agent/probes/<kind>.cpp.
inline const std::vector<std::string> kProbeKinds = {
    "tcp_connect", "tcp_listen", "eicar_drop", "encoded_command", "web_download",
    "http_beacon", "tls_policy", "http_check", "dns_lookup"};

// The settings of the newer kinds, each declared beside its probe (agent/probes/<kind>.hpp).
struct WebDownloadParams;
struct HttpBeaconParams;
struct TlsPolicyParams;
struct HttpCheckParams;
struct DnsLookupParams;

// One scheduled test: which probe, how often, what it expects, against what.
// Probe-specific settings come from the test's `params:` map; only the keys of its kind are
// accepted (tcp_connect also takes targets/control at the top level, the foundation format).
struct TestSpec {
  std::string id;
  std::string probe;  // the kind: one of kProbeKinds
  std::string technique;  // ATT&CK id, e.g. T1105 (optional)
  std::chrono::milliseconds every = 5min;
  std::chrono::milliseconds jitter = 0ms;  // each run starts up to this much after its slot
  std::chrono::milliseconds timeout = 3s;  // tcp_connect: per target; others: the whole run
  bool expect_prevent = false;
  std::optional<std::chrono::milliseconds> alert_within;  // for the collector's correlation
  std::vector<std::string> detections;                    // names of rules it should trigger
  // tcp_connect
  std::vector<common::HostPort> targets;
  std::optional<common::HostPort> control;  // positive control that must connect first
  bool handshake = false;  // after connecting, the marker handshake a tcp_listen peer answers
  // tcp_listen: the receiving end of tcp_connect's handshake (the DMZ host's side)
  std::vector<common::HostPort> listen;
  std::chrono::milliseconds window = 60s;  // how long each run accepts connections
  // eicar_drop
  std::filesystem::path directory;
  std::chrono::milliseconds observe = 5s;  // how long a defence gets to act on the drop
  // encoded_command
  std::string interpreter;  // "sh" (Linux variant), "pwsh" or "powershell.exe"
  // The other kinds: set by their loader (load_<kind> in agent/probes/<kind>.hpp).
  std::shared_ptr<const WebDownloadParams> web_download;
  std::shared_ptr<const HttpBeaconParams> http_beacon;
  std::shared_ptr<const TlsPolicyParams> tls_policy;
  std::shared_ptr<const HttpCheckParams> http_check;
  std::shared_ptr<const DnsLookupParams> dns_lookup;
  std::string summary;  // one line on what the test touches, for `tocsin-agent tests`
};

struct UplinkOptions {
  std::chrono::milliseconds connect_timeout = 10s;
  std::chrono::milliseconds io_timeout = 30s;  // an ack or answer must arrive within this
  std::chrono::milliseconds backoff_initial = 1s;
  std::chrono::milliseconds backoff_max = 60s;
  std::chrono::milliseconds clock_sync_interval = 60s;
  // When idle, ask the collector for commands this often (and right after connecting).
  // 0 = never (config `uplink.command_poll: 0s`).
  std::chrono::milliseconds command_poll_interval = 30s;
  std::size_t batch_max_results = 512;
  std::size_t batch_max_bytes = 512 * 1024;
};

// How often a test may run. Each run is a real (if harmless) attack step: connections, files,
// DNS queries, an event in the EDR and usually an alert the SIEM must ingest, correlate and a
// human may see; a run every few seconds floods the SIEM and buries real alerts without telling
// anyone more. `min_every` (agent.yaml) lowers the floor for labs and tests, never below
// kMinEveryFloor (below it the scheduler does little but wake up).
inline constexpr std::chrono::milliseconds kDefaultMinEvery = 10s;
inline constexpr std::chrono::milliseconds kMinEveryFloor = 10ms;
// A test run less often than monthly is no longer a control that is being watched.
inline constexpr std::chrono::milliseconds kMaxEvery = std::chrono::days(30);
// How long the SIEM may take to alert: no SIEM alerts faster than 1 s, and the collector keeps
// a run waiting for its alert at most 30 days (it clamps longer values).
inline constexpr std::chrono::milliseconds kMinAlertWithin = 1s;
inline constexpr std::chrono::milliseconds kMaxAlertWithin = std::chrono::days(30);

// Hard cap on the targets one tcp_connect test may expand to.
inline constexpr std::size_t kMaxTargets = 1024;

// "host:port", "10.0.0.0/30:445", "127.0.0.1:8000-8010", "[::1]:22" -> every host:port it
// names, networks and ranges expanded; more than `cap` is refused (std::invalid_argument).
std::vector<common::HostPort> expand_targets(const std::string& spec, std::size_t cap);

struct AgentConfig {
  std::filesystem::path state_dir;
  // While this file exists no probe runs (results say so); delivery continues.
  std::filesystem::path kill_switch;  // default: platform::default_kill_switch()
  std::string server;  // host:port; empty = the one recorded at enrollment
  std::string log_level = "info";
  std::uint64_t outbox_max_bytes = 64ull << 20;
  // The shortest `every` a test may have (see kDefaultMinEvery).
  std::chrono::milliseconds min_every = kDefaultMinEvery;
  UplinkOptions uplink;
  Allowlist allowlist;
  ActionPolicy actions;  // `allowed_actions:`: what a remote command may name (agent/actions/actions.hpp)
  std::vector<TestSpec> tests;

  static AgentConfig load(const std::filesystem::path& file);
};

}  // namespace tocsin::agent
