// Notifications: incident changes and major-incident status mails, delivered to the channels a
// SOC already watches (SMTP, Slack, Microsoft Teams, PagerDuty Events v2, a signed generic
// webhook, TheHive 5).
//
// Durable and never in the way of ingest. The Notifier follows the incident event log
// (Table::incident_events) from a persisted cursor on its own thread. For every event and every
// channel whose route takes it, it writes a Delivery — a snapshot of the incident as it is then
// — in the same synced write that advances the cursor, so a crash can neither lose nor double a
// notification. Each channel has its own sender thread that attempts its due deliveries; a
// failure (receiver down, HTTP 500, timeout) is recorded and retried with exponential backoff
// (never sooner than a 429's Retry-After) until `give_up_after`, then marked failed. Messages
// are rendered at send time from the snapshot, so secrets (webhook key, routing key, API key,
// SMTP password) are never written to the database.
//
// Status mails: while at least one critical incident is active, the status channel gets a mail
// on a fixed cadence (default 30 min), the first as soon as the first critical opens, and a
// final "all clear" when the last one is resolved or closed; nothing while none is open.
//
// The clock is injected and poll_once()/send_once() run one round synchronously, so tests drive
// cadences and backoff without waiting.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "collector/commands/commands.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/store/store.hpp"
#include "common/config.hpp"

namespace tocsin::collector {

enum class ChannelType { email, slack, teams, pagerduty, webhook, thehive };
std::string channel_type_name(ChannelType t);

// What a route selects. An incident event maps to one of these (see notify_event_of).
enum class NotifyEvent { opened, acknowledged, breached, resolved, updated, escalated, approval };
std::string notify_event_name(NotifyEvent e);
// opened/reopened → opened; acknowledged; sla_breached → breached; resolved, auto_resolved,
// closed, auto_closed → resolved; noted, assigned, occurrence, paused, resumed → updated;
// escalated. `approval` is not an incident event: a restart request waiting for approval.
std::optional<NotifyEvent> notify_event_of(const std::string& incident_event_what);

enum class SmtpTls { required, optional, off };  // STARTTLS on smtp://; smtps:// is always TLS

struct ChannelConfig {
  std::string name;
  ChannelType type = ChannelType::webhook;
  std::string url;  // smtp://host:port or smtps://host:port for email; the endpoint otherwise
  std::set<Severity> severities;  // empty: every severity
  std::set<NotifyEvent> events{NotifyEvent::opened, NotifyEvent::breached, NotifyEvent::resolved,
                               NotifyEvent::escalated};
  std::filesystem::path ca_file;  // empty: the system's trust store
  std::chrono::milliseconds timeout{15000};
  // email
  std::string from;
  std::vector<std::string> to;
  std::string username, password;  // SMTP AUTH when username is set (password from a file)
  SmtpTls smtp_tls = SmtpTls::required;
  // secrets, read from files at load
  std::string secret;       // webhook: HMAC-SHA256 key
  std::string routing_key;  // pagerduty: the service integration key
  std::string api_key;      // thehive: Bearer API key

  bool routes(Severity s, NotifyEvent e) const {
    return (severities.empty() || severities.count(s)) && events.count(e);
  }
};

struct RetryPolicy {
  std::chrono::milliseconds initial{10000};
  std::chrono::milliseconds max{15 * 60 * 1000};
  std::chrono::milliseconds give_up_after{24 * 3600 * 1000};
  // Delay before attempt `attempts + 1`: initial × 2^(attempts-1), capped, never below retry_after.
  std::chrono::milliseconds delay(std::uint32_t attempts, std::chrono::milliseconds retry_after) const;
};

struct StatusMailConfig {
  std::string channel;  // an email channel's name
  std::chrono::milliseconds every{30 * 60 * 1000};
  std::vector<std::string> to;  // empty: the channel's list
};

// Restart requests waiting for approval: each approver named here gets a personal mail with a
// one-time approval link bound to their name (the name their API token has, so a link and the
// CLI count as the same person). Channels whose `events` include `approval` get a notice
// without a link.
struct Approver {
  std::string name, email;
};
struct ApprovalMailConfig {
  std::string channel;  // an email channel's name
  std::vector<Approver> approvers;
  std::chrono::milliseconds link_ttl{0};  // 0: a link lives as long as its request waits
};

struct NotifyConfig {
  std::vector<ChannelConfig> channels;
  RetryPolicy retry;
  std::optional<StatusMailConfig> status;
  std::optional<ApprovalMailConfig> approvals;
  std::string collector_name = "tocsin";  // names this collector in messages and dedup keys
  std::string link_base;  // e.g. https://soc.example:7444: messages link to incidents there
  // Sent and failed delivery records older than this are deleted (pending ones never are).
  std::chrono::milliseconds keep{90LL * 24 * 3600 * 1000};

