// The delivery engine: event logs to durable deliveries, per-channel senders, retries, cadence.
#include "collector/notify/notify.hpp"

#include <spdlog/spdlog.h>
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "collector/notify/detail.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/curl.hpp"

namespace tocsin::collector {
namespace curl = common::curl;
using json = nlohmann::json;
using std::chrono::milliseconds;
using namespace std::chrono_literals;
using namespace detail::notify;

namespace {

constexpr std::size_t kEventPage = 200;
constexpr milliseconds kMaxRetryAfter = 1h;

std::string id_key(std::uint64_t id) {
  std::string k;
  put_be64(k, id);
  return k;
}

std::string pending_key(const std::string& channel, std::uint64_t id) {
  return channel + '\0' + id_key(id);
}

}  // namespace

struct Notifier::Impl {
  struct StatusState {
    bool active = false;
    std::int64_t since_ns = 0, last_ns = 0;
    std::uint64_t number = 0;
    std::vector<std::uint64_t> ids;  // every critical incident of this major incident
  };
  struct Channel {
    const ChannelConfig* cfg;
    std::unique_ptr<curl::HttpClient> http;  // HTTP channels
    std::thread thread;
  };

  Impl(Store& s, IncidentEngine& e, NotifyConfig c, Clock n, milliseconds p)
      : store(s), engine(e), cfg(std::move(c)), now(n ? std::move(n) : Clock(common::now_ns)), period(p) {
    for (const auto& ch : cfg.channels) {
      Channel x{&ch, nullptr, {}};
      if (ch.type != ChannelType::email)
        x.http = std::make_unique<curl::HttpClient>(
            curl::HttpClient::Options{ch.ca_file, ch.timeout, 1 << 20, &stopping});
      channels.emplace(ch.name, std::move(x));
    }
    load_state();
  }

  Store& store;
  IncidentEngine& engine;
  NotifyConfig cfg;
  Clock now;
  milliseconds period;
  std::atomic<bool> stopping{false};
  std::mutex poll_mu;  // one dispatcher round at a time
  std::mutex wake_mu;
  std::condition_variable wake;
  bool stop_requested = false;
  std::uint64_t wake_gen = 0;
  std::thread dispatcher;
  std::map<std::string, Channel> channels;
  std::atomic<std::uint64_t> next_id{1};
  std::uint64_t cursor = 1;
  StatusState status;
  CommandEngine* commands = nullptr;  // approval requests (with audit)
  const AuditLog* audit = nullptr;
  std::uint64_t audit_cursor = 1;  // the next audit entry to look at

  static constexpr const char* kCursorKey = "cursor";
  static constexpr const char* kStatusKey = "status";
  static constexpr const char* kApprovalsKey = "approvals_cursor";

  void set_commands(CommandEngine* c, const AuditLog* a) {
    commands = c;
    audit = a;
    if (!commands || !audit) return;
    if (auto v = store.get(Table::notify_state, kApprovalsKey); v && v->size() == 8) {
      audit_cursor = get_be64(v->data());
    } else {  // first start: requests made before approvals were notified are not announced
      audit_cursor = audit->head_seq() + 1;
      WriteSet ws;
      ws.put(Table::notify_state, kApprovalsKey, id_key(audit_cursor));
      store.commit(std::move(ws));
    }
  }

  // Approval requests: the audit log's command_requested entries, in order.
  std::size_t approvals_round() {
    if (!commands || !audit) return 0;
    bool wanted = cfg.approvals.has_value();
    for (const auto& ch : cfg.channels) wanted = wanted || ch.events.count(NotifyEvent::approval);
    std::size_t created = 0;
    for (;;) {
      auto entries = audit->list(audit_cursor, 0, kEventPage);
      if (entries.empty()) break;
      WriteSet ws;
      std::uint64_t id = next_id, c = audit_cursor;
      std::int64_t t = now();
      for (const auto& e : entries) {
        c = e.seq + 1;
        if (!wanted || e.action != "command_requested" || e.subject.rfind("cmd-", 0) != 0) continue;
        std::optional<CommandRecord> cmd;
        try {
          cmd = commands->get(std::stoull(e.subject.substr(4)));
        } catch (const std::exception&) {
        }
        if (!cmd || cmd->state != CommandState::awaiting_approval) continue;  // decided already
        json snap = approval_snapshot(*cmd, commands->policy().approvals_required, t);
        auto add = [&](const std::string& channel, const std::string& approver, const std::string& email) {
          Delivery d = make(channel, "approval", t, id++);
          d.event = "approval";
          d.snapshot = snap;
          d.snapshot["delivery_id"] = d.id;
          if (!approver.empty()) {
            d.snapshot["approver"] = approver;
            d.snapshot["to"] = json::array({email});
          }
          put(ws, d);
        };
        if (cfg.approvals)
          for (const auto& a : cfg.approvals->approvers)
            if (a.name != cmd->requester) add(cfg.approvals->channel, a.name, a.email);
        for (const auto& ch : cfg.channels)
          if (ch.events.count(NotifyEvent::approval)) add(ch.name, "", "");
      }
      ws.put(Table::notify_state, kApprovalsKey, id_key(c));
      store.commit(std::move(ws));
      created += id - next_id;
      next_id = id;
      audit_cursor = c;
    }
    return created;
  }

