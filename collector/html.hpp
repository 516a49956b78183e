// The little HTML Tocsin writes (notification mails, the approval page): escaping and a
// page shell. Every value that reaches HTML goes through html_escape.
#pragma once

#include <string>

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

}  // namespace tocsin::collector
