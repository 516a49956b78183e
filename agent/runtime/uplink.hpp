// The agent's connection to the collector: sends outbox batches, signed, and applies acks.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ssl/context.hpp>

#include <functional>
#include <memory>
#include <string>

#include "agent/probes/probe.hpp"
#include "agent/runtime/config.hpp"
#include "agent/runtime/outbox.hpp"
#include "common/crypto.hpp"
#include "common/net.hpp"
#include "common/wire.hpp"

namespace tocsin::agent {

// What the uplink does with the answer to a CommandPoll, apart from the socket (a seam for
// tests): Commands go to `dispatch`; an ErrorMsg saying the collector does not know the poll
// (an older collector) is `unsupported`; any other error or message throws.
enum class PollAnswer { dispatched, unsupported };
PollAnswer handle_poll_answer(const common::Message& m,
                              const std::function<void(common::Commands)>& dispatch);

struct UplinkStats {
  bool connected = false;
  std::uint64_t connects = 0;
  std::uint64_t batches_acked = 0;
  std::uint64_t command_polls = 0;  // answered polls
  bool command_polling_disabled = false;  // the collector does not know CommandPoll
  std::string last_error;
};

class Uplink {
 public:
  Uplink(boost::asio::any_io_executor ex, boost::asio::ssl::context& tls, common::HostPort server,
         std::string agent_id, common::Ed25519Key key, Outbox& outbox, ClockState& clock,
         UplinkOptions opts);
  ~Uplink();
  void start();
  void stop();
  void notify();  // the outbox has new results
  // Called whenever the outbox becomes empty after an ack (used by `run --once`).
  void on_drained(std::function<void()> fn);
  // Called after each successful hello and clock exchange.
  void on_connected(std::function<void()> fn);
  // Receives each Commands answer. Without it (or with command_poll_interval 0) the uplink
  // never polls. Polls go out right after connecting and then every command_poll_interval,
  // only while no results wait to be sent.
  void on_commands(std::function<void(common::Commands)> fn);
  UplinkStats stats() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tocsin::agent
