#include "collector/runs/correlator.hpp"

#include <pthread.h>

#include <spdlog/spdlog.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/clock.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
using nlohmann::json;

namespace {

constexpr std::size_t kMaxMarkersPerAlert = 8;
constexpr std::size_t kMaxOrphans = 200000;  // alerts waiting for a run that may never come
constexpr auto kOrphanTtl = std::chrono::hours(24);
constexpr std::int64_t kMaxAlertWithinNs = 30LL * 24 * 3600 * 1'000'000'000;
constexpr std::size_t kStoredTextBytes = 2048;
constexpr auto kTick = std::chrono::milliseconds(100);
constexpr std::size_t kLatencySamples = 100000;
constexpr double kExactConfidence = 1.0;
constexpr double kFuzzyConfidence = 0.6;
constexpr double kFuzzyRuleConfidence = 0.7;  // also names a detection the test expects

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
// Agents report "web01", SIEMs often "web01.corp.example" (or the reverse): compare the first
// label, case-insensitively.
std::string short_host(const std::string& h) {
  return lower(h.substr(0, h.find('.')));
}

std::vector<std::string> fuzzy_keys(const std::string& host, const std::string& technique,
                                    const std::vector<std::string>& rules) {
  std::vector<std::string> keys;
  auto h = short_host(host);
  if (h.empty()) return keys;
  if (!technique.empty()) keys.push_back(h + '\0' + "t:" + technique);
  for (const auto& r : rules)
    if (!r.empty()) keys.push_back(h + '\0' + "r:" + lower(r));
  return keys;
}

std::string runs_by_time_key(const Run& r) {
  std::string k;
  put_be64(k, time_key(r.action_ns));
  return k + r.marker;
}

std::string orphan_key(const std::string& marker, const std::string& alert_key) {
  return marker + '\0' + alert_key;
}

// Alert records and detection events are written once per alert, on the correlator's thread:
// msgpack arrays (format 1), about a quarter of the cost of building and dumping JSON objects.
// Records written as JSON objects by earlier versions are still read (the first byte tells).
constexpr std::uint64_t kAlertFormat = 1;
constexpr std::uint32_t kAlertFields = 18;
constexpr std::uint64_t kEventFormat = 1;
constexpr std::uint32_t kEventFields = 13;
const auto kRecordLimit = msgpack::unpack_limit(256, 0, 1 << 20, 0, 1024, 4);

// The fields after the format number of a stored msgpack record: an array of at least `fields`
// elements whose first is `format`. nullptr for anything else; msgpack's own unpack and type
// errors propagate to the caller, which names the record.
const msgpack::object* record_fields(const msgpack::object_handle& oh, std::uint64_t format,
                                     std::uint32_t fields) {
  const auto& o = oh.get();
  if (o.type != msgpack::type::ARRAY || o.via.array.size < fields ||
      o.via.array.ptr[0].as<std::uint64_t>() != format)
    return nullptr;
  return o.via.array.ptr + 1;
}

std::string encode_alert_record(const Alert& a, const std::vector<std::string>& markers,
                                const std::string& marker, const std::string& reason,
                                double confidence) {
  auto text = std::string_view(a.text).substr(0, kStoredTextBytes);
  msgpack::sbuffer buf(256 + text.size() + a.host.size() + a.rule.size() + reason.size());
  msgpack::packer<msgpack::sbuffer> p(buf);
  p.pack_array(kAlertFields);
  p.pack(kAlertFormat);
  p.pack(a.source);
  p.pack(a.source_type);
  p.pack(a.id);
  p.pack(a.is_event);
  p.pack(a.host);
  p.pack(a.rule);
  p.pack(a.technique);
  p.pack(a.severity);
  p.pack(text);
  p.pack(a.event_ns);
  p.pack(a.ingest_ns);
  p.pack(a.created_ns);
  p.pack(a.arrival_ns);
  p.pack(markers);
  p.pack(marker);
  p.pack(reason);
  p.pack(confidence);
  return std::string(buf.data(), buf.size());
}

Alert alert_from_json(const json& j);

// The stored alert and the markers it named; nullopt for a record that cannot be read.
std::optional<std::pair<Alert, std::vector<std::string>>> decode_alert_record(
    const std::string& v) {
  if (!v.empty() && v[0] == '{') {
    json j = json::parse(v, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    return std::pair{alert_from_json(j), j.value("markers", std::vector<std::string>{})};
  }
  try {
    auto oh = msgpack::unpack(v.data(), v.size(), nullptr, nullptr, kRecordLimit);
    const msgpack::object* f = record_fields(oh, kAlertFormat, kAlertFields);
    if (!f) return std::nullopt;
    Alert a;
    std::vector<std::string> markers;
    f++->convert(a.source);
    f++->convert(a.source_type);
    f++->convert(a.id);
    f++->convert(a.is_event);
    f++->convert(a.host);
    f++->convert(a.rule);
    f++->convert(a.technique);
    f++->convert(a.severity);
    f++->convert(a.text);
    f++->convert(a.event_ns);
    f++->convert(a.ingest_ns);
    f++->convert(a.created_ns);
    f++->convert(a.arrival_ns);
    f++->convert(markers);
    return std::pair{std::move(a), std::move(markers)};
  } catch (const msgpack::type_error&) {
    return std::nullopt;
  } catch (const msgpack::unpack_error&) {
    return std::nullopt;
  }
}

std::string encode_event(const DetectionEvent& e) {
  msgpack::sbuffer buf(192 + e.marker.size() + e.agent_id.size() + e.test_id.size() +
                       e.detail.size() + e.target.size());
  msgpack::packer<msgpack::sbuffer> p(buf);
  p.pack_array(kEventFields);
  p.pack(kEventFormat);
  p.pack(e.time_ns);
  p.pack(e.marker);
  p.pack(e.agent_id);
  p.pack(e.test_id);
  p.pack(e.from);
  p.pack(e.to);
  p.pack(e.detail);
  p.pack(e.target);
  p.pack(e.has_latency);
  p.pack(e.action_ns);
  p.pack(e.time_to_alert_ns);
  p.pack(e.clock_anomaly);
  return std::string(buf.data(), buf.size());
}

DetectionEvent decode_event(std::uint64_t seq, std::string_view v) {
  DetectionEvent e;
  e.seq = seq;
  if (!v.empty() && v[0] == '{') {
    json j = json::parse(v, nullptr, false);
    if (!j.is_object()) throw StoreError("corrupt detection event");
    e.time_ns = j.value("time_ns", std::int64_t{0});
    e.marker = j.value("marker", "");
    e.agent_id = j.value("agent_id", "");
    e.test_id = j.value("test_id", "");
    e.from = j.value("from", "");
    e.to = j.value("to", "");
    e.detail = j.value("detail", "");
    e.target = j.value("target", "");
    if (auto t = j.find("time_to_alert_ns"); t != j.end() && t->is_number_integer()) {
      e.has_latency = true;
      e.time_to_alert_ns = t->get<std::int64_t>();
      e.action_ns = j.value("action_ns", std::int64_t{0});
      e.clock_anomaly = j.value("clock_anomaly", false);
    }
    return e;
  }
  try {
    auto oh = msgpack::unpack(v.data(), v.size(), nullptr, nullptr, kRecordLimit);
    const msgpack::object* f = record_fields(oh, kEventFormat, kEventFields);
    if (!f) throw StoreError("corrupt detection event");
    f++->convert(e.time_ns);
    f++->convert(e.marker);
    f++->convert(e.agent_id);
    f++->convert(e.test_id);
    f++->convert(e.from);
    f++->convert(e.to);
    f++->convert(e.detail);
    f++->convert(e.target);
    f++->convert(e.has_latency);
    f++->convert(e.action_ns);
    f++->convert(e.time_to_alert_ns);
    f++->convert(e.clock_anomaly);
    return e;
  } catch (const msgpack::type_error&) {
    throw StoreError("corrupt detection event");
  } catch (const msgpack::unpack_error& e) {
    throw StoreError(std::string("corrupt detection event: ") + e.what());
  }
}

Alert alert_from_json(const json& j) {
  Alert a;
  a.source = j.value("source", "");
  a.source_type = j.value("source_type", "");
  a.id = j.value("id", "");
  a.is_event = j.value("is_event", false);
  a.host = j.value("host", "");
  a.rule = j.value("rule", "");
  a.technique = j.value("technique", "");
  a.severity = j.value("severity", "");
  a.text = j.value("text", "");
  a.event_ns = j.value("event_ns", std::int64_t{0});
  a.ingest_ns = j.value("ingest_ns", std::int64_t{0});
  a.created_ns = j.value("created_ns", std::int64_t{0});
  a.arrival_ns = j.value("arrival_ns", std::int64_t{0});
  return a;
}

std::string fmt_seconds(std::int64_t ns) {
  return fmt::format("{:.3f} s", ns / 1e9);
}

}  // namespace

std::string state_name(DetectionState s) {
  switch (s) {
    case DetectionState::pending:
      return "pending";
    case DetectionState::alerted:
      return "alerted";
    case DetectionState::late:
      return "late";
    case DetectionState::logged:
      return "logged";
    case DetectionState::missed:
      return "missed";
    case DetectionState::not_expected:
      return "not_expected";
  }
  return "pending";
}

std::optional<DetectionState> parse_state(const std::string& s) {
  for (auto st : {DetectionState::pending, DetectionState::alerted, DetectionState::late,
                  DetectionState::logged, DetectionState::missed, DetectionState::not_expected})
    if (state_name(st) == s) return st;
  return std::nullopt;
}

CorrelationConfig CorrelationConfig::load(const common::ConfigNode& node) {
  CorrelationConfig c;
  if (!node.defined()) return c;
  node.check_keys({"grace", "fuzzy_window", "clock_drift_ppm"});
  c.grace = node.duration("grace", c.grace);
  c.fuzzy_window = node.duration("fuzzy_window", c.fuzzy_window);
  c.clock_drift_ppm = node.integer("clock_drift_ppm", c.clock_drift_ppm);
  if (c.grace.count() < 0 || c.grace > std::chrono::hours(24 * 30))
    node.fail("grace", "must be between 0s and 30d");
  if (c.fuzzy_window.count() <= 0 || c.fuzzy_window > std::chrono::hours(24 * 30))
    node.fail("fuzzy_window", "must be between 1ms and 30d");
  if (c.clock_drift_ppm < 0 || c.clock_drift_ppm > 100000)
    node.fail("clock_drift_ppm", "must be between 0 and 100000");
  return c;
}

namespace {

// Run records: a msgpack array in this fixed order, led by its format number. Positional,
// because ingest writes one per result and keys would double its size and encode time.
constexpr std::uint64_t kRunFormat = 1;
constexpr std::uint32_t kRunFields = 39;

Run decode_run_json(const std::string& s) {  // databases written before format 1
  json j = json::parse(s, nullptr, false);
  if (!j.is_object()) throw StoreError("corrupt run record");
  Run r;
  auto i64 = [&](const char* k) { return j.value(k, std::int64_t{0}); };
  auto str = [&](const char* k) { return j.value(k, std::string()); };
  r.marker = str("marker");
  r.agent_id = str("agent_id");
  r.seq = j.value("seq", std::uint64_t{0});
  r.hostname = str("hostname");
  r.test_id = str("test_id");
  r.probe = str("probe");
  r.technique = str("technique");
  r.verdict = str("verdict");
  r.reason = str("reason");
  r.target = str("target");
  r.detections = j.value("detections", std::vector<std::string>{});
  r.alert_within_ns = i64("alert_within_ns");
  r.agent_started_ns = i64("agent_started_ns");
  r.clock_offset_ns = i64("clock_offset_ns");
  r.action_ns = i64("action_ns");
  r.action_error_ns = i64("action_error_ns");
  r.clock_synced = j.value("clock_synced", true);
  r.received_ns = i64("received_ns");
  r.state = parse_state(str("state")).value_or(DetectionState::pending);
  r.overdue = j.value("overdue", false);
  r.state_changed_ns = i64("state_changed_ns");
  r.alert_key = str("alert_key");
  r.alert_source = str("alert_source");
  r.alert_rule = str("alert_rule");
  r.match_reason = str("match_reason");
  r.confidence = j.value("confidence", 0.0);
  r.event_ns = i64("event_ns");
  r.ingest_ns = i64("ingest_ns");
  r.created_ns = i64("created_ns");
  r.arrival_ns = i64("arrival_ns");
  r.time_to_alert_ns = i64("time_to_alert_ns");
  r.clock_anomaly = j.value("clock_anomaly", false);
  r.alert_count = j.value("alert_count", std::uint32_t{0});
  r.logged_key = str("logged_key");
  r.logged_source = str("logged_source");
  r.logged_event_ns = i64("logged_event_ns");
  r.logged_ingest_ns = i64("logged_ingest_ns");
  r.logged_arrival_ns = i64("logged_arrival_ns");
  return r;
}

}  // namespace

std::string encode_run(const Run& r) {
  msgpack::sbuffer buf(256 + r.marker.size() + r.agent_id.size() + r.test_id.size() +
                       r.target.size());
  msgpack::packer<msgpack::sbuffer> p(buf);
  p.pack_array(kRunFields);
  p.pack(kRunFormat);
  p.pack(r.marker);
  p.pack(r.agent_id);
  p.pack(r.seq);
  p.pack(r.hostname);
  p.pack(r.test_id);
  p.pack(r.probe);
  p.pack(r.technique);
  p.pack(r.verdict);
  p.pack(r.reason);
  p.pack(r.target);
  p.pack(r.detections);
  p.pack(r.alert_within_ns);
  p.pack(r.agent_started_ns);
  p.pack(r.clock_offset_ns);
  p.pack(r.action_ns);
  p.pack(r.action_error_ns);
  p.pack(r.clock_synced);
  p.pack(r.received_ns);
  p.pack(static_cast<std::uint32_t>(r.state));
  p.pack(r.overdue);
  p.pack(r.state_changed_ns);
  p.pack(r.alert_key);
  p.pack(r.alert_source);
  p.pack(r.alert_rule);
  p.pack(r.match_reason);
  p.pack(r.confidence);
  p.pack(r.event_ns);
  p.pack(r.ingest_ns);
  p.pack(r.created_ns);
  p.pack(r.arrival_ns);
  p.pack(r.time_to_alert_ns);
  p.pack(r.clock_anomaly);
  p.pack(r.alert_count);
  p.pack(r.logged_key);
  p.pack(r.logged_source);
  p.pack(r.logged_event_ns);
  p.pack(r.logged_ingest_ns);
  p.pack(r.logged_arrival_ns);
  return std::string(buf.data(), buf.size());
}

Run decode_run(const std::string& s) {
  if (!s.empty() && s[0] == '{') return decode_run_json(s);
  try {
    auto oh = msgpack::unpack(s.data(), s.size(), nullptr, nullptr,
                              msgpack::unpack_limit(64, 0, 1 << 20, 0, 1024, 4));
    const msgpack::object* f = record_fields(oh, kRunFormat, kRunFields);
    if (!f) throw StoreError("corrupt run record");
    Run r;
    f++->convert(r.marker);
    f++->convert(r.agent_id);
    f++->convert(r.seq);
    f++->convert(r.hostname);
    f++->convert(r.test_id);
    f++->convert(r.probe);
    f++->convert(r.technique);
    f++->convert(r.verdict);
    f++->convert(r.reason);
    f++->convert(r.target);
    f++->convert(r.detections);
    f++->convert(r.alert_within_ns);
    f++->convert(r.agent_started_ns);
    f++->convert(r.clock_offset_ns);
    f++->convert(r.action_ns);
    f++->convert(r.action_error_ns);
    f++->convert(r.clock_synced);
    f++->convert(r.received_ns);
    auto state = f++->as<std::uint32_t>();
    if (state > static_cast<std::uint32_t>(DetectionState::not_expected))
      throw StoreError("corrupt run record: state " + std::to_string(state));
    r.state = static_cast<DetectionState>(state);
    f++->convert(r.overdue);
    f++->convert(r.state_changed_ns);
    f++->convert(r.alert_key);
    f++->convert(r.alert_source);
    f++->convert(r.alert_rule);
    f++->convert(r.match_reason);
    f++->convert(r.confidence);
    f++->convert(r.event_ns);
    f++->convert(r.ingest_ns);
    f++->convert(r.created_ns);
    f++->convert(r.arrival_ns);
    f++->convert(r.time_to_alert_ns);
    f++->convert(r.clock_anomaly);
    f++->convert(r.alert_count);
    f++->convert(r.logged_key);
    f++->convert(r.logged_source);
    f++->convert(r.logged_event_ns);
    f++->convert(r.logged_ingest_ns);
    f++->convert(r.logged_arrival_ns);
    return r;
  } catch (const msgpack::type_error&) {
    throw StoreError("corrupt run record");
  } catch (const msgpack::unpack_error& e) {
    throw StoreError(std::string("corrupt run record: ") + e.what());
  }
}

namespace {

void borrow_offset(Run& r, const AgentRecord& agent, std::int64_t at_ns,
                   const CorrelationConfig& cfg) {
  if (agent.clock_error_ns < 0) {
    r.clock_offset_ns = 0;
    r.action_error_ns = -1;
    return;
  }
  auto gap = at_ns - r.agent_started_ns;
  if (gap < 0) gap = -gap;
  r.clock_offset_ns = agent.clock_offset_ns;
  r.action_error_ns = agent.clock_error_ns + gap / 1'000'000 * cfg.clock_drift_ppm;
}

}  // namespace

std::optional<Run> run_from_result(const common::ResultRecord& rec, const common::ResultBody& body,
                                   const AgentRecord& agent, std::int64_t received_ns,
                                   const CorrelationConfig& cfg) {
  if (body.kind != "probe" || body.marker.empty()) return std::nullopt;
  Run r;
  r.marker = body.marker;
  r.agent_id = rec.agent_id;
  r.seq = rec.seq;
  r.hostname = agent.hostname;
  r.test_id = body.test_id;
  r.probe = body.probe;
  r.technique = body.technique;
  r.verdict = body.verdict;
  r.reason = body.reason;
  r.target = body.target;
  r.detections = body.detections;
  // Agent-supplied: capped so deadlines can neither overflow nor keep a run pending forever.
  r.alert_within_ns = std::clamp<std::int64_t>(body.alert_within_ns, 0, kMaxAlertWithinNs);
  r.agent_started_ns = body.started_ns;
  if (body.clock_error_ns >= 0) {
    r.clock_offset_ns = body.clock_offset_ns;
    r.action_error_ns = body.clock_error_ns;
  } else {
    // Run before the agent's first clock exchange: borrow its latest offset, with the drift
    // the time in between allows; with none known, say so instead of guessing.
    r.clock_synced = false;
    borrow_offset(r, agent, received_ns, cfg);
  }
  r.action_ns = r.agent_started_ns + r.clock_offset_ns;
  r.received_ns = received_ns;
  r.state_changed_ns = received_ns;
  // Only an action that happened can be detected: an unreachable target, a missing
  // interpreter or a probe that did not apply leaves nothing for a SIEM to see.
  bool acted = r.verdict == "prevented" || r.verdict == "not_prevented";
  r.state = r.alert_within_ns > 0 && acted ? DetectionState::pending : DetectionState::not_expected;
  return r;
}

namespace {

// What a restart needs to index a pending run again, so loading a million of them reads one
// small table instead of every full record.
std::string open_run_value(const Run& r) {
  return dump({{"a", r.action_ns},
               {"e", r.action_error_ns},
               {"w", r.alert_within_ns},
               {"o", r.overdue},
               {"h", r.hostname},
               {"t", r.technique},
               {"d", r.detections}});
}

std::optional<Run> open_run_from_value(std::string_view marker, std::string_view v) {
  json j = json::parse(v, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  Run r;
  r.marker = std::string(marker);
  r.action_ns = j.value("a", std::int64_t{0});
  r.action_error_ns = j.value("e", std::int64_t{0});
  r.alert_within_ns = j.value("w", std::int64_t{0});
  r.overdue = j.value("o", false);
  r.hostname = j.value("h", "");
  r.technique = j.value("t", "");
  r.detections = j.value("d", std::vector<std::string>{});
  return r;
}

}  // namespace

void put_run(WriteSet& ws, const Run& r) {
  ws.put(Table::runs, r.marker, encode_run(r));
  ws.put(Table::runs_by_time, runs_by_time_key(r), "");
  if (r.state == DetectionState::pending) ws.put(Table::runs_open, r.marker, open_run_value(r));
}

std::optional<Run> get_run(const Store& store, const std::string& marker) {
  auto v = store.get(Table::runs, marker);
  if (!v) return std::nullopt;
  return decode_run(*v);
}

std::vector<Run> list_runs(const Store& store, std::int64_t since_ns, std::int64_t until_ns,
                           std::size_t limit, const std::function<bool(const Run&)>& keep) {
  std::vector<Run> out;
  std::string from;
  put_be64(from, time_key(since_ns));
  auto until = time_key(until_ns);
  store.scan(Table::runs_by_time, from, [&](std::string_view k, std::string_view) {
    if (k.size() <= 8 || get_be64(k.data()) >= until || out.size() >= limit) return false;
    auto r = get_run(store, std::string(k.substr(8)));
    if (r && (!keep || keep(*r))) out.push_back(std::move(*r));
    return true;
  });
  return out;
}

std::vector<DetectionEvent> list_detection_events(const Store& store, std::uint64_t from_seq,
                                                  std::size_t limit) {
  std::vector<DetectionEvent> out;
  std::string from;
  put_be64(from, from_seq);
  store.scan(Table::detection_events, from, [&](std::string_view k, std::string_view v) {
    if (out.size() >= limit) return false;
    if (k.size() != 8) throw StoreError("corrupt detection event");
    out.push_back(decode_event(get_be64(k.data()), v));
    return true;
  });
  return out;
}

// ---------------------------------------------------------------------------------------------

struct Correlator::Impl {
  // What the correlator keeps of a pending run: enough to find it and to time it out. The
  // full record lives in the store (or in `inflight_` while a write of it is in flight).
  // Pending runs by host+technique (and host+expected rule), in action order.
  using FuzzySet = std::set<std::pair<std::int64_t, std::string>>;
  struct FuzzyRef {  // where a pending run sits in fuzzy_, so untracking it compares nothing
    std::string key;
    FuzzySet* set;  // fuzzy_'s nodes stay put when it rehashes
    FuzzySet::iterator it;
  };
  struct PendingRun {
    std::int64_t action_ns = 0;
    std::int64_t action_error_ns = 0;
    std::int64_t deadline_ns = 0;  // next deadline: the SLA, then the grace end
    std::vector<FuzzyRef> fuzzy;
  };
  struct Flight {  // one commit in progress
    std::vector<std::string> run_markers;
    std::vector<std::string> alert_keys;
    std::vector<DetectionEvent> events;
    std::vector<std::int64_t> arrivals;  // of the alerts in this flight
    std::function<void(SubmitOutcome)> done;  // once durable, on the committer thread
    std::function<void()> finished;           // after the bookkeeping, on this thread
    SubmitOutcome outcome;
  };

