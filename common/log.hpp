// Logging facade: spdlog to stderr (journald adds its own timestamps under systemd).
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace firedrill::common {

// level: trace, debug, info, warn, error. Throws std::invalid_argument for other words.
void setup_logging(const std::string& program, const std::string& level);

}  // namespace firedrill::common
