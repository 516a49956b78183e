// quote_hostile: what hostile text looks like when quoted in an error, a log line or evidence.
#include <doctest/doctest.h>

#include <string>

#include "common/text.hpp"

using tocsin::common::quote_hostile;

TEST_CASE("quote_hostile keeps printable ASCII and replaces every other byte with a question mark") {
  struct Row {
    std::string in;
    std::size_t max;
    std::string out;
  };
  const Row rows[] = {
      {"plain text", 64, "plain text"},
      {"", 64, ""},
      {"a\nb\rc\td", 64, "a?b?c?d"},
      {std::string("nul\0byte", 8), 64, "nul?byte"},
      {"\x1b[31mred", 64, "?[31mred"},
      {"caf\xc3\xa9", 64, "caf??"},
      {"del\x7f", 64, "del?"},
      {"0123456789", 10, "0123456789"},
      {"0123456789", 4, "0123..."},
      {"\n\n\n\n\n", 2, "??..."},
  };
  for (const auto& r : rows) {
    CAPTURE(r.in);
    CHECK(quote_hostile(r.in, r.max) == r.out);
  }
}