  void load_state() {
    if (auto last = store.last_key(Table::notifications); last && last->size() == 8)
      next_id = get_be64(last->data()) + 1;
    if (auto v = store.get(Table::notify_state, kCursorKey); v && v->size() == 8) {
      cursor = get_be64(v->data());
    } else {
      // First start: what happened before notifications were configured is not announced.
      auto last = store.last_key(Table::incident_events);
      cursor = last && last->size() == 8 ? get_be64(last->data()) + 1 : 1;
      WriteSet ws;
      ws.put(Table::notify_state, kCursorKey, id_key(cursor));
      store.commit(std::move(ws));
    }
    if (auto v = store.get(Table::notify_state, kStatusKey)) {
      json j = json::parse(*v, nullptr, false);
      if (j.is_object()) {
        status.active = j.value("active", false);
        status.since_ns = j.value("since_ns", std::int64_t{0});
        status.last_ns = j.value("last_ns", std::int64_t{0});
        status.number = j.value("number", std::uint64_t{0});
        status.ids = j.value("ids", std::vector<std::uint64_t>{});
      }
    }
  }

  static std::string encode_status(const StatusState& s) {
    return dump({{"active", s.active}, {"since_ns", s.since_ns}, {"last_ns", s.last_ns},
                 {"number", s.number}, {"ids", s.ids}});
  }

  Delivery make(const std::string& channel, const std::string& kind, std::int64_t t, std::uint64_t id) {
    Delivery d;
    d.id = id;
    d.channel = channel;
    d.kind = kind;
    d.created_ns = t;
    d.next_attempt_ns = t;
    return d;
  }

  static void put(WriteSet& ws, const Delivery& d) {
    ws.put(Table::notifications, id_key(d.id), encode_delivery(d));
    if (d.state == DeliveryState::pending) ws.put(Table::notify_pending, pending_key(d.channel, d.id), "");
    else ws.erase(Table::notify_pending, pending_key(d.channel, d.id));
  }

  std::size_t poll_once() {
    std::lock_guard lock(poll_mu);
    std::size_t created = 0;
    for (;;) {
      auto events = list_incident_events(store, cursor, kEventPage);
      if (events.empty()) break;
      WriteSet ws;
      std::uint64_t id = next_id, c = cursor;
      std::int64_t t = now();
      for (const auto& e : events) {
        c = e.seq + 1;
        auto ev = notify_event_of(e.what);
        if (!ev) continue;
        std::optional<Incident> inc;
        for (const auto& ch : cfg.channels) {
          if (!ch.routes(e.severity, *ev)) continue;
          if (!inc && !(inc = engine.get(e.incident_id))) break;
          Delivery d = make(ch.name, "incident", t, id++);
          d.event_seq = e.seq;
          d.incident_id = e.incident_id;
          d.event = notify_event_name(*ev);
          d.snapshot = incident_snapshot(e, *inc, t);
          d.snapshot["delivery_id"] = d.id;
          put(ws, d);
        }
      }
      ws.put(Table::notify_state, kCursorKey, id_key(c));
      store.commit(std::move(ws));
      created += id - next_id;
      next_id = id;
      cursor = c;
    }
    created += approvals_round();
    created += status_round();
    if (now() - last_prune_ns >= 3600 * kNsPerSec) {
      last_prune_ns = now();
      prune_once();
    }
    if (created) poke();
    return created;
  }

  std::vector<Incident> open_criticals() {
    std::vector<Incident> out;
    for (auto st : {IncidentState::open, IncidentState::acknowledged})
      for (auto& i : engine.list({st, Severity::critical}, 10000)) out.push_back(std::move(i));
    std::sort(out.begin(), out.end(), [](const Incident& a, const Incident& b) { return a.id < b.id; });
    return out;
  }

