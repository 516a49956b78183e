// Hostile text (from the network, a SIEM, a file) made safe to quote in an error, a log line or
// a result's evidence.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tocsin::common {

// Printable ASCII only ('?' for any other byte), at most `max` bytes, and "..." when cut.
std::string quote_hostile(std::string_view s, std::size_t max);

// A CSV cell: quoted when needed, and a leading = + - @ (or tab, CR) neutralised with a quote so
// a spreadsheet does not run attacker-chosen text (test ids, host names and titles come from
// agents) as a formula. A plain number ("-174", "+3", "-0.5") is no formula: it stays a number.
std::string csv_cell(std::string s);

}  // namespace tocsin::common
