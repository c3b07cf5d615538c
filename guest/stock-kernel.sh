#!/usr/bin/env bash
# Fetch Debian's stock amd64 kernel package, cache the unpacked vmlinuz and the
# modules the e2e guest needs (virtio-pci, FUSE/virtiofs, 9p over virtio and
# over TCP with virtio-net), and copy them to OUTDIR (default:
# target/guest-stock/).
#
# Usage: guest/stock-kernel.sh [--series 6.1|6.12] [--modules "M1 M2..."] [OUTDIR]
#
#   --series S     6.1 (default): the kernel linux-image-amd64 depends on
#                  (bookworm's own, the "old guest"); 6.12: the newest
#                  linux-image-6.12.*+deb12-amd64-unsigned (the newest LTS;
#                  multi-queue virtio-fs)
#   --modules L    the modules to take (their dependencies are added), instead
#                  of the e2e guest's list; modules that the kernel has built
#                  in are left out. Compressed modules (.ko.xz) are unpacked.
#
# Environment:
#   VIRTIOFSD_RS_CACHE      cache root (default: $HOME/.cache/virtiofsd-rs)
#   VIRTIOFSD_RS_KERNEL_PKG kernel package to use instead of the one the
#                           series resolves to (e.g.
#                           linux-image-6.1.0-56-amd64-unsigned)
#
# The cache lives outside the work tree, in
#   $VIRTIOFSD_RS_CACHE/stock-kernel/<package>_<version>_<modules-hash>/
# and is keyed by package version and module list, so a cached kernel is never
# re-downloaded (not even when checkouts with different module lists share the
# cache).
# OUTDIR receives: vmlinuz, modules/*.ko, modules.load (insmod order, one
# module name per line), kernel-release, package.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
series=6.1
modules_arg=
while [[ $# -gt 0 ]]; do
    case $1 in
        --series) series=${2:?}; shift ;;
        --modules) modules_arg=${2:?}; shift ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) printf 'stock-kernel: unknown option %s\n' "$1" >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
case $series in
    6.1 | 6.12) ;;
    *) printf 'stock-kernel: --series must be 6.1 or 6.12, not %s\n' "$series" >&2; exit 2 ;;
esac
outdir=${1:-$repo_root/target/guest-stock}
cache_root=${VIRTIOFSD_RS_CACHE:-$HOME/.cache/virtiofsd-rs}/stock-kernel
# Modules the guest loads; their dependencies are added automatically. The
# cache entry records this list in .complete (and its name has a hash of it).
# virtio_net (failover, net_failover) and 9pnet_fd (9P's TCP transport) are
# for the 9p-tcp mode.
wanted_modules="virtio_pci fuse virtiofs 9pnet_virtio 9p virtio_net 9pnet_fd"
if [[ -n $modules_arg ]]; then wanted_modules=$modules_arg; fi

log() { printf 'stock-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

resolve_package() {
    local pkg=${VIRTIOFSD_RS_KERNEL_PKG:-}
    if [[ -z $pkg && $series == 6.12 ]]; then
        pkg=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null |
            grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -n1) || true
        [[ -n $pkg ]] || return 1
    fi
    if [[ -z $pkg ]]; then
        local image
        image=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
        [[ -n $image ]] || return 1
        pkg=$image-unsigned
    fi
    local version
    version=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
        awk '$1 == "Version:" { print $2; exit }') || true
    [[ -n $version ]] || return 1
    printf '%s %s\n' "$pkg" "$version"
}

newest_cached() {
    local d best=""
    for d in "$cache_root"/linux-image-"$series"[.-]*/; do
        [[ -f $d/.complete && $(cat "$d/.complete") == "$wanted_modules" ]] || continue
        if [[ -z $best || $d -nt $best ]]; then best=$d; fi
    done
    [[ -n $best ]] && printf '%s\n' "${best%/}"
}

