#!/usr/bin/env bash
# The Debian packages' life cycle, proven in a clean Debian 12 root made here with debootstrap
# (never on this machine itself): install the previous build (version A), check files, owners,
# modes, the system user, the conffile and the collector's first-install `init`; enroll a real
# agent with the packaged collector and leave a result in its outbox; upgrade to version B and
# check that keys, enrollment, outbox and database are byte-identical and the conffile edit
# survived, and that the upgraded collector takes the waiting result; remove (binaries gone,
# state kept, unit masked), reinstall (no second init), remove again; purge (state gone).
# Also: lintian on both .debs (no errors) and `systemd-analyze verify` on the installed units
# (nothing on stderr).
#
# Version A is this same build packaged as <version>~prev: the upgrade exercises what the
# packaging must get right (maintainer scripts, conffile, state, user, unit enablement), not a
# change of on-disk formats between two releases.
#
# Usage: tests/packaging/deb_lifecycle.sh [--build-dir DIR]   (root; CTest label `packaging`)
# The clean root is cached as a tarball keyed by the packages' dependencies:
#   TOCSIN_TEST_CACHE   (default /var/cache/tocsin-test)
#   TOCSIN_DEBIAN_MIRROR (default http://deb.debian.org/debian)
# Everything else lives in a temporary directory that is removed at exit. The chroot part runs
# in its own mount and network namespaces (loopback only): the collector it starts binds its
# packaged ports 7443/7444 without touching this machine's, and /proc is unmounted with the
# namespace whatever happens.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)

