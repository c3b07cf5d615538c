# shellcheck shell=bash
# Sourced by the scripts that install Debian packages.

# apt_missing PACKAGE...: prints, one per line, those not installed.
apt_missing() {
    local p
    for p in "$@"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
            echo "$p"
        fi
    done
}
