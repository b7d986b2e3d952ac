#!/bin/bash
# Sourced by tools/install-base.sh and tools/install-test.sh:
# install_missing_packages PKG... installs, with apt-get, those of the
# given Debian packages that are not installed yet (nothing, and no
# "apt-get update", when all are).

function install_missing_packages {
    local pkg missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null \
            | grep -q "ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "Installing system packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing
    fi
}