  Store& store_;
  CorrelationConfig cfg_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  asio::steady_timer tick_{io_};
  std::thread thread_;
  bool started_ = false;
  bool stopping_ = false;  // correlator thread only

  std::unordered_map<std::string, PendingRun> pending_;
  std::multimap<std::int64_t, std::string> deadlines_;  // stale entries are skipped on pop
  std::unordered_map<std::string, FuzzySet> fuzzy_;
  std::unordered_set<std::string> adopted_;  // pending runs found in the store before ingest
                                             // told us about them
  std::unordered_map<std::string, std::pair<Run, int>> inflight_;  // marker -> (run, writes)
  std::unordered_map<std::string, int> inflight_alerts_;
  // Alerts that named a marker whose run is not here yet, by their key; and the keys waiting
  // for each marker (an alert may name several). The key is kept as computed on arrival: the
  // stored copy of the text is truncated, so it could not be recomputed after a restart.
  struct Orphan {
    std::vector<std::string> markers;
    Alert alert;
  };
  std::unordered_map<std::string, Orphan> orphan_alerts_;
  std::unordered_map<std::string, std::vector<std::string>> orphans_by_marker_;
  std::size_t orphan_count_ = 0;
  std::int64_t next_orphan_sweep_ns_ = 0;
  std::uint64_t next_event_seq_ = 1;
  std::atomic<std::size_t> pending_count_{0};
  std::vector<std::function<void(const DetectionEvent&)>> listeners_;

