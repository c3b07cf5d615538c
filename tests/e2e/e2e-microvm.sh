#!/usr/bin/env bash
# The virtio-fs end-to-end test (tests/e2e/e2e-virtiofs.sh: same seed, guest
# workload and host verification) with the minimal guest kernel of
# guest/build-kernel.sh under QEMU's -M microvm (TCG): the share is a
# virtio-mmio vhost-user-fs-device, the console ttyS0. The kernel is built
# (about 3 minutes on 2 cores) and cached when missing.
#
# Usage:
#   tests/e2e/e2e-microvm.sh DAEMON_BIN [DAEMON_ARGS...]
#   tests/e2e/e2e-microvm.sh --9p-qemu
#
# It is tests/e2e/e2e-virtiofs.sh --machine microvm (see there for the
# daemon's contract and the environment). Ends with
# "e2e-virtiofs-microvm: N passed, M failed"; exits 1 if anything failed.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
    exit 2
fi
exec "$(dirname "${BASH_SOURCE[0]}")/e2e-virtiofs.sh" --machine microvm "$@"
