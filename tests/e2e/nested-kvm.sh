#!/usr/bin/env bash
# Run a command where a hardware-backed KVM is: here, when this machine's
# /dev/kvm is hardware-backed (`vmm-mini --probe-kvm`), else inside an L1
# guest that has real KVM, nested under QEMU's emulated AMD SVM.
#
# Usage: tests/e2e/nested-kvm.sh [options] -- COMMAND [ARG...]
#
# The L1 guest: QEMU -accel tcg -cpu EPYC,+svm -M q35, Debian's stock 6.12
# kernel (guest/stock-kernel.sh --series 6.12) with the modules irqbypass,
# kvm, ccp and kvm_amd loaded, so /dev/kvm is real KVM (nested paging on
# TCG's SVM). Its root file system is this machine's own root, served
# read-only over virtio-fs by virtiofsd-rs (--readonly, --cache always)
# under a tmpfs-backed overlay: every file is at its usual path, the guest may
# write, and its writes stay in the guest. /tmp, /var/tmp, /run and /dev/shm
# are tmpfs. COMMAND runs in the current directory as root, with bash as PID
# 1, stdin /dev/null, and the environment variables named below; its output
# is the guest's console. When it ends the guest powers off, and this script
# exits with COMMAND's exit status.
#
# Options:
#   --nested        boot the L1 guest even where this machine's KVM is
#                   hardware-backed
#   --mem MIB       the L1 guest's memory (default 3072)
#   --cpus N        its vCPUs (default 2)
#   --timeout S     kill it after S seconds (default 900)
#   --env NAME      pass the variable NAME (repeatable). Always passed: PATH,
#                   HOME, TERM, LANG, CI, RUST_LOG, RUST_BACKTRACE and every
#                   VIRTIOFSD_RS_*, E2E_*, VMM_MINI* variable
#   --keep DIR      share the host directory DIR read-write at the same path
#                   (a second virtiofsd-rs), so what the command writes there
#                   (logs) outlives the guest; DIR must exist
#   --log FILE      the console log (default target/e2e/nested-kvm.log)
#   --quiet         do not copy the console to stdout
#
# Environment: QEMU (default qemu-system-x86_64), NESTED_DAEMON (the daemon
# that serves the root, default target/release/virtiofsd-rs),
# NESTED_SKIP_STATUS (exit status of a skip, default 77).
#
# Exit status: COMMAND's; NESTED_SKIP_STATUS when the nested guest cannot
# have KVM on this machine (no QEMU, no SVM emulation in QEMU, the guest found
# no /dev/kvm), printing "nested-kvm: skipped: <why>"; 124 when the timeout
# expired; 125 when the L1 guest could not be set up or never reported an
# exit status; 2 for usage errors.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib-vm.sh
. "$script_dir/lib-vm.sh"
repo_root=$(cd "$script_dir/../.." && pwd)

die() { printf 'nested-kvm: %s\n' "$*" >&2; exit 2; }
note() { printf 'nested-kvm: %s\n' "$*" >&2; }

skip_status=${NESTED_SKIP_STATUS:-77}
[[ $skip_status =~ ^[0-9]+$ ]] || die "bad NESTED_SKIP_STATUS '$skip_status'"
skip() {
    printf 'nested-kvm: skipped: %s\n' "$*"
    exit "$skip_status"
}

force_nested=false
mem=3072
cpus=2
timeout=900
log=$repo_root/target/e2e/nested-kvm.log
quiet=false
keep=
env_names=(PATH HOME TERM LANG CI RUST_LOG RUST_BACKTRACE)
while [[ $# -gt 0 ]]; do
    case $1 in
        --nested) force_nested=true ;;
        --mem) mem=${2:?--mem needs MiB}; shift ;;
        --cpus) cpus=${2:?--cpus needs a count}; shift ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift ;;
        --env) env_names+=("${2:?--env needs a name}"); shift ;;
        --log) log=${2:?--log needs a file}; shift ;;
        --keep) keep=${2:?--keep needs a directory}; shift ;;
        --quiet) quiet=true ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        --) shift; break ;;
        *) die "unknown argument: $1 (the command comes after --; see --help)" ;;
    esac
    shift