  mutable std::mutex counters_mu_;
  std::map<std::string, SourceCounters> counters_;
  std::vector<std::int64_t> store_latency_;  // arrival -> durable, the most recent samples
  std::size_t latency_next_ = 0;
  std::map<std::string, std::int64_t> last_reject_log_;

  Impl(Store& store, CorrelationConfig cfg) : store_(store), cfg_(std::move(cfg)) {}

  std::int64_t ns(std::chrono::milliseconds d) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  // ---- loading -------------------------------------------------------------------------

  void load() {
    store_.scan(Table::runs_open, "", [&](std::string_view k, std::string_view v) {
      auto r = open_run_from_value(k, v);
      if (!r) r = get_run(store_, std::string(k));  // unreadable summary: the full record
      if (r) track(*r);
      return true;
    });
    store_.scan(Table::orphan_alerts, "", [&](std::string_view k, std::string_view) {
      auto nul = k.find('\0');
      if (nul == std::string_view::npos) return true;
      std::string key(k.substr(nul + 1));
      if (orphan_alerts_.count(key)) return true;  // already loaded under another marker
      if (auto v = store_.get(Table::alerts, key)) {
        auto rec = decode_alert_record(*v);
        if (!rec) return true;
        auto& [a, markers] = *rec;
        if (markers.empty()) markers = find_markers(a.text);
        add_orphan(key, std::move(markers), std::move(a));
      }
      return true;
    });
    if (auto last = store_.last_key(Table::detection_events); last && last->size() == 8)
      next_event_seq_ = get_be64(last->data()) + 1;
    spdlog::info("correlator: {} pending runs, {} alerts waiting for their run", pending_.size(),
                 orphan_count_);
  }

