#!/usr/bin/env bash
# One request queue against four, in one run: a Linux 6.12 guest (Debian's
# stock kernel, whose virtio-fs driver uses one request queue per vCPU) on
# QEMU q35 with 4 vCPUs runs fio (tests/e2e/guest/mq-bench: random 4 KiB
# reads, one job pinned to each vCPU) on the share, served with --cache never
# (every read reaches the daemon) by:
#   virtiofsd-rs  with QEMU's num-request-queues=1
#   virtiofsd-rs  with num-request-queues=4 (the daemon's per-queue report
#                 must show all 4 used)
#   virtiofsd     upstream (~/.cargo/bin/virtiofsd), which serves one
#                 request queue, when installed
# and prints a table with each run's IOPS and p50 latency and the ratios.
# Under TCG every figure is bound by the emulation: compare ratios only.
#
# Usage: tests/e2e/mq-bench.sh [DAEMON_BIN]   (default target/release/virtiofsd-rs)
# Environment: VIRTIOFSD (upstream's binary), E2E_LOG_DIR. Must run as root.
# Ends with "mq-bench: N passed, M failed".
set -euo pipefail

e2e_name=mq-bench
# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

daemon=${1:-$repo_root/target/release/virtiofsd-rs}
[[ -x $daemon ]] || { echo "$e2e_name: $daemon is not executable" >&2; exit 2; }
daemon=$(cd "$(dirname "$daemon")" && pwd)/$(basename "$daemon")
upstream=${VIRTIOFSD:-$HOME/.cargo/bin/virtiofsd}
command -v fio >/dev/null || { echo "$e2e_name: fio is missing (apt-get install fio)" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root" >&2; exit 2; }

mkdir -p "$log_dir"
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM
e2e_set_machine q35-6.12
initramfs=$kernel_dir/initramfs-fio.cpio.gz
e2e_build_guest --add-program "$(command -v fio)" --out "$initramfs" >&2

results=()
# run_one LABEL BIN QUEUES
run_one() {
    local label=$1 bin=$2 queues=$3 status=0 line before=$e2e_failed
    local console=$log_dir/console-mq-bench-$label.log dlog=$log_dir/daemon-mq-bench-$label.log
    e2e_make_workdir
    e2e_start_daemon "$bin" "$dlog" --cache never || { e2e_cleanup "$before"; return; }
    E2E_CPUS=4 E2E_FS_QUEUES=$queues "$e2e_dir/run-guest.sh" --machine q35 \
        --kernel "$kernel_dir/vmlinuz" --initramfs "$initramfs" --mem 1G \
        --fstype virtiofs --socket "$e2e_socket" --cmd mq-bench --quiet \
        --timeout 300 --log "$console" || status=$?
    e2e_check_daemon_exit
    line=$(tr -d '\r' <"$console" | grep -o 'mq-bench: jobs=.*' | tail -n1) || true
    if ((status == 0)) && [[ $line =~ iops=([0-9.]+)\ p50_us=([0-9.]*) ]]; then
        e2e_pass "$label: $line"
        results+=("$label ${BASH_REMATCH[1]} ${BASH_REMATCH[2]:--}")
    else
        e2e_fail "$label: fio ran in the guest (status $status; log: $console)"
    fi
    if [[ $bin == "$daemon" && $queues -gt 1 ]]; then e2e_check_queues "$dlog" "$queues"; fi
    e2e_cleanup "$before"
}

run_one virtiofsd-rs-1q "$daemon" 1
run_one virtiofsd-rs-4q "$daemon" 4
if [[ -x $upstream ]]; then
    run_one virtiofsd-1q "$upstream" 1
else
    e2e_note "upstream virtiofsd not found at $upstream (cargo install virtiofsd): its row is left out"
fi

iops_of() {
    local r
    for r in "${results[@]}"; do
        [[ $r == "$1 "* ]] && { read -r _ i _ <<<"$r"; echo "$i"; return; }
    done
}
e2e_note "$(printf '%-16s %10s %8s' server IOPS p50_us)"
for r in "${results[@]}"; do
    read -r l i p <<<"$r"
    e2e_note "$(printf '%-16s %10.0f %8s' "$l" "$i" "$p")"
done
one=$(iops_of virtiofsd-rs-1q) four=$(iops_of virtiofsd-rs-4q) up=$(iops_of virtiofsd-1q)
if [[ -n $one && -n $four ]]; then
    e2e_note "4 queues / 1 queue (virtiofsd-rs): $(awk -v a="$four" -v b="$one" 'BEGIN { printf "%.2f", a / b }')x"
fi
if [[ -n $up && -n $four ]]; then
    e2e_note "virtiofsd-rs 4 queues / virtiofsd 1 queue: $(awk -v a="$four" -v b="$up" 'BEGIN { printf "%.2f", a / b }')x"
fi
e2e_note "QEMU TCG, 4 vCPUs on $(nproc) host cores: emulation-bound figures, ratios only"
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
