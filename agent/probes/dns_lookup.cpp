#include "agent/probes/dns_lookup.hpp"

#include <ares.h>
#include <arpa/inet.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <stdexcept>

#include "common/config.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
using asio::ip::address;

std::string to_string(DnsRecordType t) {
  return t == DnsRecordType::a ? "A" : "AAAA";
}

AddressRange AddressRange::parse(const std::string& text) {
  AddressRange r;
  auto slash = text.find('/');
  boost::system::error_code ec;
  r.net = asio::ip::make_address(text.substr(0, slash), ec);
  if (ec) throw std::invalid_argument("'" + text + "' is not an IP address or network");
  unsigned max = r.net.is_v4() ? 32 : 128;
  r.prefix = max;
  if (slash != std::string::npos) {
    auto plen = text.substr(slash + 1);
    if (plen.empty() || plen.size() > 3 ||
        plen.find_first_not_of("0123456789") != std::string::npos || std::stoul(plen) > max)
      throw std::invalid_argument("'" + text + "' has a bad prefix length");
    r.prefix = static_cast<unsigned>(std::stoul(plen));
  }
  return r;
}

namespace {

std::vector<unsigned char> bytes_of(const address& a) {
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    return {b.begin(), b.end()};
  }
  auto b = a.to_v6().to_bytes();
  return {b.begin(), b.end()};
}

}  // namespace

bool AddressRange::contains(const address& a) const {
  if (a.is_v4() != net.is_v4()) return false;
  auto x = bytes_of(a), n = bytes_of(net);
  for (unsigned bit = 0; bit < prefix; ++bit) {
    unsigned mask = 0x80u >> (bit % 8);
    if ((x[bit / 8] & mask) != (n[bit / 8] & mask)) return false;
  }
  return true;
}

std::string AddressRange::to_string() const {
  return net.to_string() + "/" + std::to_string(prefix);
}

const std::vector<std::string>& default_sinkhole() {
  // What DNS firewalls and blocklist resolvers commonly answer for a blocked name.
  static const std::vector<std::string> kDefault = {"0.0.0.0", "127.0.0.0/8", "::", "::1"};
  return kDefault;
}

std::string normalize_domain(const std::string& name) {
  std::string d = name;
  if (!d.empty() && d.back() == '.') d.pop_back();
  std::transform(d.begin(), d.end(), d.begin(), [](unsigned char c) { return std::tolower(c); });
  // The marker label ("tcn-" + 10) and its dot must still fit in a 253-character name.
  if (d.empty() || d.size() > 253 - 15)
    throw std::invalid_argument("'" + name + "' is not a domain name of 1-238 characters");
  std::size_t start = 0;
  while (start <= d.size()) {
    auto dot = d.find('.', start);
    auto label = d.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 ||
        label.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_") != std::string::npos ||
        label.front() == '-' || label.back() == '-')
      throw std::invalid_argument("'" + name + "' has an invalid label '" + label + "'");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return d;
}

