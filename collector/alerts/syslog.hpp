// Syslog as SIEMs send alerts: RFC 5424 / RFC 3164 headers, CEF and LEEF payloads, and the
// framing of TCP streams (RFC 6587). Pure parsing, no I/O, so every hostile byte is testable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collector/alerts/alert.hpp"
#include "collector/alerts/alert_sources.hpp"

namespace tocsin::collector {

// One syslog message (a datagram or a TCP frame) as an Alert of source `src`.
//
// Recognised shapes, detected from the bytes: `<PRI>1 ...` (RFC 5424), `<PRI>Mmm dd hh:mm:ss
// HOST TAG: MSG` (RFC 3164, or an ISO timestamp in place of the BSD one as rsyslog sends),
// and a CEF or LEEF payload after either header or on its own. Text without any header is
// accepted with no host and no time: a run marker in it still correlates.
//
// Times: a header without a year takes the year that puts it closest to `arrival_ns`; a
// header without a zone (BSD, "MMM dd yyyy HH:mm:ss") is read as UTC. From a source of alerts
// the header time is the alert's creation (created_ns) and event_ns comes only from the
// CEF/LEEF payload; from a source of events (`delivers: events`) the header time is the
// event time unless the payload has one.
//
// Throws AlertParseError naming what was wrong: an empty message, a bad PRI (not 0..191, not
// digits, no '>'), a truncated RFC 5424 header or structured data, a truncated CEF/LEEF
// header, a time field that is not a time.
Alert parse_syslog(std::string_view message, const AlertSourceConfig& src, std::int64_t arrival_ns);

// Cuts a TCP syslog stream into messages (RFC 6587). A frame that starts with a digit is
// octet-counted ("LEN SP MSG"); any other is newline-terminated (LF, CRLF, or NUL). Memory is
// bounded by max_message plus one read: a frame that would exceed it breaks the stream.
class SyslogFramer {
 public:
  struct Result {
    std::vector<std::string> messages;  // complete, in order; never empty strings
    std::string reason;  // set with error: "oversized" or "malformed" (for AlertSink::rejected)
    std::string error;   // non-empty: the stream cannot be framed any more; close it
  };

  explicit SyslogFramer(std::size_t max_message);

  // The messages that `bytes` completed. Once an error is returned, the framer stays broken
  // and returns nothing more (the bytes after a bad frame have no trustworthy boundary).
  Result feed(std::string_view bytes);

  // At the peer's orderly close: a last newline-framed message that lacked its terminator,
  // or an error if the stream ended inside an octet-counted frame.
  Result finish();

  std::size_t buffered() const { return buf_.size(); }  // bytes of an unfinished frame
  bool broken() const { return broken_; }

 private:
  Result fail(std::string reason, std::string error);
  std::size_t max_message_;
  std::size_t max_len_digits_;
  std::string buf_;
  std::size_t scanned_ = 0;  // leading bytes of buf_ known to hold no line terminator
  bool broken_ = false;
};

namespace detail {
// A CEF extension ("k1=v1 k2=a value with spaces") as (key, unescaped value) pairs, in order.
std::vector<std::pair<std::string, std::string>> cef_extension_fields(std::string_view extension);
}  // namespace detail

}  // namespace tocsin::collector
