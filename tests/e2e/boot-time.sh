#!/usr/bin/env bash
# Time the e2e guest's boot. Boots it RUNS times per setup, with QEMU's own 9p
# server on an empty directory (no daemon) and the guest command noop, and
# prints, as medians: the guest's boot-to-init time (the kernel's uptime when
# /init started, which /init prints), its uptime once the share is mounted
# (after module loading, for the stock kernel), and the wall time of the whole
# QEMU run (start, firmware, decompression, boot, mount, power-off).
#
# Usage: tests/e2e/boot-time.sh [--runs N] [SETUP...]
#
# SETUPs (default: all three):
#   q35          Debian's stock kernel (vmlinuz + modules) on -M q35, virtio-pci
#   microvm      guest/build-kernel.sh's bzImage on -M microvm, virtio-mmio
#   microvm-pvh  the same kernel's vmlinux, which QEMU boots through its PVH
#                entry point (no boot loader, no decompression)
#   microvm-6.1, microvm-pvh-6.1
#                the same with the previous LTS: guest/build-kernel.sh
#                --package linux-source-6.1 (built or cached in
#                target/guest-6.1/), for comparing the two in one run
#
# Environment: QEMU, E2E_ACCEL, E2E_TSC_KHZ (see run-guest.sh; measured once
# here), E2E_LOG_DIR.
# Ends with "boot-time: N passed, M failed" (one per boot: the guest mounted
# the share, ran noop and powered off).
set -euo pipefail

e2e_name=boot-time
# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

runs=3
setups=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) runs=${2:?}; shift ;;
        q35 | microvm | microvm-pvh | microvm-6.1 | microvm-pvh-6.1) setups+=("$1") ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "$e2e_name: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "$e2e_name: bad --runs '$runs'" >&2; exit 2; }
if ((${#setups[@]} == 0)); then setups=(q35 microvm microvm-pvh); fi

# Measure the host's TSC rate (for microvm under TCG) once, not per boot.
if [[ -z ${E2E_TSC_KHZ:-} ]] && tsc_khz=$("$e2e_dir/host-tsc-khz.py" 2>/dev/null); then
    export E2E_TSC_KHZ=$tsc_khz
fi

mkdir -p "$log_dir"
work=$(mktemp -d "${TMPDIR:-/tmp}/virtiofsd-rs-boot-time.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/share"

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

built=
results=()
for setup in "${setups[@]}"; do
    case $setup in
        q35) e2e_set_machine q35; kernel=$kernel_dir/vmlinuz ;;
        microvm) e2e_set_machine microvm; kernel=$kernel_dir/bzImage ;;
        microvm-pvh) e2e_set_machine microvm; kernel=$kernel_dir/vmlinux ;;
        microvm-6.1 | microvm-pvh-6.1)
            e2e_set_machine microvm
            kernel=$repo_root/target/guest-6.1/bzImage
            if [[ $setup == microvm-pvh-6.1 ]]; then kernel=$repo_root/target/guest-6.1/vmlinux; fi
            "$repo_root/guest/build-kernel.sh" --package linux-source-6.1 --out "$repo_root/target/guest-6.1" >&2
            ;;
    esac
    if [[ " $built " != *" $e2e_machine "* ]]; then
        e2e_build_guest >&2
        built+=" $e2e_machine"
    fi
    : >"$work/init" && : >"$work/mounted" && : >"$work/wall"
    for ((i = 1; i <= runs; i++)); do
        log=$log_dir/console-boot-time-$setup-$i.log
        t0=$(date +%s.%N)
        status=0
        "$e2e_dir/run-guest.sh" "${e2e_machine_args[@]}" --kernel "$kernel" \
            --fstype 9p-qemu --dir "$work/share" --cmd noop --timeout 120 \
            --quiet --log "$log" 2>"$work/stderr" || status=$?
        t1=$(date +%s.%N)
        init=$(tr -d '\r' <"$log" | sed -n 's/^e2e-init: boot-to-init \([0-9.]*\)s$/\1/p' | tail -n1)
        mounted=$(tr -d '\r' <"$log" | sed -n 's/^e2e-init: mounted-at \([0-9.]*\)s$/\1/p' | tail -n1)
        if [[ $status -eq 0 && -n $init && -n $mounted ]]; then
            wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
            e2e_pass "$setup run $i: boot-to-init ${init}s, mounted at ${mounted}s, QEMU run ${wall}s"
            echo "$init" >>"$work/init"
            echo "$mounted" >>"$work/mounted"
            echo "$wall" >>"$work/wall"
        else
            e2e_fail "$setup run $i booted, mounted and powered off (status $status; log: $log)"
            sed 's/^/    /' "$work/stderr"
        fi
    done
    if [[ -s $work/init ]]; then
        results+=("$(printf '%-12s %-8s %8s bytes  boot-to-init %ss  mounted %ss  QEMU run %ss' \
            "$setup" "$(basename "$kernel")" "$(stat -c %s "$kernel")" \
            "$(median <"$work/init")" "$(median <"$work/mounted")" "$(median <"$work/wall")")")
    fi
done

e2e_note "medians of $runs runs (accel ${E2E_ACCEL:-tcg}, $(${QEMU:-qemu-system-x86_64} --version | head -n1)):"
for r in "${results[@]}"; do e2e_note "  $r"; done
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