namespace {

common::HostPort parse_resolver(const std::string& text) {
  boost::system::error_code ec;
  auto bare = asio::ip::make_address(text, ec);
  if (!ec) return {bare.to_string(), 53};
  auto hp = common::parse_host_port(text);  // throws invalid_argument
  asio::ip::make_address(hp.host, ec);
  if (ec) throw std::invalid_argument("'" + text + "': the resolver must be an IP address");
  if (hp.port == 0) throw std::invalid_argument("'" + text + "': port 0");
  return hp;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string join_addresses(const std::vector<address>& v) {
  std::vector<std::string> s;
  for (const auto& a : v) s.push_back(a.to_string());
  return join(s);
}

}  // namespace

void load_dns_lookup(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow) {
  params.check_keys({"domain", "resolver", "sinkhole", "expect", "control_domain", "record_type"});
  auto p = std::make_shared<DnsLookupParams>();
  auto domain = [&](const std::string& key) {
    try {
      return normalize_domain(params.str(key));
    } catch (const std::invalid_argument& e) {
      params.fail(key, e.what());
    }
  };
  p->domain = domain("domain");
  if (params.has("control_domain")) p->control_domain = domain("control_domain");
  if (params.has("resolver")) {
    try {
      p->resolver = parse_resolver(params.str("resolver"));
    } catch (const std::invalid_argument& e) {
      params.fail("resolver", e.what());
    }
    if (!allow.allows_name(p->resolver->host, p->resolver->port))
      params.fail("resolver", "resolver " + p->resolver->to_string() +
                                  " is not on the allowlist (allowlist: network:)");
  }
  auto sinkhole = params.has("sinkhole") ? params.str_list("sinkhole") : default_sinkhole();
  if (sinkhole.size() > 64) params.fail("sinkhole", "at most 64 entries");
  for (const auto& entry : sinkhole) {
    try {
      p->sinkhole.push_back(AddressRange::parse(entry));
    } catch (const std::invalid_argument& e) {
      params.fail("sinkhole", e.what());
    }
  }
  auto expect = params.str_list("expect");
  if (expect.size() > 64) params.fail("expect", "at most 64 entries");
  for (const auto& entry : expect) {
    boost::system::error_code ec;
    auto a = asio::ip::make_address(entry, ec);
    if (ec) params.fail("expect", "'" + entry + "' is not an IP address");
    for (const auto& r : p->sinkhole)
      if (r.contains(a))
        params.fail("expect",
                    "'" + entry + "' is also on the sinkhole list (" + r.to_string() + ")");
    p->expect.push_back(a);
  }
  auto type = params.str("record_type", "A");
  std::transform(type.begin(), type.end(), type.begin(),
                 [](unsigned char c) { return std::toupper(c); });
  if (type == "A")
    p->record_type = DnsRecordType::a;
  else if (type == "AAAA")
    p->record_type = DnsRecordType::aaaa;
  else
    params.fail("record_type", "'" + type + "' is not A or AAAA");
  if (!test.has("timeout")) s.timeout = std::chrono::seconds(5);
  s.summary = "<marker>." + p->domain + " " + to_string(p->record_type) + " via " +
              (p->resolver ? p->resolver->to_string() : "system resolvers") +
              (p->control_domain.empty() ? "" : ", control " + p->control_domain);
  s.dns_lookup = std::move(p);
}

bool control_resolved(const DnsLookupParams& /*p*/, const DnsObservation& control) {
  // The control only has to show that the resolver answers names normally; which address it
  // gives is no business of the sinkhole list (a lab resolver answering 127.0.0.9, a control
  // the resolver also sinkholes: both are working answers).
  return control.status == DnsStatus::answered && !control.answers.empty();
}

namespace {

bool sinkholed(const DnsLookupParams& p, const address& a) {
  return std::any_of(p.sinkhole.begin(), p.sinkhole.end(),
                     [&](const AddressRange& r) { return r.contains(a); });
}

DnsVerdict negative_answer(const DnsLookupParams& p, const DnsObservation& t,
                           const std::optional<DnsObservation>& control) {
  std::string what = t.status == DnsStatus::nxdomain  ? "nxdomain"
                     : t.status == DnsStatus::refused ? "refused"
                                                      : "nodata";
  std::string upper = t.rcode.empty() ? what : t.rcode;
  if (!control)
    return {"inconclusive", what + "_without_control",
            upper +
                " proves nothing on its own (the name may simply not exist, or the resolver "
                "may refuse everyone): set control_domain to a name that must resolve"};
  if (!control_resolved(p, *control))
    return {"inconclusive", "control_failed",
            "the control name " + p.control_domain +
                " did not resolve through the same resolver, so " + upper + " proves no policy"};
  if (t.status == DnsStatus::nodata) {
    // A name without records of this type is normal unless we know it has them.
    bool known = std::any_of(p.expect.begin(), p.expect.end(), [&](const address& a) {
      return a.is_v4() == (p.record_type == DnsRecordType::a);
    });
    if (!known)
      return {"inconclusive", "no_data",
              "the resolver answered with no " + to_string(p.record_type) +
                  " records; list the real answers in `expect` to judge NODATA as a policy"};
    return {"prevented", "nodata_by_policy",
            "no records although the name has them (expect) and the control resolved"};
  }
  if (t.status == DnsStatus::refused)
    return {"prevented", "refused", "the resolver refused the name while the control resolved"};
  return {"prevented", "nxdomain_by_policy",
          "the resolver denied the name exists while the control resolved"};
}

}  // namespace

DnsVerdict dns_verdict(const DnsLookupParams& p, const DnsObservation& t,
                       const std::optional<DnsObservation>& control) {
  switch (t.status) {
    case DnsStatus::answered: {
      std::vector<address> real;
      for (const auto& a : t.answers)
        if (!sinkholed(p, a)) real.push_back(a);
      if (real.empty()) return {"prevented", "sinkholed", "every answer is on the sinkhole list"};
      bool expected =
          p.expect.empty() || std::any_of(real.begin(), real.end(), [&](const address& a) {
            return std::find(p.expect.begin(), p.expect.end(), a) != p.expect.end();
          });
      if (!expected)
        return {"inconclusive", "unexpected_answer",
                "the answer is neither on the sinkhole list nor one of the expected real answers; "
                "if it is your sinkhole, add it to `sinkhole`"};
      return {"not_prevented", "resolved",
              "the known-bad name resolved to a real address (which was not contacted)"};
    }
    case DnsStatus::nxdomain:
    case DnsStatus::refused:
    case DnsStatus::nodata:
      return negative_answer(p, t, control);
    case DnsStatus::timeout:
      return {"inconclusive", "timeout", "no answer in time: a failure, not a block"};
    case DnsStatus::servfail:
    case DnsStatus::unreachable:
    case DnsStatus::failure:
      break;
  }
  return {"inconclusive", "dns_failure", "the lookup failed: a failure, not a block"};
}

// ---- c-ares ----------------------------------------------------------------------------

namespace {

constexpr int kClassIn = 1;
constexpr int kTypeA = 1;
constexpr int kTypeAaaa = 28;
constexpr int kMaxAnswers = 32;

std::string ares_status_name(int status) {
  static const char* const kNames[] = {
      "ARES_SUCCESS",         "ARES_ENODATA",       "ARES_EFORMERR",
      "ARES_ESERVFAIL",       "ARES_ENOTFOUND",     "ARES_ENOTIMP",
      "ARES_EREFUSED",        "ARES_EBADQUERY",     "ARES_EBADNAME",
      "ARES_EBADFAMILY",      "ARES_EBADRESP",      "ARES_ECONNREFUSED",
      "ARES_ETIMEOUT",        "ARES_EOF",           "ARES_EFILE",
      "ARES_ENOMEM",          "ARES_EDESTRUCTION",  "ARES_EBADSTR",
      "ARES_EBADFLAGS",       "ARES_ENONAME",       "ARES_EBADHINTS",
      "ARES_ENOTINITIALIZED", "ARES_ELOADIPHLPAPI", "ARES_EADDRGETNETWORKPARAMS",
      "ARES_ECANCELLED"};
  if (status >= 0 && status < static_cast<int>(std::size(kNames))) return kNames[status];
  return "ARES_" + std::to_string(status);
}

std::string rcode_name(unsigned rcode) {
  static const char* const kNames[] = {"NOERROR",  "FORMERR", "SERVFAIL",
                                       "NXDOMAIN", "NOTIMP",  "REFUSED"};
  if (rcode < std::size(kNames)) return kNames[rcode];
  return "RCODE" + std::to_string(rcode);
}

void ensure_library() {
  static const int rc = ares_library_init(ARES_LIB_INIT_ALL);
  if (rc != ARES_SUCCESS)
    throw std::runtime_error(std::string("c-ares library init: ") + ares_strerror(rc));
}

struct ChannelDeleter {
  void operator()(ares_channel c) const { ares_destroy(c); }
};
using Channel = std::unique_ptr<std::remove_pointer_t<ares_channel>, ChannelDeleter>;

struct Pending {
  DnsObservation* out = nullptr;
  DnsRecordType type = DnsRecordType::a;
  std::chrono::steady_clock::time_point t0;
  int* outstanding = nullptr;
};

std::vector<address> parse_answers(const unsigned char* abuf, int alen, DnsRecordType type) {
  std::vector<address> out;
  int n = kMaxAnswers;
  if (type == DnsRecordType::a) {
    ares_addrttl ttls[kMaxAnswers];
    if (ares_parse_a_reply(abuf, alen, nullptr, ttls, &n) != ARES_SUCCESS) return out;
    for (int i = 0; i < n; ++i) out.push_back(asio::ip::address_v4(ntohl(ttls[i].ipaddr.s_addr)));
  } else {
    ares_addr6ttl ttls[kMaxAnswers];
    if (ares_parse_aaaa_reply(abuf, alen, nullptr, ttls, &n) != ARES_SUCCESS) return out;
    for (int i = 0; i < n; ++i) {
      asio::ip::address_v6::bytes_type b;
      std::copy_n(reinterpret_cast<const unsigned char*>(&ttls[i].ip6addr), b.size(), b.begin());
      out.push_back(asio::ip::address_v6(b));
    }
  }
  return out;
}

void on_answer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
  auto* q = static_cast<Pending*>(arg);
  auto& o = *q->out;
  o.elapsed_us = std::chrono::duration_cast<std::chrono::microseconds>(
                     std::chrono::steady_clock::now() - q->t0)
                     .count();
  o.ares_status = ares_status_name(status);
  o.detail = ares_strerror(status);
  if (abuf && alen >= 12) o.rcode = rcode_name(abuf[3] & 0x0fu);
  switch (status) {
    case ARES_SUCCESS:
      o.answers = parse_answers(abuf, alen, q->type);
      o.status = o.answers.empty() ? DnsStatus::nodata : DnsStatus::answered;
      break;
    case ARES_ENOTFOUND:
      o.status = DnsStatus::nxdomain;
      break;
    case ARES_EREFUSED:
      o.status = DnsStatus::refused;
      break;
    case ARES_ENODATA:
      o.status = DnsStatus::nodata;
      break;
    case ARES_ESERVFAIL:
      o.status = DnsStatus::servfail;
      break;
    case ARES_ETIMEOUT:
      o.status = DnsStatus::timeout;
      break;
    case ARES_ECANCELLED:  // our deadline passed (see resolve_names)
      o.status = DnsStatus::timeout;
      o.detail = "no answer before the probe's timeout";
      break;
    case ARES_ECONNREFUSED:
      o.status = DnsStatus::unreachable;
      o.detail = "the resolver could not be reached (connection refused)";
      break;
    default:
      o.status = DnsStatus::failure;
      break;
  }
  --*q->outstanding;
}

std::string server_list(ares_channel ch) {
  ares_addr_port_node* servers = nullptr;
  if (ares_get_servers_ports(ch, &servers) != ARES_SUCCESS) return "unknown";
  std::vector<std::string> out;
  for (auto* s = servers; s; s = s->next) {
    char text[64] = {};
    ares_inet_ntop(s->family, &s->addr, text, sizeof text);
    int port = s->udp_port ? s->udp_port : 53;
    out.push_back(common::HostPort{text, static_cast<std::uint16_t>(port)}.to_string());
  }
  ares_free_data(servers);
  return out.empty() ? "none" : join(out);
}

// Drives the channel until nothing is outstanding or the deadline passes (then cancels).
void drive(ares_channel ch, const int& outstanding,
           std::chrono::steady_clock::time_point deadline) {
  while (outstanding > 0) {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    ares_socket_t socks[ARES_GETSOCK_MAXNUM];
    int bits = ares_getsock(ch, socks, ARES_GETSOCK_MAXNUM);
    pollfd fds[ARES_GETSOCK_MAXNUM];
    nfds_t n = 0;
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
      short events = 0;
      if (ARES_GETSOCK_READABLE(bits, i)) events |= POLLIN;
      if (ARES_GETSOCK_WRITABLE(bits, i)) events |= POLLOUT;
      if (!events) break;
      fds[n++] = {socks[i], events, 0};
    }
    timeval max_tv{static_cast<time_t>(left.count() / 1000000),
                   static_cast<suseconds_t>(left.count() % 1000000)};
    timeval tv{};
    timeval* wait = ares_timeout(ch, &max_tv, &tv);
    int ms = static_cast<int>(wait->tv_sec * 1000 + (wait->tv_usec + 999) / 1000);
    int rc = ::poll(fds, n, ms);
    if (rc < 0 && errno != EINTR) throw std::runtime_error("poll on DNS sockets failed");
    if (rc <= 0) {
      ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts and retries
      continue;
    }
    for (nfds_t i = 0; i < n; ++i) {
      bool r = fds[i].revents & (POLLIN | POLLERR | POLLHUP);
      bool w = fds[i].revents & POLLOUT;
      if (r || w)
        ares_process_fd(ch, r ? fds[i].fd : ARES_SOCKET_BAD, w ? fds[i].fd : ARES_SOCKET_BAD);
    }
  }
  if (outstanding > 0) ares_cancel(ch);  // each outstanding query completes as ECANCELLED
}

}  // namespace