  std::int64_t last_prune_ns = 0;

  std::size_t prune_once() {
    const std::int64_t cutoff = now() - cfg.keep.count() * kNsPerMs;
    std::size_t removed = 0;
    for (;;) {
      WriteSet ws;
      std::size_t batch = 0;
      bool done = false;
      store.scan(Table::notifications, "", [&](std::string_view k, std::string_view v) {
        Delivery d;
        try {
          d = decode_delivery(std::string(v));
        } catch (const StoreError&) {
          ws.erase(Table::notifications, std::string(k));  // unreadable and old enough to go
          return ++batch < 500;
        }
        if (d.created_ns >= cutoff || d.state == DeliveryState::pending) {
          done = true;  // ids grow with time: everything after is as new or newer
          return false;
        }
        ws.erase(Table::notifications, std::string(k));
        return ++batch < 500;
      });
      if (batch == 0) break;
      store.commit(std::move(ws));
      removed += batch;
      if (done) break;
    }
    if (removed) spdlog::info("notify: deleted {} delivery record(s) older than {}", removed,
                              common::format_duration(std::chrono::duration_cast<milliseconds>(cfg.keep)));
    return removed;
  }

  std::size_t status_round() {
    if (!cfg.status) return 0;
    auto open = open_criticals();
    std::int64_t t = now();
    std::int64_t every = cfg.status->every.count() * kNsPerMs;
    StatusState next = status;
    std::optional<json> snap;
    if (!open.empty()) {
      for (const auto& i : open)
        if (std::find(next.ids.begin(), next.ids.end(), i.id) == next.ids.end()) next.ids.push_back(i.id);
      if (!next.active) {
        next = {true, t, t, 1, next.ids};
        snap = status_snapshot(1, open, t, t);
      } else if (t - next.last_ns >= every) {
        next.number += 1;
        // A fixed cadence; after a long stop, start counting again from now instead of bursting.
        next.last_ns = t - next.last_ns >= 2 * every ? t : next.last_ns + every;
        snap = status_snapshot(next.number, open, next.since_ns, t);
      }
    } else if (next.active) {
      snap = all_clear_snapshot(next.ids, next.since_ns, t);
      next = {};
    }
    if (!snap && next.ids == status.ids) return 0;
    WriteSet ws;
    std::uint64_t id = next_id;
    if (snap) {
      Delivery d = make(cfg.status->channel, (*snap)["kind"].get<std::string>(), t, id++);
      d.event = d.kind;
      d.snapshot = std::move(*snap);
      d.snapshot["delivery_id"] = d.id;
      put(ws, d);
    }
    ws.put(Table::notify_state, kStatusKey, encode_status(next));
    store.commit(std::move(ws));
    next_id = id;
    status = next;
    return snap ? 1 : 0;
  }

  void deliver(Channel& ch, const Delivery& d) {
    const ChannelConfig& c = *ch.cfg;
    if (c.type == ChannelType::email) {
      std::vector<std::string> to = c.to;
      json snap = d.snapshot;
      if ((d.kind == "status" || d.kind == "all_clear") && cfg.status && !cfg.status->to.empty())
        to = cfg.status->to;
      if (d.kind == "approval" && commands) {
        auto id = static_cast<std::uint64_t>(num(snap["command"], "id"));
        auto now_cmd = commands->get(id);
        if (!now_cmd || now_cmd->state != CommandState::awaiting_approval) {
          SendError obsolete("not sent: cmd-" + std::to_string(id) + " was decided before the mail went out (" +
                             (now_cmd ? command_state_name(now_cmd->state) : std::string("gone")) + ")");
          obsolete.permanent = true;
          throw obsolete;
        }
      }
      if (d.kind == "approval" && snap.contains("approver")) {
        to = snap.value("to", std::vector<std::string>{});
        // The link is minted now (the same one on every retry) and never stored.
        if (commands && !cfg.link_base.empty())
          snap["link"] = cfg.link_base + "/approve/" +
                         commands->approval_link(static_cast<std::uint64_t>(num(snap["command"], "id")),
                                                 str(snap, "approver"), "d" + std::to_string(d.id),
                                                 cfg.approvals ? cfg.approvals->link_ttl : 0ms);
      }
      send_mail(c, to, render_mail(snap, cfg),
                "<tocsin-" + std::to_string(d.id) + "." + std::to_string(d.created_ns) + "@" +
                    cfg.collector_name + ">",
                now(), stopping);
      return;
    }
    HttpMessage m = render_http(c, d.snapshot, cfg, now() / kNsPerSec);
    curl::HttpResponse r;
    try {
      r = ch.http->send({true, m.url, m.headers, m.body, "", ""});
    } catch (const curl::TransferError& e) {
      throw SendError(e.what());
    } catch (const curl::Aborted&) {
      throw SendError("stopped while sending");  // send_once sees `stopping` and leaves it pending
    }
    if (r.status >= 200 && r.status <= 299) return;
    std::string msg = "HTTP " + std::to_string(r.status) + " from " + c.name;
    if (!r.body.empty()) msg += ": " + curl::printable(r.body, 200);
    // TheHive keeps sourceRef unique: an answer saying the alert exists means an earlier attempt
    // got through and only its answer was lost.
    if (c.type == ChannelType::thehive && r.status == 400 && r.body.find("already exists") != std::string::npos)
      return;
    bool retryable = r.status >= 500 || r.status == 408 || r.status == 429 || r.status == 425;
    SendError err(msg + (retryable ? "" : " (rejected: not retried; check the channel's configuration)"),
                  r.status == 429 || r.status == 503 ? curl::parse_retry_after(r.retry_after, kMaxRetryAfter) : 0ms);
    err.permanent = !retryable;
    throw err;
  }