# Find the .ko (or .ko.xz) for module NAME ('-' and '_' are interchangeable)
# under DIR.
find_ko() {
    local dir=$1 name=$2 pattern
    pattern=${name//[-_]/[-_]}.ko
    find "$dir" \( -name "$pattern" -o -name "$pattern.xz" \) -print -quit
}

# Depends list from the .modinfo section (NUL-separated key=value strings).
ko_depends() {
    tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

populate_cache() {
    local pkg=$1 version=$2 dest=$3
    local tmp
    tmp=$(mktemp -d "${cache_root}/.tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    log "downloading $pkg=$version"
    local apt_opts=()
    if [[ $EUID -eq 0 ]]; then apt_opts=(-o APT::Sandbox::User=root); fi
    (cd "$tmp" && apt-get "${apt_opts[@]}" -q download "$pkg=$version" >&2) ||
        die "apt-get download $pkg=$version failed (try: apt-get update)"
    local deb
    deb=$(find "$tmp" -maxdepth 1 -name '*.deb' -print -quit)
    [[ -n $deb ]] || die "no .deb downloaded"
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$tmp/x"
    local kver
    kver=$(find "$tmp/x/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
    [[ -n $kver ]] || die "package has no lib/modules/<release>"
    local moddir=$tmp/x/lib/modules/$kver
    local stage=$tmp/stage
    mkdir -p "$stage/modules"
    cp "$tmp/x/boot/vmlinuz-$kver" "$stage/vmlinuz"
    cp "$tmp/x/boot/config-$kver" "$stage/config"
    cp "$moddir/modules.builtin" "$stage/modules.builtin"
    printf '%s\n' "$kver" >"$stage/kernel-release"
    printf '%s %s\n' "$pkg" "$version" >"$stage/package"

    # Depth-first walk: a module is appended after all of its dependencies.
    local -A state=()
    local order=()
    visit() {
        local name=${1//-/_}
        case ${state[$name]:-} in
            loaded) return 0 ;;
            active) die "module dependency cycle at $name" ;;
        esac
        state[$name]=active
        local ko
        ko=$(find_ko "$moddir" "$name")
        if [[ -z $ko ]]; then
            if grep -Eq "/${name//_/[-_]}\.ko$" "$moddir/modules.builtin"; then
                log "$name is built into the kernel"
                state[$name]=loaded
                return 0
            fi
            die "module $name is neither a .ko in $pkg nor built in"
        fi
        local dep plain=$tmp/plain-$name.ko
        case $ko in
            *.xz) xz -dc "$ko" >"$plain" ;;
            *) cp "$ko" "$plain" ;;
        esac
        for dep in $(ko_depends "$plain"); do
            visit "$dep"
        done
        mv "$plain" "$stage/modules/$name.ko"
        order+=("$name")
        state[$name]=loaded
    }
    local m
    for m in $wanted_modules; do
        visit "$m"
    done
    printf '%s\n' "${order[@]}" >"$stage/modules.load"
    printf '%s\n' "$wanted_modules" >"$stage/.complete"
    rm -rf "$dest"
    mv "$stage" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    log "cached $pkg $version (kernel $kver, modules: ${order[*]}) in $dest"
}

mkdir -p "$cache_root"
if resolved=$(resolve_package); then
    read -r pkg version <<<"$resolved"
    cache_dir=$cache_root/${pkg}_${version}_$(printf '%s' "$wanted_modules" | sha256sum | cut -c1-8)
    if [[ ! -f $cache_dir/.complete || $(cat "$cache_dir/.complete") != "$wanted_modules" ]]; then
        if ! (populate_cache "$pkg" "$version" "$cache_dir"); then
            # E.g. stale apt lists naming a version the mirror no longer has.
            cache_dir=$(newest_cached) || die "no cached kernel to fall back to (try: apt-get update)"
            log "warning: using cached $(basename "$cache_dir") instead of $pkg $version"
        fi
    fi
else
    # No apt metadata (e.g. lists not fetched yet, or offline): fall back to
    # whatever kernel is already cached.
    cache_dir=$(newest_cached) ||
        die "cannot resolve the kernel package (run apt-get update) and nothing is cached in $cache_root"
    log "apt metadata unavailable; using cached $(basename "$cache_dir")"
fi

# Copy only what changed, each file atomically: a guest may be booting from
# OUTDIR concurrently.
sync_file() {
    local src=$1 dst=$2
    if ! cmp -s "$src" "$dst"; then
        cp -p "$src" "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
    fi
}
mkdir -p "$outdir/modules"
for f in vmlinuz modules.load kernel-release package; do
    sync_file "$cache_dir/$f" "$outdir/$f"
done
for ko in "$cache_dir"/modules/*.ko; do
    sync_file "$ko" "$outdir/modules/${ko##*/}"
done
for ko in "$outdir"/modules/*.ko; do
    [[ -e $cache_dir/modules/${ko##*/} ]] || rm -f "$ko"
done
log "$(cat "$cache_dir/package") -> $outdir"