DnsRun resolve_names(const std::optional<common::HostPort>& resolver,
                     const std::vector<std::string>& names, DnsRecordType type,
                     std::chrono::milliseconds timeout) {
  ensure_library();
  auto t0 = std::chrono::steady_clock::now();
  DnsRun run;
  run.results.resize(names.size());
  int outstanding = 0;
  std::vector<Pending> pending(names.size());  // outlives the channel (declared before it)
  ares_options opts{};
  // Two tries, the second with c-ares' doubled timeout, fit inside the probe's own deadline.
  opts.timeout = static_cast<int>(std::max<std::int64_t>(100, timeout.count() / 3));
  opts.tries = 2;
  // With one explicit resolver, a SERVFAIL or REFUSED is its answer and is reported as such;
  // with the system's list, c-ares moves on to the next server like the libc stub would.
  opts.flags = ARES_FLAG_NOSEARCH | (resolver ? ARES_FLAG_NOCHECKRESP : 0);
  ares_channel raw = nullptr;
  int rc = ares_init_options(&raw, &opts, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS);
  if (rc != ARES_SUCCESS)
    throw std::runtime_error(std::string("c-ares init: ") + ares_strerror(rc));
  Channel ch(raw);
  if (resolver) {
    rc = ares_set_servers_ports_csv(ch.get(), resolver->to_string().c_str());
    if (rc != ARES_SUCCESS)
      throw std::runtime_error("c-ares resolver '" + resolver->to_string() +
                               "': " + ares_strerror(rc));
  }
  run.servers = server_list(ch.get());
  for (std::size_t i = 0; i < names.size(); ++i) {
    pending[i] = {&run.results[i], type, std::chrono::steady_clock::now(), &outstanding};
    ++outstanding;
    ares_query(ch.get(), names[i].c_str(), kClassIn, type == DnsRecordType::a ? kTypeA : kTypeAaaa,
               on_answer, &pending[i]);
  }
  drive(ch.get(), outstanding, t0 + timeout);
  return run;
}

