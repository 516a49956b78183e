// The engine's unit of work (one synced WriteSet per operation) and the helpers the engine's
// sources share; private to collector/incidents.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "collector/incidents/incidents.hpp"
#include "collector/incidents/incidents_detail.hpp"

namespace tocsin::collector {
namespace detail::incidents {

constexpr int kEventFormat = 1;
constexpr std::size_t kMaxText = 4096;  // notes, reasons
constexpr std::size_t kMaxOwner = 128;
// Cursors, silences and the processed security events share Table::incident_keys with the
// dedup keys; a dedup key starts with a kind name or "test", never with this byte.
const std::string kCursorPrefix = std::string(1, '\x01') + "cursor/";
const std::string kSilencePrefix = std::string(1, '\x01') + "silence/";
const std::string kSeenSecurityPrefix = std::string(1, '\x01') + "seen/security/";
const std::string kSystem = "system";

inline std::string id_key(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}

// Keeps the record bounded for an incident that recurs for weeks: the oldest occurrences
// (also suppressed and silenced ones) go first (their count stays in `occurrences`);
// lifecycle entries stay as long as possible.
inline void thin_timeline(std::vector<TimelineEntry>& tl) {
  while (tl.size() > kMaxTimeline) {
    auto it = std::find_if(tl.begin() + 1, tl.end(),
                           [](const TimelineEntry& e) {
                             return e.what == "occurrence" || e.what == "suppressed" ||
                                    e.what == "silenced";
                           });
    tl.erase(it != tl.end() ? it : tl.begin() + 1);
  }
}

}  // namespace detail::incidents

// One unit of work: every incident it changes and every event it appends go into one
// WriteSet; the engine's counters and cache change only after that write is durable.
struct IncidentEngine::Txn {
  Txn(std::int64_t n, std::uint64_t id, std::uint64_t seq) : now(n), next_id(id), next_seq(seq) {}
  WriteSet ws;
  std::int64_t now = 0;
  std::uint64_t next_id = 0, next_seq = 0;
  std::map<std::uint64_t, Incident> changed;
  std::map<std::string, std::optional<std::uint64_t>> keys;  // overlay on incident_keys
  std::map<std::string, std::uint64_t> cursors;
  std::vector<AuditRecord> audit;  // committed with ws when the engine has an audit log
  std::map<std::uint64_t, Silence> silences;  // changed silences (new, expired, counted)
  std::uint64_t next_silence_id = 0;           // 0: unchanged

  Incident& record(Incident& i, const std::string& actor, const std::string& what,
                   const std::string& detail) {
    i.updated_ns = now;
    i.timeline.push_back({now, actor, what, detail});
    detail::incidents::thin_timeline(i.timeline);
    std::uint64_t seq = next_seq++;
    // Not state changes, one per failing run: the timeline and the event log have them.
    if (what != "occurrence" && what != "suppressed" && what != "silenced")
      audit.push_back({actor,
                       "incident_" + what,
                       "incident #" + std::to_string(i.id),
                       {{"incident_id", i.id},
                        {"event_seq", seq},
                        {"severity", severity_name(i.severity)},
                        {"detail", detail}}});
    ws.put(Table::incident_events, detail::incidents::id_key(seq),
           detail::incidents::dump({{"v", detail::incidents::kEventFormat},
                 {"time_ns", now},
                 {"incident_id", i.id},
                 {"what", what},
                 {"severity", severity_name(i.severity)},
                 {"actor", actor},
                 {"detail", detail}}));
    changed[i.id] = i;
    return changed[i.id];
  }
};


}  // namespace tocsin::collector
