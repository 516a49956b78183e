#include "collector/api/api.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>
#include <unistd.h>

#include "collector/ingest/chain.hpp"
#include "collector/alerts/hooks.hpp"
#include "collector/html/html.hpp"
#include "collector/incidents/incidents.hpp"
#include "collector/runs/report.hpp"
#include "collector/incidents/watchdog.hpp"
#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/payloads.hpp"
#include "common/wire.hpp"

namespace tocsin::collector {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using nlohmann::json;
using namespace std::chrono_literals;

namespace detail {

constexpr std::size_t kBodyLimit = 64 * 1024;
constexpr std::uint32_t kHeaderLimit = 16 * 1024;
constexpr auto kHandshakeTimeout = 10s;
constexpr auto kRequestTimeout = 30s;  // a whole request must arrive within this
constexpr auto kWriteTimeout = 30s;
constexpr auto kShutdownTimeout = 5s;
constexpr std::size_t kMaxConnections = 512;
constexpr std::size_t kDefaultLimit = 1000;
constexpr std::size_t kMaxLimit = 10000;
// Beyond this a relative "since" would overflow nanoseconds; nobody needs more than a century.
constexpr std::int64_t kMaxSinceMs = 100LL * 365 * 24 * 3600 * 1000;

// Lets the parsing helpers abort one request with a precise status and message without
// threading error values through every handler; it never leaves handle_request().
struct HttpError : std::runtime_error {
  HttpError(http::status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
  http::status status;
};

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// Hostile bytes (an agent's hostname, a probe's evidence) may not be valid UTF-8; replacing
// them keeps one bad record from turning a whole listing into a 500.
std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Response make_response(http::status status, const json& body, const Request* req) {
  Response res{status, req ? req->version() : 11};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");  // answers may carry fresh secrets
  res.keep_alive(req ? req->keep_alive() : false);
  res.body() = dump_json(body);
  res.prepare_payload();
  return res;
}

Response error_response(http::status status, const std::string& message, const Request* req) {
  return make_response(status, json{{"error", message}}, req);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      int hi = i + 2 < s.size() ? hex_value(s[i + 1]) : -1;
      int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
      if (lo < 0)
        throw HttpError(http::status::bad_request,
                        "malformed query string: bad percent-encoding in '" + std::string(s) + "'");
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

using Params = std::map<std::string, std::string>;

// Unknown or repeated parameters are rejected so a typo never silently falls back to a default.
Params parse_query(std::string_view query, const std::vector<std::string>& known) {
  Params out;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    std::string key = percent_decode(part.substr(0, eq));
    std::string value = eq == std::string_view::npos ? "" : percent_decode(part.substr(eq + 1));
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw HttpError(http::status::bad_request, "unknown query parameter '" + key + "' (known: " +
                                                     (list.empty() ? "none" : list) + ")");
    }
    if (!out.emplace(key, value).second)
      throw HttpError(http::status::bad_request, "query parameter '" + key + "' given twice");
  }
  return out;
}

std::string param(const Params& p, const std::string& key, const std::string& def) {
  auto it = p.find(key);
  return it == p.end() ? def : it->second;
}

std::int64_t since_param(const Params& p, const std::string& def) {
  std::string text = param(p, "since", def);
  try {
    // parse_since computes nanoseconds without overflow checks; keep its input in range.
    if (text.find('T') == std::string::npos) {
      if (common::parse_duration(text).count() > kMaxSinceMs)
        throw std::invalid_argument("'" + text + "' reaches back more than 100 years");
    } else if (text.size() < 4 || text.find_first_not_of("0123456789") < 4 ||
               text.compare(0, 4, "1970") < 0 || text.compare(0, 4, "2200") > 0) {
      throw std::invalid_argument("'" + text + "' is not an RFC 3339 UTC time from 1970 to 2200");
    }
    return common::parse_since(text, common::now_ns());
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, std::string("invalid 'since': ") + e.what());
  }
}

std::size_t limit_param(const Params& p) {
  std::string text = param(p, "limit", std::to_string(kDefaultLimit));
  std::string bad =
      "'limit' must be an integer from 1 to " + std::to_string(kMaxLimit) + ", got '" + text + "'";
  if (text.empty() || text.size() > 6 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, bad);
  std::size_t n = std::stoul(text);
  if (n < 1 || n > kMaxLimit) throw HttpError(http::status::bad_request, bad);
  return n;
}

json parse_body_object(const Request& req, const std::vector<std::string>& known) {
  if (req.body().empty()) return json::object();
  json j;
  try {
    j = json::parse(req.body());
  } catch (const json::parse_error& e) {
    throw HttpError(http::status::bad_request,
                    std::string("request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object())
    throw HttpError(http::status::bad_request, "request body must be a JSON object");
  for (const auto& [key, value] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      throw HttpError(http::status::bad_request, "unknown field '" + key + "' in request body");
  return j;
}

std::optional<std::string> string_field(const json& body, const std::string& key) {
  if (!body.contains(key)) return std::nullopt;
  if (!body[key].is_string())
    throw HttpError(http::status::bad_request, "'" + key + "' must be a string");
  return body[key].get<std::string>();
}

json time_or_null(std::int64_t ns) {
  return ns == 0 ? json(nullptr) : json(common::format_time(ns));
}
double ns_to_ms(std::int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}
json error_ms_or_null(std::int64_t ns) {
  return ns < 0 ? json(nullptr) : json(ns_to_ms(ns));
}

// Verifies each stored batch once per request, however many of its results are listed.
class BatchVerifier {
 public:
  explicit BatchVerifier(const Store& store) : store_(store) {}

  struct Verdict {
    std::string error;  // empty: the batch verifies
    std::string signature_hex;
    std::uint64_t first_seq = 0;
  };

  const Verdict& check(const std::string& agent_id, std::uint64_t head_seq) {
    auto key = std::make_pair(agent_id, head_seq);
    auto it = batches_.find(key);
    if (it == batches_.end()) it = batches_.emplace(key, verify(agent_id, head_seq)).first;
    return it->second;
  }

 private:
  struct AgentKey {
    std::optional<common::Ed25519Key> key;
    std::string error;
  };

  Verdict verify(const std::string& agent_id, std::uint64_t head_seq) {
    Verdict v;
    if (auto batch = store_.get_batch(agent_id, head_seq)) {
      v.signature_hex = common::to_hex(batch->signature);
      v.first_seq = batch->first_seq;
    }
    const AgentKey& ak = agent_key(agent_id);
    if (!ak.key) {
      v.error = ak.error;
      return v;
    }
    v.error = verify_stored_batch(store_, agent_id, head_seq, *ak.key);
    return v;
  }

  const AgentKey& agent_key(const std::string& agent_id) {
    auto it = keys_.find(agent_id);
    if (it != keys_.end()) return it->second;
    AgentKey ak;
    auto agent = store_.get_agent(agent_id);
    std::array<std::uint8_t, 32> raw{};
    if (!agent) {
      ak.error = "agent '" + agent_id + "' is not enrolled; no key to verify with";
    } else if (!common::from_hex(agent->public_key_hex, raw)) {
      ak.error = "the agent's stored public key is not 32 bytes of hex";
    } else {
      try {
        ak.key.emplace(common::Ed25519Key::from_public_raw(raw));
      } catch (const std::exception& e) {
        ak.error = std::string("the agent's stored public key is unusable: ") + e.what();
      }
    }
    return keys_.emplace(agent_id, std::move(ak)).first->second;
  }

  const Store& store_;
  std::map<std::string, AgentKey> keys_;
  std::map<std::pair<std::string, std::uint64_t>, Verdict> batches_;
};

json body_json(const common::ResultBody& b) {
  json j = {{"kind", b.kind},
            {"test_id", b.test_id},
            {"probe", b.probe},
            {"target", b.target},
            {"marker", b.marker},
            {"verdict", b.verdict},
            {"reason", b.reason},
            {"evidence", b.evidence},
            {"expect_prevent", b.expect_prevent},
            {"started_at", time_or_null(b.started_ns)},
            {"finished_at", time_or_null(b.finished_ns)},
            {"clock_offset_ms", ns_to_ms(b.clock_offset_ns)},
            {"clock_error_ms", error_ms_or_null(b.clock_error_ns)}};
  // Agent-supplied numbers: an absurd offset must not overflow, it shows as null instead.
  std::int64_t corrected = 0;
  j["action_time_corrected"] =
      b.started_ns == 0 || __builtin_add_overflow(b.started_ns, b.clock_offset_ns, &corrected)
          ? json(nullptr)
          : json(common::format_time(corrected));
  return j;
}

json result_json(const StoredResult& r, BatchVerifier& verifier) {
  const auto& rec = r.record;
  json j = {{"agent_id", rec.agent_id},
            {"seq", rec.seq},
            {"received_at", common::format_time(r.received_ns)},
            {"hash", common::to_hex(rec.hash)},
            {"batch_head_seq", r.batch_head_seq}};
  std::string error;
  try {
    j.update(body_json(common::decode_body(rec.body)));
  } catch (const std::exception& e) {
    error = std::string("result body cannot be decoded: ") + e.what();
  }
  const auto& batch = verifier.check(rec.agent_id, r.batch_head_seq);
  j["signature"] = batch.signature_hex;
  std::string batch_error = batch.error;
  if (batch_error.empty() && (rec.seq < batch.first_seq || rec.seq > r.batch_head_seq))
    batch_error = "seq " + std::to_string(rec.seq) +
                  " is not covered by the batch signed at head seq " +
                  std::to_string(r.batch_head_seq);
  if (!batch_error.empty()) error = error.empty() ? batch_error : batch_error + "; " + error;
  j["verified"] = error.empty();
  if (!error.empty()) j["verify_error"] = error;
  return j;
}

}  // namespace detail

using detail::HttpError;
using detail::Request;
using detail::Response;

namespace {

// Shared with every coroutine, so a connection finishing after ~ApiServer never touches
// freed memory. The accept loop and stop_state run on `io`; each connection runs on one
// io_context driven by one thread (`io` itself, or one of `session_ios`), so a connection's
// own state needs no lock. What connections share: `conns` (under conns_mu), `stopping`
// (atomic), and the store, registry and engines, which are safe to use from any thread.
struct State {
  State(asio::io_context& io, asio::ssl::context& tls, Store& store, Registry& registry,
        ApiAlerting alerting)
      : io(io), tls(tls), acceptor(io), store(store), registry(registry), alerting(alerting) {
    if (alerting.sources)
      for (const auto& src : *alerting.sources) max_body = std::max(max_body, src.max_body);
  }
  struct Conn {
    tcp::socket* socket;
    asio::io_context* io;  // the context (and so the thread) serving it
    bool busy = false;     // between a complete request and its answer; touched on `io` only
  };
  asio::io_context& io;
  asio::ssl::context& tls;
  tcp::acceptor acceptor;
  Store& store;
  Registry& registry;
  ApiAlerting alerting;
  std::size_t max_body = detail::kBodyLimit;  // the largest body any endpoint accepts
  std::vector<asio::io_context*> session_ios;  // empty: connections are served on `io`
  std::size_t next_session_io = 0;             // round robin; accept loop only
  std::mutex conns_mu;
  std::set<Conn*> conns;
  std::atomic<bool> stopping{false};
  bool stop_done = false;  // stop_state ran (on `io`)
  std::uint16_t port = 0;
  // Incident requests run here (see handle_offloaded). Declared last: destroyed (joined) first.
  asio::thread_pool workers{1};
};

ApiToken authorize(State& st, const Request& req, Role min_role) {
  auto field = req[http::field::authorization];
  std::string_view header(field.data(), field.size());
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size() ||
      !beast::iequals(beast::string_view(header.data(), kScheme.size()), "bearer "))
    throw HttpError(http::status::unauthorized,
                    "missing API token (send 'Authorization: Bearer <token>')");
  std::string token(header.substr(kScheme.size()));
  auto tok = st.registry.authenticate_api(token);
  if (!tok) throw HttpError(http::status::unauthorized, "unknown or revoked API token");
  if (tok->role < min_role)
    throw HttpError(http::status::forbidden, "requires role " + role_name(min_role));
  return *tok;
}

json get_health() {
  return {{"status", "ok"}, {"version", TOCSIN_VERSION}};
}

json post_enroll_token(State& st, const Request& req, const ApiToken& who) {
  json body = detail::parse_body_object(req, {"ttl"});
  std::string ttl_text = detail::string_field(body, "ttl").value_or("1h");
  try {
    auto ttl = std::chrono::duration_cast<std::chrono::seconds>(common::parse_duration(ttl_text));
    auto created = st.registry.create_enroll_token(ttl, who.name);
    spdlog::info("api: '{}' created an enrollment token valid until {}", who.name,
                 common::format_time(created.expires_ns));
    return {{"token", created.token}, {"expires_at", common::format_time(created.expires_ns)}};
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, std::string("invalid 'ttl': ") + e.what());
  }
}

json post_api_token(State& st, const Request& req, const ApiToken& who) {
  json body = detail::parse_body_object(req, {"name", "role"});
  auto name = detail::string_field(body, "name");
  auto role_text = detail::string_field(body, "role");
  if (!name || name->empty()) throw HttpError(http::status::bad_request, "'name' is required");
  if (name->size() > 128)
    throw HttpError(http::status::bad_request, "'name' is longer than 128 characters");
  // The collector's own actors: a person named like them could pass for them in the audit log
  // (and a "watchdog" token's requests would be taken for the watchdog's own).
  if (*name == "system" || *name == Watchdog::kRequester)
    throw HttpError(http::status::bad_request, "'" + *name + "' is reserved for the collector itself");
  if (!role_text) throw HttpError(http::status::bad_request, "'role' is required");
  auto role = parse_role(*role_text);
  if (!role)
    throw HttpError(http::status::bad_request,
                    "unknown role '" + *role_text + "' (use viewer, approver, operator, admin)");
  std::string token;
  try {
    token = st.registry.create_api_token(*name, *role, who.name);
  } catch (const std::invalid_argument& e) {
    throw HttpError(http::status::bad_request, e.what());
  }
  spdlog::info("api: '{}' created API token '{}' with role {}", who.name, *name, role_name(*role));
  return {{"token", token}, {"name", *name}, {"role", role_name(*role)}};
}

json get_agents(State& st, const detail::Params&) {
  json list = json::array();
  for (const auto& a : st.store.list_agents()) {
    list.push_back({{"agent_id", a.agent_id},
                    {"hostname", a.hostname},
                    {"os", a.os},
                    {"version", a.version},
                    {"enrolled_at", detail::time_or_null(a.enrolled_ns)},
                    {"last_seen", detail::time_or_null(a.last_seen_ns)},
                    {"results", a.next_seq - 1},
                    {"clock_offset_ms", detail::ns_to_ms(a.clock_offset_ns)},
                    {"clock_error_ms", detail::error_ms_or_null(a.clock_error_ns)},
                    {"revoked", a.revoked}});
  }
  return {{"agents", std::move(list)}};
}

json get_results(State& st, const detail::Params& p) {
  std::string agent = detail::param(p, "agent", "");
  std::int64_t since = detail::since_param(p, "24h");
  std::size_t limit = detail::limit_param(p);
  if (!agent.empty() && !st.store.get_agent(agent))
    throw HttpError(http::status::not_found, "no agent '" + agent + "' is enrolled");
  detail::BatchVerifier verifier(st.store);
  json list = json::array();
  std::vector<StoredResult> rows;
  if (p.count("from_seq")) {
    // Seq order for one agent: pages never overlap or skip, whatever the arrival times.
    if (agent.empty()) throw HttpError(http::status::bad_request, "'from_seq' needs 'agent'");
    auto text = detail::param(p, "from_seq", "1");
    if (text.empty() || text.size() > 19 ||
        text.find_first_not_of("0123456789") != std::string::npos)
      throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
    rows = st.store.list_results_by_seq(agent, std::stoull(text), limit);
  } else {
    rows = st.store.list_results(agent, since, limit);
  }
  for (const auto& r : rows) list.push_back(detail::result_json(r, verifier));
  return {{"results", std::move(list)}};
}

json get_security_events(State& st, const detail::Params& p) {
  std::int64_t since = detail::since_param(p, "7d");
  std::size_t limit = detail::limit_param(p);
  json list = json::array();
  for (const auto& e : st.store.list_security_events(since, limit))
    list.push_back({{"time", common::format_time(e.time_ns)},
                    {"kind", e.kind},
                    {"agent_id", e.agent_id},
                    {"remote", e.remote},
                    {"detail", e.detail}});
  return {{"events", std::move(list)}};
}

json ms_or_null(bool known, std::int64_t ns) {
  return known ? json(detail::ns_to_ms(ns)) : json(nullptr);
}

json run_json(const Run& r) {
  bool has_alert = !r.alert_key.empty();
  json j = {{"marker", r.marker},
            {"agent_id", r.agent_id},
            {"seq", r.seq},
            {"hostname", r.hostname},
            {"test_id", r.test_id},
            {"probe", r.probe},
            {"technique", r.technique},
            {"verdict", r.verdict},
            {"reason", r.reason},
            {"target", r.target},
            {"state", state_name(r.state)},
            {"overdue", r.overdue},
            {"state_changed_at", detail::time_or_null(r.state_changed_ns)},
            {"alert_within_ms", ms_or_null(r.alert_within_ns > 0, r.alert_within_ns)},
            {"action_time", detail::time_or_null(r.action_ns)},
            {"action_ns", r.action_ns},
            {"agent_started_ns", r.agent_started_ns},
            {"clock_offset_ms", detail::ns_to_ms(r.clock_offset_ns)},
            {"clock_synced", r.clock_synced},
            {"error_bound_ms", ms_or_null(r.action_error_ns >= 0, r.action_error_ns)},
            {"action_error_ns", r.action_error_ns},
            {"received_at", detail::time_or_null(r.received_ns)},
            {"alert_count", r.alert_count},
            {"time_to_alert_ms", ms_or_null(has_alert, r.time_to_alert_ns)},
            {"time_to_alert_ns", has_alert ? json(r.time_to_alert_ns) : json(nullptr)},
            {"clock_anomaly", r.clock_anomaly}};
  if (has_alert) {
    auto before_rule = r.ingest_ns ? r.ingest_ns : r.event_ns;
    j["alert"] = {{"source", r.alert_source},
                  {"rule", r.alert_rule},
                  {"key", r.alert_key},
                  {"match_reason", r.match_reason},
                  {"confidence", r.confidence},
                  {"siem_event_time", detail::time_or_null(r.event_ns)},
                  {"siem_ingest_time", detail::time_or_null(r.ingest_ns)},
                  {"alert_created_time", detail::time_or_null(r.created_ns)},
                  {"arrival_time", detail::time_or_null(r.arrival_ns)},
                  {"arrival_ns", r.arrival_ns}};
    j["pipeline_lag_ms"] = ms_or_null(r.ingest_ns != 0, r.ingest_ns - r.action_ns);
    j["rule_latency_ms"] = ms_or_null(r.created_ns && before_rule, r.created_ns - before_rule);
    j["delivery_lag_ms"] = ms_or_null(r.created_ns != 0, r.arrival_ns - r.created_ns);
  } else {
    j["alert"] = nullptr;
  }
  j["logged"] = r.logged_key.empty()
                    ? json(nullptr)
                    : json{{"source", r.logged_source},
                           {"key", r.logged_key},
                           {"siem_event_time", detail::time_or_null(r.logged_event_ns)},
                           {"siem_ingest_time", detail::time_or_null(r.logged_ingest_ns)},
                           {"arrival_time", detail::time_or_null(r.logged_arrival_ns)}};
  return j;
}

constexpr std::size_t kMaxReportRuns = 2'000'000;

json get_runs(State& st, const detail::Params& p) {
  std::int64_t since = detail::since_param(p, "1h");
  std::size_t limit = detail::limit_param(p);
  auto state_text = detail::param(p, "state", "");
  std::optional<DetectionState> state;
  if (!state_text.empty()) {
    state = parse_state(state_text);
    if (!state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + state_text +
                          "' (use pending, alerted, late, logged, missed, not_expected)");
  }
  auto agent = detail::param(p, "agent", "");
  auto test = detail::param(p, "test", "");
  auto runs = list_runs(st.store, since, INT64_MAX, limit, [&](const Run& r) {
    return (!state || r.state == *state) && (agent.empty() || r.agent_id == agent) &&
           (test.empty() || r.test_id == test);
  });
  json list = json::array();
  for (const auto& r : runs) list.push_back(run_json(r));
  return {{"runs", std::move(list)}};
}

json percentiles_json(const Percentiles& p) {
  if (p.count == 0) return nullptr;
  return {{"count", p.count},
          {"p50_ms", detail::ns_to_ms(p.p50)},
          {"p95_ms", detail::ns_to_ms(p.p95)},
          {"p99_ms", detail::ns_to_ms(p.p99)},
          {"max_ms", detail::ns_to_ms(p.max)}};
}

json get_latency(State& st, const detail::Params& p) {
  std::int64_t since = detail::since_param(p, "7d");
  auto by_text = detail::param(p, "by", "test");
  auto by = parse_group_by(by_text);
  if (!by)
    throw HttpError(http::status::bad_request,
                    "unknown grouping '" + by_text + "' (use test, technique, host, source)");
  auto runs = list_runs(st.store, since, INT64_MAX, kMaxReportRuns);
  json rows = json::array();
  for (const auto& r : latency_report(runs, *by))
    rows.push_back({{"group", r.group},
                    {"runs", r.runs},
                    {"alerted", r.alerted},
                    {"late", r.late},
                    {"logged", r.logged},
                    {"missed", r.missed},
                    {"pending", r.pending},
                    {"coverage_pct", r.coverage_pct},
                    {"time_to_alert", percentiles_json(r.time_to_alert)},
                    {"max_error_ms", detail::ns_to_ms(r.max_error_ns)},
                    {"clock_anomalies", r.clock_anomalies},
                    {"pipeline_lag", percentiles_json(r.pipeline_lag)},
                    {"rule_latency", percentiles_json(r.rule_latency)},
                    {"delivery_lag", percentiles_json(r.delivery_lag)}});
  return {{"by", by_text},
          {"since", common::format_time(since)},
          {"truncated", runs.size() >= kMaxReportRuns},
          {"groups", std::move(rows)}};
}

json get_detection_events(State& st, const detail::Params& p) {
  std::uint64_t from = 1;
  auto text = detail::param(p, "from_seq", "1");
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
  from = std::stoull(text);
  json list = json::array();
  for (const auto& e : list_detection_events(st.store, from, detail::limit_param(p)))
    list.push_back({{"seq", e.seq},
                    {"time", common::format_time(e.time_ns)},
                    {"marker", e.marker},
                    {"agent_id", e.agent_id},
                    {"test_id", e.test_id},
                    {"from", e.from},
                    {"to", e.to},
                    {"detail", e.detail},
                    {"target", e.target}});
  return {{"events", std::move(list)}};
}

json get_alert_sources(State& st, const detail::Params&) {
  json list = json::array();
  std::map<std::string, SourceCounters> counters;
  if (st.alerting.correlator)
    for (auto& c : st.alerting.correlator->counters()) counters[c.source] = c;
  auto entry = [&](const std::string& name, const std::string& type) {
    auto& c = counters[name];
    json rejected = json::object();
    for (const auto& [reason, n] : c.rejected) rejected[reason] = n;
    return json{{"name", name},
                {"type", type},
                {"accepted", c.accepted},
                {"duplicates", c.duplicates},
                {"matched", c.matched},
                {"waiting_for_run", c.orphaned},
                {"rejected", rejected},
                {"last_rejection", c.last_rejection},
                {"last_alert", detail::time_or_null(c.last_alert_ns)}};
  };
  if (st.alerting.sources)
    for (const auto& s : *st.alerting.sources) {
      list.push_back(entry(s.name, source_type_name(s.type)));
      counters.erase(s.name);
    }
  for (const auto& [name, c] : counters) list.push_back(entry(name, "(unconfigured)"));
  json stored = nullptr;
  if (st.alerting.correlator)
    stored = percentiles_json(percentiles(st.alerting.correlator->store_latencies()));
  return {{"sources", std::move(list)},
          {"pending_runs", st.alerting.correlator ? st.alerting.correlator->pending_runs() : 0},
          {"arrival_to_stored", stored}};
}

// ---- incidents ------------------------------------------------------------------------------
// The id is part of the path, so these are matched by prefix rather than through the route
// table: GET /api/v1/incidents[?state=&severity=&limit=], GET /api/v1/incidents/N,
// GET /api/v1/incidents/closed-untouched?since=, POST /api/v1/incidents/N/<action> with
// action ack, note {text}, assign {owner}, resolve {reason}, pause {reason}, resume.
// Reading needs viewer, changing operator; the actor on the timeline is the token's name.

IncidentEngine& incident_engine(State& st) {
  auto* engine = st.alerting.incidents;
  if (!engine)
    throw HttpError(http::status::service_unavailable,
                    "the incident engine is not running in this collector");
  return *engine;
}

// The number in /api/v1/<what>s/N.
std::uint64_t id_param(std::string_view text, const std::string& what = "incident") {
  if (text.empty() || text.size() > 18 ||
      text.find_first_not_of("0123456789") != std::string_view::npos)
    throw HttpError(http::status::bad_request,
                    "'" + std::string(text) + "' is not " + (what == "incident" ? "an " : "a ") + what + " number");
  auto id = std::stoull(std::string(text));
  if (id == 0) throw HttpError(http::status::bad_request, what + " numbers start at 1");
  return id;
}

json get_incidents(State& st, const detail::Params& p) {
  auto& engine = incident_engine(st);
  IncidentFilter f;
  if (auto s = detail::param(p, "state", ""); !s.empty()) {
    f.state = parse_incident_state(s);
    if (!f.state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + s + "' (use open, acknowledged, resolved, closed)");
  }
  if (auto s = detail::param(p, "severity", ""); !s.empty()) {
    f.severity = parse_severity(s);
    if (!f.severity)
      throw HttpError(
          http::status::bad_request,
          "unknown severity '" + s + "' (use informational, low, medium, high, critical)");
  }
  json list = json::array();
  auto now = engine.now();
  for (const auto& i : engine.list(f, detail::limit_param(p)))
    list.push_back(incident_json(i, now, false));
  return {{"incidents", std::move(list)}};
}

json get_closed_untouched(State& st, const detail::Params& p) {
  auto& engine = incident_engine(st);
  auto since = detail::since_param(p, "30d");
  json by_kind = json::object();
  std::size_t total = 0;
  for (const auto& [kind, n] : engine.closed_untouched_since(since)) {
    by_kind[kind_name(kind)] = n;
    total += n;
  }
  return {{"since", common::format_time(since)}, {"total", total}, {"by_kind", std::move(by_kind)}};
}

std::string required_body_text(const json& body, const std::string& key) {
  auto v = detail::string_field(body, key);
  if (!v || v->empty()) throw HttpError(http::status::bad_request, "'" + key + "' is required");
  return *v;
}

json post_incident_action(State& st, const Request& req, const ApiToken& who, std::uint64_t id,
                          std::string_view action) {
  auto& engine = incident_engine(st);
  if (!engine.get(id))
    throw HttpError(http::status::not_found, "no incident #" + std::to_string(id));
  Incident i;
  try {
    if (action == "ack") {
      detail::parse_body_object(req, {});
      i = engine.ack(id, who.name);
    } else if (action == "note") {
      i = engine.note(id, who.name,
                      required_body_text(detail::parse_body_object(req, {"text"}), "text"));
    } else if (action == "assign") {
      i = engine.assign(id, who.name,
                        required_body_text(detail::parse_body_object(req, {"owner"}), "owner"));
    } else if (action == "resolve") {
      i = engine.resolve(id, who.name,
                         required_body_text(detail::parse_body_object(req, {"reason"}), "reason"));
    } else if (action == "pause") {
      i = engine.pause(id, who.name,
                       required_body_text(detail::parse_body_object(req, {"reason"}), "reason"));
    } else if (action == "resume") {
      detail::parse_body_object(req, {});
      i = engine.resume(id, who.name);
    } else {
      throw HttpError(http::status::not_found,
                      "no such incident action '" + std::string(action) +
                          "' (use ack, note, assign, resolve, pause, resume)");
    }
  } catch (const IncidentError& e) {
    throw HttpError(http::status::conflict, e.what());
  }
  spdlog::info("api: '{}' {} incident #{}", who.name, std::string(action), id);
  return incident_json(i, engine.now(), true);
}

// <base>[/<first>[/<action>]] -> {first, action}; nullopt when the path is not under base.
std::optional<std::pair<std::string_view, std::string_view>> resource_path(std::string_view path,
                                                                         std::string_view base) {
  if (path.substr(0, base.size()) != base) return std::nullopt;
  auto rest = path.substr(base.size());
  if (!rest.empty() && rest[0] != '/') return std::nullopt;
  if (!rest.empty()) rest.remove_prefix(1);
  auto slash = rest.find('/');
  return std::pair{rest.substr(0, slash),
                   slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1)};
}

std::optional<Response> dispatch_incidents(State& st, const Request& req, std::string_view path,
                                           std::string_view query) {
  constexpr std::string_view kBase = "/api/v1/incidents";
  auto parts = resource_path(path, kBase);
  if (!parts) return std::nullopt;
  auto [first, action] = *parts;
  bool is_post = !action.empty();
  auto method = is_post ? http::verb::post : http::verb::get;
  if (req.method() != method) {
    auto allowed = std::string(http::to_string(method));
    auto res = detail::error_response(http::status::method_not_allowed,
                                      std::string(path) + " only accepts " + allowed, &req);
    res.set(http::field::allow, allowed);
    return res;
  }
  ApiToken who = authorize(st, req, is_post ? Role::operator_ : Role::viewer);
  json out;
  if (first.empty()) {
    out = get_incidents(st, detail::parse_query(query, {"state", "severity", "limit"}));
  } else if (first == "closed-untouched" && !is_post) {
    out = get_closed_untouched(st, detail::parse_query(query, {"since"}));
  } else {
    auto id = id_param(first);
    detail::parse_query(query, {});
    if (is_post) {
      out = post_incident_action(st, req, who, id, action);
    } else {
      auto& engine = incident_engine(st);
      auto i = engine.get(id);
      if (!i) throw HttpError(http::status::not_found, "no incident #" + std::to_string(id));
      out = incident_json(*i, engine.now(), true);
    }
  }
  return detail::make_response(http::status::ok, out, &req);
}

// ---- notifications ------------------------------------------------------------------------
// GET /api/v1/notifications[?state=pending|sent|failed&limit=]: every message to every channel
// and what became of it (attempts, last error), newest first.

json get_notifications(State& st, const detail::Params& p) {
  auto* n = st.alerting.notifier;
  if (!n)
    throw HttpError(http::status::service_unavailable,
                    "no notification channels are configured (collector.yaml `notify:`)");
  std::optional<DeliveryState> state;
  if (auto s = detail::param(p, "state", ""); !s.empty()) {
    state = parse_delivery_state(s);
    if (!state)
      throw HttpError(http::status::bad_request,
                      "unknown state '" + s + "' (use pending, sent, failed)");
  }
  json list = json::array();
  for (const auto& d : n->list(state, detail::limit_param(p))) list.push_back(delivery_json(d, false));
  json channels = json::array();
  for (const auto& c : n->config().channels)
    channels.push_back({{"name", c.name}, {"type", channel_type_name(c.type)}});
  return {{"notifications", std::move(list)}, {"channels", std::move(channels)}};
}

// ---- audit log (docs/AUDIT.md) ---------------------------------------------------------------
// Approver and above: the log names people, agents and token hash prefixes. Both walk the log
// and run on the worker thread (handle_offloaded).

AuditLog& audit_log(State& st) {
  if (!st.alerting.audit)
    throw HttpError(http::status::service_unavailable,
                    "the audit log is not enabled in this collector");
  return *st.alerting.audit;
}

json get_audit_verify(State& st, const detail::Params&) {
  return audit_verify_json(audit_log(st).verify());
}

json get_audit_export(State& st, const detail::Params& p) {
  auto& audit = audit_log(st);
  std::int64_t since = detail::since_param(p, "7d");
  auto text = detail::param(p, "from_seq", "1");
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(http::status::bad_request, "'from_seq' must be a positive integer");
  auto from = std::stoull(text);
  json list = json::array();
  auto entries = audit.list(from, since, detail::limit_param(p));
  for (const auto& e : entries) list.push_back(audit_entry_json(e));
  return {{"entries", std::move(list)},
          {"next_from_seq", entries.empty() ? from : entries.back().seq + 1}};
}

// ---- commands (issue 6; docs/COMMANDS.md) ---------------------------------------------------
// GET /api/v1/commands[?state=&limit=] and /api/v1/commands/N (viewer); POST /api/v1/commands
// {agent, kind, target, reason, recheck_test, recheck_after} (operator); POST
// /api/v1/commands/N/approve and /deny {reason} (approver, never the requester).

CommandEngine& command_engine(State& st) {
  if (!st.alerting.commands)
    throw HttpError(http::status::service_unavailable, "commands are not enabled in this collector");
  return *st.alerting.commands;
}

std::optional<Response> dispatch_commands(State& st, const Request& req, std::string_view path,
                                          std::string_view query) {
  constexpr std::string_view kBase = "/api/v1/commands";
  auto parts = resource_path(path, kBase);
  if (!parts) return std::nullopt;
  auto [first, action] = *parts;
  bool is_post = req.method() == http::verb::post;
  if (req.method() != http::verb::get && !is_post) {
    auto res = detail::error_response(http::status::method_not_allowed,
                                      std::string(path) + " only accepts GET and POST", &req);
    res.set(http::field::allow, "GET, POST");
    return res;
  }
  Role need = !is_post ? Role::viewer : first.empty() ? Role::operator_ : Role::approver;
  ApiToken who = authorize(st, req, need);
  auto& engine = command_engine(st);
  json out;
  try {
    if (first.empty() && !is_post) {
      auto p = detail::parse_query(query, {"state", "limit"});
      std::optional<CommandState> state;
      if (auto s = detail::param(p, "state", ""); !s.empty()) {
        state = parse_command_state(s);
        if (!state)
          throw HttpError(http::status::bad_request,
                          "unknown state '" + s +
                              "' (use awaiting_approval, approved, delivered, executed, failed, "
                              "refused, denied, expired)");
      }
      json list = json::array();
      for (const auto& c : engine.list(state, detail::limit_param(p))) list.push_back(command_json(c));
      out = {{"commands", std::move(list)}};
    } else if (first.empty()) {
      json body = detail::parse_body_object(
          req, {"agent", "kind", "target", "reason", "recheck_test", "recheck_after", "incident_id"});
      CommandRequest r;
      r.agent_id = required_body_text(body, "agent");
      r.kind = detail::string_field(body, "kind").value_or("restart_service");
      r.target = required_body_text(body, "target");
      r.reason = detail::string_field(body, "reason").value_or("");
      r.requester = who.name;
      r.recheck_test = detail::string_field(body, "recheck_test").value_or("");
      if (auto inc = body.find("incident_id"); inc != body.end() && !inc->is_null()) {
        if (!inc->is_number_unsigned())
          throw HttpError(http::status::bad_request, "'incident_id' must be an incident number");
        r.incident_id = inc->get<std::uint64_t>();
      }
      if (auto ra = detail::string_field(body, "recheck_after"); ra && !ra->empty()) {
        try {
          r.recheck_after_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   common::parse_duration(*ra)).count();
        } catch (const std::exception& e) {
          throw HttpError(http::status::bad_request, "recheck_after: " + std::string(e.what()));
        }
      }
      out = command_json(engine.request(r));
    } else {
      detail::parse_query(query, {});
      auto id = id_param(first, "command");
      if (!is_post) {
        auto c = engine.get(id);
        if (!c) throw HttpError(http::status::not_found, "no command #" + std::to_string(id));
        out = command_json(*c);
      } else if (action == "approve") {
        detail::parse_body_object(req, {});
        out = command_json(engine.approve(id, who.name));
      } else if (action == "deny") {
        out = command_json(engine.deny(
            id, who.name, required_body_text(detail::parse_body_object(req, {"reason"}), "reason")));
      } else {
        throw HttpError(http::status::not_found,
                        "no such command action '" + std::string(action) + "' (use approve, deny)");
      }
    }
  } catch (const CommandError& e) {
    throw HttpError(http::status::conflict, e.what());
  }
  return detail::make_response(is_post && first.empty() ? http::status::created : http::status::ok,
                               out, &req);
}

// ---- one-time approval links ----------------------------------------------------------------
// GET /approve/<token> shows what would happen and a form; only the form's POST decides. No
// API token: the signed, expiring, single-use link is the credential (CommandEngine checks it).

Response html_response(http::status status, const std::string& title, const std::string& body,
                       const Request& req) {
  Response res{status, req.version()};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "text/html; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  res.set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'");
  res.set("X-Frame-Options", "DENY");
  res.set("Referrer-Policy", "no-referrer");
  res.set("X-Content-Type-Options", "nosniff");
  res.keep_alive(req.keep_alive());
  res.body() = html_page(title, "<h2>" + html_escape(title) + "</h2>\n" + body);
  res.prepare_payload();
  if (req.method() == http::verb::head) {
    auto length = res.body().size();
    res.body().clear();
    res.content_length(length);
  }
  return res;
}

