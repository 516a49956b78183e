// Logging facade: spdlog to stderr (journald adds its own timestamps under systemd).
#pragma once

#include <spdlog/spdlog.h>

#include <exception>
#include <filesystem>
#include <string>

namespace tocsin::common {

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
// `file`: log there instead of stderr (a Windows service has no console), rotated at 10 MiB,
// three files kept.
void setup_logging(const std::string& program, const std::string& level,
                   const std::filesystem::path& file = {});

}  // namespace tocsin::common
