// Shared alert helpers: run markers, times as SIEMs write them, flattening, technique ids, keys.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "collector/alerts/alert.hpp"

using namespace tocsin::collector;
using nlohmann::json;

namespace {

constexpr std::int64_t kSec = 1'000'000'000;
constexpr std::int64_t kBase = 1795860000LL * kSec;  // 2026-11-28T10:00:00Z
const std::string kM = "tcn-a1b2c3d4e5";             // a valid marker
const std::string kM2 = "tcn-0000000009";

// A JSON value nested `depth` arrays deep around `leaf`.
json nested(std::size_t depth, json leaf) {
  json j = std::move(leaf);
  for (std::size_t i = 0; i < depth; ++i) j = json::array({std::move(j)});
  return j;
}

}  // namespace

TEST_CASE("find_markers finds a marker wherever a SIEM may put it") {
  struct Case {
    std::string text;
    std::vector<std::string> want;
  } cases[] = {
      {kM, {kM}},
      {"https://dl.example.com/files/" + kM + "/payload.exe?x=1", {kM}},
      {"C:\\Temp\\" + kM + ".exe", {kM}},
      {"C:\\\\Temp\\\\" + kM + ".exe", {kM}},  // JSON-escaped Windows path
      {kM + ".example.com", {kM}},
      {"powershell.exe -nop -c \"echo " + kM + " > out.txt\"", {kM}},
      {"curl%20http%3A%2F%2Fx%2F" + kM + "%2Fa", {kM}},
      {"path=%2f" + kM, {kM}},  // lower-case percent escape ends in a letter
      {"line one\\n" + kM + "\\tend", {kM}},
      {"{\\\"cmd\\\":\\\"" + kM + "\\\"}", {kM}},
      {"\\u002f" + kM, {kM}},
      {"user=" + kM + "_svc", {kM}},
      {"message=" + kM + "-stage2", {kM}},
      {"a=" + kM + "\nb=" + kM2 + "\nc=" + kM, {kM, kM2}},
      {"Xtcn-a1b2c3d4e5", {kM}},  // upper case before is not part of a marker token
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    CHECK(find_markers(c.text) == c.want);
  }
}

TEST_CASE("find_markers ignores look-alikes that are part of a longer token") {
  for (std::string text :
       {"x" + kM, "_" + kM, "-" + kM, "9" + kM, kM + "f", kM + "Q", std::string("tcn-a1b2c3d4e"),
        std::string("tcn-a1b2c3D4e5"), std::string("TCN-a1b2c3d4e5"), std::string("tcn_a1b2c3d4e5"),
        std::string("tcn-a1b2c3d4e5f6"), std::string("tcn-"), std::string("see tcn-a1b2"),
        std::string("")}) {
    CAPTURE(text);
    CHECK(find_markers(text).empty());
  }
}

TEST_CASE("parse_alert_time reads RFC 3339 and ISO 8601 variants") {
  struct Case {
    const char* text;
    std::int64_t want;
  } cases[] = {
      {"2026-11-28T10:00:00Z", kBase},
      {"2026-11-28T10:00:00.123Z", kBase + 123'000'000},
      {"2026-11-28T10:00:00.123456789Z", kBase + 123'456'789},
      {"2026-11-28T10:00:00.1234567Z", kBase + 123'456'700},  // .NET / Sentinel
      {"2026-11-28T10:00:00.123456789999Z", kBase + 123'456'789},
      {"2026-11-28T10:00:00,5Z", kBase + 500'000'000},
      {"2026-11-28T11:00:00+01:00", kBase},
      {"2026-11-28T05:00:00-05:00", kBase},
      {"2026-11-28T15:30:00+0530", kBase},
      {"2026-11-28T11:00:00+01", kBase},
      {"2026-11-28T00:30:00+14:30", kBase - 24 * 3600 * kSec},
      {"2026-11-28T10:00:00", kBase},
      {"2026-11-28 10:00:00", kBase},
      {"2026-11-28t10:00:00z", kBase},
      {"2026-11-28T10:00Z", kBase},
      {"  2026-11-28T10:00:00Z\n", kBase},
      {"2026-11-28 10:00:00.5 +0000 UTC", kBase + 500'000'000},  // Go's time.String()
      {"2026-11-28 11:00:00 +0100 CET", kBase},
      {"2026-11-28 10:00:00 UTC", kBase},
      {"2028-02-29T00:00:00Z", 1835395200LL * kSec},
      {"2026-11-28T10:00:60Z", kBase + 60 * kSec},  // leap second
      {"1970-01-01T00:00:00Z", 0},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.text));
    CHECK(parse_alert_time_text(c.text, "t") == c.want);
    CHECK(parse_alert_time(json(c.text), "t") == c.want);
  }
}