  // ---- the pending index ---------------------------------------------------------------

  void track(const Run& r) {
    untrack(r.marker);  // tracked again (its action time may have moved): no stale entries
    PendingRun p;
    p.action_ns = r.action_ns;
    p.action_error_ns = r.action_error_ns;
    p.deadline_ns = r.overdue ? r.sla_deadline_ns() + ns(cfg_.grace) : r.sla_deadline_ns();
    for (auto& k : fuzzy_keys(r.hostname, r.technique, r.detections)) {
      auto& set = fuzzy_[k];
      auto [it, inserted] = set.insert({r.action_ns, r.marker});
      if (inserted) p.fuzzy.push_back({std::move(k), &set, it});  // a repeated key: once
    }
    deadlines_.emplace(p.deadline_ns, r.marker);
    pending_[r.marker] = std::move(p);
    pending_count_ = pending_.size();
  }

  void untrack(const std::string& marker) {
    auto it = pending_.find(marker);
    if (it == pending_.end()) return;
    for (const auto& ref : it->second.fuzzy) {
      ref.set->erase(ref.it);
      if (ref.set->empty()) fuzzy_.erase(ref.key);
    }
    pending_.erase(it);
    pending_count_ = pending_.size();
  }

  bool add_orphan(const std::string& key, std::vector<std::string> markers, Alert a) {
    if (orphan_count_ >= kMaxOrphans) {
      // The cap only bites under a flood of alerts whose runs never come (UDP syslog needs no
      // token); the alert itself is stored either way.
      spdlog::warn("correlator: {} alerts already wait for their run; not waiting for {}",
                   orphan_count_, markers.empty() ? std::string("-") : markers[0]);
      return false;
    }
    for (const auto& m : markers) orphans_by_marker_[m].push_back(key);
    orphan_alerts_[key] = Orphan{std::move(markers), std::move(a)};
    ++orphan_count_;
    return true;
  }

