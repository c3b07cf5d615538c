#!/usr/bin/env bash
# pjdfstest against the daemon's core served over the host's /dev/fuse:
# starts DAEMON_BIN --shared-dir DIR --fuse-mount MNT, runs
# tests/e2e/pjdfstest-host.sh on MNT, then unmounts and checks that the
# daemon exited cleanly.
#
# Usage: tests/e2e/pjdfstest-fuse.sh DAEMON_BIN [TEST_PATTERN...]
# Ends with pjdfstest-host's "pjdfstest-host: N passed, M failed" line.
set -euo pipefail

daemon=${1:?usage: pjdfstest-fuse.sh DAEMON_BIN [TEST_PATTERN...]}
shift
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log_dir=${E2E_LOG_DIR:-$script_dir/../../target/e2e}
mkdir -p "$log_dir"
# Short paths: pjdfstest binds unix sockets deep below the mount point, and
# sun_path holds at most 108 bytes.
work=$(mktemp -d /tmp/vf.XXXXXX)
mkdir -p "$work/share" "$work/m"
chmod 0755 "$work" "$work/share"
log=$log_dir/pjdfstest-fuse-daemon.log

"$daemon" --shared-dir "$work/share" --fuse-mount "$work/m" --thread-pool-size 2 >"$log" 2>&1 &
pid=$!
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if mountpoint -q "$work/m"; then umount "$work/m" || umount -l "$work/m" || true; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 100); do
    mountpoint -q "$work/m" && break
    kill -0 "$pid" 2>/dev/null || { echo "pjdfstest-fuse: daemon died:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
done
mountpoint -q "$work/m" || { echo "pjdfstest-fuse: mount did not appear" >&2; cat "$log" >&2; exit 1; }

status=0
# The whole suite passes 384 tests (docs/conformance.md); fewer is a failure.
min=
(($#)) || min=${PJDFSTEST_MIN_PASSED:-384}
PJDFSTEST_MIN_PASSED=$min "$script_dir/pjdfstest-host.sh" "$work/m" "$@" || status=$?

# A process pjdfstest started (its etxtbsy tests run a copied `sleep`) may
# still be exiting: retry a busy mount before giving up.
for try in $(seq 50); do
    umount "$work/m" 2>/dev/null && break
    if [ "$try" = 50 ]; then
        echo "pjdfstest-fuse: $work/m stayed busy; unmounting lazily" >&2
        umount -l "$work/m"
    fi
    sleep 0.1
done
for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "pjdfstest-fuse: daemon still running after unmount" >&2
    status=1
else
    wait "$pid" || { echo "pjdfstest-fuse: daemon exited with $?" >&2; status=1; }
fi
exit "$status"