// ---- the probe -------------------------------------------------------------------------

namespace {

void add_observation(common::ResultBody& b, const std::string& prefix, const DnsObservation& o) {
  b.evidence[prefix + "dns_status"] = o.ares_status;
  b.evidence[prefix + "rcode"] = o.rcode.empty() ? "none (no response)" : o.rcode;
  b.evidence[prefix + "answers"] = join_addresses(o.answers);
  b.evidence[prefix + "detail"] = o.detail;
  b.evidence[prefix + "elapsed_ms"] = std::to_string(o.elapsed_us / 1000.0);
}

}  // namespace

asio::awaitable<std::vector<common::ResultBody>> DnsLookupProbe::run(const TestSpec& test,
                                                                     std::string marker) {
  const auto& p = *test.dns_lookup;
  auto b = start_result(test, marker);
  b.target = p.domain;
  // The marker is the first label, so the resolver's query log names this run.
  std::string query = marker + "." + p.domain;
  b.evidence = {{"query", query},
                {"record_type", to_string(p.record_type)},
                {"resolver", p.resolver ? p.resolver->to_string() : "system"},
                {"timeout_ms", std::to_string(test.timeout.count())},
                {"connections", "none: resolved addresses are never contacted"}};
  if (p.resolver &&
      !allow_.allows_address(asio::ip::make_address(p.resolver->host), p.resolver->port)) {
    b.verdict = "not_applicable";
    b.reason = "target_not_allowlisted";
    b.evidence["detail"] =
        "resolver " + p.resolver->to_string() + " is not on the allowlist; not contacted";
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }
  // The control is queried first, then the marker name, on one channel under one deadline.
  std::vector<std::string> names;
  if (!p.control_domain.empty()) names.push_back(p.control_domain);
  names.push_back(query);
  // The job captures pointers into this frame, which stays suspended (and so alive) until the
  // job is done.
  DnsRun run;
  std::string setup_error;
  const auto* resolver = &p.resolver;
  const auto* name_list = &names;
  auto* out = &run;
  auto* err = &setup_error;
  auto job = [resolver, name_list, out, err, type = p.record_type, timeout = test.timeout] {
    try {
      *out = resolve_names(*resolver, *name_list, type, timeout);
      return true;
    } catch (const std::runtime_error& e) {
      *err = e.what();
      return false;
    }
  };
  bool ok = co_await run_blocking(job);
  if (!ok) {
    b.verdict = "error";
    b.reason = "dns_setup_failed";
    b.evidence["detail"] = setup_error;
    finish_result(b, clock_);
    co_return std::vector<common::ResultBody>{b};
  }
  const auto& target = run.results.back();
  std::optional<DnsObservation> control;
  if (!p.control_domain.empty()) control = run.results.front();
  auto v = dns_verdict(p, target, control);
  b.verdict = v.verdict;
  b.reason = v.reason;
  b.evidence["note"] = v.note;
  b.evidence["servers"] = run.servers;
  add_observation(b, "", target);
  std::vector<std::string> matched;
  for (const auto& a : target.answers)
    for (const auto& r : p.sinkhole)
      if (r.contains(a)) matched.push_back(a.to_string() + " in " + r.to_string());
  if (!matched.empty()) b.evidence["sinkhole_match"] = join(matched);
  if (control) {
    b.evidence["control"] =
        p.control_domain + (control_resolved(p, *control) ? " resolved" : " failed");
    add_observation(b, "control_", *control);
  }
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
