#!/usr/bin/env bash
# End-to-end test: a Linux guest (Debian stock kernel, QEMU TCG) mounts the
# daemon's share over vhost-user-fs and runs tests/e2e/guest/workload; the host
# then verifies the share with tests/e2e/verify-host.sh.
#
# Usage:
#   tests/e2e/e2e-virtiofs.sh [--machine M] DAEMON_BIN [DAEMON_ARGS...]
#   tests/e2e/e2e-virtiofs.sh [--machine M] --9p-qemu
#
# DAEMON_BIN is started as
#   DAEMON_BIN --shared-dir DIR --socket-path SOCK [DAEMON_ARGS...]
# and must exit by itself once QEMU disconnects. --9p-qemu runs the same
# workload over QEMU's built-in 9p server instead (no daemon; validates the
# tooling, and gives a reference), plus verify-selftest.sh.
#
# --machine q35 (default) boots Debian's stock 6.1 kernel on -M q35
# (virtio-pci); --machine q35-6.12 Debian's stock 6.12 kernel, whose
# virtio-fs driver uses one request queue per vCPU (Linux 6.11 and later);
# --machine microvm boots guest/build-kernel.sh's minimal kernel (built and
# cached when missing) on -M microvm (virtio-mmio: vhost-user-fs-device,
# virtio-9p-device). The workload, seed and host verification are the same.
# tests/e2e/e2e-microvm.sh is --machine microvm.
#
# Environment: E2E_TIMEOUT (guest timeout, default 300 s), E2E_KEEP=1 (keep
# the temporary share), E2E_QUIET=1 (do not stream the guest console),
# E2E_LOG_DIR (default target/e2e), E2E_MACHINE (default for --machine),
# E2E_CPUS (the guest's vCPUs, default 2), E2E_FS_QUEUES (the device's
# request queues, default 1), E2E_MIN_QUEUES_USED (check that the daemon's
# exit report shows at least that many request queues that served requests),
# E2E_IDMAP=1 (the daemon was given --allow-idmap and the guest is
# q35-6.12: the guest also makes an idmapped mount of the share with
# vfs-idmap-mount, from target/release or E2E_IDMAP_TOOL, and works
# through it; see the workload's idmap section), E2E_LOCKS=1 (the daemon was
# given --posix-lock and --flock: host processes hold an fcntl lock and a
# flock on files under locks/ in the share while the guest starts, the
# guest sees them, waits for them, and takes locks of its own that a host
# process then sees; vfs-lock from target/release or E2E_LOCK_TOOL; see the
# workload's locks section).
# Must run as root.
#
# Ends with "e2e-virtiofs: N passed, M failed" (or e2e-9p-qemu: ...;
# e2e-virtiofs-microvm: ... with --machine microvm); exits 1 if anything
# failed.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

e2e_take_machine_opt "$@"
set -- "${e2e_args[@]}"
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
    exit 2
fi
mode=virtiofs
daemon=
if [[ $1 == --9p-qemu ]]; then
    mode=9p-qemu
    shift
else
    daemon=$1
    shift
    [[ -x $daemon ]] || { echo "e2e-virtiofs: $daemon is not executable" >&2; exit 2; }
    daemon=$(cd "$(dirname "$daemon")" && pwd)/$(basename "$daemon")
fi
e2e_name=e2e-$mode$e2e_machine_suffix
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root (chown, mknod in the share)" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$log_dir"
console_log=$log_dir/console-workload-$mode$e2e_machine_suffix.log
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# guest_tool VAR NAME: the guest-tools program NAME (target/release, or
# the path in VAR) goes into the initramfs; its path in $tool.
guest_programs=()
workload_args=()
guest_tool() {
    tool=${!1:-$repo_root/target/release/$2}
    [[ -x $tool ]] || {
        echo "$e2e_name: $tool is missing (cargo build --release -p guest-tools)" >&2
        exit 2
    }
    guest_programs+=(--add-program "$tool")
}
lock_tool=
if [[ $mode == virtiofs ]]; then
    if [[ ${E2E_IDMAP:-0} == 1 ]]; then
        guest_tool E2E_IDMAP_TOOL vfs-idmap-mount
        workload_args+=(idmap)
    fi
    if [[ ${E2E_LOCKS:-0} == 1 ]]; then
        guest_tool E2E_LOCK_TOOL vfs-lock
        lock_tool=$tool
        workload_args+=(locks)
    fi
fi
e2e_build_guest "${guest_programs[@]}"
e2e_make_workdir
"$e2e_dir/seed-host.sh" "$e2e_share"