# ---------------------------------------------------------------------------------------------
# Checks: each prints one line; failures are counted and the script exits 1 at the end.
failures=0
ok() { printf '  ok    %s\n' "$1"; }
bad() { printf '  FAIL  %s\n' "$1"; failures=$((failures + 1)); }
check() {  # check "description" command...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
die() { echo "deb_lifecycle: $*" >&2; exit 1; }
phase() { printf '== %s (%ss)\n' "$1" "$((SECONDS - phase_start))"; phase_start=$SECONDS; }
phase_start=$SECONDS

# =============================================================================================
# Inner part: runs under `unshare --mount --net` with the unpacked root in $root.
inner() {
  root=$1 debs=$2 version_a=$3 version_b=$4 units_out=$5
  R() { chroot "$root" "$@"; }
  trap 'echo "deb_lifecycle: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR
  mount -t proc proc "$root/proc"
  ip link set lo up
  collector_pid=""
  trap 'stop_collector; umount "$root/proc" 2>/dev/null || true' EXIT
  trap 'exit 143' TERM INT

  stat_is() {  # stat_is PATH "MODE USER GROUP" (names resolved inside the root)
    [[ "$(R stat -c '%a %U %G' "$1" 2>/dev/null)" == "$2" ]] ||
      { echo "    $1: $(R stat -c '%a %U %G' "$1" 2>&1)" >&2; return 1; }
  }
  absent() { ! R test -e "$1" && ! R test -L "$1"; }
  installed_version() { R dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null; }
  contains() { R grep -qF -- "$2" "$1"; }

  # State as "path mode owner group size" plus a SHA-256 of every file.
  snapshot() {
    R sh -c 'cd /var/lib && find tocsin tocsin-agent -printf "%p %m %u %g %s\n" | LC_ALL=C sort &&
             find tocsin tocsin-agent -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum'
  }

  start_collector() {
    R rm -f /tmp/collector.ready
    # As the unit runs it: the service user, the packaged config path (a link into the data dir).
    chroot "$root" setpriv --reuid=tocsin --regid=tocsin --clear-groups \
      /usr/bin/tocsin-collector run --config /etc/tocsin/collector.yaml \
      --ready-file /tmp/collector.ready >>"$debs/collector.log" 2>&1 &
    collector_pid=$!
    for _ in $(seq 300); do
      [[ -s "$root/tmp/collector.ready" ]] && return 0
      kill -0 "$collector_pid" 2>/dev/null || break
      sleep 0.1
    done
    tail -20 "$debs/collector.log" >&2
    return 1
  }
  stop_collector() {
    [[ -n "${collector_pid:-}" ]] || return 0
    kill -TERM "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
    collector_pid=""
    rm -f "$root/tmp/collector.ready"
  }
  cli() {
    R tocsin --server https://127.0.0.1:7444 --token-file /var/lib/tocsin/admin.token "$@"
  }
  count_results() { cli results --json 2>/dev/null | grep -c '"test_id": *"reach-collector"' || true; }

  dpkg_do() {  # dpkg_do ARGS...: run dpkg in the root, log its output, fail on a non-zero rc
    echo "+ dpkg $*" >>"$debs/dpkg.log"
    R dpkg "$@" >>"$debs/dpkg.log" 2>&1 || { tail -30 "$debs/dpkg.log" >&2; return 1; }
  }

  phase "chroot ready"
  # --- Version A: first install ---------------------------------------------------------------
  cp "$debs"/a/*.deb "$debs"/b/*.deb "$root/tmp/"
  # An extra certificate name, as an admin would give it at the first install.
  export TOCSIN_SERVER_NAMES=collector.tocsin.test
  check "install version A of both packages (dpkg -i, no systemd running)" \
    dpkg_do -i "/tmp/tocsin-collector_${version_a}_amd64.deb" "/tmp/tocsin-agent_${version_a}_amd64.deb" ||
    return 1
  unset TOCSIN_SERVER_NAMES
  for p in tocsin-agent tocsin-collector; do
    check "$p $version_a is installed" test "$(installed_version $p)" = "install ok installed $version_a"
  done
  for b in tocsin tocsin-collector tocsin-agent; do
    check "/usr/bin/$b is 0755 root:root" stat_is /usr/bin/$b "755 root root"
  done
  for u in tocsin-agent tocsin-collector; do
    check "unit $u.service installed 0644 root" stat_is /lib/systemd/system/$u.service "644 root root"
    check "$u.service enabled without systemd running" \
      R test -L /etc/systemd/system/multi-user.target.wants/$u.service
  done
  check "/etc/tocsin/agent.yaml is 0644 root:root" stat_is /etc/tocsin/agent.yaml "644 root root"
  check "/etc/tocsin/agent.yaml is a conffile" \
    sh -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' tocsin-agent | grep -q '/etc/tocsin/agent.yaml'"
  check "/etc/tocsin/collector.yaml links to the data dir" \
    test "$(R readlink /etc/tocsin/collector.yaml)" = /var/lib/tocsin/collector.yaml
  local pw
  pw=$(R getent passwd tocsin || true)
  IFS=: read -r _ _ fd_uid fd_gid _ fd_home fd_shell <<<"$pw"
  check "system user tocsin exists (uid $fd_uid < 1000)" test -n "$pw" -a "${fd_uid:-9999}" -lt 1000
  check "its group is tocsin" test "$(R getent group tocsin | cut -d: -f3)" = "$fd_gid"
  check "its home is /var/lib/tocsin, shell $fd_shell" \
    test "$fd_home" = /var/lib/tocsin -a "$fd_shell" = /usr/sbin/nologin
  check "/var/lib/tocsin is 0700 tocsin" stat_is /var/lib/tocsin "700 tocsin tocsin"
  for f in ca.pem server.pem; do
    check "init ran: $f 0644 tocsin" stat_is /var/lib/tocsin/$f "644 tocsin tocsin"
  done
  check "init ran: db/ 0700 tocsin" stat_is /var/lib/tocsin/db "700 tocsin tocsin"
  for f in ca.key server.key admin.token; do
    check "init ran: $f 0600 tocsin" stat_is /var/lib/tocsin/$f "600 tocsin tocsin"
  done
  local san
  san=$(openssl x509 -noout -ext subjectAltName -in "$root/var/lib/tocsin/server.pem" 2>&1 | tail -1)
  check "server certificate names: TOCSIN_SERVER_NAMES and loopback ($san)" \
    sh -c "echo '$san' | grep -q 'DNS:collector.tocsin.test' && echo '$san' | grep -q 'IP Address:127.0.0.1'"
  check "init ran: collector.yaml 0640 tocsin" stat_is /var/lib/tocsin/collector.yaml "640 tocsin tocsin"
  check "collector.yaml: data_dir /var/lib/tocsin" contains /var/lib/tocsin/collector.yaml "data_dir: /var/lib/tocsin"
  check "collector.yaml: agents on 0.0.0.0:7443" contains /var/lib/tocsin/collector.yaml "agent_listen: 0.0.0.0:7443"
  check "collector.yaml: API on 127.0.0.1:7444" contains /var/lib/tocsin/collector.yaml "api_listen: 127.0.0.1:7444"
  check "nothing in the data dir is owned by another user" \
    test -z "$(R find /var/lib/tocsin ! -user tocsin)"
  check "/var/lib/tocsin-agent is 0700 root" stat_is /var/lib/tocsin-agent "700 root root"

  # The packaged binaries run on a clean root: their dependencies are complete.
  check "tocsin-collector --help runs" sh -c "chroot '$root' tocsin-collector --help >/dev/null"
  check "tocsin --help runs" sh -c "chroot '$root' tocsin --help >/dev/null"
  check "tocsin-agent --help runs" sh -c "chroot '$root' tocsin-agent --help >/dev/null"
  check "tocsin-collector init into a temporary dir works" \
    sh -c "chroot '$root' tocsin-collector init --data-dir /tmp/init-probe >/dev/null &&
           chroot '$root' test -s /tmp/init-probe/ca.key -a -s /tmp/init-probe/admin.token"
  R rm -rf /tmp/init-probe
  check "the shipped agent.yaml is valid (tocsin-agent tests)" \
    sh -c "chroot '$root' tocsin-agent tests --config /etc/tocsin/agent.yaml >/dev/null"
  phase "version A installed and checked"

  # --- A real enrollment and a result waiting in the outbox ----------------------------------
  check "the packaged collector starts as user tocsin with the packaged config" start_collector
  local token
  token=$(cli token create --ttl 10m 2>>"$debs/collector.log" | tail -1)
  check "tocsin token create gives an enrollment token" test -n "$token"
  check "tocsin-agent enroll with the collector's ca.pem" \
    sh -c "chroot '$root' tocsin-agent enroll --server 127.0.0.1:7443 --token '$token' \
           --ca /var/lib/tocsin/ca.pem --state-dir /var/lib/tocsin-agent >>'$debs/agent.log' 2>&1"
  for f in key.pem cert.pem; do
    check "agent $f is 0600 root" stat_is /var/lib/tocsin-agent/$f "600 root root"
  done
  # The admin's edit of the conffile: a probe against the collector's own port.
  # connect_timeout: how long the agent waits for the collector before running tests anyway.
  R sed -i -e 's|^  network: \[\]|  network: ["127.0.0.1:7443"]  # edited by the admin|' \
    -e 's|^log_level: info|log_level: info\nuplink: {connect_timeout: 1s}|' \
    -e 's|^tests: \[\]|tests:\n  - {id: reach-collector, kind: tcp_connect, every: 1h, params: {targets: ["127.0.0.1:7443"]}}|' \
    /etc/tocsin/agent.yaml
  check "the edited agent.yaml is valid" \
    sh -c "chroot '$root' tocsin-agent tests --config /etc/tocsin/agent.yaml | grep -q reach-collector"
  check "the agent delivers a result (run --once)" \
    sh -c "timeout 60 chroot '$root' tocsin-agent run --once --config /etc/tocsin/agent.yaml >>'$debs/agent.log' 2>&1"
  local delivered_a
  delivered_a=$(count_results)
  check "the collector stored it ($delivered_a result)" test "$delivered_a" -ge 1
  stop_collector
  # Collector down: the next result waits in the durable outbox; stop the agent once it is there.
  outbox_pending() {
    R tocsin-agent status --config /etc/tocsin/agent.yaml 2>/dev/null |
      sed -n 's/.*"pending":\([0-9]*\).*/\1/p'
  }
  chroot "$root" tocsin-agent run --once --config /etc/tocsin/agent.yaml >>"$debs/agent.log" 2>&1 &
  local agent_pid=$! pending=0
  for _ in $(seq 150); do
    pending=$(outbox_pending)
    [[ "${pending:-0}" -ge 1 ]] && break
    sleep 0.1
  done
  kill -TERM "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  pending=$(outbox_pending)
  check "one result waits in the outbox while the collector is down (pending=$pending)" \
    test "${pending:-0}" -ge 1
  echo "marker written by the packaging test" | R sh -c 'umask 077; cat >/var/lib/tocsin/test-marker'
  R chown tocsin:tocsin /var/lib/tocsin/test-marker
  snapshot >"$debs/state-before-upgrade"
  R sha256sum /var/lib/tocsin/ca.key /var/lib/tocsin/server.key /var/lib/tocsin/admin.token \
    /var/lib/tocsin-agent/key.pem /var/lib/tocsin-agent/cert.pem >"$debs/keys-before-upgrade"
  phase "enrolled; a result waits in the outbox"

  # --- Upgrade to version B ---------------------------------------------------------------------
  check "upgrade both packages to version B" \
    dpkg_do -i "/tmp/tocsin-collector_${version_b}_amd64.deb" "/tmp/tocsin-agent_${version_b}_amd64.deb" ||
    return 1
  for p in tocsin-agent tocsin-collector; do
    check "$p $version_b is installed" test "$(installed_version $p)" = "install ok installed $version_b"
  done
  snapshot >"$debs/state-after-upgrade"
  check "state (keys, enrollment, outbox, database) unchanged: same files, modes, owners, SHA-256" \
    diff -u "$debs/state-before-upgrade" "$debs/state-after-upgrade"
  check "keys and tokens have the same hashes" \
    sh -c "chroot '$root' sha256sum -c --quiet - <'$debs/keys-before-upgrade'"
  check "the conffile edit survived the upgrade" contains /etc/tocsin/agent.yaml "# edited by the admin"
  check "user tocsin kept its uid" test "$(R id -u tocsin)" = "$fd_uid"
  check "the upgraded collector starts on the kept state" start_collector
  check "the waiting result is delivered after the upgrade" \
    sh -c "timeout 60 chroot '$root' tocsin-agent run --once --config /etc/tocsin/agent.yaml >>'$debs/agent.log' 2>&1"
  local delivered_b
  delivered_b=$(count_results)
  check "the database kept the old results and has the new ones ($delivered_a -> $delivered_b)" \
    test "$delivered_b" -ge $((delivered_a + 2))
  local agent_id
  agent_id=$(R sed -n 's/^agent_id: *//p' /var/lib/tocsin-agent/identity.yaml | tr -d '"')
  check "the agent enrolled before the upgrade ($agent_id) is listed" \
    sh -c "chroot '$root' tocsin --server https://127.0.0.1:7444 \
           --token-file /var/lib/tocsin/admin.token agents | grep -qF -- '${agent_id:-none}'"
  stop_collector
  # For systemd-analyze verify, run by the outer part with this root's users.
  cp "$root"/lib/systemd/system/tocsin-*.service "$root/etc/passwd" "$root/etc/group" "$units_out/"
  mkdir -p "$units_out/bin"
  cp "$root"/usr/bin/tocsin-agent "$root"/usr/bin/tocsin-collector "$units_out/bin/"
  phase "upgraded to version B and checked"

  # --- Remove: binaries gone, state kept ---------------------------------------------------------
  snapshot >"$debs/state-before-remove"
  check "remove both packages" dpkg_do -r tocsin-agent tocsin-collector || return 1
  for b in tocsin tocsin-collector tocsin-agent; do
    check "/usr/bin/$b is gone" absent /usr/bin/$b
  done
  check "units are gone" absent /lib/systemd/system/tocsin-collector.service
  check "status is config-files" \
    test "$(installed_version tocsin-agent)" = "deinstall ok config-files $version_b"
  snapshot >"$debs/state-after-remove"
  check "state kept after remove (same files, modes, owners, SHA-256)" \
    diff -u "$debs/state-before-remove" "$debs/state-after-remove"
  check "the conffile is kept after remove" contains /etc/tocsin/agent.yaml "# edited by the admin"
  check "the removed collector's unit is masked" \
    test "$(R readlink /etc/systemd/system/tocsin-collector.service)" = /dev/null
  # Reinstalling a removed package resumes on the kept state: no second init, unit unmasked.
  check "reinstall version B after remove" \
    dpkg_do -i "/tmp/tocsin-collector_${version_b}_amd64.deb" "/tmp/tocsin-agent_${version_b}_amd64.deb" ||
    return 1
  snapshot >"$debs/state-after-reinstall"
  check "reinstall kept the state (init did not run again)" \
    diff -u "$debs/state-before-remove" "$debs/state-after-reinstall"
  check "reinstall unmasked and enabled the collector again" \
    sh -c "! chroot '$root' test -L /etc/systemd/system/tocsin-collector.service &&
           chroot '$root' test -L /etc/systemd/system/multi-user.target.wants/tocsin-collector.service"
  check "remove again" dpkg_do -r tocsin-agent tocsin-collector || return 1
  phase "removed (and reinstalled once)"

  # --- Purge: state gone ---------------------------------------------------------------------
  check "purge both packages" dpkg_do -P tocsin-agent tocsin-collector || return 1
  check "/var/lib/tocsin is gone" absent /var/lib/tocsin
  check "/var/lib/tocsin-agent is gone" absent /var/lib/tocsin-agent
  check "/etc/tocsin is gone" absent /etc/tocsin
  check "no enable or mask links are left" test -z "$(R find /etc/systemd -name 'tocsin*')"
  check "dpkg knows neither package" \
    sh -c "! chroot '$root' dpkg-query -W -f='\${Status}' tocsin-agent tocsin-collector 2>/dev/null | grep -q ."
  local left
  left=$(R find / -xdev -uid "$fd_uid" 2>/dev/null || true)
  check "no file owned by the tocsin user is left${left:+: $left}" test -z "$left"
  phase "purged"
  [[ $failures -eq 0 ]] && return 0
  return 1
}

