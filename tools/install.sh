#!/bin/bash
# Install everything kata-zun needs on a Debian 12 host: system packages
# (only those missing), a virtualenv in .venv with kata-zun and its test
# requirements, and the guest kernel + initrd ("kata-zun guest build").
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="qemu-system-x86 qemu-utils linux-image-cloud-amd64 busybox-static
erofs-utils e2fsprogs lz4 cpio iproute2 nftables skopeo docker-registry
apache2-utils openssl pciutils python3-venv tinyproxy openvswitch-switch"

missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "Installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q -U pip
# The base install (CLI, shim, guest builder) needs no zun; the tests
# also run the driver inside real zun-compute, so they get the zun extra
# and the OpenStack services of the end-to-end suite.
.venv/bin/pip install -q -r requirements.txt -r test-requirements.txt \
    -r e2e-requirements.txt
.venv/bin/pip install -q -e '.[zun]'
# neutron for the real-Neutron tests, in a virtualenv of its own.
tools/install-neutron.sh
# cinder for the real-Cinder tests, in a virtualenv of its own.
tools/install-cinder.sh

.venv/bin/kata-zun guest build
