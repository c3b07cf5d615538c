# shellcheck shell=sh
# Helpers for the e2e guest programs (busybox ash). Sourced, not executed.
#
# Manifest format (shared with tests/e2e/seed-host.sh and verify-host.sh):
# one record per line, fields separated by one space, the PATH last (it may
# contain spaces; it is relative to the share root); '#' lines are comments.
#   file SIZE SHA256 PATH          regular file (symlinks followed): size, content
#   range OFFSET LENGTH SHA256 PATH  sha256 of bytes [OFFSET, OFFSET+LENGTH)
#   mode OCTAL PATH                permission bits incl. setuid/setgid/sticky (lstat)
#   owner UID:GID PATH             (lstat)
#   mtime SECONDS[.NANOSECONDS] PATH  exact mtime (lstat)
#   atime SECONDS PATH             exact atime (lstat)
#   newer SECONDS PATH             mtime strictly later than SECONDS
#   type file|dir|symlink|fifo|char|block|socket PATH
#   link TARGET PATH               readlink(PATH) == TARGET (no spaces in TARGET)
#   hardlink OTHER PATH            same device and inode as OTHER (no spaces in OTHER)
#   nlink N PATH                   link count
#   sparse SIZE MAXBYTES PATH      size == SIZE and st_blocks*512 <= MAXBYTES
#   entries N SHA256 PATH          directory has N entries; SHA256 of their names,
#                                  each followed by \n, sorted bytewise
#   lines N SHA256 PATH            file has N lines; SHA256 of its lines sorted bytewise
#   absent - PATH                  PATH does not exist (not even as a symlink)
#   rdev MAJOR:MINOR PATH          device numbers (decimal)
#   xattr NAME=VALUE PATH          extended attribute NAME is VALUE (no spaces)
#   noxattr NAME PATH              PATH has no extended attribute NAME
#   end N                          trailer: N records precede it

E2E_PASSED=0
E2E_FAILED=0
E2E_SKIPPED=0
E2E_LABEL=${E2E_LABEL:-guest}

pass() { E2E_PASSED=$((E2E_PASSED + 1)); echo "$E2E_LABEL: PASS: $*"; }
fail() { E2E_FAILED=$((E2E_FAILED + 1)); echo "$E2E_LABEL: FAIL: $*"; }
skip() { E2E_SKIPPED=$((E2E_SKIPPED + 1)); echo "$E2E_LABEL: SKIP: $*"; }

# check DESC CMD...: PASS if CMD succeeds.
check() {
    _desc=$1
    shift
    if "$@"; then pass "$_desc"; else fail "$_desc"; fi
}

# expect DESC ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1: expected '$3', got '$2'"
    fi
}

# op DESC CMD...: run a workload step; a failing step is a FAIL.
op() {
    _desc=$1
    shift
    if "$@"; then
        return 0
    fi
    fail "operation failed: $_desc"
    return 1
}

sha() { sha256sum "$@" | cut -d' ' -f1; }

