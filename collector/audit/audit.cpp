#include "collector/audit/audit.hpp"

#include <cstring>
#include <stdexcept>

#include "common/clock.hpp"
#include "common/log.hpp"

namespace tocsin::collector {
namespace {

using nlohmann::json;

constexpr std::string_view kEntryMagic = "FDA1";
constexpr std::string_view kAnchorMagic = "FDH1";
constexpr std::string_view kAnchorContext = "tocsin-audit-head-v1";
constexpr std::size_t kDigestSize = 32;
constexpr std::size_t kAnchorSize = 4 + 8 + 32 + 64;
constexpr std::string_view kStarted = "audit_log_started";
constexpr std::string_view kTamper = "audit_tamper_detected";

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Invalid UTF-8 is replaced once, before hashing, so what is hashed is what export shows.
std::string clean(const std::string& s) {
  return json::parse(dump(json(s))).get<std::string>();
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_text(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
void put_digest(std::string& out, const common::Digest& d) {
  out.append(reinterpret_cast<const char*>(d.data()), d.size());
}

// Reads the canonical encoding front to back; any overrun makes the entry undecodable.
struct Reader {
  std::string_view in;
  bool ok = true;
  std::string_view take(std::size_t n) {
    if (!ok || in.size() < n) {
      ok = false;
      return {};
    }
    auto s = in.substr(0, n);
    in.remove_prefix(n);
    return s;
  }
  std::uint64_t u64() {
    auto s = take(8);
    return ok ? get_be64(s.data()) : 0;
  }
  std::string text() {
    auto s = take(4);
    if (!ok) return {};
    std::uint32_t n = 0;
    for (char c : s) n = (n << 8) | static_cast<unsigned char>(c);
    return std::string(take(n));
  }
  common::Digest digest() {
    common::Digest d{};
    auto s = take(d.size());
    if (ok) std::memcpy(d.data(), s.data(), d.size());
    return d;
  }
};

std::string anchor_message(std::uint64_t seq, const common::Digest& hash) {
  std::string m(kAnchorContext);
  put_be64(m, seq);
  put_digest(m, hash);
  return m;
}

struct Anchor {
  std::uint64_t seq = 0;
  common::Digest hash{};
  common::Signature signature{};
  bool verifies(const common::Ed25519Key& key) const {
    auto m = anchor_message(seq, hash);
    return key.verify({reinterpret_cast<const std::uint8_t*>(m.data()), m.size()}, signature);
  }
};

std::string encode_anchor(std::uint64_t seq, const common::Digest& hash,
                          const common::Ed25519Key& key) {
  auto m = anchor_message(seq, hash);
  auto sig = key.sign({reinterpret_cast<const std::uint8_t*>(m.data()), m.size()});
  std::string out(kAnchorMagic);
  put_be64(out, seq);
  put_digest(out, hash);
  out.append(reinterpret_cast<const char*>(sig.data()), sig.size());
  return out;
}

std::optional<Anchor> decode_anchor(std::string_view v) {
  if (v.size() != kAnchorSize || v.substr(0, 4) != kAnchorMagic) return std::nullopt;
  Anchor a;
  a.seq = get_be64(v.data() + 4);
  std::memcpy(a.hash.data(), v.data() + 12, 32);
  std::memcpy(a.signature.data(), v.data() + 44, 64);
  return a;
}

// The newest entry's seq and stored hash (its value's last 32 bytes, whatever the rest holds).
struct Tail {
  std::uint64_t seq = 0;
  common::Digest hash{};
};
std::optional<Tail> read_tail(const Store& store) {
  auto k = store.last_key(Table::audit);
  if (!k || k->size() != 9 || (*k)[0] != 'e') return std::nullopt;
  Tail t;
  t.seq = get_be64(k->data() + 1);
  if (auto v = store.get(Table::audit, *k); v && v->size() >= kDigestSize)
    std::memcpy(t.hash.data(), v->data() + v->size() - kDigestSize, kDigestSize);
  return t;
}

std::string range_text(std::uint64_t from, std::uint64_t to) {
  return from == to ? "entry " + std::to_string(from)
                    : "entries " + std::to_string(from) + ".." + std::to_string(to);
}

json key_detail(const common::Ed25519Key& key) {
  return {{"public_key", common::to_hex(key.public_raw())},
          {"key_fingerprint", audit_key_fingerprint(key)}};
}

// Collects problems in log order, up to the cap.
class Problems {
 public:
  explicit Problems(AuditVerifyResult& r) : r_(r) {}
  void add(std::uint64_t seq, std::string kind, std::string reason) {
    if (r_.problems.size() >= kMaxAuditProblems) {
      r_.problems_truncated = true;
      return;
    }
    r_.problems.push_back({seq, std::move(kind), std::move(reason)});
  }

 private:
  AuditVerifyResult& r_;
};

// The walk over the entries: what verify_audit_log knows after it.
struct Walk {
  std::uint64_t last_seq = 0;
  common::Digest last_hash{};
  std::optional<common::Digest> hash_at_anchor;
  std::string announced_key;  // hex public key of the newest key-announcing entry
};

void check_entry(std::uint64_t seq, std::string_view v, bool& linked, common::Digest& prev, Walk& w,
                 Problems& problems) {
  auto e = decode_audit_entry(v);
  if (!e) {
    problems.add(seq, "undecodable",
                 "entry " + std::to_string(seq) +
                     " cannot be decoded: its stored bytes were changed or cut");
    linked = false;
    return;
  }
  auto body = v.substr(0, v.size() - kDigestSize);
  bool hash_ok = common::sha256(body) == e->hash;
  if (e->seq != seq) {
    problems.add(seq, "reordered",
                 "the entry stored as seq " + std::to_string(seq) + " says it is seq " +
                     std::to_string(e->seq) + ": entries were swapped or moved");
  } else if (!hash_ok) {
    problems.add(seq, "modified",
                 "entry " + std::to_string(seq) +
                     " does not match its hash: its content was changed after it was written");
  } else if (linked && e->prev_hash != prev) {
    problems.add(seq, "broken_link",
                 "entry " + std::to_string(seq) + " does not link to entry " +
                     std::to_string(seq - 1) + ": entry " + std::to_string(seq - 1) +
                     " was replaced (hash and all) or this one was inserted");
  }
  bool sound = e->seq == seq && hash_ok;
  if (sound && e->actor == "system" && (e->action == kStarted || e->action == kTamper)) {
    if (e->detail.contains("public_key") && e->detail["public_key"].is_string())
      w.announced_key = e->detail["public_key"].get<std::string>();
    if (e->action == kTamper)
      problems.add(seq, "recorded",
                   "at seq " + std::to_string(seq) + " (" + common::format_time(e->time_ns) +
                       ") the collector found at startup: " + e->detail.value("finding", "?"));
  }
  linked = sound;
  prev = e->hash;
}

void check_anchor(const std::optional<std::string>& raw, const common::Ed25519Key& key,
                  const Walk& w, AuditVerifyResult& r, Problems& problems) {
  r.head_seq = w.last_seq;
  if (!raw) {
    if (w.last_seq > 0)
      problems.add(0, "anchor",
                   "the signed head anchor is missing: entries cut off the end cannot be "
                   "ruled out (the log ends at seq " +
                       std::to_string(w.last_seq) + ")");
    return;
  }
  auto a = decode_anchor(*raw);
  if (!a) {
    problems.add(0, "anchor", "the signed head anchor cannot be decoded: it was changed");
    return;
  }
  r.head_seq = a->seq;
  if (!a->verifies(key)) {
    problems.add(a->seq, "anchor",
                 "the head anchor (seq " + std::to_string(a->seq) +
                     ") is not signed by the audit key: it was forged, or audit.key replaced");
    return;
  }
  auto pub = common::to_hex(key.public_raw());
  if (!w.announced_key.empty() && w.announced_key != pub)
    problems.add(
        0, "anchor",
        "the audit key (fingerprint " + r.key_fingerprint + ") is not the key the log announced");
  if (a->seq > w.last_seq) {
    problems.add(w.last_seq + 1, "anchor",
                 "the log ends at seq " + std::to_string(w.last_seq) +
                     " but its signed head is seq " + std::to_string(a->seq) + ": " +
                     range_text(w.last_seq + 1, a->seq) + " were cut off the end (truncated)");
  } else if (!w.hash_at_anchor || *w.hash_at_anchor != a->hash) {
    problems.add(a->seq, "anchor",
                 "entry " + std::to_string(a->seq) +
                     " is not the one the signed head names: it was replaced");
  } else if (a->seq < w.last_seq) {
    problems.add(a->seq + 1, "anchor",
                 range_text(a->seq + 1, w.last_seq) +
                     " come after the signed head: added without the audit key");
  }
}

}  // namespace

std::string audit_entry_key(std::uint64_t seq) {
  std::string k = "e";
  put_be64(k, seq);
  return k;
}

std::string audit_canonical_bytes(const AuditEntry& e) {
  std::string out(kEntryMagic);
  put_be64(out, e.seq);
  put_be64(out, static_cast<std::uint64_t>(e.time_ns));
  put_text(out, e.actor);
  put_text(out, e.action);
  put_text(out, e.subject);
  put_text(out, dump(e.detail));
  put_digest(out, e.prev_hash);
  return out;
}

std::optional<AuditEntry> decode_audit_entry(std::string_view value) {
  Reader r{value};
  if (r.take(4) != kEntryMagic) return std::nullopt;
  AuditEntry e;
  e.seq = r.u64();
  e.time_ns = static_cast<std::int64_t>(r.u64());
  e.actor = r.text();
  e.action = r.text();
  e.subject = r.text();
  auto detail = r.text();
  e.prev_hash = r.digest();
  e.hash = r.digest();
  if (!r.ok || !r.in.empty()) return std::nullopt;
  e.detail = json::parse(detail, nullptr, false);
  if (!e.detail.is_object()) return std::nullopt;
  return e;
}

json audit_entry_json(const AuditEntry& e) {
  return {{"seq", e.seq},
          {"time", common::format_time(e.time_ns)},
          {"actor", e.actor},
          {"action", e.action},
          {"subject", e.subject},
          {"detail", e.detail},
          {"prev_hash", common::to_hex(e.prev_hash)},
          {"hash", common::to_hex(e.hash)}};
}

json audit_verify_json(const AuditVerifyResult& r) {
  json problems = json::array();
  for (const auto& p : r.problems)
    problems.push_back({{"seq", p.seq}, {"kind", p.kind}, {"reason", p.reason}});
  return {{"ok", r.ok()},
          {"entries_checked", r.entries_checked},
          {"head_seq", r.head_seq},
          {"key_fingerprint", r.key_fingerprint},
          {"problems", std::move(problems)},
          {"problems_truncated", r.problems_truncated}};
}

AuditVerifyResult verify_audit_log(const Store& store, const common::Ed25519Key& key,
                                   bool stop_at_anchor) {
  AuditVerifyResult r;
  r.key_fingerprint = audit_key_fingerprint(key);
  Problems problems(r);
  auto raw_anchor = store.get(Table::audit, kAuditAnchorKey);
  std::optional<std::uint64_t> stop;
  if (stop_at_anchor && raw_anchor)
    if (auto a = decode_anchor(*raw_anchor)) stop = a->seq;
  std::optional<std::uint64_t> anchor_seq;
  if (raw_anchor)
    if (auto a = decode_anchor(*raw_anchor)) anchor_seq = a->seq;

  Walk w;
  std::uint64_t expected = 1;
  bool linked = true;  // the previous entry was sound, so this one's link can be checked
  common::Digest prev{};
  store.scan(Table::audit, "e", [&](std::string_view k, std::string_view v) {
    if (k.empty() || k[0] != 'e') return false;
    if (k.size() != 9) {
      problems.add(0, "undecodable", "a record with a malformed key is in the audit log");
      return true;
    }
    auto seq = get_be64(k.data() + 1);
    if (stop && seq > *stop) return false;
    ++r.entries_checked;
    if (seq != expected) {
      problems.add(expected, "removed",
                   range_text(expected, seq - 1) + " missing: removed from the log");
      linked = false;
    }
    check_entry(seq, v, linked, prev, w, problems);
    if (anchor_seq && seq == *anchor_seq && v.size() >= kDigestSize) {
      common::Digest h{};
      std::memcpy(h.data(), v.data() + v.size() - kDigestSize, kDigestSize);
      w.hash_at_anchor = h;
    }
    w.last_seq = seq;
    w.last_hash = prev;
    expected = seq + 1;
    return true;
  });
  check_anchor(raw_anchor, key, w, r, problems);
  return r;
}

std::string audit_key_fingerprint(const common::Ed25519Key& key) {
  auto raw = key.public_raw();
  return common::to_hex(common::sha256(raw));
}

common::Ed25519Key load_or_create_audit_key(const std::filesystem::path& file, bool* created) {
  if (created) *created = false;
  if (std::filesystem::exists(file))
    return common::Ed25519Key::from_private_pem(common::read_file(file, 64 * 1024));
  auto key = common::Ed25519Key::generate();
  common::write_file_atomic(file, key.private_pem());
  if (created) *created = true;
  return key;
}

// ---- AuditLog -------------------------------------------------------------------------------

AuditLog::AuditLog(Store& store, common::Ed25519Key key, Clock now)
    : store_(store), key_(std::move(key)), now_(now ? std::move(now) : Clock(common::now_ns)) {
  check_anchor_at_start();
}

void AuditLog::check_anchor_at_start() {
  auto raw = store_.get(Table::audit, kAuditAnchorKey);
  auto tail = read_tail(store_);
  if (!raw && !tail) {
    commit_locked({}, {{"system", std::string(kStarted), "", key_detail(key_)}});
    return;
  }
  std::uint64_t last = tail ? tail->seq : 0;
  next_seq_ = last + 1;
  if (tail) head_hash_ = tail->hash;
  std::string finding;
  auto anchor = raw ? decode_anchor(*raw) : std::nullopt;
  if (!anchor) {
    finding = raw ? "the head anchor could not be decoded" : "the head anchor was missing";
  } else if (!anchor->verifies(key_)) {
    finding = "the head anchor (seq " + std::to_string(anchor->seq) +
              ") was not signed by this collector's audit key";
    if (anchor->seq > last) next_seq_ = anchor->seq + 1;  // keep the missing range visible
  } else if (anchor->seq > last) {
    finding = "the log ended at seq " + std::to_string(last) + " but its signed head was seq " +
              std::to_string(anchor->seq) + ": " + range_text(last + 1, anchor->seq) +
              " had been cut off the end";
    next_seq_ = anchor->seq + 1;
    head_hash_ = anchor->hash;
  } else if (anchor->seq < last) {
    finding = range_text(anchor->seq + 1, last) + " had been stored after the signed head (seq " +
              std::to_string(anchor->seq) + ") without the audit key";
  } else if (anchor->hash != head_hash_) {
    finding =
        "the newest entry (seq " + std::to_string(last) + ") was not the one the signed head names";
  }
  if (finding.empty()) return;
  spdlog::error("audit: {}; recording it in the audit log", finding);
  auto detail = key_detail(key_);
  detail["finding"] = finding;
  commit_locked({}, {{"system", std::string(kTamper), "", detail}});
}

void AuditLog::stage(WriteSet& ws, const AuditRecord& r, std::uint64_t& seq,
                     common::Digest& prev) const {
  AuditEntry e;
  e.seq = seq;
  e.time_ns = now_();
  e.actor = clean(r.actor);
  e.action = clean(r.action);
  e.subject = clean(r.subject);
  e.detail = json::parse(dump(r.detail));
  e.prev_hash = prev;
  auto bytes = audit_canonical_bytes(e);
  e.hash = common::sha256(bytes);
  put_digest(bytes, e.hash);
  ws.put(Table::audit, audit_entry_key(seq), std::move(bytes));
  prev = e.hash;
  ++seq;
}

void AuditLog::commit_locked(WriteSet ws, const std::vector<AuditRecord>& records) {
  std::uint64_t seq = next_seq_;
  common::Digest prev = head_hash_;
  for (const auto& r : records) stage(ws, r, seq, prev);
  if (!records.empty()) ws.put(Table::audit, kAuditAnchorKey, encode_anchor(seq - 1, prev, key_));
  if (ws.empty()) return;
  store_.commit(std::move(ws));  // throws StoreError; the head moves only once it is durable
  next_seq_ = seq;
  head_hash_ = prev;
}

void AuditLog::append(const std::string& actor, const std::string& action,
                      const std::string& subject, nlohmann::json detail) {
  commit({}, {{actor, action, subject, std::move(detail)}});
}

void AuditLog::commit(WriteSet ws, const std::vector<AuditRecord>& records) {
  for (const auto& r : records) {
    if (r.actor.empty()) throw std::invalid_argument("an audit entry needs an actor");
    if (r.action.empty()) throw std::invalid_argument("an audit entry needs an action");
    if (r.action.rfind("audit_", 0) == 0)
      throw std::invalid_argument("audit actions starting with 'audit_' are the log's own");
    if (!r.detail.is_object())
      throw std::invalid_argument("an audit entry's detail must be a JSON object");
  }
  std::lock_guard lk(mu_);
  commit_locked(std::move(ws), records);
}

AuditVerifyResult AuditLog::verify() const {
  return verify_audit_log(store_, key_, true);
}

std::vector<AuditEntry> AuditLog::list(std::uint64_t from_seq, std::int64_t since_ns,
                                       std::size_t limit) const {
  std::vector<AuditEntry> out;
  store_.scan(Table::audit, audit_entry_key(std::max<std::uint64_t>(from_seq, 1)),
              [&](std::string_view k, std::string_view v) {
                if (out.size() >= limit || k.size() != 9 || k[0] != 'e') return false;
                auto e = decode_audit_entry(v);  // undecodable ones: verify names them
                if (e && e->time_ns >= since_ns) out.push_back(std::move(*e));
                return true;
              });
  return out;
}

std::uint64_t AuditLog::head_seq() const {
  std::lock_guard lk(mu_);
  return next_seq_ - 1;
}

}  // namespace tocsin::collector