  void forget_orphan(const std::string& key, WriteSet& ws) {
    auto it = orphan_alerts_.find(key);
    if (it == orphan_alerts_.end()) return;
    for (const auto& m : it->second.markers) {
      ws.erase(Table::orphan_alerts, orphan_key(m, key));
      auto bm = orphans_by_marker_.find(m);
      if (bm == orphans_by_marker_.end()) continue;
      std::erase(bm->second, key);
      if (bm->second.empty()) orphans_by_marker_.erase(bm);
    }
    orphan_alerts_.erase(it);
    --orphan_count_;
  }

  // Alerts that waited for `marker` now match its run, oldest first (the first alert decides).
  void drain_orphans(const std::string& marker, WriteSet& ws, Flight& f) {
    auto bm = orphans_by_marker_.find(marker);
    if (bm == orphans_by_marker_.end()) return;
    std::vector<std::pair<std::string, Alert>> waiting;
    for (const auto& key : bm->second)
      if (auto it = orphan_alerts_.find(key); it != orphan_alerts_.end())
        waiting.emplace_back(key, it->second.alert);
    std::sort(waiting.begin(), waiting.end(), [](const auto& x, const auto& y) {
      return x.second.arrival_ns < y.second.arrival_ns;
    });
    for (auto& [key, a] : waiting) {
      forget_orphan(key, ws);  // one alert, one run, even if it named several markers
      auto run = lookup(marker);
      if (!run) continue;
      auto reason = "exact marker " + marker + " (alert arrived before the run)";
      apply(*run, a, key, reason, kExactConfidence, ws, f);
      ws.put(Table::alerts, key, encode_alert_record(a, {marker}, marker, reason, kExactConfidence));
      count(a.source, [](SourceCounters& c) { ++c.matched; });
    }
  }

