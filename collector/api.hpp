// The collector's HTTPS JSON API (Boost.Beast) used by the `firedrill` CLI; role-checked.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <cstdint>
#include <memory>

#include "collector/registry.hpp"
#include "collector/store.hpp"
#include "common/net.hpp"

namespace firedrill::collector {

class ApiServer {
 public:
  // Binds immediately (port 0 picks a free port); throws std::system_error if it cannot.
  ApiServer(boost::asio::io_context& io, boost::asio::ssl::context& tls,
            const common::HostPort& listen, Store& store, Registry& registry);
  ~ApiServer();
  std::uint16_t port() const;
  void start();  // spawns the accept loop on io
  void stop();   // stops accepting; open connections finish their current request

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace firedrill::collector
