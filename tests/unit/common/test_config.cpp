// Durations, sizes and YAML access whose errors name the file, the line and the key path.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "common/config.hpp"
#include "common/crypto.hpp"
#include "tests/unit/temp_dir.hpp"

using namespace tocsin::common;
using namespace std::chrono_literals;
using tocsin::test::TempDir;

namespace {

// The message of the ConfigError `f` throws; fails the test if it throws nothing else.
template <class F>
std::string config_error(F f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError");
  return {};
}

const char* const kTests = R"(name: demo
tests:
  - id: first
    every: 5m
    targets: [a, b]
  - id: second
    every: soon
    count: many
    enabled: maybe
    nested: {x: 1}
)";

}  // namespace

TEST_CASE("parse_duration accepts every documented unit") {
  struct Case {
    const char* text;
    std::chrono::milliseconds want;
  } cases[] = {{"250ms", 250ms}, {"30s", 30s},
               {"5m", 5min},     {"1h", 1h},
               {"2d", 48h},      {"45", 45s},
               {"0s", 0ms},      {"90m", 90min},
               {"000012s", 12s}, {"999999999999ms", std::chrono::milliseconds(999999999999)}};
  for (const auto& c : cases) {
    CAPTURE(std::string(c.text));
    CHECK(parse_duration(c.text) == c.want);
  }
}

TEST_CASE("parse_duration rejects malformed durations") {
  for (const char* text : {"", "s", "ms", "-5s", "+5s", "1.5h", "5x", "5 s", " 5s", "5S", "5sec",
                           "1000000000000s", "5m30s"}) {
    CAPTURE(std::string(text));
    CHECK_THROWS_AS(parse_duration(text), std::invalid_argument);
  }
}

// Regression: 12 digits of days overflowed int64 milliseconds and wrapped to a wrong duration.
TEST_CASE("parse_duration refuses a duration that does not fit in milliseconds") {
  CHECK_THROWS_AS(parse_duration("999999999999d"), std::invalid_argument);
}

TEST_CASE("format_duration picks the largest exact unit") {
  struct Case {
    std::chrono::milliseconds d;
    const char* want;
  } cases[] = {{0ms, "0s"},    {1ms, "1ms"}, {1500ms, "1500ms"}, {90s, "90s"}, {5min, "5m"},
               {90min, "90m"}, {1h, "1h"},   {36h, "36h"},       {48h, "2d"},  {-30s, "-30s"}};
  for (const auto& c : cases) {
    CAPTURE(std::string(c.want));
    CHECK(format_duration(c.d) == c.want);
  }
}

TEST_CASE("format_duration output parses back to the same duration") {
  for (auto d : {1ms, 999ms, 1000ms, 61000ms, 3600000ms, 86400000ms, 90000000ms}) {
    CAPTURE(d.count());
    CHECK(parse_duration(format_duration(d)) == d);
  }
}

TEST_CASE("parse_size accepts bytes and binary units") {
  struct Case {
    const char* text;
    std::uint64_t want;
  } cases[] = {{"1048576", 1048576},   {"10B", 10},          {"64KiB", 64 << 10}, {"64K", 64 << 10},
               {"64MiB", 64ull << 20}, {"1GiB", 1ull << 30}, {"2G", 2ull << 30},  {"0", 0}};
  for (const auto& c : cases) {
    CAPTURE(std::string(c.text));
    CHECK(parse_size(c.text) == c.want);
  }
}

TEST_CASE("parse_size rejects malformed sizes") {
  for (const char* text :
       {"", "MiB", "-1", "1.5MiB", "64kb", "64 MiB", "64mib", "1TiB", "1000000000000000B"}) {
    CAPTURE(std::string(text));
    CHECK_THROWS_AS(parse_size(text), std::invalid_argument);
  }
}

// Regression: "n << 30" silently wrapped for n >= 2^34, turning an absurd size into a small one.
TEST_CASE("parse_size refuses a size that does not fit in 64 bits") {
  CHECK_THROWS_AS(parse_size("99999999999999GiB"), std::invalid_argument);
}

TEST_CASE("ConfigNode reads typed values with defaults") {
  auto root = ConfigNode::load_string(
      "name: demo\ncount: 42\nflag: yes\nwait: 30s\ncap: 64KiB\nlist: [a, b]\n", "t.yaml");
  CHECK(root.str("name") == "demo");
  CHECK(root.integer("count") == 42);
  CHECK(root.boolean("flag"));
  CHECK(root.duration("wait") == 30s);
  CHECK(root.size("cap") == 64 * 1024);
  CHECK(root.str_list("list") == std::vector<std::string>{"a", "b"});
  CHECK(root.str("missing", "fallback") == "fallback");
  CHECK(root.integer("missing", 7) == 7);
  CHECK(root.duration("missing", 1h) == 1h);
  CHECK(root.str_list("missing").empty());
  CHECK_FALSE(root["missing"].defined());
  CHECK(root.has("name"));
  CHECK_FALSE(root.has("missing"));
}

TEST_CASE("an empty document is an empty map and a non-map top level is refused") {
  auto empty = ConfigNode::load_string("", "empty.yaml");
  CHECK(empty.keys().empty());
  CHECK_THROWS_WITH_AS(ConfigNode::load_string("- 1\n- 2\n", "list.yaml"),
                       doctest::Contains("list.yaml"), ConfigError);
}

