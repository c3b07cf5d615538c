#!/usr/bin/env bash
# Boot the e2e guest (Debian stock kernel + busybox initramfs) under QEMU, mount
# a share at /mnt, run /e2e/NAME /mnt inside it and exit with its status.
# With --machine microvm: the minimal kernel of guest/build-kernel.sh under
# QEMU's microvm machine, with virtio-mmio devices. With --machine vmm-mini:
# that kernel under vmm-mini, the project's own KVM VMM, instead of QEMU.
#
# Usage:
#   tests/e2e/run-guest.sh --fstype virtiofs --socket SOCK [options]
#   tests/e2e/run-guest.sh --fstype 9p-qemu --dir DIR [options]
#   tests/e2e/run-guest.sh --fstype 9p-tcp --port PORT [options]
#   tests/e2e/run-guest.sh --machine vmm-mini --fstype virtiofs --socket SOCK [options]
#   tests/e2e/run-guest.sh --machine vmm-mini --fstype virtiofs --dir DIR [options]
#   tests/e2e/run-guest.sh --machine vmm-mini --fstype 9p --dir DIR [options]
#
# 9p-tcp: the guest mounts 9P2000.L over TCP (trans=tcp, msize=524288, the
# kernel's defaults otherwise) from a server listening on 127.0.0.1:PORT on the
# host. QEMU's user networking (restrict=on: no other traffic leaves the guest)
# forwards the guest's 10.0.2.100:564 there; QEMU connects to the server when
# it starts, so the server must already be listening.
#
# vmm-mini (--machine vmm-mini) serves the share itself or connects to a
# vhost-user backend: --fstype virtiofs --socket SOCK is its
# --fs tag=TAG,socket=SOCK (a vhost-user-fs backend such as virtiofsd-rs);
# --fstype virtiofs --dir DIR its in-process virtio-fs, --fs tag=TAG,dir=DIR;
# --fstype 9p --dir DIR its in-process virtio-9p, --9p tag=TAG,dir=DIR (the
# guest mounts 9P2000.L, trans=virtio). It has no network device (no 9p-tcp)
# and no QEMU 9p server (no 9p-qemu). It needs a hardware-backed /dev/kvm:
# run `vmm-mini --probe-kvm` first (tests/e2e/e2e-vmm-mini.sh does); this
# script does not probe.
#
# Options:
#   --machine M         q35 (default): -M q35, Debian's stock kernel
#                       (target/guest-stock/), virtio-pci devices.
#                       microvm: -M microvm, target/guest/bzImage (built by
#                       guest/build-kernel.sh when missing, cached) and
#                       target/guest/initramfs.cpio.gz (no modules), devices
#                       vhost-user-fs-device, virtio-9p-device and
#                       virtio-net-device (virtio-mmio), console on ttyS0.
#                       vmm-mini: target/release/vmm-mini (or $VMM_MINI) on
#                       KVM with target/guest/vmlinux (PVH; built when
#                       missing) and target/guest/initramfs.cpio.gz,
#                       virtio-mmio devices, console on ttyS0, --boot-timer
#   --cmd NAME          guest program in tests/e2e/guest/ (default: workload)
#   --args A,B          extra arguments for it (comma-separated, no spaces)
#   --timeout S         kill QEMU (vmm-mini) after S seconds (default: 300)
#   --log FILE          console log (default: target/e2e/console-<cmd>-<fstype>.log;
#                       microvm, vmm-mini: ...-<fstype>-<machine>.log)
#   --tag TAG           mount tag (default: myfs; ignored for 9p-tcp)
#   --port PORT         9p-tcp: the server's TCP port on 127.0.0.1
#   --mount-opts A,B    extra guest mount options
#   --mem SIZE          guest memory (default: 512M; vmm-mini: N, NM or NG)
#   --cpus N            vCPUs (default: 2, or $E2E_CPUS)
#   --kernel FILE       default: target/guest-stock/vmlinuz (microvm:
#                       target/guest/bzImage; vmm-mini: target/guest/vmlinux)
#   --initramfs FILE    default: target/guest-stock/initramfs.cpio.gz (microvm,
#                       vmm-mini: target/guest/initramfs.cpio.gz; built when
#                       missing, with pjdfstest if --cmd pjdfstest)
#   --quiet             do not copy the console to stdout
#
# Prints the guest's boot-to-init time (the kernel's uptime when /init
# started, as /init reports it) and its uptime once the share was mounted:
#   run-guest: boot-to-init 0.41s, share mounted at 0.52s (guest uptime; microvm, bzImage)
# and, with vmm-mini, its own measure (vmm-mini --boot-timer: from creating
# the VM to the guest's init writing I/O port 0x502, on the host's clock):
#   run-guest: vmm-mini boot-to-init 0.123 s (VM creation to the guest's init, host clock)
#
# Environment: E2E_FS_QUEUES (virtiofs with QEMU: the device's
# num-request-queues, default 1; the daemon must serve at least that many),
# VMM_MINI (vmm-mini: the binary, default target/release/vmm-mini), QEMU (default qemu-system-x86_64), E2E_ACCEL (default tcg; e.g.
# "kvm" where KVM works), E2E_FWD_NODELAY (9p-tcp; default 1: QEMU's
# connection to the server uses TCP_NODELAY; 0: without), E2E_TSC_KHZ
# (microvm with TCG: the guest's TSC frequency, passed as tsc_early_khz=;
# default: the host's, measured by tests/e2e/host-tsc-khz.py; 0: none),
# E2E_APPEND (extra kernel parameters, appended last; e.g. "loglevel=7
# initcall_debug" to see where boot time goes).
#
# Exit status: the guest's E2E-EXIT status; 124 if the timeout expired; 98 if
# QEMU (vmm-mini) ended without an E2E-EXIT line (crash, panic); 99 if
# vmm-mini's own exit status is not the guest's E2E-EXIT status (vmm-mini
# must exit with the status the guest's init writes to I/O port 0x501); 2 for
# usage errors. (Guest-side: 97 = mount failed, 96 = bad guest command line.)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib-vm.sh
. "$script_dir/lib-vm.sh"
repo_root=$(cd "$script_dir/../.." && pwd)

