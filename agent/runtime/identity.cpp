#include "agent/runtime/identity.hpp"

#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "agent/platform/platform.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/file_io.hpp"
#include "common/frame.hpp"
#include "common/net.hpp"
#include "common/tls.hpp"
#include "common/wire.hpp"
#include "common/x509.hpp"

namespace tocsin::agent {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using asio::ip::tcp;

Identity Identity::load(const fs::path& state_dir) {
  Identity id;
  id.state_dir = state_dir;
  auto file = state_dir / "identity.yaml";
  if (!fs::exists(file))
    throw std::runtime_error("no agent identity in " + state_dir.string() +
                             "; enroll first: tocsin-agent enroll --server HOST:PORT --token T "
                             "--ca ca.pem --state-dir " + state_dir.string());
  auto node = common::ConfigNode::load_file(file);
  id.agent_id = node.str("agent_id");
  id.server = node.str("server");
  for (const auto& f : {id.key_file(), id.cert_file(), id.ca_file()})
    if (!fs::exists(f)) throw std::runtime_error("agent identity is incomplete: " + f.string() + " is missing");
  return id;
}

namespace {

using platform::hostname;
using platform::os_description;

asio::awaitable<common::Message> exchange(asio::ssl::context& ctx, common::HostPort server,
                                          common::EnrollReq req, std::chrono::milliseconds timeout,
                                          fs::path ca_file) {
  auto ex = co_await asio::this_coro::executor;
  asio::ssl::stream<tcp::socket> stream(ex, ctx);
  common::Watchdog wd(ex, [&] {
    boost::system::error_code ignored;
    stream.lowest_layer().close(ignored);
  });
  wd.arm(timeout);
  tcp::resolver resolver(ex);
  try {
    auto eps = co_await resolver.async_resolve(server.host, std::to_string(server.port),
                                               asio::use_awaitable);
    if (wd.fired()) throw EnrollError("network", "resolving " + server.host + " timed out");
    co_await asio::async_connect(stream.lowest_layer(), eps, asio::use_awaitable);
  } catch (const boost::system::system_error& e) {
    throw EnrollError("network", "cannot reach collector " + server.to_string() + ": " +
                                     (wd.fired() ? "timed out" : e.code().message()));
  }
  common::set_expected_peer_name(stream.native_handle(), server.host);
  try {
    co_await stream.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
  } catch (const boost::system::system_error& e) {
    long vr = SSL_get_verify_result(stream.native_handle());
    if (vr != X509_V_OK)
      throw EnrollError("tls", "collector " + server.to_string() +
                                   " is not trusted: its certificate failed verification against "
                                   "the pinned CA " + ca_file.string() + " (" +
                                   X509_verify_cert_error_string(vr) + ")");
    throw EnrollError("tls", "TLS handshake with " + server.to_string() + " failed: " +
                                 (wd.fired() ? "timed out" : e.code().message()));
  }
  co_await common::write_frame(stream, common::frame_message(req));
  auto payload = co_await common::read_frame(stream);
  wd.disarm();
  co_return common::decode_message(payload);
}

}  // namespace

Identity enroll(const EnrollOptions& opts) {
  auto server = common::parse_host_port(opts.server);
  if (opts.token.empty()) throw EnrollError("bad_token", "no enrollment token given");
  if (fs::exists(opts.state_dir / "identity.yaml") && !opts.force)
    throw std::runtime_error(opts.state_dir.string() + " already holds an enrolled identity; "
                             "use --force to replace it");
  auto ca_pem = common::read_file(opts.ca_file, 1 << 20);
  common::parse_cert_pem(ca_pem);  // fail early on a wrong file

  auto key = common::Ed25519Key::generate();
  common::EnrollReq req;
  req.token = opts.token;
  req.csr_pem = common::make_csr_pem(key, hostname());
  req.hostname = hostname();
  req.os = os_description();
  req.version = TOCSIN_VERSION;

  asio::io_context io(1);
  auto ctx = common::make_client_context({opts.ca_file, {}, {}});
  std::optional<common::Message> reply;
  std::exception_ptr error;
  asio::co_spawn(io, exchange(ctx, server, req, opts.timeout, opts.ca_file),
                 [&](std::exception_ptr e, common::Message m) {
                   error = e;
                   if (!e) reply = std::move(m);
                 });
  io.run();
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const EnrollError&) {
      throw;
    } catch (const std::exception& e) {
      throw EnrollError("network", "enrollment with " + server.to_string() + " failed: " + e.what());
    }
  }
  if (auto* err = std::get_if<common::ErrorMsg>(&*reply))
    throw EnrollError(err->code, "collector refused enrollment: " + err->message);
  auto* ok = std::get_if<common::EnrollResp>(&*reply);
  if (!ok) throw EnrollError("protocol", "unexpected reply '" + common::message_type_name(*reply) + "'");
  std::optional<common::Ed25519Key> command_key;
  if (!ok->command_key_pem.empty()) {
    try {
      command_key = common::Ed25519Key::from_public_pem(ok->command_key_pem);
    } catch (const std::exception& e) {
      throw EnrollError("protocol", std::string("the collector's command key does not parse: ") + e.what());
    }
  }
  auto cert = common::parse_cert_pem(ok->cert_pem);
  if (common::cert_public_key(cert.get()).public_raw() != key.public_raw())
    throw EnrollError("protocol", "the issued certificate is not for this agent's key");

  common::file_io::make_private_dir(opts.state_dir);  // 0700; Windows: SYSTEM and Administrators
  auto priv = fs::perms::owner_read | fs::perms::owner_write;
  common::write_file_atomic(opts.state_dir / "key.pem", key.private_pem(), priv);
  common::write_file_atomic(opts.state_dir / "cert.pem", ok->cert_pem, priv);
  common::write_file_atomic(opts.state_dir / "ca.pem", ca_pem, priv);
  // A collector older than command keys sends none: the agent then pins the key of the first
  // Commands message. A key of an earlier enrollment must not outlive it either way.
  Identity paths;
  paths.state_dir = opts.state_dir;
  std::error_code ignored;
  fs::remove(paths.command_key_file(), ignored);
  if (command_key)
    common::write_file_atomic(paths.command_key_file(), command_key->public_pem(), priv);
  common::write_file_atomic(opts.state_dir / "identity.yaml",
                            "# Written by tocsin-agent enroll; do not edit.\nagent_id: " +
                                ok->agent_id + "\nserver: \"" + server.to_string() + "\"\n",
                            priv);
  return Identity::load(opts.state_dir);
}

}  // namespace tocsin::agent