  // Alerts whose run never came stop waiting after a day (they stay stored, unmatched).
  void sweep_orphans(std::int64_t now, WriteSet& ws) {
    if (now < next_orphan_sweep_ns_) return;
    next_orphan_sweep_ns_ = now + ns(std::chrono::minutes(1));
    std::vector<std::string> expired;
    for (const auto& [key, o] : orphan_alerts_)
      if (o.alert.arrival_ns < now - ns(kOrphanTtl)) expired.push_back(key);
    for (const auto& key : expired) forget_orphan(key, ws);
    if (!expired.empty())
      spdlog::info("correlator: {} alerts stopped waiting for runs that never came",
                   expired.size());
  }

  // The current record of a run: ours in flight, else the store's.
  std::optional<Run> lookup(const std::string& marker) {
    if (auto it = inflight_.find(marker); it != inflight_.end()) return it->second.first;
    auto r = get_run(store_, marker);
    if (r && r->state == DetectionState::pending && !pending_.count(marker)) {
      // The ingest stored it but its notification is still on the way.
      track(*r);
      adopted_.insert(marker);
    }
    return r;
  }

  // ---- state changes -------------------------------------------------------------------

  void change_state(Run& r, DetectionState to, std::int64_t now, const std::string& detail,
                    WriteSet& ws, Flight& f) {
    DetectionEvent e{next_event_seq_++, now,   r.marker, r.agent_id, r.test_id, state_name(r.state),
                     state_name(to),    detail,     r.target};
    if (to == DetectionState::alerted || to == DetectionState::late) {
      e.has_latency = true;
      e.action_ns = r.action_ns;
      e.time_to_alert_ns = r.time_to_alert_ns;
      e.clock_anomaly = r.clock_anomaly;
    }
    r.state = to;
    r.state_changed_ns = now;
    record_event(e, ws, f);
  }

  void record_event(const DetectionEvent& e, WriteSet& ws, Flight& f) {
    std::string k;
    put_be64(k, e.seq);
    ws.put(Table::detection_events, k, encode_event(e));
    f.events.push_back(e);
  }

  void stage(Run& r, WriteSet& ws, Flight& f) {
    if (r.state != DetectionState::pending) {
      untrack(r.marker);
      ws.erase(Table::runs_open, r.marker);
    } else {
      ws.put(Table::runs_open, r.marker, open_run_value(r));  // e.g. now overdue
    }
    ws.put(Table::runs, r.marker, encode_run(r));
    auto& slot = inflight_[r.marker];
    slot.first = r;
    ++slot.second;
    f.run_markers.push_back(r.marker);
  }

  // Applies one matched alert to its run; the first alert decides the state.
  void apply(Run& r, const Alert& a, const std::string& key, const std::string& reason,
             double confidence, WriteSet& ws, Flight& f) {
    auto now = common::now_ns();
    if (a.is_event) {
      if (!r.logged_key.empty()) return stage(r, ws, f);
      r.logged_key = key;
      r.logged_source = a.source;
      r.logged_event_ns = a.event_ns;
      r.logged_ingest_ns = a.ingest_ns;
      r.logged_arrival_ns = a.arrival_ns;
      if (r.state == DetectionState::missed)
        change_state(r, DetectionState::logged, now,
                     "event from " + a.source + " after the grace deadline", ws, f);
      return stage(r, ws, f);
    }
    ++r.alert_count;
    if (!r.alert_key.empty()) return stage(r, ws, f);  // an extra alert changes nothing
    if (!r.clock_synced) recorrect(r, a.arrival_ns);
    r.alert_key = key;
    r.alert_source = a.source;
    r.alert_rule = a.rule;
    r.match_reason = reason;
    r.confidence = confidence;
    r.event_ns = a.event_ns;
    r.ingest_ns = a.ingest_ns;
    r.created_ns = a.created_ns;
    r.arrival_ns = a.arrival_ns;
    r.time_to_alert_ns = a.arrival_ns - r.action_ns;
    r.clock_anomaly = r.time_to_alert_ns < 0;
    if (r.state == DetectionState::not_expected) return stage(r, ws, f);  // no SLA to judge
    bool in_time = r.time_to_alert_ns <= r.alert_within_ns;
    auto to = in_time ? DetectionState::alerted : DetectionState::late;
    auto detail = fmt::format("alert from {} after {} (± {}){}; {}", a.source,
                              fmt_seconds(r.time_to_alert_ns), fmt_seconds(r.action_error_ns),
                              r.clock_anomaly ? ", negative: clock anomaly" : "", reason);
    change_state(r, to, now, detail, ws, f);
    stage(r, ws, f);
  }

  // A run made before its agent's first clock exchange: the agent has probably synchronised
  // since, and an offset from then (plus drift) beats the one guessed when the run arrived.
  void recorrect(Run& r, std::int64_t now) {
    auto agent = store_.get_agent(r.agent_id);
    if (!agent || agent->clock_error_ns < 0) return;
    borrow_offset(r, *agent, now, cfg_);
    r.action_ns = r.agent_started_ns + r.clock_offset_ns;
  }

  struct Candidate {
    std::string marker;
    std::string reason;
    double confidence = 0;
  };

