// TLS contexts for the agent channel and the API: TLS 1.2 minimum, CA pinning, mutual auth.
#pragma once

#include <boost/asio/ssl/context.hpp>

#include <filesystem>
#include <string>

namespace tocsin::common {

namespace ssl = boost::asio::ssl;

struct ServerTlsFiles {
  std::filesystem::path cert;       // server certificate (PEM)
  std::filesystem::path key;        // its private key (PEM)
  std::filesystem::path client_ca;  // CA that client certificates must chain to; empty: none
};

// `require_client_cert` false still asks for and verifies a certificate if one is sent;
// the agent listener uses that so enrollment (no certificate yet) can share the port.
ssl::context make_server_context(const ServerTlsFiles& files, bool require_client_cert);

struct ClientTlsFiles {
  std::filesystem::path pinned_ca;  // the only trust anchor; the system store is never used
  std::filesystem::path cert;       // optional client certificate
  std::filesystem::path key;
};

ssl::context make_client_context(const ClientTlsFiles& files);

// Enables host name (or IP address) verification on a client stream's native handle.
void set_expected_peer_name(SSL* ssl, const std::string& host);

}  // namespace tocsin::common
