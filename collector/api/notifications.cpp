// The notification log: every message to every channel and what became of it.
#include <nlohmann/json.hpp>

#include <optional>
#include <utility>

#include "collector/api/handlers.hpp"
#include "collector/notify/notify.hpp"

namespace tocsin::collector::detail::api {

// GET /api/v1/notifications[?state=pending|sent|failed&limit=]: every message to every channel
// and what became of it (attempts, last error), newest first.

json get_notifications(State& st, const Params& p) {
  auto* n = st.alerting.notifier;
  if (!n)
    throw HttpError(http::status::service_unavailable,
                    "no notification channels are configured (collector.yaml `notify:`)");
  std::optional<DeliveryState> state;
  if (auto s = param(p, "state", ""); !s.empty()) {
    state = parse_delivery_state(s);
    if (!state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + s + "' (use pending, sent, failed)");
  }
  json list = json::array();
  for (const auto& d : n->list(state, limit_param(p))) list.push_back(delivery_json(d, false));
  json channels = json::array();
  for (const auto& c : n->config().channels)
    channels.push_back({{"name", c.name}, {"type", channel_type_name(c.type)}});
  return {{"notifications", std::move(list)}, {"channels", std::move(channels)}};
}

}  // namespace tocsin::collector::detail::api