std::string command_facts_html(const CommandRecord& c, std::size_t approvals_required) {
  std::vector<std::pair<std::string, std::string>> f{
      {"Command", "cmd-" + std::to_string(c.id)},
      {"What will happen", "The agent " + c.agent_id + " will restart " + c.target +
                               " (if its own allowlist permits it)"},
      {"Requested by", c.requester + " at " + common::format_time(c.requested_ns)},
      {"Reason", c.reason},
      {"Approvals so far", std::to_string(c.approvals.size()) + " of " + std::to_string(approvals_required)},
      {"State", command_state_name(c.state)},
      {"Decide before", common::format_time(c.request_expires_ns)}};
  if (c.incident_id) f.push_back({"Incident", "#" + std::to_string(c.incident_id)});
  if (!c.recheck_test.empty())
    f.push_back({"Then", "re-run " + c.recheck_test + " after " +
                             std::to_string(c.recheck_after_ns / 1'000'000'000) + " s"});
  std::string out = "<table cellpadding=\"4\">\n";
  for (const auto& [k, v] : f)
    out += "<tr><th align=\"left\">" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>\n";
  return out + "</table>\n";
}

std::optional<Response> dispatch_approval_link(State& st, const Request& req, std::string_view path) {
  constexpr std::string_view kBase = "/approve/";
  if (path.substr(0, kBase.size()) != kBase) return std::nullopt;
  if (!st.alerting.commands)
    return html_response(http::status::service_unavailable, "Approvals are not available",
                         "<p>This collector has no command engine.</p>", req);
  auto& engine = *st.alerting.commands;
  std::string token(path.substr(kBase.size()));
  ApprovalLink link;
  try {
    link = engine.check_link(token);
  } catch (const CommandError& e) {
    spdlog::warn("api: refused an approval link: {}", e.what());
    return html_response(http::status::not_found, "Not a valid approval link",
                         "<p>" + html_escape(e.what()) + "</p>", req);
  }
  const auto required = engine.policy().approvals_required;
  if (req.method() == http::verb::get || req.method() == http::verb::head) {
    auto c = engine.get(link.command_id);
    if (!c)
      return html_response(http::status::not_found, "No such command",
                           "<p>The command this link was made for does not exist.</p>", req);
    bool used = std::find(c->used_links.begin(), c->used_links.end(), link.link_id) != c->used_links.end();
    bool expired = common::now_ns() >= link.expires_ns;
    std::string body = "<p>For <b>" + html_escape(link.approver) + "</b>. Opening this page changed nothing.</p>\n" +
                       command_facts_html(*c, required);
    if (used || expired || c->state != CommandState::awaiting_approval) {
      std::string why = used ? "This link was already used." : expired ? "This link has expired."
                                                                       : "This request is no longer waiting for approval.";
      return html_response(http::status::ok, "Restart request cmd-" + std::to_string(c->id),
                           body + "<p><b>" + html_escape(why) + "</b> Nothing can be decided with it.</p>\n", req);
    }
    body += "<form method=\"post\"><input type=\"hidden\" name=\"decision\" value=\"approve\">"
            "<button type=\"submit\">Approve the restart</button></form>\n"
            "<form method=\"post\"><input type=\"hidden\" name=\"decision\" value=\"deny\">"
            "<p><label>Why deny? <input type=\"text\" name=\"reason\" maxlength=\"1000\" required></label> "
            "<button type=\"submit\">Deny</button></p></form>\n"
            "<p>This link works once and expires at " + html_escape(common::format_time(link.expires_ns)) + ".</p>\n";
    return html_response(http::status::ok, "Approve a restart? (cmd-" + std::to_string(c->id) + ")", body, req);
  }
  if (req.method() != http::verb::post) {
    auto res = html_response(http::status::method_not_allowed, "Method not allowed",
                             "<p>Open the link, then confirm on the page.</p>", req);
    res.set(http::field::allow, "GET, POST");
    return res;
  }
  auto form = detail::parse_query(req.body(), {"decision", "reason"});
  auto decision = detail::param(form, "decision", "");
  try {
    CommandRecord c;
    std::string title;
    if (decision == "approve") {
      c = engine.approve_by_link(token);
      title = c.state == CommandState::approved
                  ? "Approved: cmd-" + std::to_string(c.id) + " is signed and goes to the agent at its next poll"
                  : "Approval recorded: cmd-" + std::to_string(c.id) + " waits for more approvers";
    } else if (decision == "deny") {
      c = engine.deny_by_link(token, detail::param(form, "reason", ""));
      title = "Denied: cmd-" + std::to_string(c.id) + " will not run";
    } else {
      return html_response(http::status::bad_request, "Nothing decided",
                           "<p>The form must say decision=approve or decision=deny.</p>", req);
    }
    return html_response(http::status::ok, title, command_facts_html(c, required), req);
  } catch (const CommandError& e) {
    return html_response(http::status::conflict, "Nothing decided", "<p>" + html_escape(e.what()) + "</p>", req);
  }
}

struct Route {
  std::string_view path;
  http::verb method;
  std::optional<Role> min_role;  // nullopt: no token needed
  std::vector<std::string> query_params;
  json (*get)(State&, const detail::Params&);
  json (*post)(State&, const Request&, const ApiToken&);
};

const std::vector<Route>& routes() {
  static const std::vector<Route> kRoutes = {
      {"/api/v1/health", http::verb::get, std::nullopt, {}, nullptr, nullptr},
      {"/api/v1/enroll-tokens", http::verb::post, Role::admin, {}, nullptr, post_enroll_token},
      {"/api/v1/api-tokens", http::verb::post, Role::admin, {}, nullptr, post_api_token},
      {"/api/v1/agents", http::verb::get, Role::viewer, {}, get_agents, nullptr},
      {"/api/v1/results",
       http::verb::get,
       Role::viewer,
       {"agent", "since", "limit", "from_seq"},
       get_results,
       nullptr},
      {"/api/v1/security-events",
       http::verb::get,
       Role::viewer,
       {"since", "limit"},
       get_security_events,
       nullptr},
      {"/api/v1/runs",
       http::verb::get,
       Role::viewer,
       {"since", "state", "agent", "test", "limit"},
       get_runs,
       nullptr},
      {"/api/v1/latency", http::verb::get, Role::viewer, {"since", "by"}, get_latency, nullptr},
      {"/api/v1/detection-events",
       http::verb::get,
       Role::viewer,
       {"from_seq", "limit"},
       get_detection_events,
       nullptr},
      {"/api/v1/alert-sources", http::verb::get, Role::viewer, {}, get_alert_sources, nullptr},
      {"/api/v1/notifications",
       http::verb::get,
       Role::viewer,
       {"state", "limit"},
       get_notifications,
       nullptr},
      {"/api/v1/audit/verify", http::verb::get, Role::approver, {}, get_audit_verify, nullptr},
      {"/api/v1/audit/export",
       http::verb::get,
       Role::approver,
       {"since", "from_seq", "limit"},
       get_audit_export,
       nullptr},
  };
  return kRoutes;
}

Response dispatch(State& st, const Request& req) {
  std::string_view target(req.target().data(), req.target().size());
  auto qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  std::string_view query = qpos == std::string_view::npos ? "" : target.substr(qpos + 1);
  if (path.substr(0, 10) == "/payloads/") {
    // The standard test payloads for web probes, so no internet is needed; public (a proxy
    // fetches them for an agent that holds no API token) and fixed content.
    auto p = common::builtin_payload(path);
    if (!p)
      return detail::error_response(http::status::not_found,
                                    "no such payload (eicar.com, eicar.zip, benign.txt)", &req);
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      auto res = detail::error_response(http::status::method_not_allowed,
                                        "payloads only answer GET and HEAD", &req);
      res.set(http::field::allow, "GET, HEAD");
      return res;
    }
    Response res{http::status::ok, req.version()};
    res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
    res.set(http::field::content_type, p->content_type);
    res.set(http::field::content_disposition, "attachment; filename=\"" + p->name + "\"");
    res.set(http::field::cache_control, "no-store");
    res.keep_alive(req.keep_alive());
    res.body() = req.method() == http::verb::head ? std::string() : std::move(p->body);
    res.prepare_payload();
    if (req.method() == http::verb::head) res.content_length(p->body.size());
    return res;
  }
  if (auto res = dispatch_approval_link(st, req, path)) return std::move(*res);
  if (auto res = dispatch_incidents(st, req, path, query)) return std::move(*res);
  if (auto res = dispatch_commands(st, req, path, query)) return std::move(*res);
  const auto& all = routes();
  auto route = std::find_if(all.begin(), all.end(), [&](const Route& r) { return r.path == path; });
  if (route == all.end())
    return detail::error_response(http::status::not_found, "no such endpoint: " + std::string(path),
                                  &req);
  if (req.method() != route->method) {
    auto allowed = std::string(http::to_string(route->method));
    auto res = detail::error_response(http::status::method_not_allowed,
                                      std::string(path) + " only accepts " + allowed, &req);
    res.set(http::field::allow, allowed);
    return res;
  }
  if (!route->min_role) return detail::make_response(http::status::ok, get_health(), &req);
  ApiToken who = authorize(st, req, *route->min_role);
  json out = route->post ? route->post(st, req, who)
                         : route->get(st, detail::parse_query(query, route->query_params));
  return detail::make_response(http::status::ok, out, &req);
}

// The request target as logs may show it: an approval link's token is a credential.
std::string loggable_target(const Request& req) {
  std::string t(req.target());
  if (t.rfind("/approve/", 0) == 0) return "/approve/<token>";
  return t;
}

Response handle_request(State& st, const Request& req, const std::string& remote) {
  try {
    return dispatch(st, req);
  } catch (const HttpError& e) {
    if (e.status == http::status::unauthorized)
      spdlog::warn("api: {} {} from {}: {}", std::string(req.method_string()),
                   loggable_target(req), remote, e.what());
    auto res = detail::error_response(e.status, e.what(), &req);
    if (e.status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
    return res;
  } catch (const std::exception& e) {
    spdlog::error("api: {} {} from {} failed: {}", std::string(req.method_string()),
                  loggable_target(req), remote, e.what());
    return detail::error_response(http::status::internal_server_error,
                                  "internal error (see the collector log)", &req);
  }
}

// Answer for a request that could not even be parsed; the connection is closed after it.
Response parse_error_response(const boost::system::error_code& ec,
                              std::size_t body_limit = detail::kBodyLimit) {
  if (ec == http::error::body_limit)
    return detail::error_response(http::status::payload_too_large,
                                  "request body exceeds " + std::to_string(body_limit) + " bytes",
                                  nullptr);
  if (ec == http::error::header_limit)
    return detail::error_response(
        http::status::request_header_fields_too_large,
        "request headers exceed " + std::to_string(detail::kHeaderLimit) + " bytes", nullptr);
  return detail::error_response(http::status::bad_request,
                                "malformed HTTP request: " + ec.message(), nullptr);
}

using TlsStream = asio::ssl::stream<tcp::socket>;

// The response as it goes on the wire. Every response here has its Content-Length set
// (prepare_payload) and is never chunked, so the header is written field by field: Beast's
// serializer through an ostringstream cost several allocations per alert.
std::string serialize(const Response& res) {
  std::string out;
  out.reserve(256 + res.body().size());
  out += res.version() == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  out += std::to_string(res.result_int());
  out += ' ';
  auto reason = res.reason();
  out.append(reason.data(), reason.size());
  out += "\r\n";
  for (const auto& f : res) {
    auto name = f.name_string();
    auto value = f.value();
    out.append(name.data(), name.size());
    out += ": ";
    out.append(value.data(), value.size());
    out += "\r\n";
  }
  out += "\r\n";
  out += res.body();
  return out;
}

// Alerts are answered only once the correlator has stored them, so a sender that gets 200
// can forget the alert. The correlator completes on its own thread; a timer set to "never"
// serves as the condition variable the answer is posted to.
HookRequest hook_request(const Request& req, std::int64_t arrival_ns) {
  std::string_view target(req.target().data(), req.target().size());
  auto qpos = target.find('?');
  HookRequest hr;
  hr.path = target.substr(0, qpos);
  hr.query = qpos == std::string_view::npos ? std::string_view{} : target.substr(qpos + 1);
  auto auth = req[http::field::authorization];
  hr.authorization = std::string_view(auth.data(), auth.size());
  auto tok = req["X-Tocsin-Token"];
  hr.token_header = std::string_view(tok.data(), tok.size());
  hr.body = req.body();
  hr.arrival_ns = arrival_ns;
  return hr;
}

Response hook_response(const Request& req, const HookReply& r) {
  Response res{static_cast<http::status>(r.status), req.version()};
  res.set(http::field::server, "tocsin-collector/" TOCSIN_VERSION);
  res.set(http::field::content_type, "application/json");
  if (r.challenge) res.set(http::field::www_authenticate, "Bearer");
  res.keep_alive(req.keep_alive());
  res.body() = r.body;
  res.prepare_payload();
  return res;
}

awaitable<Response> handle_hook(State& st, const Request& req, std::int64_t arrival_ns) {
  HookRequest hr = hook_request(req, arrival_ns);
  auto reply_of = [&req](const HookReply& r) { return hook_response(req, r); };
  if (req.method() != http::verb::post) {
    auto res = detail::error_response(http::status::method_not_allowed,
                                      "alert endpoints only accept POST", &req);
    res.set(http::field::allow, "POST");
    co_return res;
  }
  auto prepared = prepare_hook(*st.alerting.sources, hr, *st.alerting.correlator);
  if (auto* refused = std::get_if<HookReply>(&prepared)) co_return reply_of(*refused);
  auto& accepted = std::get<HookAccepted>(prepared);
  auto ex = co_await asio::this_coro::executor;
  auto wake =
      std::make_shared<asio::steady_timer>(ex, std::chrono::steady_clock::time_point::max());
  auto outcome = std::make_shared<SubmitOutcome>();
  st.alerting.correlator->submit(std::move(accepted.alerts), [wake, outcome, ex](SubmitOutcome o) {
    asio::post(ex, [wake, outcome, o = std::move(o)] {
      *outcome = o;
      wake->cancel();
    });
  });
  boost::system::error_code ec;
  co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  co_return reply_of(hook_reply(*accepted.source, *outcome));
}

// Incident requests may wait for the engine's lock (the feed holds it while it commits a batch)
// and make a synced write of their own: they run on the API's worker thread, so ingest and the
// other endpoints on the io thread never wait for them. The engine has its own mutex, and the
// registry and the store are safe to use from any thread.
awaitable<Response> handle_offloaded(State& st, const Request& req, const std::string& remote) {
  auto ex = co_await asio::this_coro::executor;
  auto wake =
      std::make_shared<asio::steady_timer>(ex, std::chrono::steady_clock::time_point::max());
  auto out = std::make_shared<Response>();
  auto job = [&st, req, remote, wake, out, ex] {
    auto res = handle_request(st, req, remote);
    asio::post(ex, [wake, out, res = std::move(res)]() mutable {
      *out = std::move(res);
      wake->cancel();
    });
  };
  asio::post(st.workers, std::move(job));
  boost::system::error_code ec;
  co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
  co_return std::move(*out);
}

// Incidents, notifications (a scan of the delivery records) and the audit log (verify walks
// all of it) run on the worker thread.
bool is_offloaded_path(std::string_view target) {
  for (std::string_view base :
       {"/api/v1/incidents", "/api/v1/notifications", "/api/v1/audit", "/api/v1/commands", "/approve"})
    if (target.substr(0, base.size()) == base &&
        (target.size() == base.size() || target[base.size()] == '/' || target[base.size()] == '?'))
      return true;
  return false;
}

bool alerting_enabled(const State& st) {
  return st.alerting.sources && st.alerting.correlator;
}

awaitable<void> serve_requests(State& st, TlsStream& stream, State::Conn& conn,
                               common::Watchdog& watchdog, const std::string& remote) {
  beast::flat_buffer buffer;
  while (!st.stopping) {
    http::request_parser<http::string_body> parser;
    // Beast checks a Content-Length against the limit while it reads the header, so the header
    // is read with the largest limit any endpoint has; the endpoint's own is enforced below.
    parser.body_limit(st.max_body);
    parser.header_limit(detail::kHeaderLimit);
    boost::system::error_code ec;
    watchdog.arm(detail::kRequestTimeout);
    co_await http::async_read_header(stream, buffer, parser,
                                     asio::redirect_error(use_awaitable, ec));
    auto arrival_ns = common::now_ns();
    std::string hook_source;  // non-empty: an alert source's request
    bool hook = false;
    std::size_t limit = detail::kBodyLimit;
    if (!ec) {
      std::string_view target(parser.get().target().data(), parser.get().target().size());
      auto path = target.substr(0, target.find('?'));
      hook = alerting_enabled(st) && is_hook_path(path);
      if (hook) {
        hook_source = hook_source_name(*st.alerting.sources, path);
        if (auto l = hook_body_limit(*st.alerting.sources, path)) limit = l;
      }
      parser.body_limit(limit);  // chunked bodies are checked as they arrive
      std::optional<HookReply> refused;
      if (hook) {  // no body buffer for a sender without the token
        auto auth = authenticate_hook(*st.alerting.sources, hook_request(parser.get(), arrival_ns),
                                      *st.alerting.correlator);
        if (auto* r = std::get_if<HookReply>(&auth)) refused = *r;
      }
      if (refused) {
        auto res = hook_response(parser.get(), *refused);
        res.keep_alive(false);  // the unread body makes the connection unusable
        watchdog.arm(detail::kWriteTimeout);
        std::string wire = serialize(res);
        co_await asio::async_write(stream, asio::buffer(wire),
                                   asio::redirect_error(use_awaitable, ec));
        co_return;
      }
      if (parser.content_length() && *parser.content_length() > limit)
        ec = http::error::body_limit;  // refused before reading a byte of it
      else if (!parser.is_done())
        co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    } else if (ec == http::error::body_limit && alerting_enabled(st)) {
      // Over even the largest limit, found while reading the header: still say whose it was.
      std::string_view target(parser.get().target().data(), parser.get().target().size());
      auto path = target.substr(0, target.find('?'));
      if ((hook = is_hook_path(path))) {
        hook_source = hook_source_name(*st.alerting.sources, path);
        if (auto l = hook_body_limit(*st.alerting.sources, path)) limit = l;
      }
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::ssl::error::stream_truncated || ec == asio::error::connection_reset ||
        ec == asio::error::eof || watchdog.fired() || !stream.lowest_layer().is_open())
      co_return;  // the peer left (or timed out): nobody to answer
    bool parsed = !ec;
    if (!parsed) spdlog::info("api: bad request from {}: {}", remote, ec.message());
    if (!parsed && hook && !hook_source.empty())
      st.alerting.correlator->rejected(
          hook_source, ec == http::error::body_limit ? "oversized" : "malformed",
          "from " + remote + ": " +
              (ec == http::error::body_limit
                   ? "body larger than max_body (" + std::to_string(limit) + " bytes)"
                   : ec.message()));
    conn.busy = true;
    Response res;
    if (!parsed)
      res = parse_error_response(ec, limit);
    else if (hook)
      res = co_await handle_hook(st, parser.get(), arrival_ns);
    else if (is_offloaded_path(std::string_view(parser.get().target().data(),
                                               parser.get().target().size())))
      res = co_await handle_offloaded(st, parser.get(), remote);
    else
      res = handle_request(st, parser.get(), remote);
    if (st.stopping) res.keep_alive(false);
    watchdog.arm(detail::kWriteTimeout);
    // One buffer, so TLS sends one record and the kernel one segment: Beast's serializer hands
    // the SSL stream header and body separately, which costs a record and a syscall each.
    std::string wire = serialize(res);
    co_await asio::async_write(stream, asio::buffer(wire), asio::redirect_error(use_awaitable, ec));
    conn.busy = false;
    // Stopping may have begun while this answer was written (and skipped us as busy).
    if (ec || !parsed || !res.keep_alive() || st.stopping) co_return;
  }
}

awaitable<void> run_session(std::shared_ptr<State> st, tcp::socket socket,
                            asio::io_context& serving) {
  std::string remote = "unknown";
  boost::system::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  if (!ec) remote = ep.address().to_string() + ":" + std::to_string(ep.port());

  TlsStream stream(std::move(socket), st->tls);
  State::Conn conn{&stream.next_layer(), &serving};
  {
    std::lock_guard lk(st->conns_mu);
    st->conns.insert(&conn);
  }
  struct Unregister {
    State& st;
    State::Conn* c;
    ~Unregister() {
      std::lock_guard lk(st.conns_mu);
      st.conns.erase(c);
    }
  } unregister{*st, &conn};
  auto ex = co_await asio::this_coro::executor;
  // Asio 1.18 has no per-operation timeout: closing the socket aborts whatever is pending.
  common::Watchdog watchdog(ex, [&stream] {
    boost::system::error_code ignored;
    stream.lowest_layer().close(ignored);
  });

  watchdog.arm(detail::kHandshakeTimeout);
  co_await stream.async_handshake(asio::ssl::stream_base::server,
                                  asio::redirect_error(use_awaitable, ec));
  if (ec) {
    spdlog::info("api: TLS handshake with {} failed: {}", remote,
                 watchdog.fired() ? "timed out" : ec.message());
    co_return;
  }
  co_await serve_requests(*st, stream, conn, watchdog, remote);
  if (watchdog.fired()) spdlog::debug("api: connection from {} timed out", remote);
  if (!stream.lowest_layer().is_open()) co_return;
  watchdog.arm(detail::kShutdownTimeout);
  // A peer that just drops the connection (stream_truncated) is normal for HTTP clients.
  co_await stream.async_shutdown(asio::redirect_error(use_awaitable, ec));
  watchdog.disarm();
  stream.lowest_layer().close(ec);
}

void log_session_end(const std::string& remote, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    spdlog::error("api: connection from {} failed: {}", remote, x.what());
  } catch (...) {
    spdlog::error("api: connection from {} failed with a non-standard exception", remote);
  }
}

awaitable<void> accept_loop(std::shared_ptr<State> st) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer backoff(ex);
  for (;;) {
    boost::system::error_code ec;
    // Accepted on `io` (this frame may outlive the serving contexts), then handed over.
    tcp::socket socket(st->io);
    co_await st->acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
    if (st->stopping || !st->acceptor.is_open()) co_return;
    if (ec) {
      // Typically EMFILE: pause instead of spinning on an error that persists.
      spdlog::warn("api: accept failed: {}", ec.message());
      backoff.expires_after(100ms);
      co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    std::size_t open_now = 0;
    {
      std::lock_guard lk(st->conns_mu);
      open_now = st->conns.size();
    }
    if (open_now >= detail::kMaxConnections) {
      spdlog::warn("api: {} connections open, refusing another", open_now);
      socket.close(ec);
      continue;
    }
    std::string remote;
    auto ep = socket.remote_endpoint(ec);
    if (!ec) remote = ep.address().to_string();
    asio::io_context& serving = st->session_ios.empty()
                                    ? st->io
                                    : *st->session_ios[st->next_session_io++ % st->session_ios.size()];
    if (&serving != &st->io) {  // the descriptor moves to the serving context's reactor
      auto protocol = ep.protocol();
      tcp::socket moved(serving);
      auto fd = socket.release(ec);
      if (!ec) {
        moved.assign(protocol, fd, ec);
        if (ec) ::close(fd);
      }
      if (ec) {
        spdlog::warn("api: cannot hand a connection from {} to a serving thread: {}", remote,
                     ec.message());
        continue;
      }
      socket = std::move(moved);
    }
    asio::co_spawn(serving, run_session(st, std::move(socket), serving),
                   [remote](std::exception_ptr e) { log_session_end(remote, e); });
  }
}

// Closes the idle connections served on `serving`; runs on that context's thread, the only
// one that touches those sockets (and that unregisters them, so a registered one is alive).
void close_idle(const std::shared_ptr<State>& st, asio::io_context* serving) {
  boost::system::error_code ec;
  std::lock_guard lk(st->conns_mu);
  for (auto* c : st->conns)
    if (c->io == serving && !c->busy) c->socket->close(ec);
}

void stop_state(const std::shared_ptr<State>& st) {
  if (st->stop_done) return;  // `stopping` alone may have been set by wait()
  st->stop_done = true;
  st->stopping = true;
  boost::system::error_code ec;
  st->acceptor.close(ec);
  // Idle keep-alive connections would otherwise hold their io_context until their timeout.
  if (st->session_ios.empty()) close_idle(st, &st->io);
  for (auto* sio : st->session_ios) asio::post(*sio, [st, sio] { close_idle(st, sio); });
}

}  // namespace

struct ApiServer::Impl {
  std::shared_ptr<State> state;  // first: destroyed after the contexts below
  std::vector<std::unique_ptr<asio::io_context>> ios;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::vector<std::thread> threads;
};

ApiServer::ApiServer(asio::io_context& io, asio::ssl::context& tls, const common::HostPort& listen,
                     Store& store, Registry& registry, ApiAlerting alerting,
                     std::size_t threads)
    : impl_(std::make_unique<Impl>()) {
  auto st = std::make_shared<State>(io, tls, store, registry, alerting);
  for (std::size_t i = 0; i < threads; ++i) {
    impl_->ios.push_back(std::make_unique<asio::io_context>(1));
    st->session_ios.push_back(impl_->ios.back().get());
  }
  try {
    tcp::resolver resolver(io);
    auto endpoints = resolver.resolve(listen.host, std::to_string(listen.port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service);
    tcp::endpoint ep = endpoints.begin()->endpoint();  // resolve() throws rather than give none
    st->acceptor.open(ep.protocol());
    st->acceptor.set_option(asio::socket_base::reuse_address(true));
    st->acceptor.bind(ep);
    st->acceptor.listen(asio::socket_base::max_listen_connections);
    st->port = st->acceptor.local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    // Boost 1.74's system_error is not a std::system_error; keep the promise of api.hpp.
    throw std::system_error(std::error_code(e.code()),
                            "API cannot listen on " + listen.to_string());
  }
  impl_->state = std::move(st);
}

// The acceptor belongs to the io_context's thread: closing it is posted there. Coroutines hold
// the state, so it lives until the last of them ends.
ApiServer::~ApiServer() {
  stop();
  wait();
}

std::uint16_t ApiServer::port() const {
  return impl_->state->port;
}

void ApiServer::start() {
  auto& st = impl_->state;
  spdlog::info("api: listening on https://{} ({} serving thread{})",
               st->acceptor.local_endpoint().address().to_string() + ":" + std::to_string(st->port),
               std::max<std::size_t>(1, impl_->ios.size()), impl_->ios.size() > 1 ? "s" : "");
  if (impl_->threads.empty())
    for (std::size_t i = 0; i < impl_->ios.size(); ++i) {
      auto& ctx = *impl_->ios[i];
      impl_->guards.push_back(asio::make_work_guard(ctx));
      impl_->threads.emplace_back([&ctx, i] {
        pthread_setname_np(pthread_self(), ("api-" + std::to_string(i)).c_str());
        try {
          ctx.run();
        } catch (const std::exception& e) {  // sessions catch their own; this is a bug
          spdlog::critical("api: serving thread {} failed: {}; exiting", i, e.what());
          std::_Exit(70);
        }
      });
    }
  asio::co_spawn(st->io, accept_loop(st),
                 [](std::exception_ptr e) { log_session_end("accept loop", e); });
}

void ApiServer::stop() {
  asio::post(impl_->state->io, [st = impl_->state] { stop_state(st); });
}

void ApiServer::wait() {
  if (impl_->threads.empty()) return;
  // stop() closes them too, but only once `io` runs its post: a caller whose `io` has stopped
  // still gets its idle connections closed here (new ones may still be accepted until then).
  auto& st = impl_->state;
  st->stopping = true;
  for (auto* sio : st->session_ios) asio::post(*sio, [st, sio] { close_idle(st, sio); });
  impl_->guards.clear();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace tocsin::collector
