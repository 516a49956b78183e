// systemd's readiness and watchdog protocol without libsystemd: a datagram to $NOTIFY_SOCKET
// (what sd_notify sends) and the interval in $WATCHDOG_USEC. Linking libsystemd for this maps it
// and six libraries it needs into the agent (libgcrypt, liblzma, libzstd, ...; see the
// footprint section of docs/BENCHMARKS.md).
#pragma once

#include <chrono>
#include <string_view>

namespace tocsin::agent::systemd {

// Sends `state` (e.g. "READY=1\nSTATUS=running") to the socket in $NOTIFY_SOCKET: a path, or
// an abstract name starting with '@'. False when the variable is unset (not under systemd) or
// the datagram could not be sent; the agent runs on either way.
bool notify(std::string_view state);

// How often systemd expects WATCHDOG=1 from this process ($WATCHDOG_USEC, when $WATCHDOG_PID
// is unset or names us); zero when it expects none.
std::chrono::microseconds watchdog_interval();

}  // namespace tocsin::agent::systemd
