#!/usr/bin/env bash
# End-to-end test of vmm-mini, the project's own KVM VMM: the virtio-fs
# end-to-end test's flow (seed-host.sh, the guest workload, verify-host.sh;
# see tests/e2e/e2e-virtiofs.sh) with guest/build-kernel.sh's kernel booted
# by vmm-mini through its PVH entry (target/guest/vmlinux) and the custom
# initramfs, --mem 512 --cpus 2, once per device, each on a fresh share:
#
#   vhost-user-fs  DAEMON_BIN serves the share over vhost-user and vmm-mini
#                  is the frontend: --fs tag=myfs,socket=SOCK
#   in-process-fs  vmm-mini serves the share itself (virtio-fs on the
#                  project's core): --fs tag=myfs,dir=SHARE
#   in-process-9p  the same over virtio-9p: --9p tag=myfs,dir=SHARE; the
#                  guest mounts 9P2000.L (trans=virtio)
#
# The guest runs in its init's e2e mode (vmm-mini --cmdline "e2e.fstype=...
# e2e.tag=myfs e2e.cmd=workload"; see guest/init), through
# tests/e2e/run-guest.sh --machine vmm-mini, which also requires vmm-mini's
# exit status to be the guest's (what its init writes to I/O port 0x501).
# vmm-mini --boot-timer measures each boot, from creating the VM to the
# guest's init (I/O port 0x502); the times are printed at the end.
#
# Usage:
#   tests/e2e/e2e-vmm-mini.sh [--device D]... [--pjdfstest] [DAEMON_BIN [DAEMON_ARGS...]]
#
# --device D (repeatable) runs only those devices; default: all three, in
# the order above. --pjdfstest: after each device's workload, boot once more
# on a fresh share and run pjdfstest in the guest (the initramfs gets the
# host's pjdfstest, cargo install pjdfstest); all of it must pass, at least
# 384 tests over virtio-fs and 383 over 9P (the 9p client's one expected
# failure, as in pjdfstest-guest.sh). DAEMON_BIN (default target/release/virtiofsd-rs) is
# started as for e2e-virtiofs.sh:
#   DAEMON_BIN --shared-dir DIR --socket-path SOCK [DAEMON_ARGS...]
# and must exit by itself, with status 0, once vmm-mini disconnects.
#
# KVM: vmm-mini needs a hardware-backed /dev/kvm. The script first runs
# `vmm-mini --probe-kvm`; where it is not hardware-backed (a software
# hypervisor behind /dev/kvm, or no KVM at all) the script prints
#   e2e-vmm-mini: skipped: <the probe's reason>
# and exits with E2E_SKIP_STATUS (default 0). CI=true and
# VIRTIOFSD_RS_REQUIRE_E2E=1 do not change that: the probe is about the
# machine, not about missing packages.
#
# The in-process 9P device gets the same workload skips as e2e-p9.sh, which
# are limits of the Linux 9p client (their reasons are printed).
#
# Environment: VMM_MINI (default target/release/vmm-mini), E2E_TIMEOUT (per
# guest, default 300 s), E2E_WORKLOAD_SCALE=small (the workload's
# scale:small, for nested KVM), E2E_KEEP=1 (keep the temporary shares), E2E_QUIET=1
# (do not stream the guest console), E2E_LOG_DIR (default target/e2e),
# E2E_SKIP_STATUS (exit status of a skip, default 0; scripts/test uses 77),
# VMM_MINI_ASSUME_HARDWARE_KVM=1 (for testing this script itself: go on
# when the probe says KVM is not hardware-backed; the boots then fail).
# Must run as root.
#
# Ends with "e2e-vmm-mini: N passed, M failed" (exits 1 if anything failed)
# or "e2e-vmm-mini: skipped: <reason>".
set -euo pipefail

e2e_name=e2e-vmm-mini
# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; }
usage_error() { printf '%s: %s (see --help)\n' "$e2e_name" "$*" >&2; exit 2; }

all_devices=(vhost-user-fs in-process-fs in-process-9p)
devices=()
with_pjdfstest=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --pjdfstest) with_pjdfstest=true; shift ;;
        --device) [[ $# -ge 2 ]] || usage_error "--device needs one of: ${all_devices[*]}"; devices+=("$2"); shift 2 ;;
        --device=*) devices+=("${1#*=}"); shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage_error "unknown option: $1" ;;
        *) break ;;
    esac
done
for d in "${devices[@]}"; do
    [[ " ${all_devices[*]} " == *" $d "* ]] || usage_error "unknown device '$d' (devices: ${all_devices[*]})"
