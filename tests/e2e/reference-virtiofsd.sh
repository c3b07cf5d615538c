#!/usr/bin/env bash
# Reference daemon for the e2e scripts: runs QEMU's C virtiofsd (shipped by
# Debian 12's qemu-system-common as /usr/lib/qemu/virtiofsd; newer QEMU
# releases no longer ship it) behind the upstream Rust virtiofsd's command
# line, so that
#   tests/e2e/e2e-virtiofs.sh tests/e2e/reference-virtiofsd.sh
# validates the guest tooling over a real vhost-user-fs device.
#
# Usage: reference-virtiofsd.sh --shared-dir DIR --socket-path SOCK [C-DAEMON-ARGS...]
# Environment: REFERENCE_VIRTIOFSD (default /usr/lib/qemu/virtiofsd).
set -euo pipefail

bin=${REFERENCE_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
dir=
sock=
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --shared-dir) dir=${2:?}; shift ;;
        --shared-dir=*) dir=${1#*=} ;;
        --socket-path) sock=${2:?}; shift ;;
        --socket-path=*) sock=${1#*=} ;;
        *) extra+=("$1") ;;
    esac
    shift
done
[[ -n $dir && -n $sock ]] || { echo "usage: $0 --shared-dir DIR --socket-path SOCK" >&2; exit 2; }
[[ -x $bin ]] || { echo "reference-virtiofsd: $bin not found (Debian 12: qemu-system-common)" >&2; exit 2; }
exec "$bin" --socket-path="$sock" -o source="$dir" -o cache=auto "${extra[@]}"
