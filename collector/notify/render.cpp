// Picks a message's renderer: by snapshot kind for mail, by channel type for HTTP.
#include <stdexcept>

#include "collector/notify/detail.hpp"

namespace tocsin::collector {
using json = nlohmann::json;
using namespace detail::notify;

Mail render_mail(const json& snapshot, const NotifyConfig& cfg) {
  std::string kind = str(snapshot, "kind");
  if (kind == "status") return status_mail(snapshot);
  if (kind == "all_clear") return all_clear_mail(snapshot);
  if (kind == "approval") return approval_mail(snapshot);
  return incident_mail(snapshot, cfg);
}

HttpMessage render_http(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg,
                        std::int64_t now_s) {
  const std::string kind = str(snap, "kind");
  const bool approval = kind == "approval";
  if (kind != "incident" && !(approval && (ch.type == ChannelType::slack || ch.type == ChannelType::teams ||
                                           ch.type == ChannelType::webhook)))
    throw std::invalid_argument("a " + kind + " notification cannot go to " + channel_type_name(ch.type));
  HttpMessage m;
  m.url = ch.url;
  m.headers.push_back("Content-Type: application/json");
  if (approval && ch.type == ChannelType::slack) {
    m.body = dump(approval_slack_body(snap));
    return m;
  }
  if (approval && ch.type == ChannelType::teams) {
    m.body = dump(approval_teams_body(snap));
    return m;
  }
  switch (ch.type) {
    case ChannelType::slack: m.body = dump(slack_body(snap, cfg)); break;
    case ChannelType::teams: m.body = dump(teams_body(snap, cfg)); break;
    case ChannelType::pagerduty: m.body = dump(pagerduty_body(ch, snap, cfg)); break;
    case ChannelType::thehive: thehive_message(ch, snap, cfg, m); break;
    case ChannelType::webhook: webhook_message(ch, snap, cfg, now_s, m); break;
    case ChannelType::email: throw std::invalid_argument("email is not an HTTP channel");
  }
  return m;
}

}  // namespace tocsin::collector
