// Hostile text (from the network, a SIEM, a file) made safe to quote in an error, a log line or
// a result's evidence.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tocsin::common {

// Printable ASCII only ('?' for any other byte), at most `max` bytes, and "..." when cut.
std::string quote_hostile(std::string_view s, std::size_t max);

}  // namespace tocsin::common
