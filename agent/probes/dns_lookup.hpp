// dns_lookup: is a known-bad domain (with a marker label) sinkholed or refused by policy?
#pragma once

#include <boost/asio/ip/address.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "agent/probes/probe.hpp"
#include "agent/runtime/allowlist.hpp"
#include "common/config.hpp"
#include "common/net.hpp"

namespace tocsin::agent {

enum class DnsRecordType { a, aaaa };
std::string to_string(DnsRecordType t);

// One address or network ("0.0.0.0", "127.0.0.0/8", "::/128"); parse throws invalid_argument.
struct AddressRange {
  boost::asio::ip::address net;
  unsigned prefix = 0;
  static AddressRange parse(const std::string& text);
  bool contains(const boost::asio::ip::address& a) const;
  std::string to_string() const;
};

// The answers that mean "sinkholed by policy" when a test does not list its own.
const std::vector<std::string>& default_sinkhole();

struct DnsLookupParams {
  std::string domain;                        // lower case, no trailing dot
  std::optional<common::HostPort> resolver;  // an IP literal; empty: the system's resolvers
  std::vector<AddressRange> sinkhole;
  std::vector<boost::asio::ip::address> expect;  // the domain's real answers, if known
  std::string control_domain;                    // must resolve through the same resolver
  DnsRecordType record_type = DnsRecordType::a;
};

// "Bad.Example." -> "bad.example"; refuses anything that is not a host name that still fits
// under a marker label. Throws std::invalid_argument.
std::string normalize_domain(const std::string& name);

// Reads the test's `params:` (and may default `timeout` if the test did not set it); fails
// with file:line for unknown keys, bad values and targets off the allowlist. Sets
// s.dns_lookup and s.summary.
void load_dns_lookup(const common::ConfigNode& test, const common::ConfigNode& params, TestSpec& s,
                     const Allowlist& allow);

// How one query ended, as far as the verdict cares.
enum class DnsStatus {
  answered,
  nxdomain,
  refused,
  nodata,
  servfail,
  timeout,
  unreachable,
  failure
};

struct DnsObservation {
  DnsStatus status = DnsStatus::failure;
  std::string ares_status;  // c-ares' name for the outcome, e.g. ARES_ENOTFOUND
  std::string rcode;        // from the response header (NXDOMAIN, ...); empty: no response seen
  std::vector<boost::asio::ip::address> answers;
  std::string detail;
  std::int64_t elapsed_us = 0;
};

struct DnsVerdict {
  std::string verdict, reason, note;
};
// The verdict for the marker query, given the control query's outcome (nullopt: no control
// configured). An answer proves itself; a negative answer proves a policy only when the
// control shows the same resolver answers normally.
DnsVerdict dns_verdict(const DnsLookupParams& p, const DnsObservation& target,
                       const std::optional<DnsObservation>& control);
// The control was answered with at least one address, whatever it is: the sinkhole list judges
// the marker name only.
bool control_resolved(const DnsLookupParams& p, const DnsObservation& control);

struct DnsRun {
  std::vector<DnsObservation> results;  // one per name, in order
  std::string servers;                  // the resolvers asked, "ip:port, ..."
};
// Sends one query per name to `resolver` (nullopt: the system's resolvers from
// /etc/resolv.conf) with c-ares and waits at most `timeout` for all of them. Blocking: call it
// through run_blocking. Throws std::runtime_error if c-ares cannot be set up.
DnsRun resolve_names(const std::optional<common::HostPort>& resolver,
                     const std::vector<std::string>& names, DnsRecordType type,
                     std::chrono::milliseconds timeout);

class DnsLookupProbe : public Probe {
 public:
  DnsLookupProbe(boost::asio::any_io_executor ex, const Allowlist& allow, const ClockState& clock)
      : ex_(std::move(ex)), allow_(allow), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const Allowlist& allow_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