  std::size_t send_once(const std::string& name) {
    auto it = channels.find(name);
    if (it == channels.end()) throw std::invalid_argument("no channel named " + name);
    Channel& ch = it->second;
    std::vector<std::uint64_t> ids;
    const std::string prefix = name + '\0';
    store.scan(Table::notify_pending, prefix, [&](std::string_view k, std::string_view) {
      if (k.substr(0, prefix.size()) != prefix) return false;
      if (k.size() == prefix.size() + 8) ids.push_back(get_be64(k.data() + prefix.size()));
      return true;
    });
    std::size_t sent = 0;
    // Per incident, messages go out in the order they were made: while an earlier one waits
    // for its retry, later ones for the same incident wait too (a PagerDuty resolve must not
    // overtake its trigger).
    std::set<std::uint64_t> held;
    for (auto id : ids) {
      if (stopping) break;
      auto v = store.get(Table::notifications, id_key(id));
      if (!v) continue;
      Delivery d;
      try {
        d = decode_delivery(*v);
      } catch (const StoreError& e) {
        // One bad record must not block the channel: it is failed, with the reason.
        spdlog::error("notify: message {} on {} is unreadable, failing it: {}", id, name, e.what());
        WriteSet ws;
        ws.erase(Table::notify_pending, pending_key(name, id));
        store.commit(std::move(ws));
        continue;
      }
      if (d.state != DeliveryState::pending) continue;
      if (d.incident_id && held.count(d.incident_id)) continue;
      if (d.next_attempt_ns > now()) {
        if (d.incident_id) held.insert(d.incident_id);
        continue;
      }
      d.attempts += 1;
      try {
        deliver(ch, d);
        d.state = DeliveryState::sent;
        d.sent_ns = now();
        d.last_error.clear();
        ++sent;
        spdlog::info("notify: message {} ({}) sent to {} after {} attempt(s)", d.id, about(d), name,
                     d.attempts);
      } catch (const SendError& e) {
        if (stopping) break;  // an aborted transfer is not the receiver's failure
        failed(d, e.what(), e.retry_after, e.permanent);
      } catch (const std::exception& e) {
        failed(d, e.what(), 0ms, true);
      }
      if (d.state == DeliveryState::pending && d.incident_id) held.insert(d.incident_id);
      WriteSet ws;
      put(ws, d);
      store.commit(std::move(ws));
    }
    return sent;
  }

  static std::string about(const Delivery& d) {
    if (d.kind == "incident") return "incident #" + std::to_string(d.incident_id) + " " + d.event;
    if (d.kind == "approval")
      return "approval request cmd-" + std::to_string(num(d.snapshot.value("command", json::object()), "id")) +
             (d.snapshot.contains("approver") ? " for " + str(d.snapshot, "approver") : std::string());
    return d.kind == "status" ? "status mail " + std::to_string(d.snapshot.value("number", 0))
                              : "all-clear mail";
  }

