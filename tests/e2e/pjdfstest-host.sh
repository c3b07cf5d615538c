#!/usr/bin/env bash
# Run pjdfstest on a host path (e.g. a host FUSE mount of the daemon, or a
# local ext4/tmpfs directory as a baseline).
#
# Usage: tests/e2e/pjdfstest-host.sh MOUNTPOINT [TEST_PATTERN...]
#
# Uses tests/e2e/guest/pjdfstest.toml (users nobody/nogroup and tests/tests
# must exist: scripts/ci-deps.sh creates them). Tests run in a fresh
# subdirectory of MOUNTPOINT. A directory on another file system (/dev/shm or
# $TMPDIR) is passed as the secondary file system for the EXDEV tests.
# Ends with "pjdfstest-host: N passed, M failed"; exits with pjdfstest's status,
# or 1 when PJDFSTEST_MIN_PASSED is set and fewer tests passed.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
mnt=${1:?usage: pjdfstest-host.sh MOUNTPOINT [TEST_PATTERN...]}
shift
[[ -d $mnt ]] || { echo "pjdfstest-host: $mnt is not a directory" >&2; exit 2; }

pjdfstest=$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")
[[ -x $pjdfstest ]] || { echo "pjdfstest-host: pjdfstest not found (cargo install pjdfstest)" >&2; exit 2; }
for u in nobody tests; do
    getent passwd "$u" >/dev/null || { echo "pjdfstest-host: user $u missing (scripts/ci-deps.sh)" >&2; exit 2; }
done
getent group nogroup >/dev/null || { echo "pjdfstest-host: group nogroup missing" >&2; exit 2; }

dir=$(mktemp -d "$mnt/pjd.XXXXXX")
chmod 0755 "$dir"
secondary=
for base in /dev/shm "${TMPDIR:-/tmp}" /tmp; do
    if [[ -d $base && -w $base && $(stat -c %d "$base") != "$(stat -c %d "$dir")" ]]; then
        secondary=$(mktemp -d "$base/pjdfstest-secondary.XXXXXX")
        break
    fi
done
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    rm -rf "$dir"
    if [[ -n $secondary ]]; then rm -rf "$secondary"; fi
}
trap cleanup EXIT

args=(-c "$repo_root/tests/e2e/guest/pjdfstest.toml" -p "$dir")
if [[ -n $secondary ]]; then
    args+=(-s "$secondary")
else
    echo "pjdfstest-host: no directory on another file system; EXDEV tests will be skipped"
fi
log=$(mktemp "${TMPDIR:-/tmp}/pjdfstest-host.XXXXXX.log")
start=$(date +%s)
status=0
NO_COLOR=1 "$pjdfstest" "${args[@]}" "$@" >"$log" 2>&1 || status=$?
grep -v -E '[[:space:]]ok$' "$log" || true
echo "pjdfstest-host: full output in $log; took $(($(date +%s) - start))s"
summary=$(grep -E '^Summary: [0-9]+ failed' "$log" | tail -n1) || true
if [[ -z $summary ]]; then
    echo "pjdfstest-host: 0 passed, 1 failed"
    exit 1
fi
read -r fail pass < <(sed -E 's/^Summary: ([0-9]+) failed, [0-9]+ skipped, ([0-9]+) passed.*/\1 \2/' <<<"$summary")
echo "pjdfstest-host: $pass passed, $fail failed"
# A run that passes fewer tests than documented (docs/conformance.md) lost
# tests to skips: as much a failure as a failed test.
if [[ -n ${PJDFSTEST_MIN_PASSED:-} && $pass -lt $PJDFSTEST_MIN_PASSED ]]; then
    echo "pjdfstest-host: only $pass passed, at least $PJDFSTEST_MIN_PASSED expected (PJDFSTEST_MIN_PASSED)" >&2
    exit 1
fi
exit "$status"