done
(($# > 0)) || die "no command (usage: nested-kvm.sh [options] -- COMMAND [ARG...])"
[[ $mem =~ ^[1-9][0-9]*$ ]] || die "bad --mem '$mem' (MiB)"
[[ $cpus =~ ^[1-9][0-9]?$ ]] || die "bad --cpus '$cpus'"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "bad --timeout '$timeout'"
if [[ -n $keep ]]; then
    [[ -d $keep ]] || die "--keep $keep is not a directory"
    keep=$(cd "$keep" && pwd -P)
    [[ $keep =~ ^/[A-Za-z0-9_./+-]*$ && $keep != / ]] || die "--keep $keep: want a plain absolute path, not /"
fi
for n in "${env_names[@]}"; do
    [[ $n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad --env name '$n'"
done

# Hardware KVM here: run the command as it is.
if ! $force_nested; then
    vmm_mini=${VMM_MINI:-$repo_root/target/release/vmm-mini}
    [[ -x $vmm_mini ]] || die "$vmm_mini is missing (cargo build --release -p vmm-mini, or set VMM_MINI)"
    probe_rc=0
    probe=$("$vmm_mini" --probe-kvm 2>&1) || probe_rc=$?
    case $probe_rc in
        0)
            note "${probe%%$'\n'*}: running the command here"
            exec "$@"
            ;;
        1) note "${probe%%$'\n'*}: running the command in a nested L1 guest" ;;
        *) note "vmm-mini --probe-kvm failed (status $probe_rc): $probe"; exit 125 ;;
    esac
fi

# What the nested guest needs.
[[ $EUID -eq 0 ]] || skip "the nested guest needs root (the root's daemon switches credentials)"
qemu=${QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || skip "$qemu is missing (apt-get install qemu-system-x86)"
if ! "$qemu" -accel tcg -cpu help 2>/dev/null | grep -qw EPYC; then
    skip "$qemu offers no EPYC CPU model, so no SVM to emulate"
fi
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
    skip "busybox-static is missing (apt-get install busybox-static)"
fi
command -v cpio >/dev/null || skip "cpio is missing (apt-get install cpio)"
daemon=${NESTED_DAEMON:-$repo_root/target/release/virtiofsd-rs}
[[ -x $daemon ]] || die "$daemon is missing (cargo build --release -p virtiofs, or set NESTED_DAEMON)"

kernel_dir=$repo_root/target/guest-nested
"$repo_root/guest/stock-kernel.sh" --series 6.12 --modules "virtio_pci virtiofs overlay kvm_amd" \
    "$kernel_dir" >&2 || { note "cannot fetch Debian's 6.12 kernel (guest/stock-kernel.sh --series 6.12)"; exit 125; }

work=$(mktemp -d "${TMPDIR:-/tmp}/nested-kvm.XXXXXX")
daemon_pid=
keep_pid=
cleanup() {
    local p
    for p in $daemon_pid $keep_pid; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The initramfs: busybox, the modules, init, and the command as run.sh.
stage=$work/initramfs
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,lib/modules,nested}
cp /bin/busybox "$stage/bin/busybox"
while read -r applet; do
    [[ -e $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
done < <(/bin/busybox --list-full)
install -m 0755 "$script_dir/nested/init" "$stage/init"
cp "$kernel_dir/modules.load" "$stage/lib/modules/"
while read -r mod; do
    [[ -n $mod ]] && cp "$kernel_dir/modules/$mod.ko" "$stage/lib/modules/"
done <"$kernel_dir/modules.load"
{
    printf '#!/bin/bash\n# Written by tests/e2e/nested-kvm.sh; PID 1 of the L1 guest.\n'
    if [[ -n $keep ]]; then
    [[ -d $keep ]] || die "--keep $keep is not a directory"
    keep=$(cd "$keep" && pwd -P)
    [[ $keep =~ ^/[A-Za-z0-9_./+-]*$ && $keep != / ]] || die "--keep $keep: want a plain absolute path, not /"
fi
for n in "${env_names[@]}"; do
        if [[ -v $n ]]; then printf 'export %s=%q\n' "$n" "${!n}"; fi
    done
    while read -r n; do
        printf 'export %s=%q\n' "$n" "${!n}"
    done < <(compgen -v | grep -E '^(VIRTIOFSD_RS_|E2E_|VMM_MINI)' || true)
    # QEMU's TCG emulation of SVM ignores ASIDs and, on VMRUN, acts only on
    # TLB_CONTROL_FLUSH_ALL_ASID (target/i386/tcg/sysemu/svm_helper.c), so
    # a flush KVM asks for by moving the guest to a new ASID never happens.
    # The guest's paravirtual TLB flush relies on exactly that: an L2 guest
    # with 2 vCPUs and the PV features resets (triple fault) within seconds
    # of file-heavy work. vmm-mini appends VMM_MINI_CMDLINE to every
    # guest's command line; nopv runs the L2 guests without the PV features
    # (their TLB shootdowns are IPIs and INVLPGs, which TCG does emulate).
    # shellcheck disable=SC2016 # written for the guest's bash
    printf '%s\n' 'export VMM_MINI_CMDLINE=${VMM_MINI_CMDLINE:-nopv}'
    # The same flaw bites when a vCPU thread moves to another L1 CPU: KVM
    # flushes by a new ASID, TCG keeps the other CPU's stale entries, and
    # the L2 guest resets. vmm-mini pins its vCPU threads to
    # VMM_MINI_VCPU_AFFINITY: the last L1 CPU, so none ever moves and the
    # other CPUs serve the rest (device threads, daemons, scripts).
    if ((cpus > 1)); then
        printf 'export VMM_MINI_VCPU_AFFINITY=${VMM_MINI_VCPU_AFFINITY:-%s}\n' "$((cpus - 1))"
    fi
    # The host's open-file limits (Linux's defaults for PID 1 are 1024 and
    # 4096), so the command meets the same limits as here.
    printf 'ulimit -Hn %s && ulimit -Sn %s\n' "$(ulimit -Hn)" "$(ulimit -Sn)"
    printf 'rc=0\n'
    printf 'if cd %q; then\n' "$PWD"
    printf '    %s </dev/null || rc=$?\n' "$(printf '%q ' "$@")"
    printf 'else\n    rc=125\nfi\n'
    # shellcheck disable=SC2016 # written for the guest's bash
    printf '%s\n' 'echo "NESTED-EXIT=$rc"' 'sync' 'echo o >/proc/sysrq-trigger' 'sleep 10'
} >"$stage/nested/run.sh"
chmod 0755 "$stage/nested/run.sh"
printf '%s\n' "$keep" >"$stage/nested/keep"
mknod -m 0600 "$stage/dev/console" c 5 1
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -1 >"$work/initramfs.cpio.gz"

# The root: this machine's /, read-only, over virtio-fs.
socket=$work/root.sock
"$daemon" --shared-dir / --socket-path "$socket" --readonly --cache always --no-announce-submounts \
    --log-level warn >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for ((i = 0; i < 200; i++)); do
    [[ -S $socket ]] && break
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -S $socket ]]; then
    note "the root's daemon did not start: $(tail -n 5 "$work/daemon.log")"
    exit 125
fi
keep_dev=()
if [[ -n $keep ]]; then
    "$daemon" --shared-dir "$keep" --socket-path "$work/keep.sock" --log-level warn \
        >"$work/keep-daemon.log" 2>&1 &
    keep_pid=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S $work/keep.sock ]] && break
        kill -0 "$keep_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -S $work/keep.sock ]]; then
        note "the daemon for --keep $keep did not start: $(tail -n 5 "$work/keep-daemon.log")"
        exit 125
    fi
    keep_dev=(-chardev "socket,id=keep,path=$work/keep.sock"
        -device "vhost-user-fs-pci,queue-size=1024,chardev=keep,tag=keep")