if [[ "${1:-}" == "--inner" ]]; then
  shift
  inner "$@"
  exit $?
fi

# =============================================================================================
# Outer part: packages, lintian, the cached clean root, then the inner part in namespaces.
build_dir=$src/build
while (($#)); do
  case "$1" in
    --build-dir) build_dir=${2:?}; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
if [[ $(id -u) -ne 0 ]]; then
  echo "deb_lifecycle: needs root (debootstrap, chroot, namespaces); skipped" >&2
  exit 77
fi
for tool in debootstrap lintian dpkg-deb dpkg-shlibdeps systemd-analyze unshare chroot zstd ip; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/deps --test"
done

cache=${TOCSIN_TEST_CACHE:-/var/cache/tocsin-test}
mirror=${TOCSIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tocsin-deb-test.XXXXXX")
cleanup() {
  # The chroot's mounts live in the inner mount namespace and vanish with it; this is a guard.
  if grep -q " $tmp/" /proc/self/mounts; then
    grep " $tmp/" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l || true
  fi
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
inner_pid=""
# A CTest timeout sends SIGTERM: stop the chroot part (its namespaces and mounts die with it),
# then clean up.
trap '[[ -n "$inner_pid" ]] && kill -TERM "$inner_pid" 2>/dev/null && wait "$inner_pid"; exit 143' TERM INT

# --- Packages: version A (the previous build) and B, from the already built tree -----------
version_b=$(sed -n 's/^project(tocsin VERSION \([0-9][0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
version_a="${version_b}~prev"
debs=$tmp/debs
mkdir -p "$debs/a" "$debs/b" "$tmp/units"
# --fast: gzip instead of xz (xz costs ~25 s a package on a busy 2-core machine).
"$src/scripts/package" --no-build --fast --build-dir "$build_dir" --version "$version_a" --out "$debs/a" >/dev/null
"$src/scripts/package" --no-build --fast --build-dir "$build_dir" --version "$version_b" --out "$debs/b" >/dev/null
ls -l "$debs"/a "$debs"/b | grep '\.deb$'
phase "packages built (A=$version_a, B=$version_b)"

# --- lintian: no errors; warnings are listed in packaging/deb/README.md ---------------------
lintian_rc=0
lintian --fail-on error --display-level '>=warning' "$debs"/b/*.deb >"$tmp/lintian.log" 2>&1 || lintian_rc=$?
grep -v 'running with root privileges' "$tmp/lintian.log" || true
check "lintian reports no errors on both packages ($(grep -c '^W:' "$tmp/lintian.log") warnings)" \
  test "$lintian_rc" -eq 0
phase "lintian"

# --- The clean Debian 12 root, cached per dependency set --------------------------------------
# debootstrap --include takes real packages only: a virtual name from a shlibs file (e.g.
# libspdlog1.10-fmt9) becomes the package on this build machine that provides it.
real_package() {
  if [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; then
    echo "$1"
    return
  fi
  local provider
  provider=$(dpkg-query -W -f='${Package}\t${Provides}\n' |
    awk -F'\t' -v want="$1" '{ n = split($2, p, /, */); for (i = 1; i <= n; i++) {
      sub(/ .*/, "", p[i]); if (p[i] == want && found == "") found = $1 } }
      END { print found }')
  [[ -n "$provider" ]] || die "no installed package provides $1"
  echo "$provider"
}
deps=$(
  for d in "$debs"/b/*.deb; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
    sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' -e '/^$/d' | LC_ALL=C sort -u |
    while read -r dep; do real_package "$dep" || exit 1; done | LC_ALL=C sort -u) ||
  die "cannot turn the packages' dependencies into real package names"
mapfile -t include <<<"$deps"
key=$(printf '%s\n' "$suite" "$mirror" "${include[@]}" | sha256sum | cut -c1-16)
tarball=$cache/$suite-minbase-$key.tar.zst
mkdir -p "$cache/debs"
exec 9>"$cache/.lock"
flock -w 1200 9 || die "cannot lock $cache/.lock"
if [[ ! -s "$tarball" ]]; then
  echo "clean root: cold, debootstrap --variant=minbase $suite from $mirror with: ${include[*]}"
  mk=$tmp/debootstrap
  debootstrap --variant=minbase --cache-dir="$cache/debs" --include="$(IFS=,; echo "${include[*]}")" \
    "$suite" "$mk" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -30 "$tmp/debootstrap.log" >&2; die "debootstrap failed (is $mirror reachable?)"; }
  rm -rf "$mk"/var/cache/apt/archives/*.deb "$mk"/var/lib/apt/lists/*_Packages
  tar -C "$mk" --numeric-owner -I 'zstd -T0 -3' -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf --one-file-system "$mk"
  # Older roots for other dependency sets are kept; the newest few are enough.
  ls -t "$cache"/$suite-minbase-*.tar.zst | tail -n +4 | xargs -r rm -f
  phase "clean root made and cached ($tarball)"
else
  echo "clean root: warm, from $tarball"
fi
root=$tmp/root
mkdir "$root"
tar -C "$root" --numeric-owner -I zstd -xpf "$tarball"
flock -u 9
phase "clean root unpacked"

# --- Install, upgrade, remove, purge inside the root -------------------------------------------
inner_rc=0
unshare --mount --net --propagation private "$0" --inner "$root" "$debs" "$version_a" "$version_b" \
  "$tmp/units" &
inner_pid=$!
wait "$inner_pid" || inner_rc=$?
inner_pid=""
check "life cycle in the clean root" test "$inner_rc" -eq 0
phase_start=$SECONDS
if ((inner_rc != 0)); then
  for log in dpkg.log collector.log agent.log; do
    [[ -s "$debs/$log" ]] && { echo "--- $log (last lines)"; tail -25 "$debs/$log"; }
  done
fi

# --- systemd-analyze verify on the units as installed, with the root's users and binaries ---
# A private mount namespace shows the root's passwd/group at /etc (User=tocsin must resolve)
# and the unit's ExecStart points at the installed binary. verify reports bad keys, users and
# values only as warnings with exit code 0 (TEST-PEERS §9), so any stderr output fails.
if [[ -s "$tmp/units/tocsin-collector.service" ]]; then
  for u in tocsin-agent tocsin-collector; do
    sed -i "s|^ExecStart=/usr/bin/|ExecStart=$tmp/units/bin/|" "$tmp/units/$u.service"
    out=$(unshare --mount --propagation private sh -c \
      "mount --bind '$tmp/units/passwd' /etc/passwd && mount --bind '$tmp/units/group' /etc/group &&
       systemd-analyze --no-pager verify '$tmp/units/$u.service'" 2>&1 >/dev/null) && rc=0 || rc=$?
    check "systemd-analyze verify $u.service: rc $rc, stderr empty" test "$rc" -eq 0 -a -z "$out"
    [[ -z "$out" ]] || echo "$out" | sed 's/^/    /'
  done
else
  bad "systemd-analyze verify: no installed units were copied out of the root"
fi
phase "systemd-analyze verify"

echo "== total ${SECONDS}s, $failures failure(s)"
((failures == 0))
