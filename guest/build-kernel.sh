#!/usr/bin/env bash
# Build the minimal guest kernel: Debian's linux-source-6.12 (the newest LTS
# in the archive), the patch series in guest/patches/ applied in order,
# `make tinyconfig` plus guest/kernel/config-fragment (everything built in,
# no modules). Gives a bzImage (QEMU -kernel, also under -M microvm) and a
# PVH-bootable vmlinux.
#
# Usage: guest/build-kernel.sh [--out DIR] [--force] [--package PKG]
#                              [--patches DIR] [--prepare-only]
#
#   --out DIR       where to copy bzImage, vmlinux, config, kernel-release and
#                   build-info (default: target/guest)
#   --force         rebuild even if the cache has this kernel
#   --package PKG   the source package (default linux-source-6.12; e.g.
#                   linux-source-6.1 to build the previous LTS for a
#                   comparison)
#   --patches DIR   the patch series (default guest/patches): every DIR/*.patch,
#                   in name order, applied with `patch -p1`. Each patch starts
#                   with a header (before its first diff) that has a line
#                   "Why: ..." saying why the patch exists; a patch without
#                   one, or one that does not apply cleanly, fails the build.
#   --prepare-only  unpack, patch and configure in a temporary directory,
#                   print the kernel release (`make kernelrelease`) and stop:
#                   checks a series in seconds, builds and caches nothing
#
# Environment:
#   VIRTIOFSD_RS_CACHE  cache root (default: $HOME/.cache/virtiofsd-rs)
#   JOBS                make -j (default: nproc)
#
# The build is cached outside the work tree in
#   $VIRTIOFSD_RS_CACHE/kernel/<key>/
# where <key> is the sha256 of the fragment's options (not its comments), the
# source package and its version, the patches (names and contents) and this
# script's build recipe (the part between the "recipe" markers below). The 4
# most recently used builds are kept. A cached run only copies the files
# (about a second); a cold one takes about 5 minutes on 2 cores. The source
# package comes from apt by
# name: the installed version if there is one, else apt's candidate, which is
# then installed (needs root). The build needs make, gcc, flex, bison, bc and
# the libelf and libssl headers (scripts/ci-deps.sh installs them; as root
# this script installs whatever is missing). The last line says where the
# kernel is, its sizes and how long it took.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
script=$script_dir/$(basename "${BASH_SOURCE[0]}")
fragment=$script_dir/kernel/config-fragment
outdir=$repo_root/target/guest
cache_root=${VIRTIOFSD_RS_CACHE:-$HOME/.cache/virtiofsd-rs}/kernel
src_pkg=linux-source-6.12
patch_dir=$script_dir/patches
prepare_only=false
force=false
jobs=${JOBS:-$(nproc)}

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --out) outdir=${2:?}; shift ;;
        --force) force=true ;;
        --package) src_pkg=${2:?}; shift ;;
        --patches) patch_dir=${2:?}; shift ;;
        --prepare-only) prepare_only=true ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ -f $fragment ]] || die "$fragment missing"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "bad JOBS '$jobs'"
t_start=$(date +%s)

apt_opts=()
if [[ $EUID -eq 0 ]]; then apt_opts=(-o APT::Sandbox::User=root); fi

[[ $src_pkg =~ ^linux-source-[0-9]+\.[0-9]+$ ]] || die "bad --package '$src_pkg' (want linux-source-X.Y)"
[[ -d $patch_dir ]] || die "no patch directory $patch_dir"
patch_dir=$(cd "$patch_dir" && pwd)
# The series, in name order (C collation, so 0001- sorts before 0002-).
mapfile -t patches < <(LC_ALL=C find "$patch_dir" -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort)
for p in "${patches[@]}"; do
    # The header: everything before the first diff line.
    if ! sed -n '/^\(diff \|--- \|Index: \)/q;p' "$p" | grep -Eq '^Why: *[^ ]'; then
        die "$(basename "$p"): no \"Why: ...\" line in its header (before the first diff)"
    fi
done

# The version of the source package to build: the installed one, else apt's
# candidate.
# Neither may fail: on a fresh machine dpkg-query does not know the package
# (exit 1), which under pipefail would end the script without a word.
installed_version() {
    { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$src_pkg" 2>/dev/null || true; } |
        awk '$1 == "installed" { print $2 }'
}
candidate_version() {
    { apt-cache policy "$src_pkg" 2>/dev/null || true; } |
        awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }'
}
src_version=$(installed_version)
[[ -n $src_version ]] || src_version=$(candidate_version)
[[ -n $src_version ]] || die "cannot resolve $src_pkg (run apt-get update)"

