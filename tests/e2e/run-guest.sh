#!/usr/bin/env bash
# Boot the e2e guest (Debian stock kernel + busybox initramfs) under QEMU, mount
# a share at /mnt, run /e2e/NAME /mnt inside it and exit with its status.
#
# Usage:
#   tests/e2e/run-guest.sh --fstype virtiofs --socket SOCK [options]
#   tests/e2e/run-guest.sh --fstype 9p-qemu --dir DIR [options]
#
# Options:
#   --cmd NAME          guest program in tests/e2e/guest/ (default: workload)
#   --args A,B          extra arguments for it (comma-separated, no spaces)
#   --timeout S         kill QEMU after S seconds (default: 300)
#   --log FILE          console log (default: target/e2e/console-<cmd>-<fstype>.log)
#   --tag TAG           mount tag (default: myfs)
#   --mount-opts A,B    extra guest mount options
#   --mem SIZE          guest memory (default: 512M)
#   --kernel FILE       default: target/guest-stock/vmlinuz
#   --initramfs FILE    default: target/guest-stock/initramfs.cpio.gz (built
#                       when missing; with pjdfstest if --cmd pjdfstest)
#   --quiet             do not copy the console to stdout
#
# Environment: QEMU (default qemu-system-x86_64), E2E_ACCEL (default tcg; e.g.
# "kvm" where KVM works).
#
# Exit status: the guest's E2E-EXIT status; 124 if the timeout expired; 98 if
# QEMU ended without an E2E-EXIT line (crash, panic); 2 for usage errors.
# (Guest-side: 97 = mount failed, 96 = bad guest command line.)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)

fstype=
socket=
dir=
cmd=workload
args=
timeout=300
log=
tag=myfs
mount_opts=
mem=512M
kernel=$repo_root/target/guest-stock/vmlinuz
initramfs=$repo_root/target/guest-stock/initramfs.cpio.gz
quiet=false
qemu=${QEMU:-qemu-system-x86_64}
accel=${E2E_ACCEL:-tcg}

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf 'run-guest: %s\n' "$*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --fstype) fstype=${2:?}; shift ;;
        --socket) socket=${2:?}; shift ;;
        --dir) dir=${2:?}; shift ;;
        --cmd) cmd=${2:?}; shift ;;
        --args) args=${2:?}; shift ;;
        --timeout) timeout=${2:?}; shift ;;
        --log) log=${2:?}; shift ;;
        --tag) tag=${2:?}; shift ;;
        --mount-opts) mount_opts=${2:?}; shift ;;
        --mem) mem=${2:?}; shift ;;
        --kernel) kernel=${2:?}; shift ;;
        --initramfs) initramfs=${2:?}; shift ;;
        --quiet) quiet=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[[ $cmd =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "bad --cmd '$cmd'"
[[ $args =~ ^[^[:space:]]*$ ]] || die "--args must not contain whitespace"
[[ $timeout =~ ^[0-9]+$ ]] || die "bad --timeout '$timeout'"

qemu_dev=()
case $fstype in
    virtiofs)
        [[ -n $socket ]] || die "--fstype virtiofs needs --socket SOCK"
        [[ -S $socket ]] || die "$socket is not a socket (is the daemon running?)"
        guest_fstype=virtiofs
        qemu_dev=(-chardev "socket,id=char0,path=$socket"
            -device "vhost-user-fs-pci,queue-size=1024,chardev=char0,tag=$tag")
        ;;
    9p-qemu)
        [[ -n $dir ]] || die "--fstype 9p-qemu needs --dir DIR"
        [[ -d $dir ]] || die "$dir is not a directory"
        [[ $dir != *,* ]] || die "--dir must not contain a comma"
        guest_fstype=9p
        qemu_dev=(-fsdev "local,id=fsdev0,path=$dir,security_model=passthrough"
            -device "virtio-9p-pci,fsdev=fsdev0,mount_tag=$tag")
        ;;
    *) usage >&2; die "--fstype must be virtiofs or 9p-qemu" ;;
esac

log=${log:-$repo_root/target/e2e/console-$cmd-$fstype.log}
mkdir -p "$(dirname "$log")"

if [[ ! -f $kernel || ! -f $initramfs ]]; then
    build_args=()
    if [[ $cmd == pjdfstest ]]; then build_args=(--with-pjdfstest); fi
    "$repo_root/guest/build-initramfs.sh" "${build_args[@]}" \
        --kernel-dir "$(dirname "$kernel")" --out "$initramfs"
fi
[[ -f $kernel ]] || die "$kernel missing (run guest/stock-kernel.sh)"

append="console=ttyS0 panic=-1 oops=panic loglevel=4 mitigations=off"
append+=" e2e.fstype=$guest_fstype e2e.tag=$tag e2e.cmd=$cmd"
[[ -z $args ]] || append+=" e2e.args=$args"
[[ -z $mount_opts ]] || append+=" e2e.opts=$mount_opts"

qemu_cmd=("$qemu"
    -nodefaults -no-user-config
    -machine q35 -accel "$accel" -cpu max -smp 2
    -object "memory-backend-memfd,id=mem,size=$mem,share=on"
    -numa "node,memdev=mem" -m "$mem"
    -kernel "$kernel" -initrd "$initramfs" -append "$append"
    -display none -monitor none -serial stdio
    -no-reboot
    "${qemu_dev[@]}")

printf 'run-guest: %s\n' "${qemu_cmd[*]}" >"$log"
start=$(date +%s)
set +e
if $quiet; then
    timeout --kill-after=10 "$timeout" "${qemu_cmd[@]}" </dev/null >>"$log" 2>&1
    rc=$?
else
    timeout --kill-after=10 "$timeout" "${qemu_cmd[@]}" </dev/null 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
fi
set -e
elapsed=$(($(date +%s) - start))

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    printf 'run-guest: TIMEOUT: QEMU killed after %ss (log: %s)\n' "$timeout" "$log" >&2
    exit 124
fi
status=$(tr -d '\r' <"$log" | sed -n 's/^E2E-EXIT=\([0-9][0-9]*\)$/\1/p' | tail -n1)
if [[ -z $status ]]; then
    printf 'run-guest: no E2E-EXIT marker (QEMU exit %s after %ss; log: %s)\n' \
        "$rc" "$elapsed" "$log" >&2
    exit 98
fi
if [[ $rc -ne 0 ]]; then
    printf 'run-guest: warning: QEMU exited with %s\n' "$rc" >&2
fi
printf 'run-guest: guest %s exited with %s after %ss (log: %s)\n' \
    "$cmd" "$status" "$elapsed" "$log" >&2
exit "$status"
