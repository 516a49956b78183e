#include "agent/runtime/allowlist.hpp"

#include <algorithm>
#include <stdexcept>

namespace tocsin::agent {
namespace {

// The whole text must be a decimal number (std::stoul alone ignores trailing junk).
unsigned long whole_number(const std::string& text) {
  if (text.empty() || text.size() > 6 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("not a number");
  return std::stoul(text);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool in_network(const boost::asio::ip::address& a, const boost::asio::ip::address& net,
                unsigned prefix) {
  auto addr = a;
  if (addr.is_v6() && addr.to_v6().is_v4_mapped() && net.is_v4())
    addr = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, addr.to_v6());
  if (addr.is_v4() != net.is_v4()) return false;
  auto bytes = [](const boost::asio::ip::address& x) {
    std::vector<unsigned char> b;
    if (x.is_v4()) {
      auto a4 = x.to_v4().to_bytes();
      b.assign(a4.begin(), a4.end());
    } else {
      auto a6 = x.to_v6().to_bytes();
      b.assign(a6.begin(), a6.end());
    }
    return b;
  };
  auto ab = bytes(addr), nb = bytes(net);
  for (unsigned i = 0; i < prefix; ++i) {
    unsigned byte = i / 8, bit = 7 - i % 8;
    if (((ab[byte] >> bit) & 1) != ((nb[byte] >> bit) & 1)) return false;
  }
  return true;
}

}  // namespace

Allowlist Allowlist::parse(const std::vector<std::string>& entries) {
  Allowlist out;
  for (const auto& raw : entries) {
    auto bad = [&](const std::string& why) {
      return std::invalid_argument("allowlist entry '" + raw + "': " + why);
    };
    Entry e;
    std::string host = raw, ports;
    if (!raw.empty() && raw[0] == '[') {
      auto close = raw.find(']');
      if (close == std::string::npos) throw bad("missing ']'");
      host = raw.substr(1, close - 1);
      if (close + 1 < raw.size()) {
        if (raw[close + 1] != ':') throw bad("expected ':' after ']'");
        ports = raw.substr(close + 2);
      }
    } else if (std::count(raw.begin(), raw.end(), ':') == 1) {
      host = raw.substr(0, raw.find(':'));
      ports = raw.substr(raw.find(':') + 1);
    }
    if (host.empty()) throw bad("no host or network");
    if (!ports.empty() && ports != "*") {
      auto dash = ports.find('-');
      try {
        unsigned long lo = whole_number(ports.substr(0, dash));
        unsigned long hi = dash == std::string::npos ? lo : whole_number(ports.substr(dash + 1));
        if (lo < 1 || hi > 65535 || lo > hi) throw std::out_of_range("range");
        e.port_lo = static_cast<std::uint16_t>(lo);
        e.port_hi = static_cast<std::uint16_t>(hi);
      } catch (const std::exception&) {
        throw bad("port must be N or N-M within 1-65535");
      }
    }
    auto slash = host.find('/');
    boost::system::error_code ec;
    auto addr = boost::asio::ip::make_address(host.substr(0, slash), ec);
    if (!ec) {
      e.is_network = true;
      e.net = addr;
      unsigned max = addr.is_v4() ? 32 : 128;
      e.prefix = max;
      if (slash != std::string::npos) {
        try {
          e.prefix = static_cast<unsigned>(whole_number(host.substr(slash + 1)));
        } catch (const std::exception&) {
          throw bad("bad prefix length");
        }
        if (e.prefix > max) throw bad("prefix length above " + std::to_string(max));
      }
    } else {
      if (slash != std::string::npos) throw bad("'" + host + "' is not a network address");
      if (host == "*" || host == "*.") throw bad("a bare wildcard would allow everything");
      e.name = lower(host);
    }
    out.entries_.push_back(std::move(e));
  }
  return out;
}

bool Allowlist::allows_name(const std::string& host, std::uint16_t port) const {
  auto h = lower(host);
  boost::system::error_code ec;
  auto addr = boost::asio::ip::make_address(h, ec);
  if (!ec) return allows_address(addr, port);
  for (const auto& e : entries_) {
    if (e.is_network || port < e.port_lo || port > e.port_hi) continue;
    if (e.name == h) return true;
    if (e.name.starts_with("*.") && h.size() > e.name.size() - 1 &&
        h.ends_with(e.name.substr(1)))
      return true;
  }
  return false;
}

bool Allowlist::allows_address(const boost::asio::ip::address& addr, std::uint16_t port) const {
  for (const auto& e : entries_)
    if (e.is_network && port >= e.port_lo && port <= e.port_hi && in_network(addr, e.net, e.prefix))
      return true;
  return false;
}

}  // namespace tocsin::agent
