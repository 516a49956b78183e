#include "common/config.hpp"

#include <set>

#include <algorithm>
#include <cctype>

#include "common/crypto.hpp"

namespace tocsin::common {

std::chrono::milliseconds parse_duration(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 12) throw std::invalid_argument("'" + text + "' is not a duration like 30s, 5m, 1h");
  std::int64_t n = std::stoll(text.substr(0, i));
  std::string unit = text.substr(i);
  std::int64_t ms_per = 0;
  if (unit == "ms") ms_per = 1;
  else if (unit == "s" || unit.empty()) ms_per = 1000;
  else if (unit == "m") ms_per = 60'000;
  else if (unit == "h") ms_per = 3'600'000;
  else if (unit == "d") ms_per = 86'400'000;
  else throw std::invalid_argument("'" + text + "' has an unknown unit (use ms, s, m, h, d)");
  // Nanosecond arithmetic elsewhere must not overflow either: cap at about 100 years.
  constexpr std::int64_t kMaxMs = 100LL * 366 * 86'400'000;
  if (n > kMaxMs / ms_per) throw std::invalid_argument("'" + text + "' is longer than 100 years");
  return std::chrono::milliseconds(n * ms_per);
}

std::string format_duration(std::chrono::milliseconds d) {
  auto ms = d.count();
  if (ms % 86400000 == 0 && ms) return std::to_string(ms / 86400000) + "d";
  if (ms % 3600000 == 0 && ms) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && ms) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

std::uint64_t parse_size(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 15) throw std::invalid_argument("'" + text + "' is not a size like 64MiB");
  std::uint64_t n = std::stoull(text.substr(0, i));
  std::string unit = text.substr(i);
  int shift = -1;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "KiB" || unit == "K") shift = 10;
  else if (unit == "MiB" || unit == "M") shift = 20;
  else if (unit == "GiB" || unit == "G") shift = 30;
  else throw std::invalid_argument("'" + text + "' has an unknown unit (use B, KiB, MiB, GiB)");
  if (n > (std::uint64_t{1} << (62 - shift))) throw std::invalid_argument("'" + text + "' is too large");
  return n << shift;
}

ConfigNode ConfigNode::load_file(const std::filesystem::path& file) {
  std::string text;
  try {
    text = read_file(file, 4 << 20);
  } catch (const std::exception& e) {
    throw ConfigError(e.what());
  }
  return load_string(text, file.string());
}

namespace {

// yaml-cpp keeps both entries of a repeated key and lookups see only the first, so a second
// `correlation:` appended to a file would be silently ignored: refuse it instead.
void check_duplicate_keys(const YAML::Node& n, const std::string& source, int depth = 0) {
  if (depth > 64) return;
  if (n.IsSequence())
    for (const auto& item : n) check_duplicate_keys(item, source, depth + 1);
  if (!n.IsMap()) return;
  std::set<std::string> seen;
  for (const auto& kv : n) {
    if (kv.first.IsScalar() && !seen.insert(kv.first.Scalar()).second)
      throw ConfigError(source + ":" + std::to_string(kv.first.Mark().line + 1) + ": key '" +
                        kv.first.Scalar() + "' appears twice in the same map");
    check_duplicate_keys(kv.second, source, depth + 1);
  }
}

}  // namespace

ConfigNode ConfigNode::load_string(const std::string& text, const std::string& source_name) {
  try {
    YAML::Node root = YAML::Load(text);
    if (root.IsNull() || !root.IsDefined()) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) throw ConfigError(source_name + ": the top level must be a map of keys");
    check_duplicate_keys(root, source_name);
    return ConfigNode(root, source_name, "");
  } catch (const YAML::Exception& e) {
    throw ConfigError(source_name + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " +
                      e.msg);
  }
}

std::string ConfigNode::child_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

std::string ConfigNode::where(const YAML::Node& n) const {
  auto m = n.Mark();
  if (m.line < 0) m = node_.Mark();
  return file_ + (m.line >= 0 ? ":" + std::to_string(m.line + 1) : "");
}

void ConfigNode::fail(const std::string& key, const std::string& message) const {
  YAML::Node n = !key.empty() && has(key) ? node_[key] : node_;
  std::string p = key.empty() ? path_ : child_path(key);
  throw ConfigError(where(n) + ": key '" + (p.empty() ? "(top level)" : p) + "': " + message);
}

bool ConfigNode::has(const std::string& key) const {
  if (!node_.IsDefined() || !node_.IsMap()) return false;
  auto n = node_[key];
  return n.IsDefined() && !n.IsNull();
}

