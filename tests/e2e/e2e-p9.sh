#!/usr/bin/env bash
# End-to-end test of a 9P2000.L server over TCP: a Linux guest (Debian stock
# kernel, QEMU TCG) mounts the server's share with the kernel's 9p client
# (trans=tcp, version=9p2000.L, msize=524288) and runs tests/e2e/guest/workload;
# the host then verifies the share with tests/e2e/verify-host.sh.
#
# Usage:
#   tests/e2e/e2e-p9.sh [--machine M] P9D_BIN [P9D_ARGS...]
#   tests/e2e/e2e-p9.sh [--machine M] --diod
#
# --machine q35 (default): Debian's stock kernel on -M q35, virtio-net-pci;
# microvm: guest/build-kernel.sh's kernel on -M microvm, virtio-net-device.
#
# P9D_BIN is started as
#   P9D_BIN --shared-dir DIR --listen tcp:127.0.0.1:PORT --no-auth [P9D_ARGS...]
# on a free loopback port. It must accept connections within 20 s, serve any
# number of clients (the readiness probe connects and closes without a
# message; QEMU then connects once, when it starts), keep running after they
# disconnect, and exit with status 0 within 10 s of SIGTERM. The guest mounts
# with the kernel's defaults for everything else: aname "", uname "nobody",
# access=client (per-uid attaches with n_uname), cache=none.
#
# --diod runs the same against Debian's diod (apt-get install diod), the
# reference server; the guest then also passes aname=DIR,uname=root.
#
# The workload's only skips for 9p-tcp are limits of the Linux 6.1 9p client
# itself, which diod cannot pass either (the reasons are printed).
#
# Environment: E2E_TIMEOUT (guest timeout, default 900 s), E2E_KEEP=1 (keep
# the temporary share), E2E_QUIET=1 (do not stream the guest console),
# E2E_LOG_DIR (default target/e2e), E2E_MOUNT_OPTS (extra guest mount
# options, e.g. cache=loose), E2E_MACHINE (default for --machine),
# E2E_WORKLOAD_SCALE=small (the workload's scale:small: a quarter of the
# large files, a large directory of 400 files instead of 5,000; every check
# stays). Must run as root.
#
# Ends with "e2e-p9: N passed, M failed" (e2e-p9-microvm: ... with --machine
# microvm); exits 1 if anything failed.
set -euo pipefail

e2e_name=e2e-p9
# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

e2e_take_machine_opt "$@"
set -- "${e2e_args[@]}"
e2e_name+=$e2e_machine_suffix
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
    exit 2
fi
if [[ $1 == --diod ]]; then
    e2e_p9_kind=diod
    shift
    [[ $# -eq 0 ]] || { echo "$e2e_name: --diod takes no arguments" >&2; exit 2; }
    command -v diod >/dev/null || { echo "$e2e_name: diod is not installed (apt-get install diod)" >&2; exit 2; }
else
    e2e_p9_kind=p9d
    e2e_p9_bin=$1
    shift
    [[ -x $e2e_p9_bin && -f $e2e_p9_bin ]] || { echo "$e2e_name: $e2e_p9_bin is not executable" >&2; exit 2; }
    e2e_p9_bin=$(cd "$(dirname "$e2e_p9_bin")" && pwd)/$(basename "$e2e_p9_bin")
    e2e_p9_args=("$@")
fi
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root (chown, mknod in the share)" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$log_dir"
console_log=$log_dir/console-workload-9p-tcp-$e2e_p9_kind$e2e_machine_suffix.log
server_log=$log_dir/server-workload-$e2e_p9_kind$e2e_machine_suffix.log
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

e2e_build_guest
e2e_make_workdir
"$e2e_dir/seed-host.sh" "$e2e_share"

if ! e2e_start_p9_server "$server_log"; then
    echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
    exit 1
fi

# Limits of the guest's 9p client (Linux 6.1 fs/9p/vfs_super.c), not of any
# server; diod fails both too (see tests/e2e/README.md).
e2e_note "skip:ns-timestamps: the 9p client leaves s_time_gran at 1 s, so it truncates the times it sets to whole seconds"
e2e_note "skip:pre1970-timestamps: the 9p client sets s_time_min = 0, so it clamps times before 1970 to 0 before sending them"
skips=skip:ns-timestamps,skip:pre1970-timestamps
if [[ -n ${E2E_WORKLOAD_SCALE:-} ]]; then skips+=,scale:$E2E_WORKLOAD_SCALE; fi

run_args=("${e2e_machine_args[@]}" --fstype 9p-tcp --port "$e2e_port" --cmd workload --args "$skips"
    --timeout "${E2E_TIMEOUT:-900}" --log "$console_log")
mount_opts=$(e2e_p9_mount_opts)
if [[ -n $mount_opts ]]; then run_args+=(--mount-opts "$mount_opts"); fi
if [[ ${E2E_QUIET:-0} == 1 ]]; then run_args+=(--quiet); fi

status=0
"$e2e_dir/run-guest.sh" "${run_args[@]}" || status=$?
e2e_judge_guest "$status" "$console_log"
e2e_add_counts guest "$console_log"
e2e_stop_p9_server

e2e_verify_share "$log_dir/verify-host-9p-tcp-$e2e_p9_kind$e2e_machine_suffix.log"

e2e_note "logs in $log_dir (server: $server_log); took $(($(date +%s) - start))s"
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