  std::optional<Candidate> fuzzy_match(const Alert& a) {
    std::int64_t t = a.event_ns ? a.event_ns : a.created_ns ? a.created_ns : a.arrival_ns;
    std::optional<Candidate> best;
    std::int64_t best_gap = 0;
    for (const auto& key : fuzzy_keys(a.host, a.technique, {a.rule})) {
      auto it = fuzzy_.find(key);
      if (it == fuzzy_.end()) continue;
      bool by_rule = key.find(std::string(1, '\0') + "r:") != std::string::npos;
      for (const auto& [action, marker] : it->second) {
        auto& p = pending_.at(marker);
        auto err = std::max<std::int64_t>(0, p.action_error_ns);
        // The alert cannot precede the action by more than the clock error, and must come
        // within the window after it.
        if (t < action - err || t > action + ns(cfg_.fuzzy_window) + err) continue;
        auto gap = std::llabs(t - action);
        if (best && gap >= best_gap) continue;
        best_gap = gap;
        best = Candidate{marker,
                         fmt::format("same host '{}' and {} '{}', alert {} after the action",
                                     a.host, by_rule ? "expected detection" : "technique",
                                     by_rule ? a.rule : a.technique, fmt_seconds(t - action)),
                         by_rule ? kFuzzyRuleConfidence : kFuzzyConfidence};
      }
    }
    return best;
  }

  bool is_duplicate(const std::string& key) {
    return inflight_alerts_.count(key) || store_.get(Table::alerts, key).has_value();
  }

  void process_alert(Alert& a, WriteSet& ws, Flight& f) {
    auto key = alert_key(a);
    if (is_duplicate(key)) {
      ++f.outcome.duplicates;
      count(a.source, [](SourceCounters& c) { ++c.duplicates; });
      return;
    }
    ++inflight_alerts_[key];
    f.alert_keys.push_back(key);
    f.arrivals.push_back(a.arrival_ns);
    ++f.outcome.accepted;
    count(a.source, [&](SourceCounters& c) {
      ++c.accepted;
      c.last_alert_ns = a.arrival_ns;
    });
    auto markers = find_markers(a.text);
    if (markers.size() > kMaxMarkersPerAlert) markers.resize(kMaxMarkersPerAlert);
    for (const auto& m : markers) {
      auto run = lookup(m);
      if (!run) continue;
      if (orphans_by_marker_.count(m)) {
        drain_orphans(m, ws, f);  // alerts that arrived earlier for this run decide first
        run = lookup(m);          // as they left it
      }
      auto reason = "exact marker " + m;
      apply(*run, a, key, reason, kExactConfidence, ws, f);
      ws.put(Table::alerts, key, encode_alert_record(a, markers, m, reason, kExactConfidence));
      matched(a, f);
      return;
    }
    if (!markers.empty()) {
      // The run's result is not here yet (a buffering agent): wait for it.
      if (add_orphan(key, markers, a))
        for (const auto& m : markers) ws.put(Table::orphan_alerts, orphan_key(m, key), "");
      ws.put(Table::alerts, key,
             encode_alert_record(a, markers, "", "waiting for run " + markers[0], 0));
      count(a.source, [](SourceCounters& c) { ++c.orphaned; });
      return;
    }
    if (auto c = fuzzy_match(a)) {
      if (auto run = lookup(c->marker)) {
        apply(*run, a, key, c->reason, c->confidence, ws, f);
        ws.put(Table::alerts, key,
               encode_alert_record(a, markers, c->marker, c->reason, c->confidence));
        matched(a, f);
        return;
      }
    }
    ws.put(Table::alerts, key, encode_alert_record(a, markers, "", "no matching run", 0));
  }

  void matched(const Alert& a, Flight& f) {
    ++f.outcome.matched;
    count(a.source, [](SourceCounters& c) { ++c.matched; });
  }

  template <class F>
  void count(const std::string& source, F&& fn) {
    std::lock_guard lk(counters_mu_);
    auto& c = counters_[source];
    c.source = source;
    fn(c);
  }

  // ---- entry points (on the correlator thread) -----------------------------------------

  void on_alerts(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) {
    WriteSet ws;
    Flight f;
    f.done = std::move(done);
    for (auto& a : alerts) process_alert(a, ws, f);
    commit(std::move(ws), std::move(f));
  }

  void on_runs(std::vector<Run> runs) {
    WriteSet ws;
    Flight f;
    for (auto& r : runs) {
      // An adopted run is tracked already (and may be decided); its waiting alerts were
      // drained when it was adopted, but draining again is harmless.
      bool adopted = adopted_.erase(r.marker) > 0;
      if (!adopted && r.state == DetectionState::pending && !pending_.count(r.marker)) track(r);
      drain_orphans(r.marker, ws, f);
    }
    if (!ws.empty()) commit(std::move(ws), std::move(f));
  }

  void on_tick() {
    auto now = common::now_ns();
    WriteSet ws;
    Flight f;
    sweep_orphans(now, ws);
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto [when, marker] = *deadlines_.begin();
      deadlines_.erase(deadlines_.begin());
      auto p = pending_.find(marker);
      if (p == pending_.end() || p->second.deadline_ns != when) continue;  // stale entry
      auto run = lookup(marker);
      if (!run || run->state != DetectionState::pending) {
        untrack(marker);
        continue;
      }
      if (!run->overdue) {
        run->overdue = true;
        record_event(
            {next_event_seq_++, now, run->marker, run->agent_id, run->test_id, "pending", "overdue",
             fmt::format("no alert within {}; searching until the grace deadline",
                         fmt_seconds(run->alert_within_ns)),
             run->target},
            ws, f);
        p->second.deadline_ns = run->sla_deadline_ns() + ns(cfg_.grace);
        deadlines_.emplace(p->second.deadline_ns, marker);
        if (p->second.deadline_ns > now) {
          stage(*run, ws, f);
          continue;
        }
      }
      bool logged = !run->logged_key.empty();
      change_state(*run, logged ? DetectionState::logged : DetectionState::missed, now,
                   logged ? "the SIEM logged the activity but raised no alert"
                          : "no alert and no event by the grace deadline",
                   ws, f);
      stage(*run, ws, f);
    }
    if (!ws.empty()) commit(std::move(ws), std::move(f));
    schedule_tick();
  }

  void schedule_tick() {
    if (stopping_) return;
    tick_.expires_after(kTick);
    tick_.async_wait([this](boost::system::error_code ec) {
      if (!ec) on_tick();
    });
  }

