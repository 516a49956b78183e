// The little HTML the collector writes (notification mails, the approval page): escaping, a
// page shell and a key/value table. Every value that reaches HTML goes through html_escape.
// Its own folder because mails (notify/) and pages (api/) both render with it.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tocsin::collector {

inline std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// `body` is HTML already; the title is escaped here.
inline std::string html_page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
         "</title></head><body>\n" + body + "</body></html>\n";
}

// Label/value rows as a two-column table, both escaped here; the same markup in mails and pages.
inline std::string html_kv_table(const std::vector<std::pair<std::string, std::string>>& rows) {
  std::string out = "<table cellpadding=\"3\" style=\"border-collapse:collapse\">\n";
  for (const auto& [k, v] : rows)
    out += "<tr><th align=\"left\">" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>\n";
  return out + "</table>\n";
}

}  // namespace tocsin::collector