fstype=
socket=
dir=
port=
cmd=workload
args=
timeout=300
log=
tag=myfs
mount_opts=
mem=512M
cpus=${E2E_CPUS:-2}
machine=q35
kernel=
initramfs=
quiet=false
qemu=${QEMU:-qemu-system-x86_64}
vmm_mini=${VMM_MINI:-$repo_root/target/release/vmm-mini}
accel=${E2E_ACCEL:-tcg}

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf 'run-guest: %s\n' "$*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --fstype) fstype=${2:?}; shift ;;
        --machine) machine=${2:?}; shift ;;
        --socket) socket=${2:?}; shift ;;
        --dir) dir=${2:?}; shift ;;
        --port) port=${2:?}; shift ;;
        --cmd) cmd=${2:?}; shift ;;
        --args) args=${2:?}; shift ;;
        --timeout) timeout=${2:?}; shift ;;
        --log) log=${2:?}; shift ;;
        --tag) tag=${2:?}; shift ;;
        --mount-opts) mount_opts=${2:?}; shift ;;
        --mem) mem=${2:?}; shift ;;
        --cpus) cpus=${2:?}; shift ;;
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
[[ $cpus =~ ^[1-9][0-9]?$ ]] || die "bad --cpus '$cpus'"
case $machine in
    q35)
        guest_dir=$repo_root/target/guest-stock
        kernel=${kernel:-$guest_dir/vmlinuz}
        # virtio-pci devices
        fs_dev=vhost-user-fs-pci
        p9_dev=virtio-9p-pci
        net_dev=virtio-net-pci
        ;;
    microvm)
        guest_dir=$repo_root/target/guest
        kernel=${kernel:-$guest_dir/bzImage}
        # virtio-mmio devices
        fs_dev=vhost-user-fs-device
        p9_dev=virtio-9p-device
        net_dev=virtio-net-device
        ;;
    vmm-mini)
        guest_dir=$repo_root/target/guest
        kernel=${kernel:-$guest_dir/vmlinux}
        [[ -x $vmm_mini && -f $vmm_mini ]] ||
            die "$vmm_mini is not executable (cargo build --release -p vmm-mini, or set VMM_MINI)"
        # vmm-mini's --fs/--9p specs are comma-separated key=value lists.
        [[ $tag =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad --tag '$tag' for vmm-mini"
        ;;
    *) usage >&2; die "--machine must be q35, microvm or vmm-mini" ;;
esac
initramfs=${initramfs:-$guest_dir/initramfs.cpio.gz}

# The share's device: QEMU's options (qemu_dev) or vmm-mini's (vmm_dev).
qemu_dev=()
vmm_dev=()
log_fstype=$fstype
if [[ $machine == vmm-mini && ($fstype == 9p-qemu || $fstype == 9p-tcp) ]]; then
    die "--fstype $fstype needs QEMU; vmm-mini takes --fstype virtiofs or 9p"
fi
case $fstype in
    virtiofs)
        guest_fstype=virtiofs
        if [[ $machine == vmm-mini && -n $dir ]]; then
            # vmm-mini's in-process virtio-fs.
            [[ -z $socket ]] || die "give --socket SOCK or --dir DIR, not both"
            [[ -d $dir ]] || die "$dir is not a directory"
            [[ $dir != *,* ]] || die "--dir must not contain a comma"
            vmm_dev=(--fs "tag=$tag,dir=$dir")
            log_fstype=virtiofs-dir
        else
            [[ -z $dir ]] || die "--fstype virtiofs --dir DIR (in-process virtio-fs) needs --machine vmm-mini"
            [[ -n $socket ]] || die "--fstype virtiofs needs --socket SOCK"
            [[ -S $socket ]] || die "$socket is not a socket (is the daemon running?)"
            if [[ $machine == vmm-mini ]]; then
                [[ $socket != *,* ]] || die "--socket must not contain a comma"
                vmm_dev=(--fs "tag=$tag,socket=$socket")
            else
                qemu_dev=(-chardev "socket,id=char0,path=$socket"
                    -device "$fs_dev,queue-size=1024,num-request-queues=${E2E_FS_QUEUES:-1},chardev=char0,tag=$tag")
            fi
        fi
        ;;
    9p)
        [[ $machine == vmm-mini ]] || die "--fstype 9p (in-process virtio-9p) needs --machine vmm-mini; QEMU's 9p server is --fstype 9p-qemu"
        [[ -n $dir ]] || die "--fstype 9p needs --dir DIR"
        [[ -d $dir ]] || die "$dir is not a directory"
        [[ $dir != *,* ]] || die "--dir must not contain a comma"
        guest_fstype=9p
        vmm_dev=(--9p "tag=$tag,dir=$dir")
        ;;
    9p-qemu)
        [[ -n $dir ]] || die "--fstype 9p-qemu needs --dir DIR"
        [[ -d $dir ]] || die "$dir is not a directory"
        [[ $dir != *,* ]] || die "--dir must not contain a comma"
        guest_fstype=9p
        qemu_dev=(-fsdev "local,id=fsdev0,path=$dir,security_model=passthrough"
            -device "$p9_dev,fsdev=fsdev0,mount_tag=$tag")
        ;;
    9p-tcp)
        if [[ ! $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
            die "--fstype 9p-tcp needs --port PORT (1-65535)"
        fi
        guest_fstype=9p-tcp
        tag=10.0.2.100
        # nodelay=on (the ",," escapes the comma) is a socket option of
        # QEMU's loopback connection to the server, not more networking:
        # without it Nagle's algorithm against the server's delayed ACKs
        # costs ~45 ms per request that the guest sends in several TCP
        # segments, e.g. 1.4 MB/s instead of 26 MB/s for 64 KiB writes.
        fwd="tcp:127.0.0.1:$port"
        if [[ ${E2E_FWD_NODELAY:-1} == 1 ]]; then fwd+=",,nodelay=on"; fi
        qemu_dev=(-netdev "user,id=n0,restrict=on,guestfwd=tcp:$tag:564-$fwd"
            -device "$net_dev,netdev=n0")
        ;;
    *) usage >&2; die "--fstype must be virtiofs, 9p-qemu, 9p-tcp or (vmm-mini) 9p" ;;
esac

log_suffix=
if [[ $machine != q35 ]]; then log_suffix=-$machine; fi
log=${log:-$repo_root/target/e2e/console-$cmd-$log_fstype$log_suffix.log}
mkdir -p "$(dirname "$log")"

if [[ $machine == microvm || $machine == vmm-mini ]]; then
    if [[ ! -f $kernel && ($kernel == "$guest_dir/bzImage" || $kernel == "$guest_dir/vmlinux") ]]; then
        "$repo_root/guest/build-kernel.sh" --out "$guest_dir"
    fi
    if [[ ! -f $initramfs ]]; then
        build_args=(--custom-kernel)
        if [[ $cmd == pjdfstest ]]; then build_args+=(--with-pjdfstest); fi
        "$repo_root/guest/build-initramfs.sh" "${build_args[@]}" \
            --kernel-dir "$guest_dir" --out "$initramfs"
    fi
    [[ -f $kernel ]] || die "$kernel missing (run guest/build-kernel.sh)"
elif [[ ! -f $kernel || ! -f $initramfs ]]; then
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
if [[ $machine == microvm && $accel == tcg ]]; then
    # microvm has no HPET and no ACPI PM timer, and under TCG the kernel's
    # PIT calibration of the TSC fails now and then (1 boot in 20 with the
    # bzImage, 9 in 20 with the PVH vmlinux). Without a TSC frequency the
    # kernel then hangs in the local APIC timer calibration: microvm's
    # hardware-reduced ACPI leaves it no PIT interrupt to count ticks with.
    # A TCG guest's TSC is the host's, so tell the guest the host's rate.
    tsc_khz=${E2E_TSC_KHZ:-}
    if [[ -z $tsc_khz ]]; then
        tsc_khz=$("$script_dir/host-tsc-khz.py" 2>/dev/null) || tsc_khz=
        if [[ -z $tsc_khz ]]; then
            printf 'run-guest: warning: cannot measure the host TSC frequency (python3?); the guest may hang calibrating it (set E2E_TSC_KHZ)\n' >&2
        fi
    fi
    [[ -z $tsc_khz || $tsc_khz =~ ^[0-9]+$ ]] || die "bad E2E_TSC_KHZ '$tsc_khz'"
    if [[ -n $tsc_khz && $tsc_khz != 0 ]]; then append+=" tsc_early_khz=$tsc_khz"; fi
fi
[[ -z ${E2E_APPEND:-} ]] || append+=" $E2E_APPEND"

if [[ $machine == vmm-mini ]]; then
    # vmm-mini takes the memory in MiB.
    mem_mib=${mem%[MmGg]}
    [[ $mem_mib =~ ^[1-9][0-9]*$ ]] || die "bad --mem '$mem' (vmm-mini: N, NM or NG)"
    if [[ $mem == *[Gg] ]]; then mem_mib=$((mem_mib * 1024)); fi
    # vmm-mini gives the kernel console=ttyS0, panic=-1 and the devices
    # (virtio_mmio.device=, vmm.fs=, vmm.9p=); with e2e.cmd= on the command
    # line the guest's init runs in e2e mode all the same.
    append=${append#"console=ttyS0 panic=-1 "}
    vm_cmd=("$vmm_mini" --kernel "$kernel" --initrd "$initramfs"
        --mem "$mem_mib" --cpus "$cpus" --boot-timer
        "${vmm_dev[@]}" --cmdline "$append")
elif [[ $machine == microvm ]]; then
    # vhost-user needs the guest's RAM in a shared memfd; microvm takes it as
    # memory-backend= (QEMU 7.2 and 10). Its option ROMs stay on: QEMU 10's
    # microvm cannot boot a bzImage with x-option-roms=off. The kernel finds
    # the virtio-mmio devices in microvm's ACPI DSDT (QEMU adds
    # virtio_mmio.device= to the command line only with acpi=off), and
    # powers off through ACPI.
    machine_opt=microvm,memory-backend=mem
    mem_args=(-m "$mem")
else
    machine_opt=q35
    mem_args=(-numa "node,memdev=mem" -m "$mem")
fi
if [[ $machine != vmm-mini ]]; then
    vm_cmd=("$qemu"
        -nodefaults -no-user-config
        -machine "$machine_opt" -accel "$accel" -cpu max -smp "$cpus"
        -object "memory-backend-memfd,id=mem,size=$mem,share=on"
        "${mem_args[@]}"
        -kernel "$kernel" -initrd "$initramfs" -append "$append"
        -display none -monitor none -serial stdio
        -no-reboot
        "${qemu_dev[@]}")
fi
vmm_name=QEMU
if [[ $machine == vmm-mini ]]; then vmm_name=vmm-mini; fi
# vmm_last_words: vmm-mini's own error lines from the log (a vCPU fault, a
# device that could not be set up), indented, on stderr.
vmm_last_words() {
    if [[ $machine == vmm-mini ]]; then
        tr -d '\r' <"$log" | grep -a '^vmm-mini: ' | grep -av '^vmm-mini: boot-to-init ' |
            tail -n 3 | sed 's/^/run-guest:   /' >&2 || true
    fi
}

printf 'run-guest: %s\n' "${vm_cmd[*]}" >"$log"
start=$(date +%s)
vm_run_logged "$timeout" "$log" "$quiet" "${vm_cmd[@]}"
rc=$vm_rc
elapsed=$(($(date +%s) - start))

if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    printf 'run-guest: TIMEOUT: %s killed after %ss (log: %s)\n' "$vmm_name" "$timeout" "$log" >&2
    exit 124
fi
# Unanchored: a kernel message may share the line on the serial console.
status=$(tr -d '\r' <"$log" | sed -n 's/.*E2E-EXIT=\([0-9][0-9]*\).*/\1/p' | tail -n1)
if [[ -z $status ]]; then
    printf 'run-guest: no E2E-EXIT marker (%s exit %s after %ss; log: %s)\n' \
        "$vmm_name" "$rc" "$elapsed" "$log" >&2
    vmm_last_words
    exit 98
fi
if [[ $machine == vmm-mini && $rc -ne $status ]]; then
    # vmm-mini must end with the status the guest's init wrote to port 0x501.
    printf 'run-guest: vmm-mini exited with %s, but the guest reported E2E-EXIT=%s (log: %s)\n' \
        "$rc" "$status" "$log" >&2
    vmm_last_words
    exit 99
fi
if [[ $rc -ne 0 && $machine != vmm-mini ]]; then
    printf 'run-guest: warning: QEMU exited with %s\n' "$rc" >&2
fi
boot_to_init=$(tr -d '\r' <"$log" | sed -n 's/^e2e-init: boot-to-init \([0-9.]*\)s$/\1/p' | tail -n1)
mounted_at=$(tr -d '\r' <"$log" | sed -n 's/^e2e-init: mounted-at \([0-9.]*\)s$/\1/p' | tail -n1)
if [[ -n $boot_to_init ]]; then
    if [[ -n $mounted_at ]]; then mounted_at="share mounted at ${mounted_at}s"; else mounted_at="no share mounted"; fi
    printf 'run-guest: boot-to-init %ss, %s (guest uptime; %s, %s)\n' \
        "$boot_to_init" "$mounted_at" "$machine" "$(basename "$kernel")" >&2
fi
if [[ $machine == vmm-mini ]]; then
    # vmm-mini --boot-timer's line (its stderr, in the log); not anchored, in
    # case it landed in the middle of a console line.
    vmm_boot=$(tr -d '\r' <"$log" |
        sed -n 's/.*vmm-mini: boot-to-init \([0-9][0-9.]*\) s.*/\1/p' | tail -n1)
    if [[ -n $vmm_boot ]]; then
        printf "run-guest: vmm-mini boot-to-init %s s (VM creation to the guest's init, host clock)\n" \
            "$vmm_boot" >&2
    else
        printf 'run-guest: warning: vmm-mini reported no boot-to-init (the guest never wrote I/O port 0x502)\n' >&2
    fi
fi
printf 'run-guest: guest %s exited with %s after %ss (log: %s)\n' \
    "$cmd" "$status" "$elapsed" "$log" >&2
exit "$status"