  void commit(WriteSet ws, Flight f) {
    auto flight = std::make_shared<Flight>(std::move(f));
    store_.commit_async(std::move(ws), [this, flight](std::string err) {
      // On the committer thread: the sender is answered as soon as its alerts are durable,
      // without waiting for this thread to be scheduled again (the bookkeeping can).
      if (err.empty()) reply(*flight);
      asio::post(io_, [this, flight, err] { finish(*flight, err); });
    });
  }

  // Thread-safe: the outcome was fixed when the flight was built.
  void reply(Flight& f) {
    if (!f.arrivals.empty()) {
      auto now = common::now_ns();
      std::lock_guard lk(counters_mu_);
      for (auto t : f.arrivals) {
        if (t == 0) continue;
        if (store_latency_.size() < kLatencySamples)
          store_latency_.push_back(now - t);
        else
          store_latency_[latency_next_++ % kLatencySamples] = now - t;
      }
    }
    if (f.done) f.done(f.outcome);
  }

  void finish(Flight& f, const std::string& err) {
    if (!err.empty()) {
      // Memory is now ahead of the disk; a restart reloads the truth from the store. The
      // sender was not answered: it will send again.
      spdlog::critical("correlator: {}; exiting so a restart recovers from the database", err);
      std::_Exit(70);
    }
    for (const auto& m : f.run_markers) {
      auto it = inflight_.find(m);
      if (it != inflight_.end() && --it->second.second == 0) inflight_.erase(it);
    }
    for (const auto& k : f.alert_keys) {
      auto it = inflight_alerts_.find(k);
      if (it != inflight_alerts_.end() && --it->second == 0) inflight_alerts_.erase(it);
    }
    for (const auto& e : f.events) {
      // Detections in time are the bulk (thousands a second under load); the log shows what
      // needs a human: misses, late alerts, overdue runs.
      spdlog::log(e.to == "alerted" ? spdlog::level::debug : spdlog::level::info,
                  "run {} ({} on {}): {} -> {}: {}", e.marker, e.test_id, e.agent_id, e.from, e.to,
                  e.detail);
      for (auto& cb : listeners_) cb(e);
    }
    if (f.finished) f.finished();
  }
};

Correlator::Correlator(Store& store, CorrelationConfig cfg)
    : impl_(std::make_unique<Impl>(store, std::move(cfg))) {}

Correlator::~Correlator() {
  stop();
}

void Correlator::start() {
  if (impl_->started_) return;
  impl_->load();
  impl_->started_ = true;
  impl_->schedule_tick();
  // A crash between the ingest's commit and its notification leaves alerts waiting for runs
  // that exist: match them now.
  asio::post(impl_->io_, [this] {
    std::vector<std::string> ready;
    for (const auto& [marker, keys] : impl_->orphans_by_marker_)
      if (impl_->store_.get(Table::runs, marker)) ready.push_back(marker);
    WriteSet ws;
    Impl::Flight f;
    for (const auto& m : ready) impl_->drain_orphans(m, ws, f);
    if (!ws.empty()) impl_->commit(std::move(ws), std::move(f));
  });
  impl_->thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "correlator");
    try {
      impl_->io_.run();
    } catch (const std::exception& e) {
      // Memory may now disagree with the store; a restart reloads the truth from it.
      spdlog::critical("correlator failed: {}; exiting so a restart recovers", e.what());
      std::_Exit(70);
    }
  });
}

void Correlator::stop() {
  if (!impl_->started_ || !impl_->thread_.joinable()) return;
  drain();
  asio::post(impl_->io_, [this] {
    impl_->stopping_ = true;
    impl_->tick_.cancel();
    impl_->work_.reset();
  });
  impl_->thread_.join();
}

void Correlator::submit(std::vector<Alert> alerts, std::function<void(SubmitOutcome)> done) {
  asio::post(impl_->io_, [this, a = std::move(alerts), d = std::move(done)]() mutable {
    impl_->on_alerts(std::move(a), std::move(d));
  });
}

void Correlator::rejected(const std::string& source, const std::string& reason,
                          const std::string& detail) {
  auto now = common::now_ns();
  bool log = false;
  {
    std::lock_guard lk(impl_->counters_mu_);
    auto& c = impl_->counters_[source];
    c.source = source;
    ++c.rejected[reason];
    c.last_rejection = reason + ": " + detail;
    auto& last = impl_->last_reject_log_[source];
    if (now - last >= 1'000'000'000) {  // at most one line per source per second
      last = now;
      log = true;
    }
  }
  if (log) spdlog::warn("alert source {}: rejected input ({}): {}", source, reason, detail);
}

void Correlator::runs_stored(std::vector<Run> runs) {
  asio::post(impl_->io_, [this, r = std::move(runs)]() mutable { impl_->on_runs(std::move(r)); });
}

void Correlator::on_event(std::function<void(const DetectionEvent&)> cb) {
  impl_->listeners_.push_back(std::move(cb));
}

std::vector<SourceCounters> Correlator::counters() const {
  std::lock_guard lk(impl_->counters_mu_);
  std::vector<SourceCounters> out;
  for (const auto& [name, c] : impl_->counters_) out.push_back(c);
  return out;
}

std::size_t Correlator::pending_runs() const {
  return impl_->pending_count_;
}

std::vector<std::int64_t> Correlator::store_latencies() const {
  std::lock_guard lk(impl_->counters_mu_);
  return impl_->store_latency_;
}

void Correlator::drain() {
  if (!impl_->started_) return;
  if (std::this_thread::get_id() == impl_->thread_.get_id()) return;
  std::promise<void> done;
  auto fut = done.get_future();
  asio::post(impl_->io_, [this, &done] {
    Impl::Flight f;
    f.finished = [&done] { done.set_value(); };  // every earlier flight is finished too
    impl_->commit(WriteSet{}, std::move(f));
  });
  fut.wait();
}

}  // namespace tocsin::collector
