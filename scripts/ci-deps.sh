#!/usr/bin/env bash
# Install what the e2e tests need on a fresh Debian 12 machine (idempotent;
# run as root). Installs:
#   - Debian packages: qemu-system-x86 busybox-static cpio fuse3 attr acl diod
#     (diod: the reference 9P2000.L server and its clients diodls, diodcat,
#     diodload for tests/e2e/e2e-p9.sh, diod-clients.sh and
#     pjdfstest-guest.sh --diod; Debian ships its service disabled)
#   - pjdfstest (cargo install, only if missing)
#   - upstream virtiofsd 1.14.0 (cargo install, only if missing; needs
#     libseccomp-dev and libcap-ng-dev)
#   - cargo-fuzz 0.13.2 (cargo install, only if missing) for fuzz/run.sh,
#     which needs the nightly toolchain (rustup's; checked, not installed:
#     static.rust-lang.org is out of reach here)
#   - users/groups: nobody/nogroup and tests/tests (pjdfstest switches to them),
#     and vfs-session with subordinate ids 400000-465535 (uidmap's
#     newuidmap/newgidmap map them: the unprivileged daemon of libvirt's
#     session mode, crates/virtiofs/tests/userns.rs)
#   - the guest kernels: Debian's stock 6.1 (the "old guest") and 6.12 (the
#     multi-queue guest; with the KVM modules, the nested L1 guest of
#     tests/e2e/nested-kvm.sh), cached by guest/stock-kernel.sh
#   - the minimal guest kernel for -M microvm and vmm-mini: its build
#     prerequisites (make gcc libc6-dev flex bison bc xz-utils libelf-dev
#     libssl-dev patch) and the kernel itself, built from linux-source-6.12
#     by guest/build-kernel.sh (about 4 minutes on 2 cores the first time;
#     cached in ~/.cache/virtiofsd-rs/kernel/, then about a second)
#
#   - xfstests: its Debian packages and users, and its build from
#     ../shared/xfstests/ (tests/xfstests/build.sh; about 3 minutes the
#     first time, cached in ~/.cache/virtiofsd-rs/xfstests/)
#
# Usage: scripts/ci-deps.sh [--no-pjdfstest] [--no-virtiofsd] [--no-kernel] [--no-custom-kernel] [--no-xfstests]
#   --no-kernel          neither kernel
#   --no-custom-kernel   only Debian's stock kernel
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_pjdfstest=true
want_virtiofsd=true
virtiofsd_version=1.14.0
want_kernel=true
want_custom_kernel=true
want_xfstests=true
for arg in "$@"; do
    case $arg in
        --no-pjdfstest) want_pjdfstest=false ;;
        --no-virtiofsd) want_virtiofsd=false ;;
        --no-kernel) want_kernel=false; want_custom_kernel=false ;;
        --no-custom-kernel) want_custom_kernel=false ;;
        --no-xfstests) want_xfstests=false ;;
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

packages=(qemu-system-x86 busybox-static cpio fuse3 attr acl diod uidmap)
if $want_virtiofsd; then
    # What upstream virtiofsd links against (cargo install below).
    packages+=(pkg-config libseccomp-dev libcap-ng-dev)
fi
if $want_custom_kernel; then
    # guest/build-kernel.sh's prerequisites (it installs linux-source-6.12).
    packages+=(make gcc libc6-dev flex bison bc xz-utils libelf-dev libssl-dev patch)
fi
# shellcheck source=lib-apt.sh
. "$repo_root/scripts/lib-apt.sh"
mapfile -t missing < <(apt_missing "${packages[@]}")
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

# Upstream's Rust virtiofsd: the peer the harness tests (and benchmarks)
# drive with the same code as virtiofsd-rs. Installed once into ~/.cargo/bin.
if $want_virtiofsd; then
    if [[ -x $HOME/.cargo/bin/virtiofsd ]] && "$HOME/.cargo/bin/virtiofsd" --version 2>/dev/null | grep -q " $virtiofsd_version"; then
        log "upstream virtiofsd $virtiofsd_version present"
    else
        command -v cargo >/dev/null || { echo "ci-deps: cargo is needed to install virtiofsd" >&2; exit 1; }
        log "cargo install virtiofsd $virtiofsd_version"
        cargo install --locked virtiofsd --version "$virtiofsd_version"
    fi
fi

# cargo-fuzz and a nightly toolchain for the fuzz step (fuzz/run.sh).
cargo_fuzz_version=0.13.2
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "ci-deps: the nightly toolchain is missing (rustup toolchain install nightly); the fuzz step needs it" >&2
    exit 1
fi
if cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz_version"; then
    log "cargo-fuzz $cargo_fuzz_version present"
else
    log "cargo install cargo-fuzz $cargo_fuzz_version"
    cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
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
# An unprivileged user with subordinate ids, as libvirt's session mode
# runs the daemon (--uid-map/--gid-map through newuidmap/newgidmap).
getent group vfs-session >/dev/null || groupadd --system vfs-session
if ! getent passwd vfs-session >/dev/null; then
    useradd --system --gid vfs-session --no-create-home --home-dir / \
        --shell /usr/sbin/nologin --comment "virtiofsd-rs session-mode tests" vfs-session
fi
grep -q '^vfs-session:400000:65536$' /etc/subuid 2>/dev/null || usermod --add-subuids 400000-465535 vfs-session
grep -q '^vfs-session:400000:65536$' /etc/subgid 2>/dev/null || usermod --add-subgids 400000-465535 vfs-session
log "users: $(id nobody); $(id tests); $(id vfs-session) with subordinate ids 400000-465535"

if $want_kernel; then
    stock_kernels() {
        "$repo_root/guest/stock-kernel.sh" &&
            "$repo_root/guest/stock-kernel.sh" --series 6.12 "$repo_root/target/guest-stock-6.12" &&
            "$repo_root/guest/stock-kernel.sh" --series 6.12 --modules "virtio_pci virtiofs overlay kvm_amd" \
                "$repo_root/target/guest-nested"
    }
    if ! stock_kernels; then
        # Usually: no apt lists yet, so the package cannot be resolved.
        apt_update_once
        stock_kernels
    fi
fi
if $want_custom_kernel; then
    # Resolving linux-source-6.12 needs apt lists.
    if [[ -z $(apt-cache policy linux-source-6.12 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)"') ]]; then
        apt_update_once
    fi
    "$repo_root/guest/build-kernel.sh"
fi
# xfstests: its packages, users and build (cached by the tarball's hash).
if $want_xfstests; then
    "$repo_root/tests/xfstests/build.sh" >/dev/null
fi
log "done"
