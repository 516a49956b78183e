// Syslog parsing (RFC 5424, RFC 3164, CEF, LEEF) and TCP stream framing, on real-world samples.
#include <doctest/doctest.h>

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "collector/alerts/syslog.hpp"

namespace tocsin::collector {
namespace {

TEST_SUITE_BEGIN("syslog");

using namespace std::string_literals;

// ns since the epoch of a UTC civil time, computed independently of the parser.
std::int64_t utc(int y, unsigned mo, unsigned d, int h, int mi, int s, std::int64_t frac_ns = 0) {
  using namespace std::chrono;
  std::int64_t days = sys_days(year{y} / month{mo} / day{d}).time_since_epoch().count();
  return (days * 86400 + h * 3600 + mi * 60 + s) * 1'000'000'000LL + frac_ns;
}

AlertSourceConfig source(bool events = false) {
  AlertSourceConfig src;
  src.name = "siem-syslog";
  src.type = SourceType::syslog;
  src.events = events;
  return src;
}

// Arrival used unless a case says otherwise: mid-2024, so BSD times land in 2024.
const std::int64_t kArrival = utc(2024, 6, 15, 12, 0, 0);

struct Sample {
  const char* what;
  std::string message;
  std::string host, rule, severity, technique;
  std::int64_t event_ns = 0, created_ns = 0, ingest_ns = 0;
};

void check_sample(const Sample& s, bool events = false) {
  INFO(s.what);
  INFO(s.message);
  Alert a = parse_syslog(s.message, source(events), kArrival);
  CHECK(a.host == s.host);
  CHECK(a.rule == s.rule);
  CHECK(a.severity == s.severity);
  CHECK(a.technique == s.technique);
  CHECK(a.event_ns == s.event_ns);
  CHECK(a.created_ns == s.created_ns);
  CHECK(a.ingest_ns == s.ingest_ns);
  CHECK(a.arrival_ns == kArrival);
  CHECK(a.source == "siem-syslog");
  CHECK(a.source_type == "syslog");
  CHECK(a.id.empty());
  CHECK(a.is_event == events);
}

TEST_CASE("syslog: RFC 5424 messages, including the RFC's own examples") {
  const std::vector<Sample> samples = {
      {"RFC 5424 example 1 (BOM before MSG)",
       "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' "
       "failed for lonvick on /dev/pts/8",
       "mymachine.example.com", "su", "crit", "", 0, 1065910455003000000},
      {"RFC 5424 example 2 (offset, microseconds, no MSGID)",
       "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make "
       "the do-nuts.",
       "192.0.2.1", "myproc", "notice", "", 0, 1061727255000003000},
      {"RFC 5424 example 3 (structured data and MSG)",
       "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 "
       "iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \xEF\xBB\xBF"
       "An application event log entry...",
       "mymachine.example.com", "evntslog", "notice", "", 0, 1065910455003000000},
      {"RFC 5424 example 4 (two SD elements, no MSG)",
       "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 "
       "iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 "
       "class=\"high\"]",
       "mymachine.example.com", "evntslog", "notice", "", 0, 1065910455003000000},
      {"rsyslog RSYSLOG_SyslogProtocol23Format",
       "<13>1 2024-03-05T14:03:11.123456+01:00 web01 sshd 1234 - - Accepted password for root",
       "web01", "sshd", "notice", "", 0, utc(2024, 3, 5, 13, 3, 11, 123456000)},
      {"syslog-ng syslog() driver, with its meta SD",
       "<13>1 2024-03-05T14:03:11+00:00 web01 app 99 - [meta sequenceId=\"1\"] tcn-abcdefghij",
       "web01", "app", "notice", "", 0, utc(2024, 3, 5, 14, 3, 11)},
      {"all NILVALUEs", "<13>1 - - - - - - tcn-abcdefghij", "", "", "notice", "", 0, 0},
      {"escaped quote, bracket and backslash in SD; technique from an SD param",
       "<10>1 2024-03-05T14:03:11Z siem corr - - [alert@1 q=\"say \\\"hi\\\"\" b=\"a\\]b\" "
       "c=\"C:\\\\x\" mitre_technique=\"T1059.001\"] rule fired",
       "siem", "corr", "crit", "T1059.001", 0, utc(2024, 3, 5, 14, 3, 11)},
      {"technique found in the MSG text",
       "<14>1 2024-03-05T14:03:11Z siem wazuh - - - ATT&CK T1105 Ingress Tool Transfer on ws01",
       "siem", "wazuh", "info", "T1105", 0, utc(2024, 3, 5, 14, 3, 11)},
  };
  for (const auto& s : samples) check_sample(s);
}

TEST_CASE("syslog: RFC 3164 messages as rsyslog, syslog-ng and logger send them") {
  const std::vector<Sample> samples = {
      {"rsyslog RSYSLOG_TraditionalForwardFormat, space-padded day",
       "<13>Mar  5 14:03:11 web01 sshd[1234]: Accepted password for root", "web01", "sshd",
       "notice", "", 0, utc(2024, 3, 5, 14, 3, 11)},
      {"rsyslog RSYSLOG_ForwardFormat (ISO timestamp in place of the BSD one)",
       "<13>2024-03-05T14:03:11.123456+01:00 web01 sshd[1234]: msg", "web01", "sshd", "notice", "",
       0, utc(2024, 3, 5, 13, 3, 11, 123456000)},
      {"syslog-ng network() with a program", "<38>Jun 14 09:30:00 web01 app[99]: tcn-abcdefghij",
       "web01", "app", "info", "", 0, utc(2024, 6, 14, 9, 30, 0)},
      {"syslog-ng network() of a no-parse file source: no TAG",
       "<13>Jun 14 09:30:00 web01 a line with tcn-abcdefghij", "web01", "", "notice", "", 0,
       utc(2024, 6, 14, 9, 30, 0)},
      {"local logger: no HOSTNAME, TAG only", "<13>Jun 14 09:30:00 alice: hello", "", "alice",
       "notice", "", 0, utc(2024, 6, 14, 9, 30, 0)},
      {"BSD timestamp with milliseconds", "<11>Jun 14 09:30:00.250 fw01 kernel: drop", "fw01",
       "kernel", "err", "", 0, utc(2024, 6, 14, 9, 30, 0, 250000000)},
      {"BSD timestamp with a year (Cisco style)", "<11>Jun 14 2023 09:30:00 fw01 kernel: drop",
       "fw01", "kernel", "err", "", 0, utc(2023, 6, 14, 9, 30, 0)},
      {"no header after the PRI", "<13>just text tcn-abcdefghij", "", "", "notice", "", 0, 0},
      {"no PRI, BSD header (a log file line)", "Jun 14 09:30:00 web01 cron[5]: job", "web01",
       "cron", "", "", 0, utc(2024, 6, 14, 9, 30, 0)},
      {"plain text, no header at all", "May the tcn-abcdefghij be with you", "", "", "", "", 0, 0},
  };
  for (const auto& s : samples) check_sample(s);
}

TEST_CASE("syslog: a source that delivers events takes the header time as the event time") {
  Sample s{"events", "<13>Jun 14 09:30:00 web01 app: x", "web01", "app", "notice",
           "",       utc(2024, 6, 14, 9, 30, 0),         0};
  check_sample(s, true);
  Sample cef{"events with a CEF time",
             "<13>Jun 14 09:30:00 web01 CEF:0|V|P|1|sig|Name|3|rt=1352231534000",
             "web01",
             "Name",
             "3",
             "",
             utc(2012, 11, 6, 19, 52, 14),
             0};
  check_sample(cef, true);
}

TEST_CASE("syslog: BSD timestamps without a year take the year closest to arrival") {
  struct Case {
    const char* what;
    std::string stamp;
    std::int64_t arrival, expected;
  };
  const std::vector<Case> cases = {
      {"Dec 31 arriving just after New Year", "Dec 31 23:59:58", utc(2025, 1, 1, 0, 0, 5),
       utc(2024, 12, 31, 23, 59, 58)},
      {"Jan 1 arriving just before New Year (sender clock ahead)", "Jan  1 00:00:01",
       utc(2024, 12, 31, 23, 59, 59), utc(2025, 1, 1, 0, 0, 1)},
      {"Feb 29 in a year after a leap year", "Feb 29 12:00:00", utc(2025, 3, 1, 0, 0, 0),
       utc(2024, 2, 29, 12, 0, 0)},
      {"middle of the year", "Jun  1 08:00:00", utc(2024, 6, 15, 0, 0, 0),
       utc(2024, 6, 1, 8, 0, 0)},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto a = parse_syslog("<13>" + c.stamp + " host app: x", source(), c.arrival);
    CHECK(a.created_ns == c.expected);
  }
}

TEST_CASE("syslog: CEF alone and after syslog headers (ArcSight samples)") {
  const std::vector<Sample> samples = {
      {"CEF spec example, bare",
       "CEF:0|security|threatmanager|1.0|100|worm successfully stopped|10|src=10.0.0.1 "
       "dst=2.1.2.2 spt=1232",
       "", "worm successfully stopped", "10", "", 0, 0},
      {"escaped pipe in the header, escaped '=' in the extension; after a BSD header",
       "<134>Sep 19 08:26:10 host CEF:0|security|threatmanager|1.0|100|detected a \\| in "
       "message|10|src=10.0.0.1 act=blocked a \\= dst=1.1.1.1",
       "host", "detected a | in message", "10", "", 0, utc(2024, 9, 19, 8, 26, 10)},
      {"Trend Micro Deep Security: dvchost, rt as MMM dd yyyy, values with spaces",
       "CEF:0|Trend Micro|Deep Security Agent|10.0|4000000|Eicar_test_file|6|cn1=1 "
       "cn1Label=Host ID dvchost=ws01.example.com rt=Nov 06 2012 19:52:14 msg=Realtime "
       "tcn-abcdefghij",
       "ws01.example.com", "Eicar_test_file", "6", "", utc(2012, 11, 6, 19, 52, 14), 0},
      {"epoch milliseconds, shost, art as ingest time, labelled technique",
       "<14>Jun 14 09:30:05 siem CEF:0|Acme|SIEM|2.1|corr-7|Ingress transfer|High|"
       "shost=ws02 rt=1718357400000 art=1718357402500 cs1Label=MITRE Technique cs1=T1105 - "
       "Ingress Tool Transfer",
       "ws02", "Ingress transfer", "High", "T1105", utc(2024, 6, 14, 9, 30, 0),
       utc(2024, 6, 14, 9, 30, 5), utc(2024, 6, 14, 9, 30, 2, 500000000)},
      {"start wins over rt; zone name; RFC 5424 header with BOM",
       "<14>1 2024-03-05T14:03:11Z siem.example - - - - \xEF\xBB\xBF"
       "CEF:1|Vendor|Product|1|sig1|Rule Name|7|shost=ws03 start=Mar 05 2024 15:03:00.500 CET "
       "rt=Mar 05 2024 14:03:10 UTC",
       "ws03", "Rule Name", "7", "", utc(2024, 3, 5, 14, 3, 0, 500000000),
       utc(2024, 3, 5, 14, 3, 11)},
      {"no Name: the Device Event Class ID is the rule; technique= key",
       "CEF:0|V|P|1|sig-42||5|technique=T1059.003 dhost=db01", "db01", "sig-42", "5", "T1059.003",
       0, 0},
      {"no extension and no trailing pipe", "CEF:0|V|P|1|sig|Name|Low", "", "Name", "Low", "", 0,
       0},
      {"technique only in free text", "CEF:0|V|P|1|sig|Name|5|msg=matched T1218.011 rundll32", "",
       "Name", "5", "T1218.011", 0, 0},
  };
  for (const auto& s : samples) check_sample(s);
}

TEST_CASE("syslog: CEF extension values keep spaces and unescape the escaped equals sign, backslash and newline") {
  auto f = detail::cef_extension_fields(
      "act=blocked a \\= dst=1.1.1.1 path=C:\\\\Windows\\\\evil.exe msg=line1\\nline2 "
      "request=http://x/?a=b&c=d suser=Jane Doe  ");
  using P = std::pair<std::string, std::string>;
  std::vector<P> expected = {{"act", "blocked a ="},
                             {"dst", "1.1.1.1"},
                             {"path", "C:\\Windows\\evil.exe"},
                             {"msg", "line1\nline2"},
                             {"request", "http://x/?a=b&c=d"},
                             {"suser", "Jane Doe"}};
  CHECK(f == expected);
  CHECK(detail::cef_extension_fields("").empty());
  CHECK(detail::cef_extension_fields("no pairs here").empty());
}

TEST_CASE("syslog: LEEF 1.0 and 2.0 (QRadar samples), custom delimiters and devTimeFormat") {
  const std::vector<Sample> samples = {
      {"LEEF 1.0 QRadar example, tab-separated",
       "LEEF:1.0|Microsoft|MSExchange|4.0 SP1|15345|src=192.0.2.0\tdst=172.50.123.1\tsev=5\t"
       "cat=anomaly\tsrcPort=81\tdstPort=21\tusrName=joe.black",
       "", "15345", "5", "", 0, 0},
      {"LEEF 1.0 after a BSD header: the header host stands in",
       "<13>Jan 18 11:07:53 192.168.1.1 LEEF:1.0|QRadar|QRM|1.0|NEW_PORT_DISCOVERD|"
       "src=172.5.6.67\tdst=172.50.123.1\tsev=5\tcat=anomaly\tmsg=there are spaces in this "
       "message",
       "192.168.1.1", "NEW_PORT_DISCOVERD", "5", "", 0, utc(2024, 1, 18, 11, 7, 53)},
      {"LEEF 2.0 with '^', devName and devTime in the default format",
       "LEEF:2.0|Lancope|StealthWatch|1.0|41|^|src=10.0.1.8^dst=10.0.0.5^sev=5^srcPort=81^"
       "devName=ws02^devTime=Mar 05 2024 14:03:00^msg=tcn-abcdefghij seen",
       "ws02", "41", "5", "", utc(2024, 3, 5, 14, 3, 0), 0},
      {"LEEF 2.0 with a hex delimiter x09",
       "LEEF:2.0|Vendor|Product|1.0|Evt|x09|devName=ws03\tsev=3\ttechnique=T1105", "ws03", "Evt",
       "3", "T1105", 0, 0},
      {"LEEF 2.0 with 0x5E and devTimeFormat with an offset",
       "LEEF:2.0|Vendor|Product|1.0|Evt|0x5E|devTime=2024-03-05 14:03:00.250 +0100^"
       "devTimeFormat=yyyy-MM-dd HH:mm:ss.SSS Z^identHostName=ws04",
       "ws04", "Evt", "", "", utc(2024, 3, 5, 13, 3, 0, 250000000), 0},
      {"LEEF 1.0 whose sender used spaces instead of tabs",
       "LEEF:1.0|V|P|1|E|devName=ws05 sev=2 msg=two words", "ws05", "E", "2", "", 0, 0},
      {"LEEF without attributes or trailing pipe", "LEEF:1.0|V|P|1|EventOnly", "", "EventOnly", "",
       "", 0, 0},
  };
  for (const auto& s : samples) check_sample(s);
  // Formats with a quoted literal ('' is a quote), AM/PM with a zone name, abutting fields.
  auto a =
      parse_syslog("LEEF:1.0|V|P|1|E|devTime=05/03/2024'09:03\tdevTimeFormat=dd/MM/yyyy''HH:mm",
                   source(), kArrival);
  CHECK(a.event_ns == utc(2024, 3, 5, 9, 3, 0));
  auto b = parse_syslog(
      "LEEF:1.0|V|P|1|E|devTime=Mar 5 2024 02:03:00 PM EST\tdevTimeFormat=MMM d yyyy hh:mm:ss a z",
      source(), kArrival);
  CHECK(b.event_ns == utc(2024, 3, 5, 19, 3, 0));
  auto c = parse_syslog("LEEF:1.0|V|P|1|E|devTime=20240305140300\tdevTimeFormat=yyyyMMddHHmmss",
                        source(), kArrival);
  CHECK(c.event_ns == utc(2024, 3, 5, 14, 3, 0));
}

TEST_CASE("syslog: the whole message is the text, so a marker anywhere is found") {
  const std::vector<std::string> messages = {
      "<13>1 2024-03-05T14:03:11Z h a - - [x@1 url=\"http://e/tcn-abcdefghij\"] m",
      "<13>Jun 14 09:30:00 web01 app: curl http://e/tcn-abcdefghij.bin",
      "CEF:0|V|P|1|sig|Name|5|fname=tcn-abcdefghij.exe",
      "LEEF:1.0|V|P|1|E|msg=tcn-abcdefghij",
      "tcn-abcdefghij",
  };
  for (const auto& m : messages) {
    INFO(m);
    auto a = parse_syslog(m, source(), kArrival);
    CHECK(a.text == m);
    CHECK(find_markers(a.text) == std::vector<std::string>{"tcn-abcdefghij"});
  }
}

TEST_CASE("syslog: trailing newline and NUL are dropped, text is capped, bad UTF-8 replaced") {
  auto a = parse_syslog("<13>Jun 14 09:30:00 web01 app: hi\r\n\0"s, source(), kArrival);
  CHECK(a.text == "<13>Jun 14 09:30:00 web01 app: hi");

  std::string big = "<13>Jun 14 09:30:00 web01 app: tcn-abcdefghij " + std::string(40000, 'x');
  auto b = parse_syslog(big, source(), kArrival);
  CHECK(b.text.size() == kMaxAlertText);
  CHECK(find_markers(b.text) == std::vector<std::string>{"tcn-abcdefghij"});

  auto c = parse_syslog("<13>Jun 14 09:30:00 web01 app: caf\xE9 \xC0\xAF tcn-abcdefghij", source(),
                        kArrival);
  CHECK(c.text ==
        "<13>Jun 14 09:30:00 web01 app: caf\xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD "
        "tcn-abcdefghij");
  auto d = parse_syslog("<13>Jun 14 09:30:00 web01 app: caf\xC3\xA9", source(), kArrival);
  CHECK(d.text.ends_with("caf\xC3\xA9"));  // valid UTF-8 is kept as it is
}

TEST_CASE("syslog: malformed messages are refused with a reason naming the fault") {
  struct Case {
    std::string message, error;
  };
  const std::vector<Case> cases = {
      {"", "empty message"},
      {"\r\n", "empty message"},
      {"<192>1 2024-03-05T14:03:11Z h a - - - m", "192 is above 191"},
      {"<999>x", "above 191"},
      {"<1234>x", "more than 3 digits"},
      {"<abc>1 - - - - - -", "'<' is not followed by a number"},
      {"<13 no closing", "no '>'"},
      {"<>x", "empty '<>'"},
      {"<-1>x", "PRI"},
      {"<13>", "nothing after the PRI"},
      {"<13>1  x", "RFC 5424 header: empty TIMESTAMP"},
      {"<13>1 2003-10-11T22:14:15.003Z", "truncated RFC 5424 header: no HOSTNAME"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - -", "no STRUCTURED-DATA"},
      {"<13>1 2003-10-11T22:14:15.003Z host  app - - - m", "empty APP-NAME"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - x m", "expected '-' or '['"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - [x@1 a=\"open] m", "unterminated value"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - [x@1 a=bare] m", "not quoted"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - [x@1 a=\"1\"", "unterminated element"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - [x@1 a=\"1\"]m", "expected a space"},
      {"<13>1 2003-10-11T22:14:15.003Z host app - - [] m", "empty SD-ID"},
      {"<13>1 not-a-time host app - - - m", "RFC 5424 TIMESTAMP"},
      {"<13>Feb 30 10:00:00 host app: x", "no such date"},
      {"<13>2024-13-45T99:00:00Z host app: x", "RFC 3164 TIMESTAMP"},
      {"CEF:0|Vendor|Product", "truncated CEF header"},
      {"<13>Jun 14 09:30:00 host CEF:0|V|P|1|", "truncated CEF header"},
      {"CEF:", "truncated CEF header"},
      {"CEF:x|a|b|c|d|e|f|", "CEF version"},
      {"CEF:0|V|P|1|id|name|5|rt=yesterday", "CEF rt"},
      {"CEF:0|V|P|1|id|name|5|start=Feb 31 2024 10:00:00", "no such date"},
      {"CEF:0|V|P|1|id|name|5|art=Mar 05 2024 10:00:00 XYZ", "CEF art"},
      {"CEF:0|V|P|1|id|name|5|rt=Mar 05 3024 10:00:00", "out of range"},
      {"LEEF:1.0|V|P", "truncated LEEF header"},
      {"LEEF:one|V|P|1|E|", "LEEF version"},
      {"LEEF:1.0|V|P|1|E|devTime=2024 junk\tdevTimeFormat=yyyy", "does not match the format"},
      {"LEEF:1.0|V|P|1|E|devTime=2024 5\tdevTimeFormat=yyyy qq", "unsupported pattern letter 'q'"},
      {"LEEF:1.0|V|P|1|E|devTime=Mar 05 2024 25:00:00", "LEEF devTime"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    try {
      parse_syslog(c.message, source(), kArrival);
      FAIL("accepted");
    } catch (const AlertParseError& e) {
      CHECK_MESSAGE(std::string(e.what()).find(c.error) != std::string::npos, e.what());
    }
  }
}

TEST_CASE("syslog: an error message quotes hostile input bounded and without control bytes") {
  std::string msg = "CEF:" + std::string(500, '\x01') + "|a|b|c|d|e|f|";
  try {
    parse_syslog(msg, source(), kArrival);
    FAIL("accepted");
  } catch (const AlertParseError& e) {
    std::string what = e.what();
    CHECK(what.size() < 200);
    CHECK(what.find('\x01') == std::string::npos);
  }
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80         ? 1
                      : (c >> 5) == 6  ? 2
                      : (c >> 4) == 14 ? 3
                      : (c >> 3) == 30 ? 4
                                       : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

TEST_CASE("syslog: mutated real-world messages either parse or fail with AlertParseError") {
  const std::vector<std::string> seeds = {
      "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 "
      "iut=\"3\" eventSource=\"Appl\\\"ication\"] \xEF\xBB\xBF"
      "An application event",
      "<13>Mar  5 14:03:11 web01 sshd[1234]: Accepted password for root",
      "<14>Jun 14 09:30:05 siem CEF:0|Acme|SIEM|2.1|corr-7|Ingress \\| transfer|High|shost=ws02 "
      "rt=Nov 06 2012 19:52:14 art=1718357402500 cs1Label=MITRE Technique cs1=T1105 a\\=b",
      "LEEF:2.0|Lancope|StealthWatch|1.0|41|^|src=10.0.1.8^devTime=2024-03-05 14:03:00.250 "
      "+0100^devTimeFormat=yyyy-MM-dd HH:mm:ss.SSS Z",
      "<13>2024-03-05T14:03:11.123456+01:00 web01 sshd[1234]: msg",
  };
  const std::string alphabet = "<>|=\\[]\" -:.0123456789TZaz\t\n\xC3\xA9\xFF";
  std::mt19937 rng(20240305);  // fixed: a failure reproduces
  std::size_t parsed = 0, refused = 0;
  for (const auto& seed : seeds) {
    for (int round = 0; round < 3000; ++round) {
      std::string m = seed;
      int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !m.empty(); ++e) {
        std::size_t at = rng() % m.size();
        switch (rng() % 4) {
          case 0:
            m[at] = alphabet[rng() % alphabet.size()];
            break;
          case 1:
            m.insert(at, 1, alphabet[rng() % alphabet.size()]);
            break;
          case 2:
            m.erase(at, 1 + rng() % 8);
            break;
          case 3:
            m.resize(at);
            break;
        }
      }
      try {
        auto a = parse_syslog(m, source(), kArrival);
        ++parsed;
        REQUIRE(a.text.size() <= kMaxAlertText);
        REQUIRE(valid_utf8(a.text));
        REQUIRE(valid_utf8(a.host));
        REQUIRE(valid_utf8(a.rule));
      } catch (const AlertParseError& e) {
        ++refused;
        REQUIRE_MESSAGE(valid_utf8(e.what()), std::string(e.what()));
      }
    }
  }
  CHECK(parsed > 0);
  CHECK(refused > 0);
}

TEST_CASE("syslog framing: random streams in random pieces never grow the buffer past the cap") {
  std::mt19937 rng(6587);
  const std::string alphabet = "0123456789 <>\r\n\0ab"s;
  for (int round = 0; round < 2000; ++round) {
    SyslogFramer f(32);
    for (int piece = 0; piece < 20 && !f.broken(); ++piece) {
      std::string bytes(rng() % 40, ' ');
      for (auto& c : bytes) c = alphabet[rng() % alphabet.size()];
      auto r = f.feed(bytes);
      for (const auto& m : r.messages) {
        REQUIRE(!m.empty());
        REQUIRE(m.size() <= 32);
      }
      REQUIRE(f.buffered() <= 32 + 40 + 11);
    }
    f.finish();
  }
}

// --- framing -------------------------------------------------------------------------------

std::vector<std::string> feed_all(SyslogFramer& f, const std::vector<std::string>& chunks) {
  std::vector<std::string> out;
  for (const auto& c : chunks) {
    auto r = f.feed(c);
    REQUIRE_MESSAGE(r.error.empty(), r.error);
    out.insert(out.end(), r.messages.begin(), r.messages.end());
  }
  return out;
}

TEST_CASE("syslog framing: octet counting, whole and split byte by byte") {
  const std::string frame1 = "<13>1 - - - - - - hello";
  const std::string frame2 = "<13>1 - - - - - - line\nwith newline";
  std::string stream =
      std::to_string(frame1.size()) + " " + frame1 + std::to_string(frame2.size()) + " " + frame2;
  const std::vector<std::string> expected = {frame1, frame2};

  SUBCASE("one feed") {
    SyslogFramer f(1024);
    CHECK(feed_all(f, {stream}) == expected);
    CHECK(f.buffered() == 0);
  }
  SUBCASE("every split point") {
    for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
      SyslogFramer f(1024);
      CHECK(feed_all(f, {stream.substr(0, cut), stream.substr(cut)}) == expected);
    }
  }
  SUBCASE("one byte at a time") {
    SyslogFramer f(1024);
    std::vector<std::string> chunks;
    for (char c : stream) chunks.emplace_back(1, c);
    CHECK(feed_all(f, chunks) == expected);
  }
  SUBCASE("a frame of exactly max_message bytes is accepted") {
    SyslogFramer f(frame1.size());
    CHECK(feed_all(f, {std::to_string(frame1.size()) + " " + frame1}) ==
          std::vector<std::string>{frame1});
  }
  SUBCASE("senders that add a newline after each octet-counted frame") {
    SyslogFramer f(1024);
    CHECK(feed_all(f, {std::to_string(frame1.size()) + " " + frame1 + "\n" +
                       std::to_string(frame2.size()) + " " + frame2 + "\r\n"}) == expected);
  }
}

TEST_CASE("syslog framing: newline framing with LF, CRLF and NUL terminators") {
  SyslogFramer f(1024);
  auto msgs = feed_all(f, {"<13>a\n<13>b\r\n<1", "3>c\0\n\n\n<13>d\0<13>e"s});
  CHECK(msgs == std::vector<std::string>{"<13>a", "<13>b", "<13>c", "<13>d"});
  CHECK(f.buffered() == 5);
  auto last = f.finish();
  CHECK(last.error.empty());
  CHECK(last.messages == std::vector<std::string>{"<13>e"});
  CHECK(f.finish().messages.empty());
}

TEST_CASE("syslog framing: a line trickled byte by byte, then one past the limit") {
  SyslogFramer f(64);
  std::string line = "<13>Jun 14 09:30:00 h a: slow";
  std::vector<std::string> got;
  for (char c : line + "\n" + line + "\r\n") {
    auto r = f.feed(std::string(1, c));
    REQUIRE(r.error.empty());
    got.insert(got.end(), r.messages.begin(), r.messages.end());
  }
  CHECK(got == std::vector<std::string>{line, line});
  for (int i = 0; i < 64; ++i) REQUIRE(f.feed("x").error.empty());
  auto r = f.feed("x");
  CHECK(r.reason == "oversized");
}

TEST_CASE("syslog framing: octet-counted and newline frames may follow each other") {
  SyslogFramer f(1024);
  CHECK(feed_all(f, {"5 <13>a<13>b\n3 xyz"}) == std::vector<std::string>{"<13>a", "<13>b", "xyz"});
}

TEST_CASE("syslog framing: oversized or malformed frames break the stream, memory stays bounded") {
  struct Case {
    const char* what;
    std::string bytes;
    std::string reason, error;
    std::vector<std::string> before;  // messages completed before the fault, still delivered
  };
  const std::vector<Case> cases = {
      {"octet count above max_message", "101 x", "oversized", "101 bytes exceeds", {}},
      {"octet count with too many digits", "99999999999999999999", "oversized", "exceeds", {}},
      {"line longer than max_message without newline",
       std::string(101, 'a'),
       "oversized",
       "without a newline",
       {}},
      {"long line after good ones",
       "<13>ok\n" + std::string(150, 'a') + "\n",
       "oversized",
       "without a newline",
       {"<13>ok"}},
      {"digits not followed by a space", "12x hello", "malformed", "not LEN SP", {}},
      {"leading zero", "05 hello", "malformed", "not LEN SP", {}},
      {"zero length", "0 ", "malformed", "not LEN SP", {}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    SyslogFramer f(100);
    auto r = f.feed(c.bytes);
    CHECK(r.reason == c.reason);
    CHECK_MESSAGE(r.error.find(c.error) != std::string::npos, r.error);
    CHECK(r.messages == c.before);
    CHECK(f.broken());
    CHECK(f.buffered() == 0);
    auto after = f.feed("5 <13>a");  // nothing after a broken frame is trusted
    CHECK(after.messages.empty());
    CHECK(f.finish().messages.empty());
  }
}

TEST_CASE("syslog framing: the peer closing inside an octet-counted frame is an error") {
  SyslogFramer f(100);
  auto r = f.feed("20 <13>only a part");
  CHECK(r.messages.empty());
  CHECK(r.error.empty());
  auto end = f.finish();
  CHECK(end.reason == "malformed");
  CHECK(end.error.find("inside an octet-counted frame") != std::string::npos);
}

TEST_SUITE_END();

}  // namespace
}  // namespace tocsin::collector