strip0() {
    _v=${1#"${1%%[!0]*}"}
    echo "${_v:-0}"
}

ftype() {
    if [ -L "$1" ]; then echo symlink
    elif [ -f "$1" ]; then echo file
    elif [ -d "$1" ]; then echo dir
    elif [ -p "$1" ]; then echo fifo
    elif [ -c "$1" ]; then echo char
    elif [ -b "$1" ]; then echo block
    elif [ -S "$1" ]; then echo socket
    elif [ -e "$1" ]; then echo other
    else echo missing
    fi
}

# Names in directory $1, one per line, sorted bytewise.
dir_names() {
    find "$1" -mindepth 1 -maxdepth 1 | sed 's|.*/||' | LC_ALL=C sort
}

# Append a record to the manifest $E2E_MANIFEST.
rec() {
    echo "$*" >>"$E2E_MANIFEST"
}

# mtime as SECONDS.NANOSECONDS from busybox stat's %y ("... HH:MM:SS.NNNNNNNNN +ZZZZ").
mtime_ns() {
    _s=$(stat -c %Y "$1") || return 1
    _f=$(stat -c %y "$1" | sed -n 's/^[^.]*\.\([0-9]*\).*/\1/p')
    echo "$_s.${_f:-000000000}"
}

# verify_record LINE: check one manifest record against the file system
# (paths relative to the current directory). Prints PASS/FAIL.
verify_record() {
    _kind=${1%% *}
    _rest=${1#* }
    _a=${_rest%% *}
    _rest=${_rest#* }
    case $_kind in
        file | range | sparse | entries | lines) _b=${_rest%% *}; _p=${_rest#* } ;;
        *) _b=; _p=$_rest ;;
    esac
    if [ "$_kind" = range ]; then
        _c=${_p%% *}
        _p=${_p#* }
    fi
    _what="$_kind $_p"
    case $_kind in
        file)
            if [ ! -f "$_p" ]; then fail "$_what: not a regular file ($(ftype "$_p"))"; return; fi
            _size=$(stat -L -c %s "$_p")
            _sum=$(sha "$_p")
            if [ "$_size" = "$_a" ] && [ "$_sum" = "$_b" ]; then pass "$_what"
            else fail "$_what: expected size $_a sha256 $_b, got $_size $_sum"; fi
            ;;
        range)
            _sum=$(dd if="$_p" bs=4096 skip=$((_a / 4096)) count=$((_b / 4096)) 2>/dev/null | sha)
            if [ $((_a % 4096)) -ne 0 ] || [ $((_b % 4096)) -ne 0 ]; then
                fail "$_what: guest verifier needs 4 KiB aligned ranges"
            else expect "$_what [$_a,+$_b)" "$_sum" "$_c"; fi
            ;;
        mode) expect "$_what" "$(strip0 "$(stat -c %a "$_p" 2>&1)")" "$(strip0 "$_a")" ;;
        owner) expect "$_what" "$(stat -c %u:%g "$_p" 2>&1)" "$_a" ;;
        mtime)
            case $_a in
                *.*) expect "$_what" "$(mtime_ns "$_p" 2>&1)" "$_a" ;;
                *) expect "$_what" "$(stat -c %Y "$_p" 2>&1)" "$_a" ;;
            esac
            ;;
        atime) expect "$_what" "$(stat -c %X "$_p" 2>&1)" "$_a" ;;
        newer)
            _m=$(stat -c %Y "$_p" 2>/dev/null || echo 0)
            if [ "$_m" -gt "$_a" ]; then pass "$_what"; else fail "$_what: mtime $_m <= $_a"; fi
            ;;
        type) expect "$_what" "$(ftype "$_p")" "$_a" ;;
        link) expect "$_what" "$(readlink "$_p" 2>&1)" "$_a" ;;
        hardlink)
            expect "$_what = $_a" "$(stat -c %d:%i "$_p" 2>&1)" "$(stat -c %d:%i "$_a" 2>&1)"
            ;;
        nlink) expect "$_what" "$(stat -c %h "$_p" 2>&1)" "$_a" ;;
        sparse)
            _size=$(stat -c %s "$_p" 2>/dev/null)
            _alloc=$(($(stat -c '%b * %B' "$_p" 2>/dev/null || echo 0)))
            if [ "$_size" = "$_a" ] && [ "$_alloc" -le "$_b" ]; then pass "$_what (allocated $_alloc)"
            else fail "$_what: expected size $_a allocated <= $_b, got size $_size allocated $_alloc"; fi
            ;;
        entries)
            if [ ! -d "$_p" ]; then fail "$_what: not a directory"; return; fi
            _n=$(dir_names "$_p" | wc -l)
            _sum=$(dir_names "$_p" | sha)
            if [ "$_n" = "$_a" ] && [ "$_sum" = "$_b" ]; then pass "$_what ($_n)"
            else fail "$_what: expected $_a entries ($_b), got $_n ($_sum)"; fi
            ;;
        lines)
            _n=$(wc -l <"$_p")
            _sum=$(LC_ALL=C sort "$_p" | sha)
            if [ "$_n" = "$_a" ] && [ "$_sum" = "$_b" ]; then pass "$_what ($_n)"
            else fail "$_what: expected $_a lines ($_b), got $_n ($_sum)"; fi
            ;;
        absent)
            if [ -e "$_p" ] || [ -L "$_p" ]; then fail "$_what: exists ($(ftype "$_p"))"
            else pass "$_what"; fi
            ;;
        rdev)
            _t=$(stat -c '%t %T' "$_p" 2>/dev/null)
            _r=$(printf '%d:%d' "0x${_t% *}" "0x${_t#* }")
            expect "$_what" "$_r" "$_a"
            ;;
        xattr)
            expect "$_what ${_a%%=*}" "$(getfattr --only-values -n "${_a%%=*}" "$_p" 2>&1)" "${_a#*=}"
            ;;
        noxattr)
            if getfattr -n "$_a" "$_p" >/dev/null 2>&1; then fail "$_what $_a: still there"
            else pass "$_what $_a"; fi
            ;;
        *) fail "unknown manifest record: $1" ;;
    esac
}

# verify_manifest FILE: check every record; the file must end with "end N".
verify_manifest() {
    _count=0
    _end=
    while IFS= read -r _line <&3; do
        case $_line in
            '' | '#'*) continue ;;
            'end '*) _end=${_line#end }; continue ;;
        esac
        _count=$((_count + 1))
        verify_record "$_line"
    done 3<"$1"
    expect "manifest $1 complete" "$_end" "$_count"
}

summary() {
    echo "$E2E_LABEL: $E2E_PASSED passed, $E2E_FAILED failed, $E2E_SKIPPED skipped"
}
