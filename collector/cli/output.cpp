// Printing helpers shared by the `tocsin` command families.
#include "collector/cli/output.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "common/curl.hpp"
#include "common/text.hpp"

namespace tocsin::collector::cli {

std::string url_encode(const std::string& s) {
  return common::curl::percent_encode(s);
}

// C0 controls, DEL and the UTF-8-encoded C1 range U+0080..U+009F become '?'.
std::string sanitize(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(s[i + 1]) <= 0x9f) {
      out += '?';
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

namespace {
std::size_t display_width(const std::string& s) {
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xc0) != 0x80; }));
}

}  // namespace

std::string text(const json& obj, const std::string& key) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return "-";
  const json& v = obj[key];
  std::string s = sanitize(v.is_string() ? v.get<std::string>() : v.dump());
  return s.empty() ? "-" : s;
}

void print_table(const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(headers.size());
  for (std::size_t i = 0; i < headers.size(); ++i) width[i] = display_width(headers[i]);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], display_width(r[i]));
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - display_width(cells[i]) + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(headers);
  for (const auto& r : rows) line(r);
}

void print_csv(const std::vector<std::string>& headers,
               const std::vector<std::vector<std::string>>& rows) {
  for (std::size_t i = 0; i < headers.size(); ++i)
    std::cout << (i ? "," : "") << common::csv_cell(headers[i]);
  std::cout << "\n";
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) std::cout << (i ? "," : "") << common::csv_cell(r[i]);
    std::cout << "\n";
  }
}

void print_json(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

const json& list_field(const json& answer, const std::string& key) {
  if (!answer.is_object() || !answer.contains(key) || !answer[key].is_array())
    throw std::runtime_error("the server's answer has no '" + key + "' list");
  return answer[key];
}

std::string since_text(const std::string& since) {
  return sanitize(since) + (since.find('T') == std::string::npos ? " ago" : "");
}

std::string ms_text(const json& v) {
  if (!v.is_number()) return "-";
  char buf[64];
  double ms = v.get<double>();
  if (std::abs(ms) >= 10000)
    std::snprintf(buf, sizeof buf, "%.1f s", ms / 1000);
  else if (std::abs(ms) < 1)
    std::snprintf(buf, sizeof buf, "%.3f ms", ms);  // loopback clock bounds are microseconds
  else
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  return buf;
}

std::string bound_text(const json& v) {
  if (!v.is_number()) return "-";
  double ms = std::abs(v.get<double>());
  char buf[64];
  if (ms == 0)
    return "± 0";
  else if (ms * 1000 < 1)
    return "± <1 µs";
  else if (ms < 1)
    std::snprintf(buf, sizeof buf, "± %.0f µs", ms * 1000);
  else if (ms >= 10000)
    std::snprintf(buf, sizeof buf, "± %.1f s", ms / 1000);
  else
    std::snprintf(buf, sizeof buf, "± %.1f ms", ms);
  return buf;
}

std::string number_cell(const json& v) {
  if (!v.is_number()) return "";
  if (v.is_number_integer()) return v.dump();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v.get<double>());
  return buf;
}

std::uint64_t parse_id(const std::string& what, const std::string& t) {
  bool digits =
      !t.empty() && t.size() <= 19 && t.find_first_not_of("0123456789") == std::string::npos;
  std::uint64_t id = digits ? std::stoull(t) : 0;
  if (id == 0)
    throw UsageError(what + " must be a positive integer, got '" + sanitize(t.substr(0, 40)) +
                     (t.size() > 40 ? "...'" : "'"));
  return id;
}

CLI::Validator id_check(const std::string& what) {
  return CLI::Validator(
      [what](std::string& s) {
        try {
          parse_id(what, s);
          return std::string();
        } catch (const UsageError& e) {
          return std::string(e.what());
        }
      },
      "ID");
}

std::string closest(const std::string& word, const std::vector<std::string>& known) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
      std::size_t diag = row[0];
      row[0] = i;
      for (std::size_t j = 1; j <= b.size(); ++j) {
        std::size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  if (word.size() > 64) return {};
  std::string best;
  std::size_t best_d = 0;
  for (const auto& k : known) {
    auto d = distance(word, k);
    if (best.empty() || d < best_d) best = k, best_d = d;
  }
  // Close means at most a third of the word wrong (two typos in "incidnets" are one swap).
  return !best.empty() && best_d <= std::max<std::size_t>(2, word.size() / 3) ? best : "";
}

}  // namespace tocsin::collector::cli
