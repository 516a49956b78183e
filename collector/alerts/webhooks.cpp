#include "collector/alerts/webhooks.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>

#include "collector/alerts/pollers/crowdsec_fields.hpp"
#include "common/crypto.hpp"
#include "common/text.hpp"

namespace tocsin::collector {

using nlohmann::json;

namespace {

struct PathStep {
  std::string key;  // empty for an index step
  std::size_t index = 0;
  bool is_index = false;
};

constexpr std::size_t kMaxPathLen = 256;
constexpr std::size_t kMaxPathSteps = 32;
constexpr std::size_t kMaxPathIndex = 1'000'000;
// How many elements of an array a key step looks into (ECS multi-valued fields are short).
constexpr std::size_t kMaxArrayProbe = 16;

// "[12]" at the start of `s` -> 12, consuming it.
std::size_t read_index(std::string_view& s) {
  auto close = s.find(']');
  if (close == std::string_view::npos) throw std::invalid_argument("unclosed '['");
  auto digits = s.substr(1, close - 1);
  if (digits.empty() || digits.size() > 7 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw std::invalid_argument("'[" + std::string(digits) + "]' is not an array index");
  auto index = static_cast<std::size_t>(std::stoul(std::string(digits)));
  if (index > kMaxPathIndex) throw std::invalid_argument("array index too large");
  s.remove_prefix(close + 1);
  return index;
}

std::vector<PathStep> split_path(std::string_view path) {
  if (path.empty()) throw std::invalid_argument("empty path");
  if (path.size() > kMaxPathLen) throw std::invalid_argument("path longer than 256 characters");
  std::vector<PathStep> steps;
  std::string_view s = path;
  bool expect_key = s.front() != '[';
  while (!s.empty()) {
    if (s.front() == '[') {
      steps.push_back({"", read_index(s), true});
    } else if (expect_key) {
      auto end = std::min(s.find_first_of(".[]"), s.size());
      if (end == 0) throw std::invalid_argument("empty name in path '" + std::string(path) + "'");
      for (char c : s.substr(0, end))
        if (static_cast<unsigned char>(c) < 0x20)
          throw std::invalid_argument("control character in path");
      steps.push_back({std::string(s.substr(0, end)), 0, false});
      s.remove_prefix(end);
    } else {
      throw std::invalid_argument("unexpected '" + std::string(1, s.front()) + "' in path");
    }
    expect_key = !s.empty() && s.front() == '.';
    if (expect_key) {
      s.remove_prefix(1);
      if (s.empty()) throw std::invalid_argument("path ends with '.'");
    }
    if (steps.size() > kMaxPathSteps) throw std::invalid_argument("path has more than 32 steps");
  }
  return steps;
}

const json* resolve(const json& node, const std::vector<PathStep>& steps, std::size_t i);

// A key step against an object: the plain key first, then the same key joined with the next
// ones by '.', for documents that store "kibana.alert.uuid" as one flat key.
const json* resolve_key(const json& obj, const std::vector<PathStep>& steps, std::size_t i) {
  std::string key;
  for (std::size_t j = i; j < steps.size() && !steps[j].is_index; ++j) {
    key += (j == i ? "" : ".") + steps[j].key;
    auto it = obj.find(key);
    if (it == obj.end()) continue;
    if (const json* r = resolve(*it, steps, j + 1)) return r;
  }
  return nullptr;
}

const json* resolve(const json& node, const std::vector<PathStep>& steps, std::size_t i) {
  if (i == steps.size()) return &node;
  const PathStep& step = steps[i];
  if (step.is_index) {
    if (!node.is_array() || step.index >= node.size()) return nullptr;
    return resolve(node[step.index], steps, i + 1);
  }
  if (node.is_object()) return resolve_key(node, steps, i);
  if (!node.is_array()) return nullptr;
  std::size_t probe = std::min(node.size(), kMaxArrayProbe);
  for (std::size_t k = 0; k < probe; ++k)
    if (node[k].is_object())
      if (const json* r = resolve_key(node[k], steps, i)) return r;
  return nullptr;
}

}  // namespace

void check_field_path(std::string_view path) {
  split_path(path);
}

const json* json_at_path(const json& root, std::string_view path) {
  return resolve(root, split_path(path), 0);
}

namespace {

// Named fields are short by nature; a megabyte "host" is an attack, not a host name.
constexpr std::size_t kMaxFieldLen = 1024;
// All alerts of one request together: spread over the items so 10000 tiny alerts cannot each
// claim kMaxAlertText.
constexpr std::size_t kMaxRequestText = 16 << 20;
constexpr std::size_t kMinTextShare = 2048;
// How much of a hostile value an error message quotes.
constexpr std::size_t kQuotedChars = 200;

// nlohmann's messages start with "[json.exception.parse_error.101] ".
std::string json_error_text(const std::exception& e) {
  std::string_view m = e.what();
  if (!m.empty() && m.front() == '[') {
    auto close = m.find("] ");
    if (close != std::string_view::npos) m.remove_prefix(close + 2);
  }
  return common::quote_hostile(m, kQuotedChars);
}

// The deepest nesting of arrays and objects, counted outside strings; stops counting past `max`.
// Checked before parsing so the parser needs no per-event callback (nlohmann's callback parser
// took twice as long as the plain one on every alert).
std::size_t nesting_depth(std::string_view text, std::size_t max) {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > max) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

json parse_json(std::string_view text, const std::string& where) {
  std::string prefix = where.empty() ? "" : where + ": ";
  if (nesting_depth(text, kMaxJsonDepth) > kMaxJsonDepth)
    throw AlertParseError(prefix + "JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                          " levels");
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw AlertParseError(prefix + "malformed JSON: " + json_error_text(e));
  }
}

std::string join_path(const std::string& base, const std::string& child) {
  if (base.empty() || child.empty()) return base + child;
  return child.front() == '[' ? base + child : base + "." + child;
}

std::string index_path(const std::string& base, std::size_t i) {
  return base + "[" + std::to_string(i) + "]";
}

std::string clip(std::string s) {
  if (s.size() <= kMaxFieldLen) return s;
  std::size_t cut = kMaxFieldLen;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  s.resize(cut);
  return s;
}

// A scalar as text; an array gives its first scalar (ECS keyword arrays); objects give nothing.
std::optional<std::string> scalar_string(const json& v) {
  const json* x = &v;
  if (x->is_array()) {
    if (x->empty()) return std::string();
    x = &x->front();
  }
  if (x->is_string()) return clip(x->get<std::string>());
  if (x->is_null()) return std::string();
  if (x->is_structured()) return std::nullopt;
  return x->dump();
}

const json* present(const json* v) {
  return v && !v->is_null() ? v : nullptr;
}

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : present(&*it);
}

// The first non-empty string among `paths`, looked up in each of `docs` in turn (the item,
// then its enclosing context). Guessed names: a value of the wrong kind is skipped.
std::string first_string(std::initializer_list<const json*> docs,
                         std::initializer_list<std::string_view> paths) {
  for (const json* doc : docs) {
    if (!doc) continue;
    for (auto p : paths)
      if (const json* v = present(json_at_path(*doc, p)))
        if (auto s = scalar_string(*v); s && !s->empty()) return *s;
  }
  return {};
}

struct TimeHit {
  const json* value = nullptr;
  std::string path;
};

// Like first_string for times; an empty string counts as not given (templated senders leave
// unknown values blank), anything else that is there must be a time.
TimeHit first_time(std::initializer_list<std::pair<const json*, std::string>> docs,
                   std::initializer_list<std::string_view> paths) {
  for (const auto& [doc, base] : docs) {
    if (!doc) continue;
    for (auto p : paths)
      if (const json* v = present(json_at_path(*doc, p)); v && *v != "")
        return {v, join_path(base, std::string(p))};
  }
  return {};
}

std::int64_t time_of(const TimeHit& hit) {
  return hit.value ? parse_alert_time(*hit.value, hit.path) : 0;
}

// An explicit technique is normalised ("attack.t1059" -> T1059); otherwise the rule name and
// then the whole text are searched.
std::string technique_of(const std::string& explicit_value, const std::string& rule,
                         const std::string& text) {
  if (!explicit_value.empty()) {
    auto t = find_technique(explicit_value);
    return t.empty() ? explicit_value : t;
  }
  auto t = find_technique(rule);
  return t.empty() ? find_technique(text) : t;
}

class TextBudget {
 public:
  explicit TextBudget(std::size_t items) : items_left_(std::max<std::size_t>(items, 1)) {}

