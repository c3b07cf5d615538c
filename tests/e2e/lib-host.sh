# shellcheck shell=bash
# Shared helpers for the top-level e2e scripts (sourced, bash).
# shellcheck disable=SC2034 # variables used by the scripts that source this

e2e_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$e2e_dir/../.." && pwd)
log_dir=${E2E_LOG_DIR:-$repo_root/target/e2e}

# The guest machine (run-guest.sh --machine): q35 with Debian's stock 6.1
# kernel (target/guest-stock/, virtio-pci; the "old guest"), q35-6.12 with
# Debian's stock 6.12 kernel (target/guest-stock-6.12/; multi-queue
# virtio-fs), or microvm with guest/build-kernel.sh's kernel (target/guest/,
# virtio-mmio). E2E_MACHINE sets the default, a leading --machine M of the
# scripts overrides it (e2e_take_machine_opt).
e2e_machine=
kernel_dir=
e2e_machine_args=()   # for run-guest.sh
e2e_machine_suffix=   # for log names and the summary label: "" or -microvm
e2e_set_machine() {
    case $1 in
        q35)
            kernel_dir=$repo_root/target/guest-stock
            e2e_machine_args=()
            e2e_machine_suffix=
            ;;
        q35-6.12)
            kernel_dir=$repo_root/target/guest-stock-6.12
            e2e_machine_args=(--kernel "$kernel_dir/vmlinuz" --initramfs "$kernel_dir/initramfs.cpio.gz")
            e2e_machine_suffix=-6.12
            ;;
        microvm)
            kernel_dir=$repo_root/target/guest
            e2e_machine_args=(--machine microvm)
            e2e_machine_suffix=-microvm
            ;;
        *) printf '%s: --machine must be q35, q35-6.12 or microvm, not "%s"\n' "${e2e_name:-e2e}" "$1" >&2; exit 2 ;;
    esac
    e2e_machine=$1
}
e2e_set_machine "${E2E_MACHINE:-q35}"

# e2e_take_machine_opt ARGS...: consume leading "--machine M" (or
# --machine=M) options; the other arguments are left in e2e_args. Use as
#   e2e_take_machine_opt "$@"; set -- "${e2e_args[@]}"
e2e_args=()
e2e_take_machine_opt() {
    e2e_args=("$@")
    while ((${#e2e_args[@]})); do
        case ${e2e_args[0]} in
            --machine)
                ((${#e2e_args[@]} >= 2)) || { printf '%s: --machine needs q35, q35-6.12 or microvm\n' "${e2e_name:-e2e}" >&2; exit 2; }
                e2e_set_machine "${e2e_args[1]}"
                e2e_args=("${e2e_args[@]:2}")
                ;;
            --machine=*)
                e2e_set_machine "${e2e_args[0]#*=}"
                e2e_args=("${e2e_args[@]:1}")
                ;;
            *) break ;;
        esac
    done
}

e2e_name=${e2e_name:-e2e}
e2e_passed=0
e2e_failed=0
e2e_skipped=0
e2e_pass() { e2e_passed=$((e2e_passed + 1)); printf 'PASS: %s\n' "$*"; }
e2e_fail() { e2e_failed=$((e2e_failed + 1)); printf 'FAIL: %s\n' "$*"; }
e2e_note() { printf '%s: %s\n' "$e2e_name" "$*"; }

# e2e_judge_guest STATUS LOG [WHAT]: one PASS/FAIL line for run-guest.sh's
# exit status, prefixed with "WHAT: " when given.
e2e_judge_guest() {
    local status=$1 log=$2 p=${3:+$3: }
    case $status in
        0) e2e_pass "${p}guest booted, mounted the share and finished the workload" ;;
        97) e2e_fail "${p}guest could not mount the share (E2E-EXIT=97; log: $log)" ;;
        124) e2e_fail "${p}guest did not finish within the timeout (log: $log)" ;;
        98) e2e_fail "${p}guest never printed E2E-EXIT (the VMM died or the kernel panicked; log: $log)" ;;
        99) e2e_fail "${p}vmm-mini's exit status was not the guest's E2E-EXIT status (log: $log)" ;;
        *) e2e_fail "${p}guest workload exited with status $status (log: $log)" ;;
    esac
}

