#!/usr/bin/env bash
# Builds the control server for xfstests runs: libfuse's example
# passthrough_ll, from Debian 12's fuse3 source package (fetched by name with
# apt-get source through a temporary deb-src entry), cached in
# ~/.cache/virtiofsd-rs/passthrough_ll-<version>/. Prints the binary's path.
# Failures it shares with virtiofsd-rs are FUSE's (or this machine's) limits.
set -euo pipefail
log() { printf 'xfstests-control: %s\n' "$*" >&2; }
[[ $EUID -eq 0 ]] || { log "must run as root"; exit 2; }
# shellcheck source=../../scripts/lib-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib-apt.sh"
mapfile -t missing < <(apt_missing libfuse3-dev gcc pkg-config dpkg-dev)
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
version=$(dpkg-query -W -f='${Version}' libfuse3-dev)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/virtiofsd-rs/passthrough_ll-$version
if [[ ! -x $cache/passthrough_ll ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cat >"$tmp/src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $(. /etc/os-release && echo "$VERSION_CODENAME")
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt=(-o "Dir::Etc::sourcelist=$tmp/src.sources" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$tmp/lists")
    mkdir -p "$tmp/lists/partial"
    apt-get "${apt[@]}" update -q >&2
    (cd "$tmp" && apt-get "${apt[@]}" source -q --download-only "fuse3=$version" >&2)
    tar -xJf "$tmp"/fuse3_*.orig.tar.xz -C "$tmp"
    mkdir -p "$cache"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -o "$cache/passthrough_ll" "$tmp"/fuse-*/example/passthrough_ll.c $(pkg-config --cflags --libs fuse3)
    log "built $cache/passthrough_ll"
fi
echo "$cache/passthrough_ll"