  std::size_t next_cap() const {
    return std::min(kMaxAlertText, std::max(kMinTextShare, remaining_ / items_left_));
  }
  void spend(std::size_t n) {
    remaining_ -= std::min(n, remaining_);
    if (items_left_ > 1) --items_left_;
  }

 private:
  std::size_t remaining_ = kMaxRequestText;
  std::size_t items_left_;
};

// The item's own lines first (they hold the marker most often), then whole lines of the
// shared context (group labels, rule name) while they fit.
std::string item_text(const json& item, std::string_view context_text, TextBudget& budget) {
  std::size_t cap = budget.next_cap();
  std::string text = flatten_json(item, cap);
  if (!context_text.empty() && text.size() < cap) {
    auto fit = context_text.substr(0, cap - text.size());
    auto end = fit.size() == context_text.size() ? fit.size() : fit.rfind('\n') + 1;
    text.append(fit.substr(0, end));
  }
  budget.spend(text.size());
  return text;
}

json without(const json& obj, const char* key) {
  json out = json::object();
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (it.key() != key) out[it.key()] = *it;
  return out;
}

void check_count(std::size_t n, const std::string& what) {
  if (n > kMaxAlertsPerRequest)
    throw AlertParseError(what + ": " + std::to_string(n) + " items, more than " +
                          std::to_string(kMaxAlertsPerRequest) + " per request");
}

// One item of a request and where it sits, for error messages.
struct Item {
  const json* doc;
  std::string path;
};

std::vector<Item> object_items(const json& arr, const std::string& base) {
  check_count(arr.size(), base.empty() ? "body" : base);
  std::vector<Item> items;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    auto path = index_path(base, i);
    if (!arr[i].is_object()) throw AlertParseError(path + ": not an object");
    items.push_back({&arr[i], path});
  }
  return items;
}

// ------------------------------------------------------------------------------------------
// generic and elastic: the sender chose the shape; `fields:` says where things are.

struct FieldSpec {
  const std::string& mapped;  // from `fields:`; empty: use the defaults
  std::initializer_list<std::string_view> defaults;
};

std::string mapped_string(const FieldSpec& spec, const Item& item, const json* context) {
  if (spec.mapped.empty()) return first_string({item.doc, context}, spec.defaults);
  const json* v = present(json_at_path(*item.doc, spec.mapped));
  if (!v && context) v = present(json_at_path(*context, spec.mapped));
  if (!v) return {};
  auto s = scalar_string(*v);
  if (!s)
    throw AlertParseError(join_path(item.path, spec.mapped) +
                          ": expected a string or number, got an object");
  return *s;
}

std::int64_t mapped_time(const FieldSpec& spec, const Item& item, const json* context,
                         const std::string& context_path) {
  std::initializer_list<std::string_view> paths = {spec.mapped};
  return time_of(first_time({{item.doc, item.path}, {context, context_path}},
                            spec.mapped.empty() ? spec.defaults : paths));
}

struct MappedDefaults {
  std::initializer_list<std::string_view> id, host, rule, technique, severity;
  std::initializer_list<std::string_view> event_time, ingest_time, alert_time;
};

Alert mapped_alert(const FieldMap& m, const MappedDefaults& d, const Item& item,
                   const json* context, const std::string& context_text, TextBudget& budget) {
  Alert a;
  a.text = item_text(*item.doc, context_text, budget);
  a.id = mapped_string({m.id, d.id}, item, context);
  a.host = mapped_string({m.host, d.host}, item, context);
  a.rule = mapped_string({m.rule, d.rule}, item, context);
  a.severity = mapped_string({m.severity, d.severity}, item, context);
  a.technique =
      technique_of(mapped_string({m.technique, d.technique}, item, context), a.rule, a.text);
  a.event_ns = mapped_time({m.event_time, d.event_time}, item, context, "");
  a.ingest_ns = mapped_time({m.ingest_time, d.ingest_time}, item, context, "");
  a.created_ns = mapped_time({m.alert_time, d.alert_time}, item, context, "");
  return a;
}

std::vector<Alert> parse_generic(const AlertSourceConfig& src, const json& body) {
  std::vector<Item> items;
  if (body.is_object())
    items.push_back({&body, ""});
  else if (body.is_array())
    items = object_items(body, "");
  else
    throw AlertParseError("body must be a JSON object or an array of objects");
  TextBudget budget(items.size());
  std::vector<Alert> out;
  for (const auto& item : items)
    out.push_back(mapped_alert(src.fields, {}, item, nullptr, "", budget));
  return out;
}

// Kibana/ECS names, used for whatever `fields:` leaves unmapped. The rule author templates the
// body, commonly as {{context.alerts}} (alerts-as-data documents) inside an object of their own.
const MappedDefaults kElasticDefaults = {
    .id = {"kibana.alert.uuid", "_id"},
    .host = {"host.name", "host.hostname"},
    .rule = {"kibana.alert.rule.name", "rule.name", "signal.rule.name", "context.rule.name"},
    .technique = {"kibana.alert.rule.threat.technique.subtechnique.id",
                  "kibana.alert.rule.threat.technique.id", "threat.technique.subtechnique.id",
                  "threat.technique.id", "signal.rule.threat.technique.id"},
    .severity = {"kibana.alert.severity", "signal.rule.severity", "severity"},
    .event_time = {"kibana.alert.original_time", "signal.original_time", "@timestamp"},
    .ingest_time = {"event.ingested", "kibana.alert.original_event.ingested"},
    .alert_time = {"kibana.alert.start", "date"},
};

std::vector<Alert> parse_elastic(const AlertSourceConfig& src, const json& body) {
  std::vector<Item> items;
  json context;
  const json* ctx_obj = member(body, "context");
  const json* ctx_alerts = ctx_obj ? member(*ctx_obj, "alerts") : nullptr;
  const json* top_alerts = member(body, "alerts");
  if (ctx_alerts && ctx_alerts->is_array()) {
    items = object_items(*ctx_alerts, "context.alerts");
    context = without(body, "context");
    context["context"] = without(*ctx_obj, "alerts");
  } else if (top_alerts && top_alerts->is_array()) {
    items = object_items(*top_alerts, "alerts");
    context = without(body, "alerts");
  } else if (body.is_object()) {
    items.push_back({&body, ""});
  } else if (body.is_array()) {
    items = object_items(body, "");
  } else {
    throw AlertParseError("body must be a JSON object or an array of objects");
  }
  const json* ctx = context.is_object() ? &context : nullptr;
  std::string context_text = ctx ? flatten_json(context) : "";
  TextBudget budget(items.size());
  std::vector<Alert> out;
  for (const auto& item : items)
    out.push_back(mapped_alert(src.fields, kElasticDefaults, item, ctx, context_text, budget));
  return out;
}

// ------------------------------------------------------------------------------------------
// Splunk webhook alert action: {"sid", "search_name", "app", "owner", "results_link",
// "result": {first result row}}. Splunk sends result values as strings.

// A scheduled search's sid carries its trigger time:
// "scheduler__admin__search__RMD5..._at_1764324000_123".
std::int64_t sid_trigger_ns(const std::string& sid) {
  auto at = sid.rfind("_at_");
  if (at == std::string::npos) return 0;
  auto start = at + 4;
  auto end = sid.find('_', start);
  auto digits = sid.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (digits.size() < 9 || digits.size() > 10 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return 0;
  return std::stoll(digits) * 1'000'000'000;
}

std::vector<Alert> parse_splunk(const json& body) {
  if (!body.is_object()) throw AlertParseError("body must be a JSON object");
  const json* result = member(body, "result");
  if (!result || !result->is_object()) throw AlertParseError("result: missing or not an object");
  TextBudget budget(1);
  Alert a;
  a.text = item_text(body, "", budget);
  std::string sid = first_string({&body}, {"sid"});
  a.rule = first_string({&body}, {"search_name"});
  a.host = first_string({result}, {"host"});
  a.severity = first_string({result}, {"severity", "urgency"});
  a.technique = technique_of(
      first_string({result}, {"technique", "mitre_technique_id", "annotations.mitre_attack"}),
      a.rule, a.text);
  a.event_ns = time_of(first_time({{result, "result"}}, {"_time"}));
  a.ingest_ns = time_of(first_time({{result, "result"}}, {"_indextime"}));
  a.created_ns = sid_trigger_ns(sid);
  if (!sid.empty()) {
    std::string when = first_string({result}, {"_time"});
    if (when.empty()) when = common::to_hex(common::sha256(flatten_json(*result))).substr(0, 16);
    a.id = sid + ":" + when;
  }
  return {std::move(a)};
}

// ------------------------------------------------------------------------------------------
// Prometheus Alertmanager webhook, payload version 4.

std::string strip_port(const std::string& instance) {
  if (!instance.empty() && instance.front() == '[') {
    auto close = instance.find(']');
    return close == std::string::npos ? instance : instance.substr(1, close - 1);
  }
  auto colon = instance.rfind(':');
  if (colon == std::string::npos || instance.find(':') != colon) return instance;
  return instance.substr(0, colon);
}

std::optional<Alert> alertmanager_alert(const Item& item, const std::string& context_text,
                                        TextBudget& budget) {
  const json& a_json = *item.doc;
  std::string status = first_string({&a_json}, {"status"});
  if (status == "resolved") return std::nullopt;  // the end of an alert is not a new alert
  if (status != "firing")
    throw AlertParseError(item.path + ".status: '" + common::quote_hostile(status, kQuotedChars) +
                          "' is neither firing nor resolved");
  const json* labels = member(a_json, "labels");
  const json* annotations = member(a_json, "annotations");
  const json* starts = member(a_json, "startsAt");
  if (!starts) throw AlertParseError(item.path + ".startsAt: missing");
  Alert a;
  a.text = item_text(a_json, context_text, budget);
  a.created_ns = parse_alert_time(*starts, item.path + ".startsAt");
  a.rule = first_string({labels}, {"alertname"});
  a.host = first_string({labels}, {"host", "hostname"});
  if (a.host.empty()) a.host = strip_port(first_string({labels}, {"instance"}));
  a.severity = first_string({labels}, {"severity"});
  a.technique = technique_of(first_string({labels, annotations}, {"technique"}), a.rule, a.text);
  std::string fingerprint = first_string({&a_json}, {"fingerprint"});
  if (!fingerprint.empty()) a.id = fingerprint + "@" + first_string({&a_json}, {"startsAt"});
  return a;
}

std::vector<Alert> parse_alertmanager(const json& body) {
  if (!body.is_object()) throw AlertParseError("body must be a JSON object");
  const json* version = member(body, "version");
  if (!version) throw AlertParseError("version: missing (only version \"4\" is supported)");
  if (*version != "4")
    throw AlertParseError("version: " + common::quote_hostile(version->dump(), kQuotedChars) +
                          " is not supported (only version \"4\")");
  const json* alerts = member(body, "alerts");
  if (!alerts || !alerts->is_array()) throw AlertParseError("alerts: missing or not an array");
  auto items = object_items(*alerts, "alerts");
  std::string context_text = flatten_json(without(body, "alerts"));
  TextBudget budget(items.size());
  std::vector<Alert> out;
  for (const auto& item : items)
    if (auto a = alertmanager_alert(item, context_text, budget)) out.push_back(std::move(*a));
  return out;
}

// ------------------------------------------------------------------------------------------
// CrowdSec http notification plugin; its default format is {{.|toJson}}: an array of
// models.Alert (scenario, machine_id, source{}, events[], decisions[], start_at, created_at).

std::vector<Alert> parse_crowdsec(const json& body) {
  std::vector<Item> items;
  if (body.is_array())
    items = object_items(body, "");
  else if (body.is_object())
    items.push_back({&body, ""});  // a custom format sending one alert
  else
    throw AlertParseError("body must be a JSON array of alerts");
  TextBudget budget(items.size());
  std::vector<Alert> out;
  for (const auto& item : items) {
    Alert a;
    a.text = item_text(*item.doc, "", budget);
    a.id = first_string({item.doc}, {"id", "uuid"});
    a.rule = first_string({item.doc}, {"scenario"});
    a.host = first_string({item.doc}, {"machine_id"});
    // machine_id names the CrowdSec agent, not the attacked host: without a marker, the
    // attacker's address is what links the alert to a Tocsin agent.
    a.source_addresses = detail::crowdsec::source_addresses(*item.doc);
    a.technique = technique_of("", a.rule, a.text);
    a.event_ns = time_of(first_time({{item.doc, item.path}}, {"start_at"}));
    a.created_ns = time_of(first_time({{item.doc, item.path}}, {"created_at"}));
    out.push_back(std::move(a));
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Splunk HTTP Event Collector, /services/collector/event: JSON objects one after another
// (not an array), each {"time", "host", "source", "sourcetype", "index", "event", "fields"}.

// Splits concatenated JSON objects without parsing them: string-aware bracket counting.
std::vector<std::string_view> split_objects(std::string_view body) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (true) {
    while (i < body.size() && ws(body[i])) ++i;
    if (i == body.size()) break;
    std::string label = "object " + std::to_string(out.size() + 1);
    check_count(out.size() + 1, "body");
    if (body[i] != '{') throw AlertParseError(label + ": not a JSON object");
    std::size_t start = i, depth = 0;
    bool in_string = false;
    for (; i < body.size(); ++i) {
      char c = body[i];
      if (in_string) {
        if (c == '\\')
          ++i;
        else if (c == '"')
          in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        ++i;
        break;
      }
    }
    out.push_back(body.substr(start, std::min(i, body.size()) - start));
  }
  return out;
}

Alert hec_alert(const json& obj, const std::string& label, TextBudget& budget) {
  if (!obj.is_object()) throw AlertParseError(label + ": not a JSON object");
  const json* event = member(obj, "event");
  if (!event) throw AlertParseError(label + ": no \"event\" field (No data)");
  if (*event == "")
    throw AlertParseError(label + ": \"event\" is empty (Event field cannot be blank)");
  const json* fields = member(obj, "fields");
  const json* event_obj = event->is_object() ? event : nullptr;
  Alert a;
  a.text = item_text(obj, "", budget);
  a.host = first_string({&obj}, {"host"});
  a.rule = first_string({fields, event_obj}, {"rule"});
  if (a.rule.empty()) a.rule = first_string({&obj}, {"sourcetype"});
  a.severity = first_string({fields, event_obj}, {"severity"});
  a.technique = technique_of(first_string({fields, event_obj}, {"technique"}), a.rule, a.text);
  if (const json* t = member(obj, "time"); t && *t != "")
    a.event_ns = parse_alert_time(*t, label + ": time");
  return a;
}

std::vector<Alert> parse_hec(std::string_view body) {
  if (body.substr(0, 3) == "\xEF\xBB\xBF") body.remove_prefix(3);  // nlohmann skips it too
  auto parts = split_objects(body);
  TextBudget budget(parts.size());
  std::vector<Alert> out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    std::string label = "object " + std::to_string(i + 1);
    out.push_back(hec_alert(parse_json(parts[i], label), label, budget));
  }
  return out;
}

std::vector<Alert> parse_by_type(const AlertSourceConfig& src, std::string_view body) {
  if (src.type == SourceType::hec) return parse_hec(body);
  json doc = parse_json(body, "");
  switch (src.type) {
    case SourceType::generic:
      return parse_generic(src, doc);
    case SourceType::splunk_webhook:
      return parse_splunk(doc);
    case SourceType::elastic:
      return parse_elastic(src, doc);
    case SourceType::alertmanager:
      return parse_alertmanager(doc);
    case SourceType::crowdsec:
      return parse_crowdsec(doc);
    default:
      throw std::logic_error("parse_by_type: not a webhook type");
  }
}

}  // namespace

std::vector<Alert> parse_webhook(const AlertSourceConfig& src, std::string_view body,
                                 std::int64_t arrival_ns) {
  if (!is_webhook(src.type))
    throw std::invalid_argument("parse_webhook: source '" + src.name + "' is not a webhook source");
  const std::string type = source_type_name(src.type);
  std::vector<Alert> out;
  try {
    if (body.size() > src.max_body)
      throw AlertParseError("body of " + std::to_string(body.size()) + " bytes is over max_body");
    if (body.find_first_not_of(" \t\r\n") == std::string_view::npos)
      throw AlertParseError("empty body");
    out = parse_by_type(src, body);
  } catch (const AlertParseError& e) {
    throw AlertParseError(type + ": " + e.what());
  }
  for (auto& a : out) {
    a.source = src.name;
    a.source_type = type;
    a.is_event = src.events;
    a.arrival_ns = arrival_ns;
  }
  return out;
}

}  // namespace tocsin::collector