# The host's side of the workload's locks section: a host process holds an
# fcntl lock and one a flock on locks/posix and locks/flock from before the
# guest starts until the guest creates locks/release; another waits for
# locks/guest-holds, then tries the locks the guest took on locks/guest and
# locks/guest-flock and writes what it found to locks/host-saw.
# Each waits at most as long as the guest may run (E2E_TIMEOUT) and a
# minute for its boot, then fails.
host_lock_pids=()
start_host_locks() {
    local d=$e2e_share/locks kind limit=$((${E2E_TIMEOUT:-300} + 60))
    mkdir -m 0777 "$d"
    : >"$d/posix" && : >"$d/flock" && : >"$d/guest" && : >"$d/guest-flock"
    for kind in posix flock; do
        "$lock_tool" hold "$kind" "$d/$kind" "$d/release" "$limit" &
        host_lock_pids+=($!)
    done
    (
        for _ in $(seq $((limit * 5))); do
            [[ -e $d/guest-holds ]] && break
            sleep 0.2
        done
        [[ -e $d/guest-holds ]] || exit 1
        saw=
        for f in posix:guest flock:guest-flock; do
            status=0
            "$lock_tool" try "${f%%:*}" "$d/${f#*:}" || status=$?
            case $status in 0) r=free ;; 1) r=conflict ;; *) r=error ;; esac
            saw="$saw${saw:+ }${f%%:*}=$r"
        done
        echo "$saw" >"$d/host-saw.tmp" && mv "$d/host-saw.tmp" "$d/host-saw"
    ) &
    host_lock_pids+=($!)
    trap 'stop_host_locks; e2e_cleanup' EXIT
    for kind in posix flock; do
        for _ in $(seq 100); do
            [[ -e $d/$kind.held ]] && break
            sleep 0.1
        done
        [[ -e $d/$kind.held ]] || e2e_fail "the host took its $kind lock on locks/$kind"
    done
}
stop_host_locks() {
    local pid
    for pid in "${host_lock_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
# Each host lock process ended by itself, as the guest asked it to.
check_host_locks() {
    local pid
    for pid in "${host_lock_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            e2e_fail "host lock process $pid was still running after the guest"
        elif wait "$pid"; then
            e2e_pass "host lock process $pid ended as the guest asked"
        else
            e2e_fail "host lock process $pid failed"
        fi
    done
}
if [[ -n $lock_tool ]]; then start_host_locks; fi

run_args=("${e2e_machine_args[@]}" --cmd workload --timeout "${E2E_TIMEOUT:-300}" --log "$console_log")
if [[ ${E2E_QUIET:-0} == 1 ]]; then run_args+=(--quiet); fi
if [[ $mode == virtiofs ]]; then
    if ! e2e_start_daemon "$daemon" "$log_dir/daemon-workload$e2e_machine_suffix.log" "$@"; then
        echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
        exit 1
    fi
    run_args+=(--fstype virtiofs --socket "$e2e_socket")
    if ((${#workload_args[@]})); then
        run_args+=(--args "$(IFS=,; echo "${workload_args[*]}")")
    fi
else
    # Known limits of QEMU's 9p server and the 9p client (see guest/workload).
    skips=skip:special-files,skip:reopen-unlinked,skip:ns-timestamps,skip:pre1970-timestamps
    run_args+=(--fstype 9p-qemu --dir "$e2e_share" --args "$skips")
fi

status=0
"$e2e_dir/run-guest.sh" "${run_args[@]}" || status=$?
e2e_judge_guest "$status" "$console_log"
e2e_add_counts guest "$console_log"
if [[ -n $lock_tool ]]; then check_host_locks; fi
if [[ $mode == virtiofs ]]; then
    e2e_check_daemon_exit
    # Multi-queue: a guest with several vCPUs and queues (Linux 6.11 and
    # later) spreads its requests; the daemon reports each queue's count.
    if [[ -n ${E2E_MIN_QUEUES_USED:-} ]]; then
        e2e_check_queues "$log_dir/daemon-workload$e2e_machine_suffix.log" "$E2E_MIN_QUEUES_USED"
    fi
fi

e2e_verify_share "$log_dir/verify-host-$mode$e2e_machine_suffix.log"

if [[ $mode == 9p-qemu ]]; then
    selftest_log=$log_dir/verify-selftest$e2e_machine_suffix.log
    "$e2e_dir/verify-selftest.sh" "$e2e_share" >"$selftest_log" 2>&1 || true
    grep -v '^PASS' "$selftest_log" || true
    e2e_add_counts verify-selftest "$selftest_log"
fi

e2e_note "logs in $log_dir; took $(($(date +%s) - start))s"
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
