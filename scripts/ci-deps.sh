#!/usr/bin/env bash
# Install what the e2e tests need on a fresh Debian 12 machine (idempotent;
# run as root). Installs:
#   - Debian packages: qemu-system-x86 busybox-static cpio fuse3 attr acl diod
#     (diod: the reference 9P2000.L server and its clients diodls, diodcat,
#     diodload for tests/e2e/e2e-p9.sh, diod-clients.sh and
#     pjdfstest-guest.sh --diod; Debian ships its service disabled)
#   - pjdfstest (cargo install, only if missing)
#   - users/groups: nobody/nogroup and tests/tests (pjdfstest switches to them)
#   - the guest kernel: Debian's stock kernel, cached by guest/stock-kernel.sh
#
# Usage: scripts/ci-deps.sh [--no-pjdfstest] [--no-kernel]
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_pjdfstest=true
want_kernel=true
for arg in "$@"; do
    case $arg in
        --no-pjdfstest) want_pjdfstest=false ;;
        --no-kernel) want_kernel=false ;;
        *) echo "ci-deps: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[[ $EUID -eq 0 ]] || { echo "ci-deps: must run as root" >&2; exit 2; }
log() { printf 'ci-deps: %s\n' "$*"; }

apt_updated=false
apt_update_once() {
    if ! $apt_updated; then
        log "apt-get update"
        apt-get update -q
        apt_updated=true
    fi
}

packages=(qemu-system-x86 busybox-static cpio fuse3 attr acl diod)
missing=()
for p in "${packages[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    apt_update_once
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "packages present: ${packages[*]}"
fi

if $want_pjdfstest; then
    if command -v pjdfstest >/dev/null || [[ -x $HOME/.cargo/bin/pjdfstest ]]; then
        log "pjdfstest present"
    else
        command -v cargo >/dev/null || { echo "ci-deps: cargo is needed to install pjdfstest" >&2; exit 1; }
        log "cargo install pjdfstest"
        cargo install --locked pjdfstest --version 0.2.2
    fi
fi

# pjdfstest's dummy users: nobody (primary group nogroup) and tests/tests.
getent group nogroup >/dev/null || groupadd --gid 65534 nogroup
getent passwd nobody >/dev/null ||
    useradd --uid 65534 --gid nogroup --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nobody
getent group tests >/dev/null || groupadd --system tests
if ! getent passwd tests >/dev/null; then
    useradd --system --gid tests --no-create-home --home-dir / \
        --shell /usr/sbin/nologin --comment "pjdfstest dummy user" tests
fi
if [[ $(id -gn tests) != tests ]]; then usermod --gid tests tests; fi
if [[ $(id -gn nobody) != nogroup ]]; then
    echo "ci-deps: warning: nobody's primary group is $(id -gn nobody), pjdfstest.toml expects nogroup" >&2
fi
log "users: $(id nobody); $(id tests)"

if $want_kernel; then
    if ! "$repo_root/guest/stock-kernel.sh"; then
        # Usually: no apt lists yet, so the package cannot be resolved.
        apt_update_once
        "$repo_root/guest/stock-kernel.sh"
    fi
fi
log "done"
