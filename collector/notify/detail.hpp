// Internals only the notify files share: common wording, each channel's renderer, the mailer.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "collector/notify/notify.hpp"

namespace tocsin::collector::detail::notify {

inline constexpr std::int64_t kNsPerMs = 1'000'000;
inline constexpr std::int64_t kNsPerSec = 1'000'000'000;

// Snapshots carry text from agents: bytes that are not UTF-8 are replaced instead of throwing.
inline std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// ---- words (words.cpp): the same facts and phrases on every channel ----------------------

std::string human_time(std::int64_t ns);
std::string human_duration(std::int64_t ns);
std::string event_title(const std::string& ev, const std::string& what);
std::string one_line(std::string s, std::size_t cap = 300);
std::string str(const nlohmann::json& j, const char* key);
std::int64_t num(const nlohmann::json& j, const char* key);
std::string incident_link(const NotifyConfig& cfg, std::uint64_t id);
// The facts every message about one incident shows, in this order.
std::vector<std::pair<std::string, std::string>> facts(const nlohmann::json& inc,
                                                       std::int64_t now_ns);
std::string incident_headline(const nlohmann::json& inc);
std::vector<std::pair<std::string, std::string>> approval_facts(const nlohmann::json& cmd);
std::string approval_headline(const nlohmann::json& cmd);

// ---- email (email.cpp) -------------------------------------------------------------------

Mail incident_mail(const nlohmann::json& snap, const NotifyConfig& cfg);
Mail status_mail(const nlohmann::json& snap);
Mail all_clear_mail(const nlohmann::json& snap);
Mail approval_mail(const nlohmann::json& snap);
// Throws Notifier::SendError; `stopping` aborts the transfer.
void send_mail(const ChannelConfig& ch, const std::vector<std::string>& to, const Mail& m,
               const std::string& message_id, std::int64_t now_ns,
               const std::atomic<bool>& stopping);

// ---- HTTP channels (one file each) -------------------------------------------------------

nlohmann::json slack_body(const nlohmann::json& snap, const NotifyConfig& cfg);
nlohmann::json approval_slack_body(const nlohmann::json& snap);
nlohmann::json teams_body(const nlohmann::json& snap, const NotifyConfig& cfg);
nlohmann::json approval_teams_body(const nlohmann::json& snap);
nlohmann::json pagerduty_body(const ChannelConfig& ch, const nlohmann::json& snap,
                              const NotifyConfig& cfg);
// These two also set the URL path and headers their receiver wants; `m` has Content-Type.
void thehive_message(const ChannelConfig& ch, const nlohmann::json& snap, const NotifyConfig& cfg,
                     HttpMessage& m);
void webhook_message(const ChannelConfig& ch, const nlohmann::json& snap, const NotifyConfig& cfg,
                     std::int64_t now_s, HttpMessage& m);

}  // namespace tocsin::collector::detail::notify
