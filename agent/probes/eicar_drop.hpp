// eicar_drop: does anti-malware act on a file that carries the EICAR test string?
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <filesystem>
#include <string>

#include "agent/probes/probe.hpp"
#include "common/payloads.hpp"

namespace tocsin::agent {

using common::eicar_test_string;

// What the drop observed, and its verdict per DESIGN.md. Pure, so it is table-tested.
struct DropObservation {
  bool control_ok = true;          // the benign twin was written, read back and removed
  std::string control_detail;
  int write_errno = 0;             // the EICAR write failed with this (0: written)
  int inspect_errno = 0;           // watching the file failed for a reason that is no defence
  bool gone = false;               // the file disappeared while observed
  bool altered = false;            // content differs from what was written
  bool unreadable = false;         // exists but cannot be read (e.g. access denied)
  std::int64_t removal_ms = -1;    // when gone/altered/unreadable was first seen
};
struct DropVerdict {
  std::string verdict;
  std::string reason;
};
DropVerdict drop_verdict(const DropObservation& o);

class EicarDropProbe : public Probe {
 public:
  EicarDropProbe(boost::asio::any_io_executor ex, const ClockState& clock)
      : ex_(std::move(ex)), clock_(clock) {}
  boost::asio::awaitable<std::vector<common::ResultBody>> run(const TestSpec& test,
                                                              std::string marker) override;

 private:
  boost::asio::any_io_executor ex_;
  const ClockState& clock_;
};

}  // namespace tocsin::agent
