// YAML configuration access whose errors name the file, the line and the key.
#pragma once

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace tocsin::common {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "30s", "5m", "1h", "250ms", "2d" -> duration. Throws std::invalid_argument.
std::chrono::milliseconds parse_duration(const std::string& text);
// "1048576", "64KiB", "64MiB", "1GiB" -> bytes. Throws std::invalid_argument.
std::uint64_t parse_size(const std::string& text);
std::string format_duration(std::chrono::milliseconds d);

// A node in a loaded YAML file that remembers its path ("tests[2].every") for errors.
class ConfigNode {
 public:
  static ConfigNode load_file(const std::filesystem::path& file);
  static ConfigNode load_string(const std::string& text, const std::string& source_name);

  bool has(const std::string& key) const;
  ConfigNode operator[](const std::string& key) const;  // missing key -> undefined node
  std::vector<ConfigNode> items() const;                 // sequence items; error if not a list
  std::vector<std::string> keys() const;                 // map keys; error if not a map
  bool defined() const { return node_.IsDefined() && !node_.IsNull(); }

  std::string str(const std::string& key, std::optional<std::string> def = std::nullopt) const;
  std::int64_t integer(const std::string& key, std::optional<std::int64_t> def = std::nullopt) const;
  bool boolean(const std::string& key, std::optional<bool> def = std::nullopt) const;
  std::chrono::milliseconds duration(const std::string& key,
                                     std::optional<std::chrono::milliseconds> def = std::nullopt) const;
  std::uint64_t size(const std::string& key, std::optional<std::uint64_t> def = std::nullopt) const;
  std::vector<std::string> str_list(const std::string& key) const;  // missing -> empty
  std::string scalar() const;  // this node as a string

  // Fails with "file:line: key 'path': message".
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  // Rejects keys not in `known`, so a typo does not silently fall back to a default.
  void check_keys(const std::vector<std::string>& known) const;
  const std::string& path() const { return path_; }

 private:
  ConfigNode(YAML::Node node, std::string file, std::string path)
      : node_(std::move(node)), file_(std::move(file)), path_(std::move(path)) {}
  std::string child_path(const std::string& key) const;
  std::string where(const YAML::Node& n) const;
  YAML::Node node_;
  std::string file_;
  std::string path_;
};

// A relative path in a config file is relative to the file's directory (base_dir).
std::filesystem::path resolve_path(const std::filesystem::path& base_dir, const std::string& p);

// `key: value` or `key_file: path` (relative to base_dir; trailing newlines stripped); nullopt
// when neither is given. Fails (file:line) when both are, the file cannot be read or is larger
// than max_bytes, or the value is empty or holds control characters.
std::optional<std::string> config_secret(const ConfigNode& n, const std::string& key,
                                         const std::filesystem::path& base_dir,
                                         std::size_t max_bytes = 64 * 1024);

}  // namespace tocsin::common