fi

mkdir -p "$(dirname "$log")"
vm_cmd=("$qemu" -nodefaults -no-user-config
    -machine q35 -accel tcg -cpu EPYC,+svm -smp "$cpus"
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on"
    -numa node,memdev=mem -m "${mem}M"
    -kernel "$kernel_dir/vmlinuz" -initrd "$work/initramfs.cpio.gz"
    -append "console=ttyS0 panic=-1 quiet loglevel=3"
    -display none -monitor none -serial stdio -no-reboot
    -chardev "socket,id=root,path=$socket"
    -device "vhost-user-fs-pci,queue-size=1024,chardev=root,tag=hostroot"
    "${keep_dev[@]}")
printf 'nested-kvm: %s\n' "${vm_cmd[*]}" >"$log"
note "booting the L1 guest ($cpus vCPUs, $mem MiB; console: $log)"
start=$SECONDS
vm_run_logged "$timeout" "$log" "$quiet" "${vm_cmd[@]}"
rc=$vm_rc
elapsed=$((SECONDS - start))
console=$(tr -d '\r' <"$log")
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    note "TIMEOUT: the L1 guest was killed after ${timeout}s (log: $log)"
    exit 124
fi
if why=$(sed -n 's/.*NESTED-NO-KVM: //p' <<<"$console" | head -n1) && [[ -n $why ]]; then
    skip "the L1 guest has no KVM: $why"
fi
status=$(sed -n 's/.*NESTED-EXIT=\([0-9][0-9]*\).*/\1/p' <<<"$console" | tail -n1)
if [[ -z $status ]]; then
    why=$(sed -n 's/.*NESTED-FAILED: //p' <<<"$console" | head -n1)
    note "the L1 guest ended without an exit status (QEMU exit $rc after ${elapsed}s${why:+: $why}; log: $log)"
    exit 125
fi
note "the command exited with $status in the L1 guest (${elapsed}s in all)"
exit "$status"
