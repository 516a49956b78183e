// What the tests of the collector's command engine and watchdog share: a real RocksDB in a
// temporary directory with one agent on record, a clock the test moves, and the keys the audit
// log and the command engine sign with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collector/audit/audit.hpp"
#include "collector/store/store.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

namespace tocsin::test {

inline constexpr std::int64_t kSec = 1'000'000'000;
inline constexpr std::int64_t kStart = 1'800'000'000LL * kSec;
inline const std::string kAgentId = "agt-web01";

struct EngineFixture {
  explicit EngineFixture(const std::string& tag) : dir(tag) {
    collector::AgentRecord a;
    a.agent_id = kAgentId;
    collector::WriteSet ws;
    ws.put_agent(a);
    store->commit(std::move(ws));
  }

  // The clock every engine reads: whatever the test set `now` to.
  auto clock() {
    return [this] { return now; };
  }
  std::unique_ptr<collector::AuditLog> make_audit() {
    return std::make_unique<collector::AuditLog>(
        *store, common::Ed25519Key::from_private_pem(audit_key.private_pem()), clock());
  }
  common::Ed25519Key command_signer() const {
    return common::Ed25519Key::from_private_pem(command_key.private_pem());
  }

  TempDir dir;
  std::unique_ptr<collector::Store> store = collector::Store::open(dir / "db");
  std::int64_t now = kStart;
  common::Ed25519Key audit_key = common::Ed25519Key::generate();
  common::Ed25519Key command_key = common::Ed25519Key::generate();
};

inline bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace tocsin::test
