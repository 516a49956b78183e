// The standard test payloads, built in: the EICAR test file, a zip that holds it, and a benign
// control. The collector serves them at /payloads/... so web probes need no internet.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tocsin::common {

// The 68-byte EICAR test string, decoded at run time: no Tocsin binary holds it in clear,
// so an anti-malware scan of the agent or collector does not quarantine the program itself.
std::string eicar_test_string();

// A zip archive (stored, no compression) holding one file.
std::string zip_stored(const std::string& name, const std::string& content);

struct Payload {
  std::string name;          // eicar.com, eicar.zip, benign.txt
  std::string content_type;  // what the collector sends
  std::string body;
};

// The payload a request path names: "/payloads/<name>" or "/payloads/<anything>/<name>" (a
// marker segment the URL carries for detectors), query ignored; nullopt for anything else.
std::optional<Payload> builtin_payload(std::string_view path);

}  // namespace tocsin::common
