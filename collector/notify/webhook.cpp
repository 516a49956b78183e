// The generic webhook channel: the snapshot as JSON, HMAC-signed so a receiver can trust it.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdexcept>

#include "collector/notify/detail.hpp"
#include "common/crypto.hpp"

namespace tocsin::collector {

std::string webhook_signature(const std::string& secret, std::int64_t timestamp_s, const std::string& body) {
  std::string msg = std::to_string(timestamp_s) + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len))
    throw std::runtime_error("HMAC-SHA256 failed");
  return "sha256=" + common::to_hex({mac, len});
}

namespace detail::notify {
using json = nlohmann::json;

void webhook_message(const ChannelConfig& ch, const json& snap, const NotifyConfig& cfg,
                     std::int64_t now_s, HttpMessage& m) {
  json body = snap;
  body["source"] = "tocsin";
  body["collector"] = cfg.collector_name;
  m.body = dump(body);
  m.headers.push_back("X-Tocsin-Timestamp: " + std::to_string(now_s));
  m.headers.push_back("X-Tocsin-Signature: " + webhook_signature(ch.secret, now_s, m.body));
  if (snap.contains("delivery_id"))
    m.headers.push_back("X-Tocsin-Delivery: " + std::to_string(num(snap, "delivery_id")));
}

}  // namespace detail::notify
}  // namespace tocsin::collector