# The recipe: everything from here to the end marker is part of the cache
# key, so a change to how the kernel is configured or built rebuilds it.
# >>> recipe
kbuild_env=(KBUILD_BUILD_USER=virtiofsd-rs KBUILD_BUILD_HOST=guest
    "KBUILD_BUILD_TIMESTAMP=Thu Jan  1 00:00:00 UTC 1970")

# apply_patches SRCDIR: the series, in order; a patch that does not apply
# cleanly (fuzz 0, no reversed hunks) fails.
apply_patches() {
    local src=$1 p
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        if ! patch -d "$src" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch -s <"$p" >&2; then
            log "$(basename "$p") does not apply to $src_pkg $src_version"
            return 1
        fi
    done
}

# configure SRCDIR: tinyconfig, merge the fragment (allnoconfig for
# everything the fragment makes visible, as tinyconfig does), check that
# every CONFIG_X=y of the fragment is =y.
# configure_and_build SRCDIR: configure, then build bzImage and vmlinux.
configure() {
    local src=$1 missing=() line
    make -C "$src" -s "${kbuild_env[@]}" tinyconfig
    # -n: allnoconfig with .config + fragment as KCONFIG_ALLCONFIG, so
    # options that the fragment's symbols make visible default to n, not to
    # their Kconfig default (e.g. IPV6, CPU_FREQ, ACPI_BATTERY).
    (cd "$src" && scripts/kconfig/merge_config.sh -n .config "$fragment")
    while read -r line; do
        grep -qxF "$line" "$src/.config" || missing+=("$line")
    done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$fragment")
    if ((${#missing[@]})); then
        log "not =y in the final .config (a dependency is missing from the fragment?):"
        printf '    %s\n' "${missing[@]}" >&2
        return 1
    fi
    if grep -vE '^(#.*|CONFIG_[A-Za-z0-9_]+=y|[[:space:]]*)$' "$fragment"; then
        log "the fragment may only hold CONFIG_X=y lines and comments"
        return 1
    fi
}
configure_and_build() {
    local src=$1
    configure "$src"
    log "configured: $(grep -c '=y$' "$src/.config") options =y; make -j$jobs bzImage vmlinux"
    make -C "$src" "${kbuild_env[@]}" -j"$jobs" bzImage vmlinux
    # The PVH entry point: an ELF note of owner "Xen", type 0x12
    # (XEN_ELFNOTE_PHYS32_ENTRY).
    if ! readelf -n "$src/vmlinux" | grep -Eq 'Xen[[:space:]].*0x0*12[^0-9a-f]|Xen[[:space:]].*PHYS32_ENTRY'; then
        log "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
        return 1
    fi
}
# <<< recipe

recipe=$(sed -n '/^# >>> recipe$/,/^# <<< recipe$/p' "$script")
[[ -n $recipe ]] || die "recipe markers not found in $script"
# The fragment's options count, its comments do not.
key=$({
    printf 'fragment\n'
    grep -vE '^[[:space:]]*(#|$)' "$fragment"
    printf 'package %s %s\n' "$src_pkg" "$src_version"
    for p in "${patches[@]}"; do
        printf 'patch %s %s\n' "$(basename "$p")" "$(sha256sum <"$p" | cut -c1-64)"
    done
    printf 'recipe\n%s\n' "$recipe"
} | sha256sum | cut -c1-16)
cache_dir=$cache_root/$key
mkdir -p "$cache_root"

# The build prerequisites and the source package, installed when missing
# (needs root); sets tarball.
need_source() {
    missing_tools=()
    for t in make gcc flex bison bc xz perl readelf; do
        command -v "$t" >/dev/null || missing_tools+=("$t")
    done
    for h in /usr/include/libelf.h /usr/include/openssl/ssl.h; do
        [[ -f $h ]] || missing_tools+=("$h")
    done
    if ((${#missing_tools[@]})); then
        [[ $EUID -eq 0 ]] || die "missing ${missing_tools[*]} (apt-get install make gcc flex bison bc xz-utils libelf-dev libssl-dev)"
        log "missing ${missing_tools[*]}: installing the kernel build prerequisites"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            make gcc libc6-dev flex bison bc xz-utils perl binutils libelf-dev libssl-dev >&2
    fi
    if [[ $(installed_version) != "$src_version" ]]; then
        [[ $EUID -eq 0 ]] || die "$src_pkg $src_version is not installed (apt-get install $src_pkg)"
        log "apt-get install $src_pkg=$src_version"
        DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q \
            --no-install-recommends "$src_pkg=$src_version" >&2 ||
            die "apt-get install $src_pkg=$src_version failed (try: apt-get update)"
    fi
    tarball=$(dpkg -L "$src_pkg" | grep -E '/linux-source-[^/]*\.tar\.(xz|bz2|gz)$' | head -n1) || true
    [[ -n $tarball && -f $tarball ]] || die "$src_pkg has no source tarball"
}

# --prepare-only: unpack, patch, configure, print the release, keep nothing.
if $prepare_only; then
    need_source
    work=$(mktemp -d "$cache_root/.prepare.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this dir
    trap "rm -rf '$work'" EXIT
    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src" --strip-components=1
    apply_patches "$work/src" || die "the patch series does not apply"
    configure "$work/src" >"$work/configure.log" 2>&1 || { tail -n 20 "$work/configure.log" >&2; die "configuring failed"; }
    release=$(make -C "$work/src" -s kernelrelease)
    log "prepared $src_pkg $src_version with ${#patches[@]} patch(es): kernel $release"
    printf '%s\n' "$release"
    exit 0
fi

# One build at a time per cache.
exec 9>"$cache_root/.lock"
flock 9

if $force || [[ ! -f $cache_dir/.complete ]]; then
    need_source
    work=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this dir
    trap "rm -rf '$work'" EXIT
    build_log=$cache_root/build-$key.log
    log "building $src_pkg $src_version (key $key) in $work; log: $build_log"
    t0=$(date +%s)
    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src" --strip-components=1
    t1=$(date +%s)
    log "extracted $(basename "$tarball") in $((t1 - t0))s"
    apply_patches "$work/src" || die "the patch series does not apply"
    if ! configure_and_build "$work/src" >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        die "kernel build failed (log: $build_log)"
    fi
    t2=$(date +%s)
    stage=$work/out
    mkdir -p "$stage"
    cp "$work/src/arch/x86/boot/bzImage" "$stage/bzImage"
    cp "$work/src/vmlinux" "$stage/vmlinux"
    cp "$work/src/.config" "$stage/config"
    cp "$work/src/System.map" "$stage/System.map"
    make -C "$work/src" -s kernelrelease >"$stage/kernel-release"
    {
        printf 'package: %s %s\n' "$src_pkg" "$src_version"
        printf 'patches: %s\n' "${#patches[@]}"
        for p in "${patches[@]}"; do printf '  %s\n' "$(basename "$p")"; done
        printf 'key: %s\n' "$key"
        printf 'built: %s on %s (%s cores, make -j%s)\n' "$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" "$jobs"
        printf 'extract: %ss\n' "$((t1 - t0))"
        printf 'configure+make: %ss\n' "$((t2 - t1))"
        printf 'bzImage: %s bytes\n' "$(stat -c %s "$stage/bzImage")"
        printf 'vmlinux: %s bytes\n' "$(stat -c %s "$stage/vmlinux")"
    } >"$stage/build-info"
    touch "$stage/.complete"
    rm -rf "$cache_dir"
    mv "$stage" "$cache_dir"
    mv "$build_log" "$cache_dir/build.log"
    rm -rf "$work"
    trap - EXIT
    log "built in $((t2 - t0))s (extract $((t1 - t0))s, configure+make $((t2 - t1))s) -> $cache_dir"
else
    log "cached: $cache_dir ($src_pkg $src_version)"
fi
# Mark this build as used; drop all but the 4 most recently used.
touch "$cache_dir"
while read -r old; do
    log "removing old build $old"
    rm -rf "${cache_root:?}/$old"
done < <(find "$cache_root" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9a-f]\{16\}' -printf '%T@ %f\n' |
    sort -rn | tail -n +5 | cut -d' ' -f2)
rm -f "$cache_root"/build-*.log
flock -u 9

# Copy only what changed, each file atomically: a guest may be booting from
# OUTDIR meanwhile.
sync_file() {
    local src=$1 dst=$2
    if ! cmp -s "$src" "$dst"; then
        cp -p "$src" "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
    fi
}
mkdir -p "$outdir"
for f in bzImage vmlinux config kernel-release build-info; do
    sync_file "$cache_dir/$f" "$outdir/$f"
done
log "$outdir: bzImage $(stat -c %s "$outdir/bzImage") bytes, vmlinux $(stat -c %s "$outdir/vmlinux") bytes," \
    "kernel $(cat "$outdir/kernel-release"); took $(($(date +%s) - t_start))s"
