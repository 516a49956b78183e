// Silences: validation, stored and API forms, matching, and the engine's silence operations.
#include "collector/incidents/silences.hpp"

#include <algorithm>

#include "collector/incidents/engine_txn.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/incidents/incidents_detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {

using nlohmann::json;
using detail::incidents::dump;
using detail::incidents::id_key;
using detail::incidents::kSilencePrefix;

namespace {

constexpr int kSilenceFormat = 1;

std::string trimmed(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// Ids and label names: printable ASCII without spaces, bounded, so a silence listing stays one
// readable line per matcher whatever a client sent.
void check_word(const std::string& field, const std::string& v, std::size_t max) {
  if (v.size() > max)
    throw IncidentError(field + " is longer than " + std::to_string(max) + " bytes");
  for (unsigned char c : v)
    if (c <= ' ' || c >= 0x7f)
      throw IncidentError(field + " must be printable ASCII without spaces");
}

void check_value(const std::string& field, const std::string& v, std::size_t max) {
  if (v.size() > max)
    throw IncidentError(field + " is longer than " + std::to_string(max) + " bytes");
  for (unsigned char c : v)
    if (c < ' ' || c == 0x7f) throw IncidentError(field + " must not contain control characters");
}

json matchers_json(const SilenceMatchers& m) {
  return {{"test", m.test_id}, {"agent", m.agent_id}, {"kind", m.kind}, {"labels", m.labels}};
}

}  // namespace

bool SilenceMatchers::matches(const std::string& test, const std::string& agent,
                              const std::string& kind_name,
                              const std::map<std::string, std::string>& signal_labels) const {
  if (empty()) return false;  // never silences everything
  if (kind_name == "security_event" && kind != kind_name) return false;
  if (!test_id.empty() && test_id != test) return false;
  if (!agent_id.empty() && agent_id != agent) return false;
  if (!kind.empty() && kind != kind_name) return false;
  for (const auto& [k, v] : labels) {
    auto it = signal_labels.find(k);
    if (it == signal_labels.end() || it->second != v) return false;
  }
  return true;
}

Silence make_silence(const SilenceRequest& r, const std::string& actor, std::int64_t now_ns) {
  Silence s;
  s.matchers.test_id = trimmed(r.matchers.test_id);
  s.matchers.agent_id = trimmed(r.matchers.agent_id);
  s.matchers.kind = trimmed(r.matchers.kind);
  check_word("test", s.matchers.test_id, kMaxSilenceId);
  check_word("agent", s.matchers.agent_id, kMaxSilenceId);
  if (!s.matchers.kind.empty() && !parse_kind(s.matchers.kind))
    throw IncidentError("kind '" + s.matchers.kind.substr(0, kMaxSilenceId) +
                        "' is not an incident kind (prevention_failed, detection_missed, "
                        "detection_late, health_failed, agent_silent, security_event, "
                        "latency_regression)");
  if (r.matchers.labels.size() > kMaxSilenceLabels)
    throw IncidentError("labels: at most " + std::to_string(kMaxSilenceLabels) + " matchers");
  for (const auto& [k, v] : r.matchers.labels) {
    check_word("labels", k, kMaxSilenceId);
    if (std::none_of(kSilenceLabelNames.begin(), kSilenceLabelNames.end(),
                     [&](const char* n) { return k == n; }))
      throw IncidentError("labels: '" + k +
                          "' is not a label incidents have (probe, technique, target, hostname, "
                          "kind, severity)");
    check_value("labels." + k, v, kMaxSilenceValue);
    if (v.empty()) throw IncidentError("labels." + k + " needs a value");
    s.matchers.labels[k] = v;
  }
  if (s.matchers.empty())
    throw IncidentError("at least one matcher is required (test, agent, kind or labels)");
  auto until = trimmed(r.until);
  if (until.empty()) throw IncidentError("until is required (an RFC 3339 time or a duration: 2h, 7d)");
  try {
    if (until.find('T') != std::string::npos)
      s.until_ns = common::parse_since(until, now_ns);
    else  // a duration counts forward from now (parse_duration caps it, nothing overflows)
      s.until_ns = now_ns + common::parse_duration(until).count() * 1'000'000;
  } catch (const std::exception& e) {
    throw IncidentError("until: " + std::string(e.what()).substr(0, 300));
  }
  if (s.until_ns <= now_ns) throw IncidentError("until must be in the future");
  if (s.until_ns - now_ns > kMaxSilenceAheadNs)
    throw IncidentError("until: a silence lasts at most 90 days (90d); '" + until.substr(0, 64) +
                        "' is further ahead");
  s.reason = trimmed(r.reason);
  if (s.reason.empty()) throw IncidentError("reason is required");
  check_value("reason", s.reason, kMaxSilenceReason);
  s.created_by = actor;
  s.created_ns = now_ns;
  return s;
}

std::string encode_silence(const Silence& s) {
  return dump({{"v", kSilenceFormat},
               {"id", s.id},
               {"matchers", matchers_json(s.matchers)},
               {"reason", s.reason},
               {"created_by", s.created_by},
               {"created_ns", s.created_ns},
               {"until_ns", s.until_ns},
               {"expired_ns", s.expired_ns},
               {"expired_by", s.expired_by},
               {"silenced_signals", s.silenced_signals}});
}

Silence decode_silence(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != kSilenceFormat)
    throw StoreError("corrupt or unknown silence record");
  try {
    Silence s;
    s.id = j.at("id").get<std::uint64_t>();
    const auto& m = j.at("matchers");
    s.matchers.test_id = m.value("test", "");
    s.matchers.agent_id = m.value("agent", "");
    s.matchers.kind = m.value("kind", "");
    s.matchers.labels = m.value("labels", std::map<std::string, std::string>{});
    s.reason = j.value("reason", "");
    s.created_by = j.value("created_by", "");
    s.created_ns = j.value("created_ns", std::int64_t{0});
    s.until_ns = j.value("until_ns", std::int64_t{0});
    s.expired_ns = j.value("expired_ns", std::int64_t{0});
    s.expired_by = j.value("expired_by", "");
    s.silenced_signals = j.value("silenced_signals", std::uint64_t{0});
    return s;
  } catch (const json::exception& e) {
    throw StoreError(std::string("corrupt silence record: ") + e.what());
  }
}

