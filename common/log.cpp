#include "common/log.hpp"

#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

namespace tocsin::common {

void setup_logging(const std::string& program, const std::string& level,
                   const std::filesystem::path& file) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw std::invalid_argument("unknown log level '" + level +
                                "' (use trace, debug, info, warn, error)");
  auto logger = file.empty() ? spdlog::stderr_logger_mt(program)
                             : spdlog::rotating_logger_mt(program, file.string(), 10 << 20, 3);
  // Under systemd the journal stamps each line; elsewhere keep our own UTC timestamp.
  bool journal = std::getenv("JOURNAL_STREAM") != nullptr;
  logger->set_pattern(journal ? "%^%l%$ %v" : "%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %n: %v",
                      spdlog::pattern_time_type::utc);
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace tocsin::common
