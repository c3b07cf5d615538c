#!/usr/bin/env bash
# Verify, on the host, what the e2e guest workload left in the share after the
# guest powered off. Every record of DIR/guest-manifest (written by the guest)
# and DIR/seed/MANIFEST (written by seed-host.sh; the guest must not have
# changed the seed) is recomputed independently with coreutils (stat,
# sha256sum, readlink, find) and compared. Manifest format: see
# tests/e2e/guest/lib.sh.
#
# Usage: tests/e2e/verify-host.sh [--seed-only] DIR
#   --seed-only   check only seed/MANIFEST (the seed must be unchanged) and
#                 the leftovers; for runs without the guest workload
# Prints one "PASS: ..." or "FAIL: ..." line per check and a final
# "verify-host: N passed, M failed" line; exits 1 if any check failed.
set -euo pipefail

seed_only=false
if [[ ${1:-} == --seed-only ]]; then
    seed_only=true
    shift
fi
dir=${1:?usage: verify-host.sh [--seed-only] DIR}
cd "$dir"

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS: %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*"; }
expect() {
    if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1: expected '$3', got '$2'"; fi
}
sha() { sha256sum "$@" | cut -d' ' -f1; }
strip0() {
    local v=${1#"${1%%[!0]*}"}
    printf '%s\n' "${v:-0}"
}
ftype() {
    if [[ -L $1 ]]; then echo symlink
    elif [[ -f $1 ]]; then echo file
    elif [[ -d $1 ]]; then echo dir
    elif [[ -p $1 ]]; then echo fifo
    elif [[ -c $1 ]]; then echo char
    elif [[ -b $1 ]]; then echo block
    elif [[ -S $1 ]]; then echo socket
    elif [[ -e $1 ]]; then echo other
    else echo missing
    fi
}
dir_names() { find "$1" -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort; }
hstat() { stat -c "$1" -- "$2" 2>&1 || true; }

verify_record() {
    local line=$1 kind a b c p rest what
    kind=${line%% *}
    rest=${line#* }
    a=${rest%% *}
    rest=${rest#* }
    case $kind in
        file | range | sparse | entries | lines) b=${rest%% *}; p=${rest#* } ;;
        *) b=; p=$rest ;;
    esac
    if [[ $kind == range ]]; then c=${p%% *}; p=${p#* }; fi
    what="$kind $p"
    case $kind in
        file)
            if [[ ! -f $p ]]; then fail "$what: not a regular file ($(ftype "$p"))"; return; fi
            local size sum
            size=$(stat -L -c %s -- "$p")
            sum=$(sha "$p")
            if [[ $size == "$a" && $sum == "$b" ]]; then pass "$what"
            else fail "$what: expected size $a sha256 $b, got $size $sum"; fi
            ;;
        range)
            expect "$what [$a,+$b)" \
                "$(dd if="$p" iflag=skip_bytes,count_bytes skip="$a" count="$b" bs=65536 status=none | sha)" "$c"
            ;;
        mode) expect "$what" "$(strip0 "$(hstat %a "$p")")" "$(strip0 "$a")" ;;
        owner) expect "$what" "$(hstat %u:%g "$p")" "$a" ;;
        mtime)
            if [[ $a == *.* ]]; then expect "$what" "$(hstat %.9Y "$p")" "$a"
            else expect "$what" "$(hstat %Y "$p")" "$a"; fi
            ;;
        atime) expect "$what" "$(hstat %X "$p")" "$a" ;;
        newer)
            local m
            m=$(stat -c %Y -- "$p" 2>/dev/null || echo 0)
            if ((m > a)); then pass "$what"; else fail "$what: mtime $m <= $a"; fi
            ;;
        type) expect "$what" "$(ftype "$p")" "$a" ;;
        link) expect "$what" "$(readlink -- "$p" 2>&1 || true)" "$a" ;;
        hardlink) expect "$what = $a" "$(hstat %d:%i "$p")" "$(hstat %d:%i "$a")" ;;
        nlink) expect "$what" "$(hstat %h "$p")" "$a" ;;
        sparse)
            local size alloc
            size=$(stat -c %s -- "$p" 2>/dev/null || echo missing)
            alloc=$(($(stat -c '%b * %B' -- "$p" 2>/dev/null || echo 0)))
            if [[ $size == "$a" ]] && ((alloc <= b)); then pass "$what (allocated $alloc)"
            else fail "$what: expected size $a allocated <= $b, got size $size allocated $alloc"; fi
            ;;
        entries)
            if [[ ! -d $p || -L $p ]]; then fail "$what: not a directory ($(ftype "$p"))"; return; fi
            local n sum
            n=$(dir_names "$p" | wc -l)
            sum=$(dir_names "$p" | sha)
            if [[ $n == "$a" && $sum == "$b" ]]; then pass "$what ($n)"
            else fail "$what: expected $a entries ($b), got $n ($sum)"; fi
            ;;
        lines)
            if [[ ! -f $p ]]; then fail "$what: not a regular file ($(ftype "$p"))"; return; fi
            local n sum
            n=$(wc -l <"$p")
            sum=$(LC_ALL=C sort -- "$p" | sha)
            if [[ $n == "$a" && $sum == "$b" ]]; then pass "$what ($n)"
            else fail "$what: expected $a lines ($b), got $n ($sum)"; fi
            ;;
        absent)
            if [[ -e $p || -L $p ]]; then fail "$what: exists ($(ftype "$p"))"; else pass "$what"; fi
            ;;
        rdev)
            local t
            t=$(stat -c '%t %T' -- "$p" 2>/dev/null || echo "ff ff")
            expect "$what" "$(printf '%d:%d' "0x${t% *}" "0x${t#* }")" "$a"
            ;;
        xattr)
            # a is NAME=VALUE (no spaces).
            expect "$what ${a%%=*}" "$(getfattr --only-values -n "${a%%=*}" -- "$p" 2>&1 || true)" "${a#*=}"
            ;;
        noxattr)
            if getfattr -n "$a" -- "$p" >/dev/null 2>&1; then fail "$what $a: still there"; else pass "$what $a"; fi
            ;;
        *) fail "unknown manifest record: $line" ;;
    esac
}