done
if ((${#devices[@]} == 0)); then devices=("${all_devices[@]}"); fi

daemon=${1:-$repo_root/target/release/virtiofsd-rs}
if [[ $# -gt 0 ]]; then shift; fi
daemon_args=("$@")
if [[ " ${devices[*]} " == *" vhost-user-fs "* ]]; then
    [[ -x $daemon && -f $daemon ]] ||
        usage_error "$daemon is not executable (cargo build --release -p virtiofs)"
    daemon=$(cd "$(dirname "$daemon")" && pwd)/$(basename "$daemon")
fi

vmm_mini=${VMM_MINI:-$repo_root/target/release/vmm-mini}
[[ -x $vmm_mini && -f $vmm_mini ]] ||
    usage_error "$vmm_mini is not executable (cargo build --release -p vmm-mini, or set VMM_MINI)"
vmm_mini=$(cd "$(dirname "$vmm_mini")" && pwd)/$(basename "$vmm_mini")
export VMM_MINI=$vmm_mini
skip_status=${E2E_SKIP_STATUS:-0}
[[ $skip_status =~ ^[0-9]+$ ]] || usage_error "bad E2E_SKIP_STATUS '$skip_status'"

# KVM first: where it is not hardware-backed nothing else matters.
probe_rc=0
probe=$("$vmm_mini" --probe-kvm 2>&1) || probe_rc=$?
reason=${probe%%$'\n'*}
case $probe_rc in
    0) e2e_note "$reason" ;;
    1)
        if [[ ${VMM_MINI_ASSUME_HARDWARE_KVM:-0} == 1 ]]; then
            e2e_note "VMM_MINI_ASSUME_HARDWARE_KVM=1: going on although $reason (the boots will fail there)"
        else
            echo "$e2e_name: skipped: ${reason:-vmm-mini --probe-kvm says KVM is not hardware-backed}"
            exit "$skip_status"
        fi
        ;;
    *)
        e2e_fail "vmm-mini --probe-kvm answered (it exited with status $probe_rc: $probe)"
        echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
        exit 1
        ;;
esac
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root (chown, mknod in the share)" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$log_dir"
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# The custom kernel and initramfs in target/guest, as for -M microvm (built
# or taken from the cache, and the initramfs rebuilt).
e2e_set_machine microvm
e2e_build_guest
pjdfstest_initramfs=$kernel_dir/initramfs-pjdfstest.cpio.gz
if $with_pjdfstest; then
    "$repo_root/guest/build-initramfs.sh" --custom-kernel --kernel-dir "$kernel_dir" \
        --with-pjdfstest --out "$pjdfstest_initramfs"
fi

boot_times=()

# run_device DEVICE: seed a fresh share, boot vmm-mini with DEVICE on it,
# run the workload, verify the share from the host.
run_device() {
    local dev=$1 failed_before=$e2e_failed status=0 t
    local console_log=$log_dir/console-workload-vmm-mini-$dev.log
    local run_args=(--machine vmm-mini --cmd workload --mem 512M
        --timeout "${E2E_TIMEOUT:-300}" --log "$console_log")
    if [[ ${E2E_QUIET:-0} == 1 ]]; then run_args+=(--quiet); fi

    e2e_make_workdir
    "$e2e_dir/seed-host.sh" "$e2e_share"
    case $dev in
        vhost-user-fs)
            e2e_note "$dev: $(basename "$daemon") serves the share over vhost-user; vmm-mini --fs tag=myfs,socket=SOCK"
            if ! e2e_start_daemon "$daemon" "$log_dir/daemon-workload-vmm-mini.log" "${daemon_args[@]}"; then
                e2e_cleanup "$failed_before"
                return
            fi
            run_args+=(--fstype virtiofs --socket "$e2e_socket")
            ;;
        in-process-fs)
            e2e_note "$dev: vmm-mini serves the share itself: --fs tag=myfs,dir=SHARE"
            e2e_note "skip:xattrs: vmm-mini's in-process shares do not offer extended attributes"
            run_args+=(--fstype virtiofs --dir "$e2e_share" --args skip:xattrs)
            ;;
        in-process-9p)
            e2e_note "$dev: vmm-mini serves the share itself: --9p tag=myfs,dir=SHARE"
            # Limits of the guest's 9p client, as for e2e-p9.sh (see there
            # and tests/e2e/README.md); not of the server.
            e2e_note "skip:ns-timestamps: the 9p client leaves s_time_gran at 1 s, so it truncates the times it sets to whole seconds"
            e2e_note "skip:pre1970-timestamps: the 9p client sets s_time_min = 0, so it clamps times before 1970 to 0 before sending them"
            e2e_note "skip:xattrs: vmm-mini's in-process shares do not offer extended attributes"
            local skips=skip:ns-timestamps,skip:pre1970-timestamps,skip:xattrs
            run_args+=(--fstype 9p --dir "$e2e_share" --args "$skips")
            ;;
    esac

    if [[ -n ${E2E_WORKLOAD_SCALE:-} ]]; then
        # Appended to the device's --args (the last --args wins, so merge).
        local i merged=scale:$E2E_WORKLOAD_SCALE
        for ((i = 0; i < ${#run_args[@]}; i++)); do
            if [[ ${run_args[i]} == --args ]]; then
                merged=${run_args[i + 1]},$merged
                unset 'run_args[i]' 'run_args[i+1]'
            fi
        done
        run_args=("${run_args[@]}" --args "$merged")
    fi
    "$e2e_dir/run-guest.sh" "${run_args[@]}" || status=$?
    e2e_judge_guest "$status" "$console_log" "$dev"
    # Once the guest's init ran, vmm-mini must have timed it (port 0x502).
    if [[ -f $console_log ]] && grep -aq '^e2e-init: boot-to-init ' "$console_log"; then
        t=$(tr -d '\r' <"$console_log" |
            sed -n 's/.*vmm-mini: boot-to-init \([0-9][0-9.]*\) s.*/\1/p' | tail -n1)
        if [[ -n $t ]]; then
            e2e_pass "$dev: vmm-mini --boot-timer: boot-to-init $t s"
            boot_times+=("$dev $t s")
        else
            e2e_fail "$dev: vmm-mini --boot-timer printed boot-to-init (the guest's init ran; log: $console_log)"
        fi
    fi
    e2e_add_counts guest "$console_log"
    if [[ $dev == vhost-user-fs ]]; then e2e_check_daemon_exit; fi
    e2e_verify_share "$log_dir/verify-host-vmm-mini-$dev.log"
    e2e_cleanup "$failed_before"
}

# run_pjdfstest DEVICE: pjdfstest in the guest on a fresh share.
run_pjdfstest() {
    local dev=$1 failed_before=$e2e_failed status=0 min=384
    local console_log=$log_dir/console-pjdfstest-vmm-mini-$dev.log
    local run_args=(--machine vmm-mini --cmd pjdfstest --mem 512M --quiet
        --initramfs "$pjdfstest_initramfs"
        --timeout "${E2E_TIMEOUT:-900}" --log "$console_log")
    e2e_make_workdir
    case $dev in
        vhost-user-fs)
            if ! e2e_start_daemon "$daemon" "$log_dir/daemon-pjdfstest-vmm-mini.log" "${daemon_args[@]}"; then
                e2e_cleanup "$failed_before"
                return
            fi
            run_args+=(--fstype virtiofs --socket "$e2e_socket")
            ;;
        in-process-fs) run_args+=(--fstype virtiofs --dir "$e2e_share") ;;
        in-process-9p)
            e2e_note "$dev: expected failure utimensat::subsecond: the 9p client leaves s_time_gran at 1 s"
            run_args+=(--fstype 9p --dir "$e2e_share" --args xfail:utimensat::subsecond)
            min=383
            ;;
    esac
    e2e_note "$dev: running pjdfstest in the guest (console: $console_log)"
    "$e2e_dir/run-guest.sh" "${run_args[@]}" || status=$?
    if [[ $dev == vhost-user-fs ]]; then e2e_check_daemon_exit; fi
    if e2e_pjdfstest_summary "$console_log" "pjdfstest-vmm-mini-$dev" "${PJDFSTEST_MIN_PASSED:-$min}" && ((status == 0)); then
        e2e_pass "$dev: pjdfstest: $e2e_pjdfstest_passed passed, none failed"
    else
        e2e_fail "$dev: pjdfstest (guest status $status, $e2e_pjdfstest_passed passed, $e2e_pjdfstest_failed failed; log: $console_log)"
    fi
    e2e_cleanup "$failed_before"
}

for dev in "${devices[@]}"; do
    run_device "$dev"
    if $with_pjdfstest; then run_pjdfstest "$dev"; fi
done

if ((${#boot_times[@]})); then
    e2e_note "boot-to-init (VM creation to the guest's init, vmm-mini --boot-timer): $(printf '%s, ' "${boot_times[@]}" | sed 's/, $//')"
fi
e2e_note "logs in $log_dir; took $(($(date +%s) - start))s"
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
