// Stored records: runs, alerts and detection events (msgpack; older JSON read) and their tables.
#include <spdlog/spdlog.h>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/runs/correlator.hpp"
#include "collector/runs/correlator_detail.hpp"

namespace tocsin::collector {

using nlohmann::json;

namespace {

constexpr std::size_t kStoredTextBytes = 2048;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string runs_by_time_key(const Run& r) {
  std::string k;
  put_be64(k, time_key(r.action_ns));
  return k + r.marker;
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

// Run records: a msgpack array in this fixed order, led by its format number. Positional,
// because ingest writes one per result and keys would double its size and encode time.
// New fields are appended and the format stays 1: a reader takes the fields it knows and
// ignores the rest (record_fields accepts a longer array), so an older collector still reads
// a newer record, and the array's length tells which fields a record has. 39 fields: the first
// layout; 44: then clock_resolved, clock_stepped, clock_frame, clock_steps, clock_unresolved.
constexpr std::uint64_t kRunFormat = 1;
constexpr std::uint32_t kRunFieldsV1 = 39;
constexpr std::uint32_t kRunFields = 44;
// Larger than any array encode_run writes (its fields, kMaxRunDetections), so every stored
// run decodes; anything larger is damage.
const auto kRunLimit = msgpack::unpack_limit(128, 0, 1 << 20, 0, 1024, 4);
static_assert(kMaxRunDetections <= 128 && kRunFields <= 128);

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
  // Runs stored before resolution existed were never held: treat them as resolved.
  r.clock_resolved = !r.clock_synced;
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

namespace detail::runs {

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

std::string open_run_value(const Run& r) {
  json j = {{"a", r.action_ns},  {"e", r.action_error_ns}, {"w", r.alert_within_ns},
            {"o", r.overdue},    {"h", r.hostname},        {"t", r.technique},
            {"d", r.detections}, {"g", r.agent_id},        {"q", r.seq}};
  if (r.clock_held()) {  // absent in values written before holding existed
    j["held"] = true;
    j["r"] = r.received_ns;  // its hold deadline
    j["f"] = r.clock_frame;  // which results may resolve it
    j["s"] = r.clock_steps;
  }
  if (!r.alert_key.empty()) j["k"] = true;
  return dump(j);
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
  r.agent_id = j.value("g", "");
  r.seq = j.value("q", std::uint64_t{0});
  if (j.value("held", false)) {
    // Without its hold deadline's inputs the summary is not enough: read the full record.
    if (!j.contains("r")) return std::nullopt;
    r.clock_synced = false;
    r.received_ns = j.value("r", std::int64_t{0});
    r.clock_frame = j.value("f", "");
    r.clock_steps = j.value("s", std::uint64_t{0});
  }
  if (j.value("k", false)) r.alert_key = "-";  // only whether it has one matters here
  return r;
}

std::string orphan_key(const std::string& marker, const std::string& alert_key) {
  return marker + '\0' + alert_key;
}

}  // namespace detail::runs

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
  if (r.detections.size() > kMaxRunDetections)
    p.pack(
        std::vector<std::string>(r.detections.begin(), r.detections.begin() + kMaxRunDetections));
  else
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
  p.pack(r.clock_resolved);
  p.pack(r.clock_stepped);
  p.pack(r.clock_frame);
  p.pack(r.clock_steps);
  p.pack(r.clock_unresolved);
  return std::string(buf.data(), buf.size());
}

Run decode_run(const std::string& s) {
  if (!s.empty() && s[0] == '{') return decode_run_json(s);
  try {
    auto oh = msgpack::unpack(s.data(), s.size(), nullptr, nullptr, kRunLimit);
    const msgpack::object* f = record_fields(oh, kRunFormat, kRunFieldsV1);
    if (!f) throw StoreError("corrupt run record");
    bool v1 = oh.get().via.array.size < kRunFields;  // the first layout (or a damaged later one)
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
    if (v1) {
      r.clock_resolved = !r.clock_synced;  // never held: decided as it was
    } else {
      f++->convert(r.clock_resolved);
      f++->convert(r.clock_stepped);
      f++->convert(r.clock_frame);
      f++->convert(r.clock_steps);
      f++->convert(r.clock_unresolved);
    }
    return r;
  } catch (const msgpack::type_error&) {
    throw StoreError("corrupt run record");
  } catch (const msgpack::unpack_error& e) {
    throw StoreError(std::string("corrupt run record: ") + e.what());
  }
}

void put_run(WriteSet& ws, const Run& r) {
  ws.put(Table::runs, r.marker, encode_run(r));
  ws.put(Table::runs_by_time, runs_by_time_key(r), "");
  if (r.state == DetectionState::pending)
    ws.put(Table::runs_open, r.marker, detail::runs::open_run_value(r));
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
  std::size_t unreadable = 0;
  std::string first_error;
  store.scan(Table::runs_by_time, from, [&](std::string_view k, std::string_view) {
    if (k.size() <= 8 || get_be64(k.data()) >= until || out.size() >= limit) return false;
    try {
      auto r = get_run(store, std::string(k.substr(8)));
      if (r && (!keep || keep(*r))) out.push_back(std::move(*r));
    } catch (const StoreError& e) {  // one damaged record must not hide every other run
      if (unreadable++ == 0) first_error = e.what();
    }
    return true;
  });
  if (unreadable)
    spdlog::warn("list of runs: skipped {} unreadable run records (first: {})", unreadable,
                 first_error);
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

}  // namespace tocsin::collector