# verify_manifest FILE: returns the record kinds seen in $kinds_seen.
verify_manifest() {
    local file=$1 count=0 end="" line
    kinds_seen=" "
    if [[ ! -f $file ]]; then
        fail "manifest $file exists"
        return
    fi
    while IFS= read -r line <&3; do
        case $line in
            '' | '#'*) continue ;;
            'end '*) end=${line#end }; continue ;;
        esac
        count=$((count + 1))
        kinds_seen+="${line%% *} "
        verify_record "$line"
    done 3<"$file"
    expect "manifest $file complete (end record)" "$end" "$count"
}

echo "verify-host: checking $dir"
verify_manifest seed/MANIFEST
if $seed_only; then
    leftovers=$(find . \( -name '.fuse_hidden*' -o -name '.nfs*' \) -print | head -n 5)
    expect "no .fuse_hidden/.nfs leftovers in the share" "${leftovers:-none}" none
    echo "verify-host: $passed passed, $failed failed"
    ((failed == 0))
    exit
fi
verify_manifest guest-manifest

# The guest manifest must cover every kind of check: an empty or truncated
# workload must not pass.
missing=
# (xattr and noxattr are not required: a run may skip:xattrs, visibly.)
for kind in file range mode owner mtime atime newer type link hardlink nlink sparse entries lines absent; do
    [[ $kinds_seen == *" $kind "* ]] || missing+=" $kind"
done
expect "guest manifest covers all record kinds" "${missing:-none}" none

# Host-only checks.
leftovers=$(find . \( -name '.fuse_hidden*' -o -name '.nfs*' \) -print | head -n 5)
expect "no .fuse_hidden/.nfs leftovers in the share" "${leftovers:-none}" none
if [[ -f guest-status ]]; then
    expect "guest workload finished" "$(head -n1 guest-status)" "workload finished"
else
    fail "guest workload finished: guest-status missing"
fi

echo "verify-host: $passed passed, $failed failed"
((failed == 0))