# Add the counts of a "LABEL: N passed, M failed" line found in FILE.
e2e_add_counts() {
    local label=$1 file=$2 line='' p f s
    if [[ -f $file ]]; then
        line=$(tr -d '\r' <"$file" | grep -E "^$label: [0-9]+ passed, [0-9]+ failed" | tail -n1) || true
    fi
    if [[ -z $line ]]; then
        e2e_fail "$label reported a summary"
        return
    fi
    p=$(sed -E 's/^[^:]*: ([0-9]+) passed.*/\1/' <<<"$line")
    f=$(sed -E 's/^[^:]*: [0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$line")
    s=0
    if [[ $line =~ ,\ ([0-9]+)\ skipped ]]; then s=${BASH_REMATCH[1]}; fi
    e2e_passed=$((e2e_passed + p))
    e2e_failed=$((e2e_failed + f))
    e2e_skipped=$((e2e_skipped + s))
    if ((s > 0)); then
        e2e_note "$label skipped $s checks (their SKIP lines are in its log)"
    fi
}

# Fetch (q35) or build (microvm) the kernel, cached, and build the initramfs.
# Args: build-initramfs.sh args.
# shellcheck disable=SC2120 # arguments are optional
e2e_build_guest() {
    if [[ $e2e_machine == microvm ]]; then
        "$repo_root/guest/build-kernel.sh" --out "$kernel_dir"
        "$repo_root/guest/build-initramfs.sh" --custom-kernel --kernel-dir "$kernel_dir" "$@"
        return
    fi
    local series=6.1
    if [[ $e2e_machine == q35-6.12 ]]; then series=6.12; fi
    "$repo_root/guest/stock-kernel.sh" --series "$series" "$kernel_dir"
    "$repo_root/guest/build-initramfs.sh" --kernel-dir "$kernel_dir" "$@"
}

# e2e_check_queues LOG MIN: the daemon's exit report in LOG ("requests per
# queue: hiprio H, 1: N1, 2: N2, ... (K of Q request queues used)") shows at
# least MIN request queues that served requests. One PASS or FAIL.
e2e_check_queues() {
    local log=$1 min=$2 line used
    line=$(grep -o 'requests per queue: .*' "$log" | tail -n1) || true
    if [[ -z $line ]]; then
        e2e_fail "the daemon reported its requests per queue (log: $log)"
        return
    fi
    used=$(sed -n 's/.*(\([0-9][0-9]*\) of [0-9][0-9]* request queues used).*/\1/p' <<<"$line")
    if [[ -n $used && $used -ge $min ]]; then
        e2e_pass "the guest spread its requests over $used request queues (at least $min): $line"
    else
        e2e_fail "the guest used at least $min request queues: $line"
    fi
}

# Temporary directory holding the share and the socket.
e2e_make_workdir() {
    e2e_work=$(mktemp -d "${TMPDIR:-/tmp}/virtiofsd-rs-e2e.XXXXXX")
    chmod 0755 "$e2e_work"
    e2e_share=$e2e_work/share
    e2e_socket=$e2e_work/vhost-user-fs.sock
    mkdir -m 0755 "$e2e_share"
}

daemon_pid=

# e2e_start_daemon BIN LOG [ARGS...]: start the daemon on $e2e_share and wait
# for its socket.
e2e_start_daemon() {
    local bin=$1 log=$2 i
    shift 2
    e2e_note "starting $bin --shared-dir $e2e_share --socket-path $e2e_socket $*"
    "$bin" --shared-dir "$e2e_share" --socket-path "$e2e_socket" "$@" >"$log" 2>&1 &
    daemon_pid=$!
    for ((i = 0; i < 200; i++)); do
        if [[ -S $e2e_socket ]]; then
            e2e_pass "daemon created its socket"
            return 0
        fi
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            local st=0
            wait "$daemon_pid" || st=$?
            daemon_pid=
            e2e_fail "daemon created its socket (daemon exited with status $st; log: $log)"
            tail -n 20 "$log" | sed 's/^/    daemon: /'
            return 1
        fi
        sleep 0.1
    done
    e2e_fail "daemon created its socket within 20s"
    return 1
}

# After the guest is gone the daemon must exit by itself, with status 0.
e2e_check_daemon_exit() {
    local i st=0
    [[ -n $daemon_pid ]] || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$daemon_pid" 2>/dev/null; then
        e2e_fail "daemon exited by itself within 10s of the guest disconnecting"
        e2e_kill_daemon
        return
    fi
    wait "$daemon_pid" || st=$?
    daemon_pid=
    e2e_pass "daemon exited by itself after the guest disconnected"
    if [[ $st -eq 0 ]]; then
        e2e_pass "daemon exit status 0"
    else
        e2e_fail "daemon exit status 0 (got $st)"
    fi
}

e2e_kill_daemon() {
    local i
    [[ -n $daemon_pid ]] || return 0
    if kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
}

# e2e_verify_share LOG: tests/e2e/verify-host.sh on $e2e_share, its output in
# LOG; prints its FAIL lines and adds its counts.
e2e_verify_share() {
    local log=$1
    "$e2e_dir/verify-host.sh" "$e2e_share" >"$log" 2>&1 || true
    grep -v '^PASS' "$log" || true
    e2e_add_counts verify-host "$log"
}

# e2e_pjdfstest_summary LOG LABEL MIN: read pjdfstest's "Summary: F failed,
# S skipped, P passed, X expected failures" line from the console LOG, print
# everything but the passing cases and a "LABEL: P passed, F failed" line, and
# succeed when nothing failed and at least MIN (if not empty) passed. Sets
# e2e_pjdfstest_passed and e2e_pjdfstest_failed.
e2e_pjdfstest_summary() {
    local log=$1 label=$2 min=$3 summary fail skip pass xfail
    e2e_pjdfstest_passed=0
    e2e_pjdfstest_failed=1
    tr -d '\r' <"$log" | sed -n '/^e2e-init: running/,$p' | grep -v -E '[[:space:]]ok$' || true
    summary=$(tr -d '\r' <"$log" | grep -E '^Summary: [0-9]+ failed' | tail -n1) || true
    if [[ -z $summary ]]; then
        echo "$label: no pjdfstest summary (log: $log)"
        echo "$label: 0 passed, 1 failed"
        return 1
    fi
    read -r fail skip pass xfail < <(sed -E \
        's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected failures.*/\1 \2 \3 \4/' \
        <<<"$summary")
    e2e_pjdfstest_passed=$pass
    e2e_pjdfstest_failed=$fail
    e2e_note "$label: $pass passed, $fail failed, $skip skipped, $xfail expected failures"
    echo "$label: $pass passed, $fail failed"
    if [[ -n $min && $pass -lt $min ]]; then
        echo "$label: only $pass passed, at least $min expected (PJDFSTEST_MIN_PASSED)" >&2
        return 1
    fi
    ((fail == 0))
}

# e2e_cleanup [FAILED_BEFORE]: stop the daemon; remove the work directory
# unless E2E_KEEP=1 or more than FAILED_BEFORE (default 0) checks have failed
# (a script that makes several work directories in turn passes the count from
# before each one).
e2e_cleanup() {
    local before=${1:-0}
    e2e_kill_daemon
    [[ -n ${e2e_work:-} && -d $e2e_work ]] || return 0
    if [[ ${E2E_KEEP:-0} == 1 || $e2e_failed -gt $before ]]; then
        e2e_note "kept $e2e_work"
    else
        rm -rf "$e2e_work"
    fi
    e2e_work=
}

# --- 9P2000.L servers on a loopback TCP port (e2e-p9.sh, diod-clients.sh,
# pjdfstest-guest.sh --p9d/--diod) ---------------------------------------------
#
# e2e_p9_kind is p9d (e2e_p9_bin is started as BIN --shared-dir DIR --listen
# tcp:127.0.0.1:PORT --no-auth [e2e_p9_args...]: like diod's -n, p9d serves
# TCP only when told that it has no authentication) or diod (Debian's diod,
# the reference: no auth, no user database, every uid may attach;
# e2e_p9_args are extra diod options, e.g. "-e ctl").
e2e_p9_kind=
e2e_p9_bin=
e2e_p9_args=()
e2e_port=

# e2e_port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
e2e_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Choose a port in 10000-32767 (below Linux's ephemeral range) that nothing
# listens on; sets e2e_port.
e2e_pick_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((10000 + RANDOM % 22768))
        if ! e2e_port_open "$p"; then
            e2e_port=$p
            return 0
        fi
    done
    return 1
}

# The guest's extra mount options for this server. diod needs the export's
# path as aname, and (without a user database) the uname "root" for the
# kernel's first attach, which names a user instead of a uid (n_uname ~0).
# p9d gets the kernel's defaults (aname "", uname "nobody"). E2E_MOUNT_OPTS
# adds options (e.g. cache=loose).
e2e_p9_mount_opts() {
    local opts=
    if [[ $e2e_p9_kind == diod ]]; then opts=aname=$e2e_share,uname=root; fi
    if [[ -n ${E2E_MOUNT_OPTS:-} ]]; then opts=${opts:+$opts,}$E2E_MOUNT_OPTS; fi
    printf '%s\n' "$opts"
}

# e2e_start_p9_server LOG: serve $e2e_share on 127.0.0.1:$e2e_port (a free
# port, chosen here) and wait until the port accepts a connection (the probe
# connects and closes without sending anything). One PASS or FAIL.
e2e_start_p9_server() {
    local log=$1 attempt i st cmd
    for attempt in 1 2 3; do
        if ! e2e_pick_port; then
            e2e_fail "found a free loopback TCP port"
            return 1
        fi
        if [[ $e2e_p9_kind == diod ]]; then
            # -f foreground, logs on stderr; -n no auth; -N no user database
            # (any uid may attach, gid = uid); -c /dev/null ignores
            # /etc/diod.conf.
            cmd=(diod -f -n -N -d 0 -c /dev/null -L stderr -l "127.0.0.1:$e2e_port"
                -e "$e2e_share" "${e2e_p9_args[@]}")
        else
            cmd=("$e2e_p9_bin" --shared-dir "$e2e_share" --listen "tcp:127.0.0.1:$e2e_port" --no-auth
                "${e2e_p9_args[@]}")
        fi
        e2e_note "starting ${cmd[*]}"
        "${cmd[@]}" >"$log" 2>&1 &
        daemon_pid=$!
        for ((i = 0; i < 200; i++)); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            if e2e_port_open "$e2e_port" && kill -0 "$daemon_pid" 2>/dev/null; then
                e2e_pass "$e2e_p9_kind accepts connections on 127.0.0.1:$e2e_port"
                return 0
            fi
            sleep 0.1
        done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            e2e_fail "$e2e_p9_kind accepts connections on 127.0.0.1:$e2e_port within 20s (log: $log)"
            e2e_kill_daemon
            return 1
        fi
        st=0
        wait "$daemon_pid" || st=$?
        daemon_pid=
        if ((attempt < 3)) && grep -qi 'in use' "$log"; then
            e2e_note "port $e2e_port was taken meanwhile; trying another"
            continue
        fi
        e2e_fail "$e2e_p9_kind started (it exited with status $st; log: $log)"
        tail -n 20 "$log" | sed 's/^/    server: /'
        return 1
    done
}

# The server serves until SIGTERM, then must exit with status 0 within 10 s.
e2e_stop_p9_server() {
    local i st=0
    [[ -n $daemon_pid ]] || return 0
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        wait "$daemon_pid" || st=$?
        daemon_pid=
        e2e_fail "$e2e_p9_kind was still running at the end (it exited early with status $st)"
        return
    fi
    kill -TERM "$daemon_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$daemon_pid" 2>/dev/null; then
        e2e_fail "$e2e_p9_kind exited within 10s of SIGTERM"
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
        daemon_pid=
        return
    fi
    wait "$daemon_pid" || st=$?
    daemon_pid=
    if ((st == 0)); then
        e2e_pass "$e2e_p9_kind exited with status 0 within 10s of SIGTERM"
    else
        e2e_fail "$e2e_p9_kind exited with status 0 after SIGTERM (got $st)"
    fi
}