TEST_CASE("parse_alert_time infers the epoch unit from the magnitude") {
  struct Case {
    json value;
    std::int64_t want;
  } cases[] = {
      {1795860000, kBase},
      {json(1795860000ULL), kBase},
      {"1795860000", kBase},
      {1795860000.5, kBase + 500'000'000},
      {"1795860000.123", kBase + 123'000'000},
      {"1795860000.000000001", kBase + 1},
      {1795860000123LL, kBase + 123'000'000},
      {"1795860000123", kBase + 123'000'000},
      {"1795860000123.5", kBase + 123'500'000},
      {1795860000123456LL, kBase + 123'456'000},
      {"1795860000123456", kBase + 123'456'000},
      {1795860000123456789LL, kBase + 123'456'789},
      {"1795860000123456789", kBase + 123'456'789},
      {100'000'000'000LL, 100'000'000'000LL * 1'000'000},      // 1e11: milliseconds
      {100'000'000'000'000LL, 100'000'000'000'000LL * 1'000},  // 1e14: microseconds
      {100'000'000'000'000'000LL, 100'000'000'000'000'000LL},  // 1e17: nanoseconds
      {0, 0},
  };
  for (const auto& c : cases) {
    CAPTURE(c.value.dump());
    CHECK(parse_alert_time(c.value, "t") == c.want);
  }
  // A double in seconds is only as precise as a double: within a microsecond.
  CHECK(std::llabs(parse_alert_time(json(1795860000.123456), "t") - (kBase + 123'456'000)) < 1000);
}

TEST_CASE("parse_alert_time rejects garbage and names the field") {
  const char* bad_text[] = {"",
                            "   ",
                            "yesterday",
                            "2026-11-28",
                            "2026-13-01T00:00:00Z",
                            "2026-00-10T00:00:00Z",
                            "2026-02-30T00:00:00Z",
                            "2027-02-29T00:00:00Z",
                            "2026-11-28T24:00:00Z",
                            "2026-11-28T10:60:00Z",
                            "2026-11-28T10:00:61Z",
                            "0001-01-01T00:00:00Z",
                            "1969-12-31T23:59:59Z",
                            "1970-01-01T00:30:00+01:00",
                            "9999-01-01T00:00:00Z",
                            "2026-11-28T10:00:00+25:00",
                            "2026-11-28T10:00:00+01:",
                            "2026-11-28T10:00:00Zjunk",
                            "2026-11-28T10:00:00.Z",
                            "2026-11-28T10:00:00 PST",
                            "2026-11-28X10:00:00Z",
                            "26-11-28T10:00:00Z",
                            "2026-11-28T1:00:00Z",
                            "-1795860000",
                            "+1795860000",
                            "1.7e9",
                            "1.2.3",
                            "1795860000.",
                            ".5",
                            "0x10",
                            "99999999999999999999",
                            "99999999999",  // under 1e11, so seconds: year 5138
                            "9300000000000000000"};
  for (const char* text : bad_text) {
    CAPTURE(std::string(text));
    CHECK_THROWS_WITH_AS(parse_alert_time_text(text, "alerts[2].startsAt"),
                         doctest::Contains("alerts[2].startsAt"), AlertParseError);
  }
  json bad_values[] = {json(std::nan("")),
                       json(std::numeric_limits<double>::infinity()),
                       json(-1.5),
                       json(-5),
                       json(1e300),
                       json(true),
                       json(nullptr),
                       json::object(),
                       json::array({1795860000})};
  for (const auto& v : bad_values) {
    CAPTURE(v.dump());
    CHECK_THROWS_WITH_AS(parse_alert_time(v, "result._time"), doctest::Contains("result._time"),
                         AlertParseError);
  }
}

TEST_CASE("parse_alert_time quotes hostile input only as printable text") {
  std::string hostile = std::string("\x1b[31m\0evil", 10) + std::string(500, 'A');
  try {
    parse_alert_time_text(hostile, "t");
    FAIL("expected an AlertParseError");
  } catch (const AlertParseError& e) {
    std::string m = e.what();
    CHECK(m.find('\x1b') == std::string::npos);
    CHECK(m.size() < 200);
  }
}

TEST_CASE("flatten_json writes one path=value line per leaf") {
  json j = {{"alert", {{"host", {{"name", "web01"}}}, {"tags", {"a", "b"}}}},
            {"n", 42},
            {"ok", true},
            {"none", nullptr},
            {"empty", json::object()},
            {"list", json::array()},
            {"cmd", "echo \"hi\" " + kM}};
  std::string want =
      "alert.host.name=web01\n"
      "alert.tags[0]=a\n"
      "alert.tags[1]=b\n"
      "cmd=echo \"hi\" " +
      kM +
      "\n"
      "empty={}\n"
      "list=[]\n"
      "n=42\n"
      "none=null\n"
      "ok=true\n";
  CHECK(flatten_json(j) == want);
  CHECK(flatten_json(json("just text")) == "just text\n");
  CHECK(flatten_json(json::array({json::object({{"a", 1}})})) == "[0].a=1\n");
}

TEST_CASE("flatten_json never exceeds its cap and cuts cleanly") {
  json j;
  for (int i = 0; i < 200; ++i)
    j["k" + std::to_string(i)] = "value-" + kM + "-" + std::string(i, 'x');
  for (std::size_t cap : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{100},
                          std::size_t{1000}, std::size_t{4096}, kMaxAlertText}) {
    CAPTURE(cap);
    auto text = flatten_json(j, cap);
    CHECK(text.size() <= cap);
  }
  SUBCASE("a cut never leaves half a marker that looks whole") {
    json one = {{"k", "aaaa tcn-a1b2c3d4e5zzzz"}};
    for (std::size_t cap = 0; cap < 30; ++cap) {
      CAPTURE(cap);
      CHECK(find_markers(flatten_json(one, cap)).empty());
    }
  }
  SUBCASE("a cut never splits a UTF-8 sequence") {
    json one = {{"k", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"}};  // "éééé"
    for (std::size_t cap = 0; cap < 12; ++cap) {
      auto text = flatten_json(one, cap);
      CAPTURE(cap);
      CHECK(text.size() <= cap);
      CHECK(json(text).dump(-1, ' ', false, json::error_handler_t::strict).size() > 0);
    }
  }
  SUBCASE("a huge single value is cut, not dropped") {
    json one = {{"big", kM + " " + std::string(100000, 'y')}};
    auto text = flatten_json(one, 1000);
    CHECK(text.size() <= 1000);
    CHECK(find_markers(text) == std::vector<std::string>{kM});
  }
}

TEST_CASE("flatten_json handles nesting far deeper than it will walk") {
  SUBCASE("beyond 64 levels the subtree is written compactly") {
    auto text = flatten_json(nested(100, kM));
    CHECK(text.size() <= kMaxAlertText);
    CHECK(text.find("=[[[") != std::string::npos);
    CHECK(find_markers(text) == std::vector<std::string>{kM});
  }
  SUBCASE("a hundred thousand levels neither overflow the stack nor the cap") {
    auto text = flatten_json(nested(100000, 1), 4096);
    CHECK(text.size() <= 4096);
  }
}

TEST_CASE("find_technique finds ATT&CK ids only as whole words") {
  struct Case {
    const char* text;
    const char* want;
  } cases[] = {
      {"T1105", "T1105"},
      {"Ingress Tool Transfer (T1105)", "T1105"},
      {"T1059.001 PowerShell", "T1059.001"},
      {"attack.t1059.001", "T1059.001"},  // Sigma tags are lower case
      {"mitre_T1003_lsass", "T1003"},
      {"T1059.0011", "T1059"},
      {"first T1003 then T1105", "T1003"},
      {"XT1105", ""},
      {"T11050", ""},
      {"T1105a", ""},
      {"T110", ""},
      {"build-1234 T12", ""},
      {"", ""},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.text));
    CHECK(find_technique(c.text) == c.want);
  }
}

