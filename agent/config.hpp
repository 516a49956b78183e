// agent.yaml: identity location, collector address, outbox and uplink limits, allowlist, tests.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/allowlist.hpp"
#include "common/net.hpp"

namespace firedrill::agent {

using namespace std::chrono_literals;

// One scheduled test: which probe, how often, what it expects, against what.
struct TestSpec {
  std::string id;
  std::string probe;  // "tcp_connect"
  std::chrono::milliseconds every = 5min;
  std::chrono::milliseconds jitter = 0ms;  // each run starts up to this much after its slot
  std::chrono::milliseconds timeout = 3s;  // per target
  bool expect_prevent = false;
  std::vector<common::HostPort> targets;
  std::optional<common::HostPort> control;  // positive control that must connect first
};

struct UplinkOptions {
  std::chrono::milliseconds connect_timeout = 10s;
  std::chrono::milliseconds io_timeout = 30s;  // an ack or answer must arrive within this
  std::chrono::milliseconds backoff_initial = 1s;
  std::chrono::milliseconds backoff_max = 60s;
  std::chrono::milliseconds clock_sync_interval = 60s;
  std::size_t batch_max_results = 512;
  std::size_t batch_max_bytes = 512 * 1024;
};

struct AgentConfig {
  std::filesystem::path state_dir;
  std::string server;  // host:port; empty = the one recorded at enrollment
  std::string log_level = "info";
  std::uint64_t outbox_max_bytes = 64ull << 20;
  UplinkOptions uplink;
  Allowlist allowlist;
  std::vector<TestSpec> tests;

  static AgentConfig load(const std::filesystem::path& file);
};

}  // namespace firedrill::agent
