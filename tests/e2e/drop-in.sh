#!/usr/bin/env bash
# The drop-in check: the guest workload (tests/e2e/e2e-virtiofs.sh: seed,
# workload in a QEMU guest, host verification) once per management stack,
# each launching the daemon with that stack's exact argument list, socket
# hand-over and stderr handling (tests/e2e/launch-as.sh, which cites the
# stacks' sources): libvirt 9.0's -o form, current libvirt's separate
# options, Kata's Go runtime and Kata's Rust runtime.
#
# Usage: tests/e2e/drop-in.sh [--machine M] [--stack S]... [DAEMON_BIN]
#   DAEMON_BIN   default target/release/virtiofsd-rs (LAUNCH_BIN)
#   --stack S    only these stacks (default: libvirt-9 libvirt kata-go kata-rs)
#   --machine M  e2e-virtiofs.sh's machine (default q35: Debian's 6.1 guest)
# Each run is one guest boot (about a minute under TCG). Must run as root.
#
# libvirt's session mode (an unprivileged daemon with --uid-map/--gid-map)
# is not a guest run here: the seeded share's host owners would be outside
# its maps. crates/virtiofs/tests/userns.rs drives it over vhost-user.
#
# Ends with "drop-in: N passed, M failed" (a stack per count); exits 1 if
# any stack failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

machine=q35
stacks=()
bin=
while (($#)); do
    case $1 in
        --machine) machine=${2:?--machine needs a value}; shift 2 ;;
        --stack) stacks+=("${2:?--stack needs a value}"); shift 2 ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "drop-in: unknown option $1" >&2; exit 2 ;;
        *) bin=$1; shift ;;
    esac
done
((${#stacks[@]})) || stacks=(libvirt-9 libvirt kata-go kata-rs)
bin=${bin:-target/release/virtiofsd-rs}
[[ -x $bin ]] || { echo "drop-in: $bin is not an executable (cargo build --release)" >&2; exit 2; }

passed=0 failed=0
for s in "${stacks[@]}"; do
    echo "=== drop-in: $s"
    if LAUNCH_STACK=$s LAUNCH_BIN=$bin E2E_LOG_DIR=target/e2e/drop-in-$s \
        tests/e2e/e2e-virtiofs.sh --machine "$machine" tests/e2e/launch-as.sh --xattr; then
        echo "drop-in: PASS $s"
        passed=$((passed + 1))
    else
        echo "drop-in: FAIL $s (logs: target/e2e/drop-in-$s)"
        failed=$((failed + 1))
    fi
done
echo "drop-in: $passed passed, $failed failed"
((failed == 0))
