// The agent's identity in its state directory, and enrollment that creates it.
#pragma once

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace tocsin::agent {

// Files under the state directory (directory 0700, key and certificate 0600).
struct Identity {
  std::string agent_id;
  std::string server;  // host:port used at enrollment
  std::filesystem::path state_dir;
  std::filesystem::path key_file() const { return state_dir / "key.pem"; }
  std::filesystem::path cert_file() const { return state_dir / "cert.pem"; }
  std::filesystem::path ca_file() const { return state_dir / "ca.pem"; }
  std::filesystem::path outbox_dir() const { return state_dir / "outbox"; }
  // The collector's command public key (0600), from enrollment or pinned on first use.
  std::filesystem::path command_key_file() const { return state_dir / "command-key.pem"; }
  // Nonces of commands already handled, kept until their expiry (agent/actions/actions.hpp).
  std::filesystem::path command_nonce_file() const { return state_dir / "command-nonces"; }

  // Throws std::runtime_error saying how to enroll when the directory holds no identity.
  static Identity load(const std::filesystem::path& state_dir);
};

// The collector refused, or the channel could not be trusted. `code` is the collector's
// machine-readable reason (bad_token, token_used, token_expired, ...) or "tls"/"network".
struct EnrollError : std::runtime_error {
  EnrollError(std::string code, const std::string& msg)
      : std::runtime_error(msg), code(std::move(code)) {}
  std::string code;
};

struct EnrollOptions {
  std::string server;  // host:port of the collector's agent listener
  std::string token;
  std::filesystem::path ca_file;  // the collector CA to pin
  std::filesystem::path state_dir;
  bool force = false;  // replace an existing identity
  std::chrono::milliseconds timeout = std::chrono::seconds(20);
};

Identity enroll(const EnrollOptions& opts);

}  // namespace tocsin::agent
