// The agent's explicit list of what its probes may touch; nothing outside it is ever contacted.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tocsin::agent {

// Entries: "127.0.0.1", "10.0.0.0/8:445", "host.example:80-443", "[::1]:1-65535", "*.lab:22".
// A host name matches by name (case-insensitive; "*." prefix for subdomains); a network
// matches literal and resolved addresses. No port part means every port.
class Allowlist {
 public:
  static Allowlist parse(const std::vector<std::string>& entries);  // throws invalid_argument
  bool allows_name(const std::string& host, std::uint16_t port) const;
  bool allows_address(const boost::asio::ip::address& addr, std::uint16_t port) const;
  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    bool is_network = false;
    boost::asio::ip::address net;
    unsigned prefix = 0;
    std::string name;  // lower case
    std::uint16_t port_lo = 1, port_hi = 65535;
  };
  std::vector<Entry> entries_;
};

}  // namespace tocsin::agent
