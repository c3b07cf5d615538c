#!/usr/bin/env bash
# Drive a 9P2000.L server over TCP with diod's own clients (Debian package
# diod): diodls lists seeded directories (compared with the host's listing,
# names and `diodls -l` attributes), diodcat reads every seeded regular file
# (compared by sha256), and diodload loads the server for a few seconds.
#
# Usage:
#   tests/e2e/diod-clients.sh P9D_BIN [P9D_ARGS...]
#   tests/e2e/diod-clients.sh --diod
#
# P9D_BIN is started as
#   P9D_BIN --shared-dir DIR --listen tcp:127.0.0.1:PORT --no-auth [P9D_ARGS...]
# on a free loopback port, as in tests/e2e/e2e-p9.sh, and stopped with
# SIGTERM at the end (it must exit 0 within 10 s). --diod runs the same
# against diod itself (the reference; validates this script).
#
# What the clients need from the server: Tversion "9P2000.L" with msize
# 65536; Tauth answered with Rlerror ENOENT (diod's answer without
# authentication: the clients treat only ENOENT as "no authentication
# required"); Tattach with afid NOFID, uname "" and n_uname = the caller's uid
# (0 here). diodls and diodcat attach with aname = DIR (override with
# E2E_ANAME). diodload always attaches aname "ctl" and copies from the file
# "zero" to the file "null" (diod's synthetic ctl file system, exported with
# -e ctl); for P9D_BIN the share holds a directory ctl/ with regular files
# zero (1 MiB of zeros) and null, which p9d attaches for aname "ctl" (an
# aname that is not "", "/" or the export path names a path in the share).
#
# Environment: E2E_KEEP=1, E2E_LOG_DIR (default target/e2e), E2E_ANAME,
# E2E_LOAD_SECONDS (each diodload run, default 3). Must run as root.
# Ends with "diod-clients: N passed, M failed"; exits 1 if anything failed.
set -euo pipefail

e2e_name=diod-clients
# shellcheck source-path=SCRIPTDIR source=lib-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-host.sh"

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
    exit 2