json silence_json(const Silence& s, std::int64_t now_ns) {
  return {{"id", std::to_string(s.id)},
          {"matchers", matchers_json(s.matchers)},
          {"reason", s.reason},
          {"created_by", s.created_by},
          {"created_at", common::format_time(s.created_ns)},
          {"until", common::format_time(s.until_ns)},
          {"state", s.active(now_ns) ? "active" : "expired"},
          {"expired_at", s.expired_ns ? json(common::format_time(s.expired_ns)) : json(nullptr)},
          {"expired_by", s.expired_ns ? json(s.expired_by) : json(nullptr)},
          {"silenced_signals", s.silenced_signals}};
}

// ---- the engine's silences ----------------------------------------------------------------

namespace {
// Every stored silence, in id order.
void scan_silences(const Store& store, const std::function<void(Silence)>& fn) {
  store.scan(Table::incident_keys, kSilencePrefix, [&](std::string_view k, std::string_view v) {
    if (k.substr(0, kSilencePrefix.size()) != kSilencePrefix) return false;
    fn(decode_silence(std::string(v)));
    return true;
  });
}
}  // namespace

void IncidentEngine::load_silences() {
  auto now = now_();
  scan_silences(store_, [&](Silence s) {
    next_silence_id_ = std::max(next_silence_id_, s.id + 1);
    if (s.active(now)) silences_.emplace(s.id, std::move(s));
  });
}

std::vector<std::uint64_t> IncidentEngine::matching_silences(
    const std::string& test, const std::string& agent, const std::vector<std::string>& kinds,
    std::map<std::string, std::string> labels, std::int64_t now) const {
  std::vector<std::uint64_t> out;
  if (silences_.empty()) return out;
  for (const auto& [id, s] : silences_) {
    if (!s.active(now)) continue;
    for (const auto& k : kinds) {
      labels["kind"] = k;  // one map for every silence and kind, not a copy each
      if (s.matchers.matches(test, agent, k, labels)) {
        out.push_back(id);
        break;
      }
    }
  }
  return out;
}

std::vector<std::uint64_t> IncidentEngine::silences_of(const Incident& i, std::int64_t now) const {
  if (silences_.empty()) return {};
  std::vector<std::string> kinds{kind_name(i.kind)};
  for (const auto& f : i.facets)
    if (f != kinds[0]) kinds.push_back(f);
  return matching_silences(i.test_id, i.agent_id, kinds, incident_labels(i), now);
}