  void failed(Delivery& d, const std::string& why, milliseconds retry_after, bool permanent) {
    std::int64_t t = now();
    d.last_error = why;
    if (!permanent && t - d.created_ns < cfg.retry.give_up_after.count() * kNsPerMs) {
      d.next_attempt_ns = t + cfg.retry.delay(d.attempts, retry_after).count() * kNsPerMs;
      spdlog::warn("notify: message {} ({}) to {} failed (attempt {}), retrying at {}: {}", d.id,
                   about(d), d.channel, d.attempts, common::format_time(d.next_attempt_ns), why);
      return;
    }
    d.state = DeliveryState::failed;
    spdlog::error("notify: message {} ({}) to {} given up after {} attempt(s): {}", d.id, about(d),
                  d.channel, d.attempts, why);
  }

  void poke() {
    std::lock_guard lock(wake_mu);
    ++wake_gen;
    wake.notify_all();
  }

  // Waits for `d`, a stop, or (when `on_poke`) new work; false when stopping.
  bool wait(milliseconds d, bool on_poke) {
    std::unique_lock lock(wake_mu);
    std::uint64_t gen = wake_gen;
    wake.wait_for(lock, d, [&] { return stop_requested || (on_poke && wake_gen != gen); });
    return !stop_requested;
  }

  void run_dispatcher() {
    do {
      try {
        poll_once();
      } catch (const std::exception& e) {
        spdlog::error("notify: reading incident events failed: {}", e.what());
      }
    } while (wait(period, false));
  }

  void run_sender(const std::string& name) {
    do {
      try {
        send_once(name);
      } catch (const std::exception& e) {
        spdlog::error("notify: channel {}: {}", name, e.what());
      } catch (...) {
        spdlog::error("notify: channel {}: unexpected failure", name);
      }
    } while (wait(period, true));
  }
};

Notifier::Notifier(Store& store, IncidentEngine& engine, NotifyConfig cfg, Clock now, milliseconds period)
    : impl_(std::make_unique<Impl>(store, engine, std::move(cfg), std::move(now), period)) {}

Notifier::~Notifier() { stop(); }

void Notifier::start() {
  impl_->dispatcher = std::thread([this] {
    pthread_setname_np(pthread_self(), "notify");
    impl_->run_dispatcher();
  });
  for (auto& [name, ch] : impl_->channels) {
    const std::string n = name;
    ch.thread = std::thread([this, n] { impl_->run_sender(n); });
  }
}

void Notifier::stop() {
  {
    std::lock_guard lock(impl_->wake_mu);
    impl_->stop_requested = true;
  }
  impl_->stopping = true;
  impl_->wake.notify_all();
  if (impl_->dispatcher.joinable()) impl_->dispatcher.join();
  for (auto& [name, ch] : impl_->channels)
    if (ch.thread.joinable()) ch.thread.join();
}

void Notifier::set_commands(CommandEngine* commands, const AuditLog* audit) {
  impl_->set_commands(commands, audit);
}
std::size_t Notifier::poll_once() { return impl_->poll_once(); }
std::size_t Notifier::send_once(const std::string& channel) { return impl_->send_once(channel); }
std::size_t Notifier::prune_once() {
  std::lock_guard lock(impl_->poll_mu);
  return impl_->prune_once();
}
const NotifyConfig& Notifier::config() const { return impl_->cfg; }

std::optional<Delivery> Notifier::get(std::uint64_t id) const {
  auto v = impl_->store.get(Table::notifications, id_key(id));
  if (!v) return std::nullopt;
  return decode_delivery(*v);
}

std::vector<Delivery> Notifier::list(std::optional<DeliveryState> state, std::size_t limit) const {
  std::vector<Delivery> out;
  // Newest first: walk backwards in pages of ids (the table is keyed by increasing id).
  std::uint64_t hi = impl_->next_id.load();
  constexpr std::uint64_t kPage = 256;
  while (hi > 1 && out.size() < limit) {
    std::uint64_t lo = hi > kPage ? hi - kPage : 1;
    std::vector<Delivery> page;
    impl_->store.scan(Table::notifications, id_key(lo), [&](std::string_view k, std::string_view v) {
      if (k.size() != 8 || get_be64(k.data()) >= hi) return false;
      Delivery d = decode_delivery(std::string(v));
      if (!state || d.state == *state) page.push_back(std::move(d));
      return true;
    });
    for (auto it = page.rbegin(); it != page.rend() && out.size() < limit; ++it) out.push_back(std::move(*it));
    hi = lo;
  }
  return out;
}

}  // namespace tocsin::collector