  bool empty() const { return channels.empty(); }
  const ChannelConfig* channel(const std::string& name) const;
  // The `notify:` section; secrets from *_file keys resolved against `base_dir`. Errors name
  // the file, line and key.
  static NotifyConfig load(const common::ConfigNode& node, const std::filesystem::path& base_dir);
};

enum class DeliveryState { pending, sent, failed };
std::string delivery_state_name(DeliveryState s);
std::optional<DeliveryState> parse_delivery_state(const std::string& s);

// One message to one channel, and what became of it.
struct Delivery {
  std::uint64_t id = 0;
  std::string channel;
  std::string kind;  // "incident", "status", "all_clear" or "approval"
  std::uint64_t event_seq = 0;  // incident: the incident event it tells about
  std::uint64_t incident_id = 0;
  std::string event;  // incident: notify_event_name; status: "status"; all_clear: "all_clear"
  DeliveryState state = DeliveryState::pending;
  std::uint32_t attempts = 0;
  std::int64_t created_ns = 0, next_attempt_ns = 0, sent_ns = 0;
  std::string last_error;
  nlohmann::json snapshot;  // what the message is rendered from (no secrets)
};
std::string encode_delivery(const Delivery& d);
Delivery decode_delivery(const std::string& s);  // throws StoreError
nlohmann::json delivery_json(const Delivery& d, bool with_snapshot);

// ---- rendering (pure: snapshot + channel → what goes on the wire) --------------------------

struct Attachment {
  std::string filename, content_type, data;
};
struct Mail {
  std::string subject, text, html;
  std::vector<Attachment> attachments;
};
struct HttpMessage {
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;
};

// Snapshots. An incident event: the event and the incident record at that moment.
nlohmann::json incident_snapshot(const IncidentEvent& e, const Incident& i, std::int64_t now_ns);
// A status mail: number (1, 2, ...), the active critical incidents, since when the major
// incident runs. All clear: the ids that were open and how long it lasted.
nlohmann::json status_snapshot(std::uint64_t number, const std::vector<Incident>& open,
                               std::int64_t since_ns, std::int64_t now_ns);
nlohmann::json all_clear_snapshot(const std::vector<std::uint64_t>& last_ids, std::int64_t since_ns,
                                  std::int64_t now_ns);

// A restart request waiting for approval (no approver: a channel notice). A personal mail's
// link is added to a copy at send time ("link"), never stored.
nlohmann::json approval_snapshot(const CommandRecord& c, std::size_t approvals_required,
                                 std::int64_t now_ns);

Mail render_mail(const nlohmann::json& snapshot, const NotifyConfig& cfg);
// The JSON body and headers for an HTTP channel; `now_s` is the webhook signature's timestamp.
HttpMessage render_http(const ChannelConfig& ch, const nlohmann::json& snapshot,
                        const NotifyConfig& cfg, std::int64_t now_s);
// The generic webhook's signature header value: "sha256=" + hex HMAC-SHA256 over
// "<timestamp>.<body>" with the channel secret (the timestamp is sent as X-Tocsin-Timestamp).
std::string webhook_signature(const std::string& secret, std::int64_t timestamp_s,
                              const std::string& body);
// The PagerDuty dedup key for an incident: stable across trigger, acknowledge and resolve.
std::string pagerduty_dedup_key(const NotifyConfig& cfg, std::uint64_t incident_id);

// ---- the notifier ------------------------------------------------------------------------

class Notifier {
 public:
  using Clock = std::function<std::int64_t()>;
  // One failed attempt. `permanent` (an HTTP 4xx that is not 408/425/429, a message that cannot
  // be rendered) fails the delivery at once; anything else is retried.
  struct SendError : std::runtime_error {
    SendError(const std::string& m, std::chrono::milliseconds retry_after = {})
        : std::runtime_error(m), retry_after(retry_after) {}
    std::chrono::milliseconds retry_after;
    bool permanent = false;
  };

  // On the very first start the cursor begins at the end of the event log: old incidents are
  // not announced again.
  Notifier(Store& store, IncidentEngine& engine, NotifyConfig cfg, Clock now = {},
           std::chrono::milliseconds period = std::chrono::seconds(2));
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Approval requests: the dispatcher follows the audit log's command_requested entries (from
  // a persisted cursor) and the senders mint approval links with the command engine. Call
  // before start(); both must outlive the notifier.
  void set_commands(CommandEngine* commands, const AuditLog* audit);

  void start();  // the dispatcher thread and one sender thread per channel
  void stop();   // aborts transfers in flight; pending deliveries stay pending

  // One dispatcher round: new incident events → deliveries; approval requests; the status-mail
  // cadence.
  // Returns the deliveries created.
  std::size_t poll_once();
  // Deletes sent and failed records created before now - keep, oldest first, stopping at the
  // first one that must stay; returns how many. The dispatcher does this about once an hour.
  std::size_t prune_once();
  // One sender round for a channel: attempts its due deliveries; returns how many were sent.
  std::size_t send_once(const std::string& channel);

  // Newest first, at most limit.
  std::vector<Delivery> list(std::optional<DeliveryState> state, std::size_t limit) const;
  std::optional<Delivery> get(std::uint64_t id) const;
  const NotifyConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tocsin::collector