TEST_CASE("alert_key uses the source's id, else a hash of the text") {
  Alert a;
  a.source = "siem";
  a.id = "abc";
  a.text = "x=1\n";
  CHECK(alert_key(a) == "siem:abc");
  a.id.clear();
  auto hashed = alert_key(a);
  CHECK(hashed.rfind("siem:", 0) == 0);
  CHECK(hashed.size() == 5 + 64);
  a.text = "x=2\n";
  CHECK(alert_key(a) != hashed);
}

TEST_CASE("a timestamp's resolution is inferred from its value") {
  CHECK(time_resolution_ns(0) == 0);
  CHECK(time_resolution_ns(kBase) == kSec);                     // CrowdSec's created_at
  CHECK(time_resolution_ns(kBase + 250'000'000) == 1'000'000);  // milliseconds
  CHECK(time_resolution_ns(kBase + 250'001'000) == 1'000);
  CHECK(time_resolution_ns(kBase + 1) == 1);
  CHECK(time_resolution_ns(-kSec) == kSec);
}

TEST_CASE("control bytes in a source's names are neutralised") {
  CHECK(neutralise_controls(std::string("T1105\0r:x", 9)) == "T1105?r:x");
  CHECK(neutralise_controls("a\tb\x7f"
                            "c\n") == "a?b?c?");
  CHECK(neutralise_controls("Règle ok") == "Règle ok");  // UTF-8 is kept
}

TEST_CASE("addresses are compared in canonical form") {
  CHECK(canonical_address("10.1.2.3") == "10.1.2.3");
  CHECK(canonical_address("::ffff:10.1.2.3") == "10.1.2.3");
  CHECK(canonical_address("[2001:DB8::0:1]") == "2001:db8::1");
  CHECK(canonical_address("fe80::1%eth0") == "fe80::1");
  CHECK(canonical_address("web01").empty());
  CHECK(canonical_address("").empty());
  CHECK(canonical_address("10.1.2.3:80").empty());
  CHECK(canonical_address(std::string(100, '1')).empty());
}
