// Logging facade: spdlog to stderr (journald adds its own timestamps under systemd).
#pragma once

#include <spdlog/spdlog.h>

#include <exception>
#include <string>

namespace firedrill::common {

// Completion handler for co_spawn: logs an exception that escaped the coroutine, with context.
inline auto log_if_failed(std::string what) {
  return [what = std::move(what)](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{}: {}", what, ex.what());
    }
  };
}

// level: trace, debug, info, warn, error. Throws std::invalid_argument for other words.
void setup_logging(const std::string& program, const std::string& level);

}  // namespace firedrill::common
