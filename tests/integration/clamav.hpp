// ClamAV's clamd with one custom EICAR body signature (Debian ships no virus database), and
// inotify-driven on-access scanning that quarantines matching drops, as a SOC would wire it.
#pragma once

#include <doctest/doctest.h>

#include <fstream>
#include <span>
#include <string>

#include "common/crypto.hpp"
#include "tests/integration/harness.hpp"

namespace tocsin::test {

struct ClamAv {
  explicit ClamAv(const fs::path& root) : dir(root / "clam") {
    fs::create_directories(dir / "db");
    fs::create_directories(dir / "quarantine");
    std::string body = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE";
    std::ofstream(dir / "db" / "tocsin.ndb")
        << "TocsinTest.EICAR.Body:0:*:"
        << common::to_hex(
               std::span(reinterpret_cast<const std::uint8_t*>(body.data()), body.size()))
        << "\n";
    std::ofstream(conf()) << "Foreground yes\nLocalSocket " << (dir / "clamd.sock").string()
                          << "\nDatabaseDirectory " << (dir / "db").string() << "\nLogFile "
                          << (dir / "clamd.log").string() << "\nPidFile "
                          << (dir / "clamd.pid").string() << "\n";
    clamd = Process({"/usr/sbin/clamd", "-c", conf().string()}, dir / "clamd.out");
    REQUIRE_MESSAGE(wait_until(
                        [&] {
                          return run_command({"/usr/bin/clamdscan",
                                              "--config-file=" + conf().string(), "--ping", "1"},
                                             10s)
                                     .rc == 0;
                        },
                        60s),
                    "clamd did not become ready: " << clamd.log());
  }
  fs::path conf() const { return dir / "clamd.conf"; }

  // Every file closed in `watched` is scanned; a match is moved to quarantine and reported as
  // "<path>: <signature> FOUND" in `log` (only infected files, no summary: a detection log a
  // SIEM pipeline can follow).
  Process watch(const fs::path& watched, fs::path log = {}) {
    if (log.empty()) log = dir / "watch.log";
    std::string script = "inotifywait -m -e close_write -e moved_to --format '%w%f' '" +
                         watched.string() + "' | while read -r f; do /usr/bin/clamdscan " +
                         "--config-file='" + conf().string() + "' --infected --no-summary " +
                         "--move='" + (dir / "quarantine").string() + "' \"$f\"; done";
    Process p({"/bin/bash", "-c", script}, log);
    REQUIRE_MESSAGE(
        wait_until([&] { return p.log().find("Watches established") != std::string::npos; }, 30s),
        "inotifywait did not start: " << p.log());
    return p;
  }

  fs::path dir;
  Process clamd;
};

}  // namespace tocsin::test
