#!/usr/bin/env bash
# Builds xfstests (fstests) from the pinned tarball in ../shared/xfstests/
# (seen from the project's root; XFSTESTS_TARBALL overrides it) and prints
# the built tree's path on stdout. The build is cached outside the work tree,
# in ~/.cache/virtiofsd-rs/xfstests/<first 16 hex digits of the tarball's
# sha256>/, so it is made once per tarball (about 3 minutes on 2 cores) and
# then found in a second. Also installs the Debian packages xfstests needs
# and creates its users (fsgqa, fsgqa2, 123456-fsgqa). Run as root.
#
# Usage: tests/xfstests/build.sh
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tarball=${XFSTESTS_TARBALL:-$(ls "$repo_root"/../shared/xfstests/xfstests-*.tar.xz 2>/dev/null | head -n1)}
log() { printf 'xfstests-build: %s\n' "$*" >&2; }
[[ $EUID -eq 0 ]] || { log "must run as root (installs packages and users)"; exit 2; }
[[ -f $tarball ]] || { log "no xfstests tarball (looked for ../shared/xfstests/xfstests-*.tar.xz; set XFSTESTS_TARBALL)"; exit 1; }

packages=(xfslibs-dev uuid-dev libtool-bin e2fsprogs automake gcc libuuid1 quota
    attr libattr1-dev make libacl1-dev libaio-dev xfsprogs libgdbm-dev gawk fio
    dbench uuid-runtime python3 sqlite3 liburing-dev libcap-dev bc psmisc acl
    util-linux fuse3)
# shellcheck source=../../scripts/lib-apt.sh
. "$repo_root/scripts/lib-apt.sh"
mapfile -t missing < <(apt_missing "${packages[@]}")
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
fi

# The users xfstests switches to (daemon is Debian's own).
for u in fsgqa fsgqa2 123456-fsgqa; do
    getent passwd "$u" >/dev/null || useradd --create-home --user-group "$u" >&2
done

key=$(sha256sum "$tarball" | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/virtiofsd-rs/xfstests/$key
if [[ -f $cache/.built ]]; then
    log "cached build of $(basename "$tarball") in $cache"
else
    log "building $(basename "$tarball") in $cache (about 3 minutes)"
    rm -rf "$cache"
    mkdir -p "$cache"
    tar -xJf "$tarball" -C "$cache"
    make -C "$cache/xfstests" -j"$(nproc)" >"$cache/build.log" 2>&1 || {
        tail -n 30 "$cache/build.log" >&2
        log "make failed (log: $cache/build.log)"
        exit 1
    }
    touch "$cache/.built"
fi
echo "$cache/xfstests"
