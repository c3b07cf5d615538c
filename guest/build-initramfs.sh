#!/usr/bin/env bash
# Build the e2e guest's initramfs (gzip'd newc cpio) from busybox-static, the
# stock kernel's modules, guest/init, tests/e2e/guest/* and the attr
# package's getfattr/setfattr (with their libraries).
#
# Usage: guest/build-initramfs.sh [--with-pjdfstest[=BIN]] [--add-program BIN]...
#                                 [--kernel-dir DIR] [--custom-kernel]
#                                 [--out FILE] [--busybox BIN]
#
#   --custom-kernel         for guest/build-kernel.sh's kernel (everything built
#                           in): no modules, and an empty modules.load; the
#                           default kernel dir becomes target/guest (the image
#                           does not depend on the kernel itself)

#   --with-pjdfstest[=BIN]  also install pjdfstest (default: the one in PATH or
#                           ~/.cargo/bin) plus every library ldd lists and the
#                           dynamic loader
#   --add-program BIN       also install BIN (e.g. /usr/bin/fio) the same way
#   --kernel-dir DIR        output of guest/stock-kernel.sh (default
#                           target/guest-stock; populated if it has no modules)
#                           or, with --custom-kernel, of guest/build-kernel.sh
#   --out FILE              default: <kernel-dir>/initramfs.cpio.gz
#   --busybox BIN           default: /bin/busybox (must be statically linked)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
kernel_dir=
custom_kernel=false
out=
busybox=/bin/busybox
pjdfstest=
with_pjdfstest=false
extra_programs=()

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --with-pjdfstest) with_pjdfstest=true ;;
        --with-pjdfstest=*) with_pjdfstest=true; pjdfstest=${1#*=} ;;
        --add-program) extra_programs+=("${2:?}"); shift ;;
        --kernel-dir) kernel_dir=${2:?}; shift ;;
        --custom-kernel) custom_kernel=true ;;
        --out) out=${2:?}; shift ;;
        --busybox) busybox=${2:?}; shift ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
if $custom_kernel; then
    kernel_dir=${kernel_dir:-$repo_root/target/guest}
else
    kernel_dir=${kernel_dir:-$repo_root/target/guest-stock}
fi
out=${out:-$kernel_dir/initramfs.cpio.gz}

if ! $custom_kernel && [[ ! -f $kernel_dir/modules.load ]]; then
    "$script_dir/stock-kernel.sh" "$kernel_dir"
fi
[[ -x $busybox ]] || die "$busybox not found (apt-get install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/e2e-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,root,e2e,lib/modules/e2e}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
cp "$busybox" "$stage/bin/busybox"
# Every applet as a symlink at its canonical location.
while read -r applet; do
    [[ -e $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)

install -m 0755 "$script_dir/init" "$stage/init"
if $custom_kernel; then
    # Everything is built in: init loads nothing.
    : >"$stage/lib/modules/e2e/modules.load"
else
    cp "$kernel_dir/modules.load" "$stage/lib/modules/e2e/"
    while read -r mod; do
        [[ -n $mod ]] || continue
        cp "$kernel_dir/modules/$mod.ko" "$stage/lib/modules/e2e/"
    done <"$kernel_dir/modules.load"
fi

cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tests:x:2000:2000:pjdfstest dummy user:/:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
tests:x:2000:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\n' >"$stage/etc/nsswitch.conf"
: >"$stage/etc/fstab"

# Guest-side test programs.
cp -R "$repo_root/tests/e2e/guest/." "$stage/e2e/"
chmod -R a+rX "$stage/e2e"

# add_program BIN: installs BIN in /usr/bin with every library ldd lists
# and the dynamic loader.
add_program() {
    local bin=$1
    install -D -m 0755 "$bin" "$stage/usr/bin/$(basename "$bin")"
    # "libfoo.so => /path (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done < <(ldd "$bin" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }')
    log "added $bin and $(ldd "$bin" | grep -c /) libraries"
}

# The workload's extended-attribute section (busybox has no xattr applets).
for tool in getfattr setfattr; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install attr)"
    add_program "$(command -v "$tool")"
done

if $with_pjdfstest; then
    if [[ -z $pjdfstest ]]; then
        pjdfstest=$(command -v pjdfstest || true)
        [[ -n $pjdfstest ]] || pjdfstest=$HOME/.cargo/bin/pjdfstest
    fi
    [[ -x $pjdfstest ]] || die "pjdfstest not found (cargo install pjdfstest)"
    add_program "$pjdfstest"
    # A real sleep(1) ahead of busybox's in PATH: pjdfstest's ETXTBSY tests
    # copy `which sleep` onto the share, run the copy and expect it to be
    # running while they open it for writing. A copy of busybox runs no
    # applet under its new name and exits at once, so the test raced the
    # exit.
    sleep_bin=$(command -v sleep) || die "sleep not found (coreutils)"
    add_program "$sleep_bin"
fi

for p in "${extra_programs[@]}"; do
    [[ -x $p ]] || die "$p is not an executable"
    add_program "$p"
done

if [[ $EUID -eq 0 ]]; then
    mknod -m 0600 "$stage/dev/console" c 5 1
    mknod -m 0666 "$stage/dev/null" c 1 3
fi

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -n -6 >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
log "wrote $out ($(du -h "$out" | cut -f1))"