ConfigNode ConfigNode::operator[](const std::string& key) const {
  if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) fail("", "must be a map");
  // A const lookup of a missing key yields an invalid node that throws on use: avoid it.
  YAML::Node child = has(key) ? node_[key] : YAML::Node();
  return ConfigNode(child, file_, child_path(key));
}

std::vector<ConfigNode> ConfigNode::items() const {
  std::vector<ConfigNode> out;
  if (!defined()) return out;
  if (!node_.IsSequence()) fail("", "must be a list");
  for (std::size_t i = 0; i < node_.size(); ++i)
    out.push_back(ConfigNode(node_[i], file_, path_ + "[" + std::to_string(i) + "]"));
  return out;
}

std::vector<std::string> ConfigNode::keys() const {
  std::vector<std::string> out;
  if (!defined()) return out;
  if (!node_.IsMap()) fail("", "must be a map");
  for (auto it = node_.begin(); it != node_.end(); ++it) out.push_back(it->first.as<std::string>());
  return out;
}

std::string ConfigNode::scalar() const {
  if (!node_.IsScalar()) fail("", "must be a single value");
  return node_.Scalar();
}

std::string ConfigNode::str(const std::string& key, std::optional<std::string> def) const {
  if (!has(key)) {
    if (def) return *def;
    fail(key, "is required");
  }
  YAML::Node n = node_[key];
  if (!n.IsScalar()) fail(key, "must be a single value, not a list or map");
  return n.Scalar();
}

std::int64_t ConfigNode::integer(const std::string& key, std::optional<std::int64_t> def) const {
  if (!has(key) && def) return *def;
  auto s = str(key);
  try {
    std::size_t pos = 0;
    auto v = std::stoll(s, &pos);
    if (pos != s.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    fail(key, "'" + s + "' is not an integer");
  }
}

bool ConfigNode::boolean(const std::string& key, std::optional<bool> def) const {
  if (!has(key) && def) return *def;
  auto s = str(key);
  if (s == "true" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "no" || s == "off") return false;
  fail(key, "'" + s + "' is not true or false");
}

std::chrono::milliseconds ConfigNode::duration(const std::string& key,
                                               std::optional<std::chrono::milliseconds> def) const {
  if (!has(key) && def) return *def;
  auto s = str(key);
  try {
    return parse_duration(s);
  } catch (const std::invalid_argument& e) {
    fail(key, e.what());
  }
}

std::uint64_t ConfigNode::size(const std::string& key, std::optional<std::uint64_t> def) const {
  if (!has(key) && def) return *def;
  auto s = str(key);
  try {
    return parse_size(s);
  } catch (const std::invalid_argument& e) {
    fail(key, e.what());
  }
}

std::vector<std::string> ConfigNode::str_list(const std::string& key) const {
  std::vector<std::string> out;
  for (auto& item : (*this)[key].items()) out.push_back(item.scalar());
  return out;
}

void ConfigNode::check_keys(const std::vector<std::string>& known) const {
  if (!defined()) return;
  if (!node_.IsMap()) fail("", "must be a map");
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    auto k = it->first.as<std::string>();
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    std::string list;
    for (const auto& s : known) list += (list.empty() ? "" : ", ") + s;
    // The key's own line: its value may be empty or start on the next line.
    throw ConfigError(where(it->first) + ": key '" + child_path(k) +
                      "': unknown key (known keys here: " + list + ")");
  }
}

std::filesystem::path resolve_path(const std::filesystem::path& base_dir, const std::string& p) {
  std::filesystem::path path(p);
  return path.is_relative() ? base_dir / path : path;
}

std::optional<std::string> config_secret(const ConfigNode& n, const std::string& key,
                                         const std::filesystem::path& base_dir,
                                         std::size_t max_bytes) {
  const std::string file_key = key + "_file";
  bool in_file = n.has(file_key);
  if (n.has(key) && in_file)
    n.fail(file_key, "use either '" + key + "' or '" + file_key + "', not both");
  if (!n.has(key) && !in_file) return std::nullopt;
  std::string value;
  if (in_file) {
    try {
      value = read_file(resolve_path(base_dir, n.str(file_key)), max_bytes);
    } catch (const std::runtime_error& e) {
      n.fail(file_key, e.what());
    }
    while (!value.empty() && (value.back() == '\n' || value.back() == '\r')) value.pop_back();
  } else {
    value = n.str(key);
  }
  const std::string& used = in_file ? file_key : key;
  if (value.empty()) n.fail(used, "is empty");
  if (std::any_of(value.begin(), value.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    n.fail(used, "contains control characters");
  return value;
}

}  // namespace tocsin::common
