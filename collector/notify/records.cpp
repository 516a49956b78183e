// Delivery records as stored, and the snapshots a message is rendered from at send time.
#include "collector/notify/detail.hpp"
#include "common/clock.hpp"

namespace tocsin::collector {
using json = nlohmann::json;
using namespace detail::notify;

namespace {

constexpr int kDeliveryFormat = 1;

json incident_summary(const Incident& i, std::int64_t now_ns) {
  json j = incident_json(i, now_ns, false);
  for (auto it = i.timeline.rbegin(); it != i.timeline.rend(); ++it) {
    if (it->what == "noted") {
      j["latest_note"] = {{"time_ns", it->time_ns}, {"actor", it->actor}, {"text", it->detail}};
      break;
    }
  }
  return j;
}

}  // namespace

std::string delivery_state_name(DeliveryState s) {
  switch (s) {
    case DeliveryState::pending: return "pending";
    case DeliveryState::sent: return "sent";
    case DeliveryState::failed: return "failed";
  }
  return "?";
}

std::optional<DeliveryState> parse_delivery_state(const std::string& s) {
  for (auto st : {DeliveryState::pending, DeliveryState::sent, DeliveryState::failed})
    if (delivery_state_name(st) == s) return st;
  return std::nullopt;
}

std::string encode_delivery(const Delivery& d) {
  return dump({{"v", kDeliveryFormat},
               {"id", d.id},
               {"channel", d.channel},
               {"kind", d.kind},
               {"event_seq", d.event_seq},
               {"incident_id", d.incident_id},
               {"event", d.event},
               {"state", delivery_state_name(d.state)},
               {"attempts", d.attempts},
               {"created_ns", d.created_ns},
               {"next_attempt_ns", d.next_attempt_ns},
               {"sent_ns", d.sent_ns},
               {"last_error", d.last_error},
               {"snapshot", d.snapshot}});
}

Delivery decode_delivery(const std::string& s) {
  json j = json::parse(s, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != kDeliveryFormat)
    throw StoreError("corrupt or unknown notification record");
  try {
    Delivery d;
    d.id = j.at("id").get<std::uint64_t>();
    d.channel = j.at("channel").get<std::string>();
    d.kind = j.at("kind").get<std::string>();
    d.event_seq = j.value("event_seq", std::uint64_t{0});
    d.incident_id = j.value("incident_id", std::uint64_t{0});
    d.event = j.value("event", "");
    auto st = parse_delivery_state(j.value("state", ""));
    if (!st) throw StoreError("notification record with unknown state");
    d.state = *st;
    d.attempts = j.value("attempts", std::uint32_t{0});
    d.created_ns = j.value("created_ns", std::int64_t{0});
    d.next_attempt_ns = j.value("next_attempt_ns", std::int64_t{0});
    d.sent_ns = j.value("sent_ns", std::int64_t{0});
    d.last_error = j.value("last_error", "");
    d.snapshot = j.value("snapshot", json::object());
    return d;
  } catch (const json::exception& e) {
    throw StoreError(std::string("corrupt notification record: ") + e.what());
  }
}

json delivery_json(const Delivery& d, bool with_snapshot) {
  json j = json::parse(encode_delivery(d));
  j.erase("v");
  if (!with_snapshot) j.erase("snapshot");
  j["created"] = common::format_time(d.created_ns);
  j["sent"] = d.sent_ns ? json(common::format_time(d.sent_ns)) : json(nullptr);
  j["next_attempt"] = d.state == DeliveryState::pending ? json(common::format_time(d.next_attempt_ns)) : json(nullptr);
  return j;
}

json incident_snapshot(const IncidentEvent& e, const Incident& i, std::int64_t now_ns) {
  auto ev = notify_event_of(e.what);
  return {{"kind", "incident"},
          {"time_ns", now_ns},
          {"event", {{"seq", e.seq}, {"time_ns", e.time_ns}, {"what", e.what},
                     {"notify", ev ? notify_event_name(*ev) : ""}, {"severity", severity_name(e.severity)},
                     {"actor", e.actor}, {"detail", e.detail}}},
          {"incident", incident_summary(i, now_ns)}};
}

json status_snapshot(std::uint64_t number, const std::vector<Incident>& open, std::int64_t since_ns,
                     std::int64_t now_ns) {
  json list = json::array();
  for (const auto& i : open) list.push_back(incident_summary(i, now_ns));
  return {{"kind", "status"}, {"number", number}, {"since_ns", since_ns}, {"time_ns", now_ns},
          {"incidents", list}};
}

json all_clear_snapshot(const std::vector<std::uint64_t>& last_ids, std::int64_t since_ns,
                        std::int64_t now_ns) {
  return {{"kind", "all_clear"}, {"since_ns", since_ns}, {"time_ns", now_ns}, {"incidents", last_ids}};
}

json approval_snapshot(const CommandRecord& c, std::size_t approvals_required, std::int64_t now_ns) {
  json cmd = command_json(c);
  cmd["approvals_required"] = approvals_required;
  return {{"kind", "approval"}, {"time_ns", now_ns}, {"command", std::move(cmd)}};
}

}  // namespace tocsin::collector