fi
if [[ $1 == --diod ]]; then
    e2e_p9_kind=diod
    shift
    [[ $# -eq 0 ]] || { echo "$e2e_name: --diod takes no arguments" >&2; exit 2; }
    # diodload's aname: diod's synthetic file system with zero and null.
    e2e_p9_args=(-e ctl)
else
    e2e_p9_kind=p9d
    e2e_p9_bin=$1
    shift
    [[ -x $e2e_p9_bin && -f $e2e_p9_bin ]] || { echo "$e2e_name: $e2e_p9_bin is not executable" >&2; exit 2; }
    e2e_p9_bin=$(cd "$(dirname "$e2e_p9_bin")" && pwd)/$(basename "$e2e_p9_bin")
    e2e_p9_args=("$@")
fi
for tool in diod diodls diodcat diodload; do
    command -v "$tool" >/dev/null || { echo "$e2e_name: $tool is missing (apt-get install diod)" >&2; exit 2; }
done
[[ $EUID -eq 0 ]] || { echo "$e2e_name: must run as root (seed-host.sh chowns)" >&2; exit 2; }

start=$(date +%s)
mkdir -p "$log_dir"
client_log=$log_dir/diod-clients-$e2e_p9_kind.log
server_log=$log_dir/server-diod-clients-$e2e_p9_kind.log
: >"$client_log"
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

e2e_make_workdir
"$e2e_dir/seed-host.sh" "$e2e_share"
# diodload's files, for servers that attach aname "ctl" to this directory.
mkdir -m 0755 "$e2e_share/ctl"
head -c 1048576 /dev/zero >"$e2e_share/ctl/zero"
: >"$e2e_share/ctl/null"
chmod 0644 "$e2e_share/ctl/zero" "$e2e_share/ctl/null"

if ! e2e_start_p9_server "$server_log"; then
    echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
    exit 1
fi
server=127.0.0.1:$e2e_port
aname=${E2E_ANAME:-$e2e_share}
out=$e2e_work/out
mkdir -p "$out"

# run CMD...: run a diod client with a time limit; stdout goes to
# $out/stdout, stderr to $out/stderr (and to the log); sets $st.
run() {
    st=0
    printf '$ %s\n' "$*" >>"$client_log"
    timeout --kill-after=5 60 "$@" >"$out/stdout" 2>"$out/stderr" || st=$?
    sed 's/^/    stderr: /' "$out/stderr" >>"$client_log"
    printf '    exit status %s\n' "$st" >>"$client_log"
}
# client NAME CMD...: run; a nonzero exit status is a FAIL (returns 1).
client() {
    local name=$1
    shift
    run "$@"
    if ((st != 0)); then
        e2e_fail "$name: exit status $st: $(head -c 300 "$out/stderr" | tr '\n' ' ')"
        return 1
    fi
}
# client_enoent NAME CMD...: the client must fail with "No such file or directory".
client_enoent() {
    local name=$1
    shift
    run "$@"
    if ((st != 0)) && grep -q 'No such file or directory' "$out/stderr"; then
        e2e_pass "$name fails with ENOENT"
    else
        e2e_fail "$name fails with ENOENT (exit status $st: $(head -c 300 "$out/stderr" | tr '\n' ' '))"
    fi
}

host_names() {
    find "$e2e_share/$1" -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort
}

# diodls DIR: its names (without . and ..) must be the host's.
check_names() {
    local dir=$1 label=${1:-/}
    client "diodls $label" diodls -s "$server" -a "$aname" -t 30 ${dir:+"$dir"} || return 0
    LC_ALL=C sort "$out/stdout" >"$out/got"
    host_names "$dir" >"$out/want"
    if cmp -s "$out/got" "$out/want"; then
        e2e_pass "diodls $label lists the host's $(wc -l <"$out/want") names"
    else
        e2e_fail "diodls $label lists the host's names: $(diff "$out/want" "$out/got" | head -n 10 | tr '\n' ' ')"
    fi
}

# The line diodls -l prints for host path P shown as NAME (diodls's lsfile_l:
# only d/- and the rwx bits, user and group names from this host, size,
# ctime()'s "Mmm dd hh:mm" in the local time zone, name).
ls_line() {
    local p=$1 name=$2 mode nlink uid gid size mtime bits s i user group
    read -r mode nlink uid gid size mtime < <(stat -c '%f %h %u %g %s %Y' -- "$p")
    mode=$((16#$mode))
    if (((mode & 0170000) == 0040000)); then s=d; else s=-; fi
    bits=rwxrwxrwx
    for ((i = 0; i < 9; i++)); do
        if ((mode & (1 << (8 - i)))); then s+=${bits:i:1}; else s+=-; fi
    done
    s+=.
    user=$(getent passwd "$uid" | cut -d: -f1) || true
    group=$(getent group "$gid" | cut -d: -f1) || true
    printf '%10s %4lu %s %s %12lu %s %s\n' "$s" "$nlink" "${user:-$uid}" "${group:-$gid}" \
        "$size" "$(TZ=UTC date -d "@$mtime" '+%b %e %H:%M')" "$name"
}

# diodls -l DIR: every line must match the host's lstat. "." and ".." are left
# out: a server need not return them from Treaddir.
check_long() {
    local dir=$1 name
    client "diodls -l $dir" env TZ=UTC diodls -s "$server" -a "$aname" -t 30 -l "$dir" || return 0
    grep -v -E ' \.\.?$' "$out/stdout" | LC_ALL=C sort >"$out/got" || true
    while IFS= read -r name; do
        ls_line "$e2e_share/$dir/$name" "$name"
    done < <(host_names "$dir") | LC_ALL=C sort >"$out/want"
    if cmp -s "$out/got" "$out/want"; then
        e2e_pass "diodls -l $dir: mode bits, nlink, owner, size and mtime of $(wc -l <"$out/want") entries match the host"
    else
        e2e_fail "diodls -l $dir matches the host"
        diff "$out/want" "$out/got" | head -n 20 | sed 's/^/    /'
    fi
}

e2e_note "diodls"
check_names ""
check_names seed
check_names seed/tree/a/b
check_names "seed/tree/x/y"
check_long seed
check_long seed/tree/a
client_enoent "diodls of a missing directory" diodls -s "$server" -a "$aname" -t 30 no-such-dir

e2e_note "diodcat"
ncat=0
badcat=0
while IFS= read -r -d '' f; do
    rel=${f#"$e2e_share"/}
    ncat=$((ncat + 1))
    if client "diodcat $rel" diodcat -s "$server" -a "$aname" -t 30 "$rel"; then
        got=$(sha256sum <"$out/stdout" | cut -d' ' -f1)
        want=$(sha256sum <"$f" | cut -d' ' -f1)
        if [[ $got != "$want" ]]; then
            badcat=$((badcat + 1))
            e2e_fail "diodcat $rel: sha256 $got, host has $want"
        fi
    else
        badcat=$((badcat + 1))
    fi
done < <(find "$e2e_share/seed" -type f -print0 | LC_ALL=C sort -z)
if ((badcat == 0 && ncat > 20)); then
    e2e_pass "diodcat reads all $ncat seeded regular files with the host's sha256"
elif ((ncat <= 20)); then
    e2e_fail "diodcat: only $ncat seeded files found"
fi
client_enoent "diodcat of a missing file" diodcat -s "$server" -a "$aname" -t 30 seed/no-such-file

e2e_note "diodload"
secs=${E2E_LOAD_SECONDS:-3}
# diodload always exits 0: success is its summary line with a nonzero
# operation count and nothing else on stderr.
for variant in "" -g; do
    label="diodload ${variant:+$variant }-n 4 -r $secs"
    client "$label" diodload -s "$server" -n 4 -r "$secs" ${variant:+"$variant"} || continue
    summary=$(grep -E '^diodload: [0-9]+ ops/s' "$out/stderr" || true)
    others=$(grep -v -E '^diodload: [0-9]+ ops/s' "$out/stderr" || true)
    ops=$(sed -E -n 's/^diodload: ([0-9]+) ops\/s.*/\1/p' <<<"$summary")
    if [[ -n $ops && $ops -gt 0 && -z $others ]]; then
        e2e_pass "$label: $summary"
    else
        e2e_fail "$label: expected only a summary with ops/s > 0, got: $(head -c 300 "$out/stderr" | tr '\n' ' ')"
    fi
done

# The seed must be untouched by all of this.
seed_log=$log_dir/verify-host-diod-clients-$e2e_p9_kind.log
"$e2e_dir/verify-host.sh" --seed-only "$e2e_share" >"$seed_log" 2>&1 || true
grep -v '^PASS' "$seed_log" || true
e2e_add_counts verify-host "$seed_log"

e2e_stop_p9_server
e2e_note "logs in $log_dir (clients: $client_log, server: $server_log); took $(($(date +%s) - start))s"
echo "$e2e_name: $e2e_passed passed, $e2e_failed failed, $e2e_skipped skipped"
((e2e_failed == 0))
