// HTTPS JSON client for the collector API (libcurl), used by the `tocsin` CLI and tests.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace tocsin::collector {

// A request that did not get a 2xx answer. `status` is 0 when no HTTP answer arrived.
struct ApiError : std::runtime_error {
  ApiError(long status, const std::string& msg) : std::runtime_error(msg), status(status) {}
  long status;
};

class ApiClient {
 public:
  // base_url like "https://127.0.0.1:7444"; ca_file pins the collector CA.
  ApiClient(std::string base_url, std::string token, std::filesystem::path ca_file,
            long timeout_ms = 15000);
  nlohmann::json get(const std::string& path_and_query) const;
  nlohmann::json post(const std::string& path, const nlohmann::json& body) const;

 private:
  nlohmann::json request(const std::string& method, const std::string& path,
                         const std::string* body) const;
  std::string base_url_;
  std::string token_;
  std::filesystem::path ca_file_;
  long timeout_ms_;
};

}  // namespace tocsin::collector