TEST_CASE("ConfigNode errors name the file, the line and the key path") {
  auto root = ConfigNode::load_string(kTests, "agent.yaml");
  auto tests = root["tests"].items();
  REQUIRE(tests.size() == 2);
  CHECK(tests[1].path() == "tests[1]");
  CHECK(tests[0].duration("every") == 5min);
  SUBCASE("a bad duration") {
    auto msg = config_error([&] { tests[1].duration("every"); });
    CHECK_MESSAGE(msg.find("agent.yaml:7") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[1].every") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("soon") != std::string::npos, msg);
  }
  SUBCASE("a bad integer") {
    auto msg = config_error([&] { tests[1].integer("count"); });
    CHECK_MESSAGE(msg.find("agent.yaml:8") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[1].count") != std::string::npos, msg);
  }
  SUBCASE("a bad boolean") {
    auto msg = config_error([&] { tests[1].boolean("enabled"); });
    CHECK_MESSAGE(msg.find("agent.yaml:9") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[1].enabled") != std::string::npos, msg);
  }
  SUBCASE("a map where a single value is expected") {
    auto msg = config_error([&] { tests[1].str("nested"); });
    CHECK_MESSAGE(msg.find("agent.yaml:10") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[1].nested") != std::string::npos, msg);
  }
  SUBCASE("a list where a single value is expected") {
    auto msg = config_error([&] { tests[0].str("targets"); });
    CHECK_MESSAGE(msg.find("agent.yaml:5") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[0].targets") != std::string::npos, msg);
  }
  SUBCASE("a required key that is missing") {
    auto msg = config_error([&] { tests[0].str("probe"); });
    CHECK_MESSAGE(msg.find("agent.yaml:") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("tests[0].probe") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("required") != std::string::npos, msg);
  }
  SUBCASE("a map that is not a list") {
    auto msg = config_error([&] { root["name"].items(); });
    CHECK_MESSAGE(msg.find("agent.yaml:1") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("'name'") != std::string::npos, msg);
  }
}

TEST_CASE("check_keys rejects an unknown key and names it with its line") {
  auto root = ConfigNode::load_string(kTests, "agent.yaml");
  CHECK_NOTHROW(root.check_keys({"name", "tests"}));
  auto msg = config_error([&] { root.check_keys({"tests"}); });
  CHECK_MESSAGE(msg.find("agent.yaml:1") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("'name'") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("unknown key") != std::string::npos, msg);
  auto nested = config_error([&] {
    root["tests"].items()[1].check_keys({"id", "every", "count", "enabled"});
  });
  CHECK_MESSAGE(nested.find("tests[1].nested") != std::string::npos, nested);
  CHECK_MESSAGE(nested.find("agent.yaml:10") != std::string::npos, nested);
}

TEST_CASE("invalid YAML is reported with the file and the line") {
  auto msg = config_error([] { ConfigNode::load_string("a: 1\nb: 2\nc: d: e\n", "bad.yaml"); });
  CHECK_MESSAGE(msg.find("bad.yaml:3") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("invalid YAML") != std::string::npos, msg);
}

TEST_CASE("load_file names the file and reports a missing one as a ConfigError") {
  TempDir tmp("config");
  auto file = tmp / "agent.yaml";
  write_file_atomic(file, "a: 1\nb: soon\n");
  auto root = ConfigNode::load_file(file);
  auto msg = config_error([&] { root.duration("b"); });
  CHECK_MESSAGE(msg.find(file.string() + ":2") != std::string::npos, msg);
  CHECK_THROWS_AS(ConfigNode::load_file(tmp / "missing.yaml"), ConfigError);
}

// Regression: the line came from the key's *value* node, so an empty value ("unknown:")
// reported the map's first line and a block-map value the line after the key.
TEST_CASE("check_keys reports the line of the unknown key even when its value is empty") {
  auto root = ConfigNode::load_string("a: 1\nb: 2\nunknown:\nnested_unknown:\n  x: 1\n", "x.yaml");
  auto msg = config_error([&] { root.check_keys({"a", "b", "nested_unknown"}); });
  CHECK_MESSAGE(msg.find("'unknown'") != std::string::npos, msg);
  CHECK_MESSAGE(msg.find("x.yaml:3") != std::string::npos, msg);
  auto nested = config_error([&] { root.check_keys({"a", "b", "unknown"}); });
  CHECK_MESSAGE(nested.find("x.yaml:4") != std::string::npos, nested);
}

TEST_CASE("a key repeated in the same map is refused with its line, not silently dropped") {
  auto text = "a: 1\nb:\n  c: 2\n  c: 3\n";
  CHECK_THROWS_WITH_AS(tocsin::common::ConfigNode::load_string(text, "x.yaml"),
                       doctest::Contains("x.yaml:4: key 'c' appears twice"),
                       tocsin::common::ConfigError);
  CHECK_THROWS_AS(tocsin::common::ConfigNode::load_string("a: 1\na: 2\n", "x.yaml"),
                  tocsin::common::ConfigError);
  CHECK_NOTHROW(tocsin::common::ConfigNode::load_string("l:\n  - {a: 1}\n  - {a: 2}\n", "x"));
}
