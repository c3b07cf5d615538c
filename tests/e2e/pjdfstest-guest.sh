#!/usr/bin/env bash
# Run pjdfstest inside the e2e guest on the daemon's share (vhost-user-fs).
#
# Usage:
#   tests/e2e/pjdfstest-guest.sh DAEMON_BIN [--daemon-arg ARG]... [TEST_PATTERN...]
#   tests/e2e/pjdfstest-guest.sh --9p-qemu [TEST_PATTERN...]
#
# DAEMON_BIN is started as DAEMON_BIN --shared-dir DIR --socket-path SOCK
# [ARG...]. TEST_PATTERNs filter pjdfstest's test names (e.g. chmod rename).
# --9p-qemu uses QEMU's built-in 9p server instead (reference run).
# Needs pjdfstest (cargo install pjdfstest) on the host: it is copied into the
# initramfs with its libraries.
#
# Environment: E2E_TIMEOUT (default 900 s), E2E_KEEP=1, E2E_LOG_DIR.
# Ends with "pjdfstest-guest: N passed, M failed" (pjdfstest's counts; failed
# includes unexpected passes); exits 1 if pjdfstest failed or the guest or the
# daemon misbehaved.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
    exit 2
fi
mode=virtiofs
daemon=
daemon_args=()
if [[ $1 == --9p-qemu ]]; then
    mode=9p-qemu
else
    daemon=$1
    [[ -x $daemon ]] || { echo "pjdfstest-guest: $daemon is not executable" >&2; exit 2; }
    daemon=$(cd "$(dirname "$daemon")" && pwd)/$(basename "$daemon")
fi
shift
patterns=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --daemon-arg) daemon_args+=("${2:?}"); shift ;;
        *) [[ $1 =~ ^[A-Za-z0-9_:]+$ ]] || { echo "pjdfstest-guest: bad pattern '$1'" >&2; exit 2; }
           patterns+=("$1") ;;
    esac
    shift
done
e2e_name=pjdfstest-guest
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$log_dir"
console_log=$log_dir/console-pjdfstest-$mode.log
initramfs=$kernel_dir/initramfs-pjdfstest.cpio.gz
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

e2e_build_guest --with-pjdfstest --out "$initramfs"
e2e_make_workdir

run_args=(--cmd pjdfstest --timeout "${E2E_TIMEOUT:-900}" --log "$console_log" --quiet
    --initramfs "$initramfs")
if ((${#patterns[@]})); then
    run_args+=(--args "$(IFS=,; echo "${patterns[*]}")")
fi
if [[ $mode == virtiofs ]]; then
    if ! e2e_start_daemon "$daemon" "$log_dir/daemon-pjdfstest.log" "${daemon_args[@]}"; then
        echo "$e2e_name: 0 passed, 1 failed"
        exit 1
    fi
    run_args+=(--fstype virtiofs --socket "$e2e_socket")
else
    run_args+=(--fstype 9p-qemu --dir "$e2e_share")
fi

e2e_note "running pjdfstest in the guest (console: $console_log)"
status=0
"$e2e_dir/run-guest.sh" "${run_args[@]}" || status=$?
daemon_ok=true
if [[ $mode == virtiofs ]]; then
    e2e_check_daemon_exit >"$log_dir/daemon-exit.log"
    cat "$log_dir/daemon-exit.log"
    grep -q '^FAIL' "$log_dir/daemon-exit.log" && daemon_ok=false
fi

# Show everything but the passing test cases.
tr -d '\r' <"$console_log" | sed -n '/^e2e-init: running/,$p' |
    grep -v -E '[[:space:]]ok$' || true

summary=$(tr -d '\r' <"$console_log" | grep -E '^Summary: [0-9]+ failed' | tail -n1) || true
e2e_note "took $(($(date +%s) - start))s"
if [[ -z $summary ]]; then
    echo "$e2e_name: no pjdfstest summary (guest status $status; log: $console_log)"
    echo "$e2e_name: 0 passed, 1 failed"
    exit 1
fi
read -r fail skip pass xfail < <(sed -E \
    's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected failures.*/\1 \2 \3 \4/' \
    <<<"$summary")
e2e_note "$pass passed, $fail failed, $skip skipped, $xfail expected failures"
echo "$e2e_name: $pass passed, $fail failed"
[[ $status -eq 0 && $fail -eq 0 ]] && $daemon_ok
