#!/usr/bin/env bash
# Starts a virtio-fs daemon the way a management stack starts upstream
# virtiofsd: its exact argument list, its socket hand-over, its handling of
# stderr. A DAEMON_BIN for tests/e2e/e2e-virtiofs.sh (which runs it as
# `DAEMON_BIN --shared-dir DIR --socket-path SOCK [ARGS...]`), so the guest
# workload and the host verification run against a daemon launched as in
# production:
#
#   LAUNCH_STACK=kata-rs LAUNCH_BIN=target/release/virtiofsd-rs \
#       tests/e2e/e2e-virtiofs.sh tests/e2e/launch-as.sh --xattr
#
# tests/e2e/drop-in.sh runs the workload once per stack.
#
# LAUNCH_STACK (the argument lists, from the stacks' sources):
#   libvirt-9    libvirt 9.0 (Debian 12), the -o form it uses for a daemon
#                without "separate-options" (libvirt/libvirt,
#                src/qemu/qemu_virtiofs.c, qemuVirtioFSBuildCommandLine, at
#                71b19c4f): it makes and listens on the socket itself and
#                passes it as --fd; <binary xattr='on'>, <lock posix='off'
#                flock='off'/>, <thread_pool size='16'/>:
#                  BIN --fd=N -o source=DIR,xattr,no_flock,no_posix_lock --thread-pool-size=16
#   libvirt      current libvirt, for a daemon whose --print-capabilities
#                has "separate-options" (as ours has; same function):
#                  BIN --fd=N --shared-dir DIR --xattr --thread-pool-size=16
#   kata-go      Kata Containers' Go runtime (kata-containers/kata-containers,
#                src/runtime/virtcontainers/virtiofsd.go, args(); extra
#                args default DEFVIRTIOFSEXTRAARGS in src/runtime/Makefile):
#                it binds the socket and passes it as fd 3, and discards
#                stderr:
#                  BIN --syslog --cache=auto --shared-dir=DIR --fd=3 --thread-pool-size=1 --announce-submounts [EXTRA...] [--xattr]
#   kata-rs      Kata's Rust runtime (src/runtime-rs/crates/resource/src/
#                share_fs/share_virtio_fs_standalone.rs): the daemon makes
#                the socket; the runtime reads its stderr and starts the VM
#                only once a line contains "Waiting for vhost-user socket
#                connection" (it waits for ever; here 20 s, then the daemon
#                is killed so the run fails):
#                  BIN --socket-path SOCK --shared-dir DIR --cache auto --thread-pool-size=1 -o announce_submounts [EXTRA...] [--xattr]
# LAUNCH_BIN: the daemon (default target/release/virtiofsd-rs).
#
# ARGS after --shared-dir and --socket-path: --xattr is passed as the stack
# passes it (libvirt's xattr='on', Kata's guest SELinux switch); anything
# else is Kata's configurable extra arguments (virtio_fs_extra_args), and an
# error for libvirt, which has no way to pass them.
set -euo pipefail

die() {
    echo "launch-as: $*" >&2
    exit 2
}

stack=${LAUNCH_STACK:-}
bin=${LAUNCH_BIN:-target/release/virtiofsd-rs}
[[ -n $stack ]] || die "LAUNCH_STACK is not set (libvirt-9, libvirt, kata-go, kata-rs)"
[[ -x $bin ]] || die "LAUNCH_BIN $bin is not an executable"

[[ ${1:-} == --shared-dir && -n ${2:-} && ${3:-} == --socket-path && -n ${4:-} ]] ||
    die "usage: launch-as.sh --shared-dir DIR --socket-path SOCK [ARGS...]"
dir=$2 sock=$4
shift 4
xattr=false
extra=()
for a in "$@"; do
    case $a in
        --xattr) xattr=true ;;
        *) extra+=("$a") ;;
    esac
done

# listen_and_exec FD CMD...: bind and listen on $sock (as the stack does),
# hand it over as fd FD, and exec CMD.
listen_and_exec() {
    local fd=$1
    shift
    exec python3 - "$sock" "$fd" "$@" <<'PY'
import os, socket, sys
path, fd, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o600)
s.listen(1)
os.dup2(s.fileno(), fd)
os.set_inheritable(fd, True)
os.execv(argv[0], argv)
PY
}

case $stack in
    libvirt-9 | libvirt)
        ((${#extra[@]} == 0)) || die "$stack cannot pass ${extra[*]} (libvirt has no extra arguments)"
        echo "launch-as: $stack: the daemon's stderr is libvirt's per-domain log" >&2
        if [[ $stack == libvirt-9 ]]; then
            opts="source=$dir"
            $xattr && opts+=",xattr"
            opts+=",no_flock,no_posix_lock"
            listen_and_exec 31 "$bin" --fd=31 -o "$opts" --thread-pool-size=16
        else
            args=(--fd=31 --shared-dir "$dir")
            $xattr && args+=(--xattr)
            listen_and_exec 31 "$bin" "${args[@]}" --thread-pool-size=16
        fi
        ;;
    kata-go)
        args=(--syslog --cache=auto "--shared-dir=$dir" --fd=3 --thread-pool-size=1 --announce-submounts "${extra[@]}")
        $xattr && args+=(--xattr)
        echo "launch-as: kata-go: ${args[*]}; stderr discarded, as Kata's Go runtime does" >&2
        exec 2>/dev/null
        listen_and_exec 3 "$bin" "${args[@]}"
        ;;
    kata-rs)
        args=(--socket-path "$sock" --shared-dir "$dir" --cache auto --thread-pool-size=1 -o announce_submounts "${extra[@]}")
        $xattr && args+=(--xattr)
        echo "launch-as: kata-rs: ${args[*]}; waiting for the readiness line" >&2
        ready=$(mktemp)
        me=$$
        # runtime-rs's wait: a stderr line containing the readiness words.
        (
            for ((i = 0; i < 200; i++)); do
                [[ -s $ready ]] && exit 0
                sleep 0.1
            done
            echo "launch-as: kata-rs: no readiness line within 20 s; runtime-rs would wait for ever: killing the daemon" >&2
            kill -TERM "$me" 2>/dev/null
        ) &
        exec "$bin" "${args[@]}" 2> >(
            while IFS= read -r line; do
                printf '%s\n' "$line" >&2
                if [[ $line == *"Waiting for vhost-user socket connection"* && ! -s $ready ]]; then
                    echo ready >"$ready"
                    echo "launch-as: kata-rs: readiness line seen; the runtime starts the VM" >&2
                fi
            done
            rm -f "$ready"
        )
        ;;
    *) die "unknown LAUNCH_STACK $stack (libvirt-9, libvirt, kata-go, kata-rs)" ;;
esac