std::vector<std::uint64_t> IncidentEngine::silence_signal(
    const Signal& s, const std::map<std::string, std::string>& labels, Txn& t) {
  if (silences_.empty()) return {};
  auto all = labels;
  all["severity"] = severity_name(s.severity);
  auto out = matching_silences(s.test_id, s.agent_id, {kind_name(s.kind)}, std::move(all), t.now);
  for (auto id : out) {
    auto it = t.silences.find(id);
    if (it == t.silences.end()) it = t.silences.emplace(id, silences_.at(id)).first;
    ++it->second.silenced_signals;
  }
  return out;
}

void IncidentEngine::prune_silences(Txn& t) {
  if (pruned_ns_ && t.now - pruned_ns_ < 3'600'000'000'000) return;
  pruned_ns_ = t.now;
  scan_silences(store_, [&](Silence s) {
    auto ended = s.expired_ns ? s.expired_ns : s.until_ns;
    if (!s.active(t.now) && t.now - ended > kSilenceRetentionNs)
      t.ws.erase(Table::incident_keys, kSilencePrefix + id_key(s.id));
  });
}

Silence IncidentEngine::add_silence(const SilenceRequest& r, const std::string& actor) {
  if (trimmed(actor).empty()) throw IncidentError("an actor is required");
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto s = make_silence(r, actor, t.now);
  auto active = std::count_if(silences_.begin(), silences_.end(),
                              [&](const auto& kv) { return kv.second.active(t.now); });
  if (static_cast<std::size_t>(active) >= kMaxActiveSilences)
    throw IncidentError("there are already " + std::to_string(kMaxActiveSilences) +
                        " active silences: expire some first");
  s.id = next_silence_id_;
  t.next_silence_id = s.id + 1;
  t.silences[s.id] = s;
  t.audit.push_back({actor,
                     "silence_created",
                     "silence #" + std::to_string(s.id),
                     {{"silence_id", s.id},
                      {"matchers", matchers_json(s.matchers)},
                      {"until", common::format_time(s.until_ns)},
                      {"reason", s.reason}}});
  commit(t);
  return s;
}

std::optional<Silence> IncidentEngine::expire_silence(std::uint64_t id, const std::string& actor) {
  if (trimmed(actor).empty()) throw IncidentError("an actor is required");
  std::lock_guard lk(mu_);
  Txn t(now_(), next_id_, next_seq_);
  auto v = store_.get(Table::incident_keys, kSilencePrefix + id_key(id));
  if (!v) return std::nullopt;
  auto s = decode_silence(*v);
  if (!s.active(t.now))
    throw IncidentError("silence #" + std::to_string(id) + " has already ended");
  s.expired_ns = t.now;
  s.expired_by = actor;
  t.silences[id] = s;
  t.audit.push_back({actor,
                     "silence_expired",
                     "silence #" + std::to_string(id),
                     {{"silence_id", id}, {"silenced_signals", s.silenced_signals}}});
  commit(t);
  return s;
}

std::vector<Silence> IncidentEngine::list_silences(const std::string& state,
                                                   std::size_t limit) const {
  auto now = now_();
  std::vector<Silence> out;
  scan_silences(store_, [&](Silence s) {
    bool active = s.active(now);
    if (state == "all" || (state == "active") == active) out.push_back(std::move(s));
  });
  std::reverse(out.begin(), out.end());  // newest first
  if (out.size() > limit) out.resize(limit);
  return out;
}

std::vector<std::string> IncidentEngine::silenced_by(const Incident& i) const {
  return silenced_by(std::vector<Incident>{i}).front();
}

std::vector<std::vector<std::string>> IncidentEngine::silenced_by(
    const std::vector<Incident>& list) const {
  std::vector<std::vector<std::string>> out(list.size());
  std::lock_guard lk(mu_);
  if (silences_.empty()) return out;
  auto now = now_();
  for (std::size_t n = 0; n < list.size(); ++n)
    for (auto id : silences_of(list[n], now)) out[n].push_back(std::to_string(id));
  return out;
}

std::optional<Silence> IncidentEngine::get_silence(std::uint64_t id) const {
  auto v = store_.get(Table::incident_keys, kSilencePrefix + id_key(id));
  if (!v) return std::nullopt;
  return decode_silence(*v);
}

}  // namespace tocsin::collector
