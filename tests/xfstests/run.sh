#!/usr/bin/env bash
# Runs xfstests (fstests) against virtiofsd-rs's host FUSE mount.
#
# Each mount is made by mount(8) through the helper /sbin/mount.fuse.NAME (a
# link to the daemon binary, which acts as mount.fuse.virtiofsd-rs when
# called so: crates/virtiofs/src/mount_helper.rs). The test and scratch
# shares live on their own loop-mounted ext4 images under $XFSTESTS_WORK
# (default /var/tmp/virtiofsd-rs-xfstests), so no test fills the real disk;
# they are removed when the run ends, the results kept.
# Tests listed in the exclude file (default tests/xfstests/exclude, every
# entry with its reason) are not run. A watchdog kills a test still running
# after $XFSTESTS_TEST_TIMEOUT seconds (default 300), which then fails.
#
# Usage: tests/xfstests/run.sh [--options OPTS] [--exclude FILE|--no-exclude]
#            [--control] [--name NAME] [BINARY] [-- CHECK-ARGS...]
#   BINARY       the daemon (default target/release/virtiofsd-rs)
#   --options    daemon -o options for both mounts, e.g. posix_acl or
#                inode_file_handles=prefer (default: none, the defaults)
#   --control    run libfuse's passthrough_ll instead of the daemon (built by
#                tests/xfstests/control.sh), to tell FUSE's limits from ours
#   CHECK-ARGS   what to run (default: -g generic/quick)
# Results: $XFSTESTS_WORK/results/NAME/ (NAME: default, or --name), with
# check's summary in summary.txt. Exit status: 0 when no test failed.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf 'xfstests: %s\n' "$*" >&2; }

options= control=false name= bin=$repo_root/target/release/virtiofsd-rs
exclude=$repo_root/tests/xfstests/exclude
check_args=(-g generic/quick)
while (($#)); do
    case $1 in
        --options) options=$2; shift 2 ;;
        --exclude) exclude=$2; shift 2 ;;
        --no-exclude) exclude=; shift ;;
        --control) control=true; shift ;;
        --name) name=$2; shift 2 ;;
        --) shift; check_args=("$@"); break ;;
        -*) log "unknown argument $1"; exit 2 ;;
        *) bin=$1; shift ;;
    esac
done
[[ $EUID -eq 0 ]] || { log "needs root (mounts)"; exit 2; }
[[ -c /dev/fuse ]] || { log "/dev/fuse is missing"; exit 1; }
name=${name:-$($control && echo control || echo "${options:-default}" | tr ',=/' '__-')}
work=${XFSTESTS_WORK:-/var/tmp/virtiofsd-rs-xfstests}
timeout=${XFSTESTS_TEST_TIMEOUT:-300}

xfs=$("$repo_root/tests/xfstests/build.sh")
if $control; then
    helper_bin=$("$repo_root/tests/xfstests/control.sh")
    subtype=passthrough_ll
else
    [[ -x $bin ]] || { log "no daemon binary at $bin (cargo build --release)"; exit 1; }
    helper_bin=$(realpath "$bin")
    subtype=virtiofsd-rs
fi
helper=/sbin/mount.fuse.$subtype
if $control; then
    # libfuse's example takes -o source=DIR itself; fsname gives each
    # mount its own source name, as fstests needs.
    printf '#!/bin/sh\nulimit -n 16384\nexec %s -ofsname="$@"\n' "$helper_bin" >"$helper"
    chmod 755 "$helper"
else
    ln -sfn "$helper_bin" "$helper"
fi

# The backing file systems: one ext4 image each, loop-mounted.
mkdir -p "$work/backing" "$work/mnt/test" "$work/mnt/scratch" "$work/results"
cleanup_mounts() {
    for m in "$work/mnt/test" "$work/mnt/scratch"; do
        mountpoint -q "$m" && umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    for m in test scratch; do
        mountpoint -q "$work/backing/$m" && umount "$work/backing/$m" || true
    done
}
cleanup_mounts
for m in test scratch; do
    mkdir -p "$work/backing/$m"
    rm -f "$work/$m.img"
    truncate -s 6G "$work/$m.img"
    mkfs.ext4 -q -F "$work/$m.img"
    mount -o loop "$work/$m.img" "$work/backing/$m"
done
watchdog_pid=
# The images (several GiB once written) go with the run; results stay.
trap 'cleanup_mounts; rm -f "$work/test.img" "$work/scratch.img"; [[ -n $watchdog_pid ]] && kill "$watchdog_pid" 2>/dev/null; true' EXIT

extra=${options:+,$options}
if ! $control; then
    extra+=,log=$work/results/$name/daemon.log
fi
rm -rf "${work:?}/results/$name"
mkdir -p "$work/results/$name"
cat >"$work/local.config" <<CONFIG
export TEST_DEV=xfst_${name}_test SCRATCH_DEV=xfst_${name}_scratch
export TEST_DIR=$work/mnt/test SCRATCH_MNT=$work/mnt/scratch
export FSTYP=fuse FUSE_SUBTYP=.$subtype
export TEST_FS_MOUNT_OPTS="-osource=$work/backing/test,allow_other,default_permissions$extra"
export MOUNT_OPTIONS="-osource=$work/backing/scratch,allow_other,default_permissions$extra"
export RESULT_BASE=$work/results/$name
CONFIG

# The watchdog: a test script (bash ./tests/DIR/NNN) running for longer than
# $timeout seconds has its process tree killed; check then records it failed.
(
    while sleep 10; do
        ps -eo pid=,etimes=,args= | awk -v t="$timeout" '$2 > t && $3 ~ /bash$/ && $4 ~ /\/tests\/[a-z]+\/[0-9]+$/ { print $1, $4 }' |
            while read -r pid test; do
                echo "xfstests: watchdog: $test ran for more than $timeout s, killing it" >&2
                pkill -KILL -P "$pid" 2>/dev/null || true
                kill -KILL "$pid" 2>/dev/null || true
            done
    done
) &
watchdog_pid=$!

log "running ${check_args[*]} against $subtype${options:+ -o $options} (results: $work/results/$name)"
excl_args=()
[[ -n $exclude ]] && excl_args=(-E "$exclude")
rc=0
(cd "$xfs" && HOST_OPTIONS=$work/local.config ./check "${excl_args[@]}" "${check_args[@]}") \
    2>&1 | tee "$work/results/$name/check.out" || rc=$?
grep -E '^(Ran|Not run|Failures|Failed|Passed all)' "$work/results/$name/check.out" >"$work/results/$name/summary.txt" || true
ran=$(awk '/^Ran:/ { print NF - 1 }' "$work/results/$name/check.out" | tail -n1)
notrun=$(awk '/^Not run:/ { print NF - 2 }' "$work/results/$name/check.out" | tail -n1)
failures=$(awk '/^Failures:/ { $1 = ""; print }' "$work/results/$name/check.out" | tail -n1)
nfail=$(wc -w <<<"$failures")
log "$name: $((${ran:-0} - ${notrun:-0})) run, ${notrun:-0} not run (of ${ran:-0}), $nfail failed${failures:+:$failures}"
if [[ -z $ran ]]; then
    log "check ran no test (see $work/results/$name/check.out)"
    exit 1
fi
((nfail == 0 && rc == 0))
