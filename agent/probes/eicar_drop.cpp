#include "agent/probes/eicar_drop.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "agent/platform/platform.hpp"
#include "common/clock.hpp"

namespace tocsin::agent {

namespace fs = std::filesystem;

DropVerdict drop_verdict(const DropObservation& o) {
  if (!o.control_ok) return {"inconclusive", "control_failed"};
  if (o.write_errno != 0) {
    if (o.write_errno == EACCES || o.write_errno == EPERM || o.write_errno == ETXTBSY)
      return {"prevented", "write_blocked"};
    return {"error", "write_failed"};  // e.g. ENOSPC: not a defence
  }
  if (o.inspect_errno != 0) return {"error", "observe_failed"};
  if (o.gone) return {"prevented", "removed"};
  if (o.unreadable) return {"prevented", "unreadable"};
  if (o.altered) return {"prevented", "altered"};
  return {"not_prevented", "intact"};
}

namespace {

enum class FileState { intact, gone, altered, unreadable, error };

// `err` receives the failure of an `error` state (a reason that is no defence).
FileState inspect(const fs::path& p, const std::string& expected, int& err) {
  std::string got;
  auto st = platform::read_file_head(p, got, expected.size() + 1);
  if (st.opened) return FileState::unreadable;  // opened, then the read was refused
  if (st.error != 0) {
    if (st.error == ENOENT) return FileState::gone;
    // Only a refusal is a defence; running out of descriptors or an I/O error is not.
    if (st.error == EACCES || st.error == EPERM) return FileState::unreadable;
    err = st.error;
    return FileState::error;
  }
  return got == expected ? FileState::intact : FileState::altered;
}

// Removes p if present and confirms it is gone: "removed", "already gone" or the failure.
std::string clean_up(const fs::path& p) {
  auto rm = platform::remove_file(p);
  bool existed = rm.error == 0;
  if (platform::exists_no_follow(p))
    return "FAILED: still present after unlink (" + (existed ? std::string(std::strerror(0)) : rm.detail) + ")";
  return existed ? "removed" : "already gone";
}

}  // namespace

boost::asio::awaitable<std::vector<common::ResultBody>> EicarDropProbe::run(const TestSpec& test,
                                                                           std::string marker) {
  auto b = start_result(test, marker);
  auto dir = test.directory;
  b.target = dir.string();
  DropObservation o;

  // Positive control: the same steps with a benign twin must work, or nothing can be concluded.
  auto control = dir / (marker + "-control.txt");
  std::string control_text = "Tocsin control file for run " + marker + "\n";
  int control_err = 0;
  if (auto w = platform::create_new_file(control, control_text); w.error != 0) {
    o.control_ok = false;
    o.control_detail = "cannot write " + control.string() + ": " + w.detail;
  } else if (inspect(control, control_text, control_err) != FileState::intact) {
    o.control_ok = false;
    o.control_detail = "benign file did not read back intact";
  }
  auto control_cleanup = clean_up(control);
  if (o.control_ok && control_cleanup.rfind("FAILED", 0) == 0) {
    o.control_ok = false;
    o.control_detail = "cannot remove the benign file: " + control_cleanup;
  }

  auto drop = dir / (marker + "-eicar.com");  // the marker is where a detector sees it: the name
  std::string cleanup = "not written";
  std::string write_detail;  // the OS's words for a refused write (Windows: the Win32 error)
  if (o.control_ok) {
    auto eicar = eicar_test_string();
    auto t0 = std::chrono::steady_clock::now();
    // If the agent stops mid-observation this frame is destroyed, not resumed: remove the
    // drop then too, so an artifact never outlives the probe.
    struct RemoveIfAbandoned {
      fs::path path;
      bool armed = true;
      ~RemoveIfAbandoned() {
        if (armed) platform::remove_file(path);
      }
    } guard{drop};
    auto written = platform::create_new_file(drop, eicar);
    o.write_errno = written.error;
    write_detail = written.detail;
    if (o.write_errno == 0) {
      // Observe: poll the file until a defence acts or the observation window ends.
      boost::asio::steady_timer timer(ex_);
      auto deadline = t0 + test.observe;
      for (;;) {
        int inspect_err = 0;
        auto st = inspect(drop, eicar, inspect_err);
        if (st == FileState::error) {
          o.inspect_errno = inspect_err ? inspect_err : EIO;
          break;
        }
        if (st != FileState::intact) {
          o.gone = st == FileState::gone;
          o.altered = st == FileState::altered;
          o.unreadable = st == FileState::unreadable;
          o.removal_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - t0).count();
          break;
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        timer.expires_after(std::min<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(10), deadline - std::chrono::steady_clock::now()));
        co_await timer.async_wait(boost::asio::use_awaitable);
      }
    }
    cleanup = clean_up(drop);
    guard.armed = false;
  }

  auto v = drop_verdict(o);
  b.verdict = v.verdict;
  b.reason = v.reason;
  b.evidence = {{"file", drop.string()},
                {"observe_ms", std::to_string(test.observe.count())},
                {"control", o.control_ok ? "benign twin written, read back and removed"
                                         : o.control_detail},
                {"cleanup", cleanup},
                {"cleanup_verified", cleanup.rfind("FAILED", 0) == 0 ? "false" : "true"}};
  if (o.write_errno) b.evidence["write_error"] = write_detail;
  if (o.inspect_errno) b.evidence["observe_error"] = std::strerror(o.inspect_errno);
  if (o.removal_ms >= 0) b.evidence["time_to_action_ms"] = std::to_string(o.removal_ms);
  if (cleanup.rfind("FAILED", 0) == 0) {
    // A probe that cannot clean up has left an artifact behind: never report that as a pass.
    b.verdict = "error";
    b.reason = "cleanup_failed";
  }
  finish_result(b, clock_);
  co_return std::vector<common::ResultBody>{b};
}

}  // namespace tocsin::agent
