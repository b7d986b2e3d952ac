#!/bin/bash
# The base install, all that the standalone CLI needs to run a container
# in a micro-VM (tools/quickstart.sh): the system packages of a compute
# host (only those missing), a virtualenv in .venv with kata-zun and its
# runtime requirements (no zun, no OpenStack service), and the guest
# kernel + initrd ("kata-zun guest build"). tools/install-test.sh adds
# what the tests need. Idempotent: a second run only checks.
#
# Variables: PYTHON, the Python that creates .venv (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# The compute-host packages of bindep.txt, and python3-venv for .venv.
# gcc and libc6-dev build the guest agent's static exec spawner.
PACKAGES="qemu-system-x86 qemu-utils linux-image-cloud-amd64 busybox-static
erofs-utils e2fsprogs lz4 cpio iproute2 nftables python3-venv gcc libc6-dev"

# shellcheck source=tools/install-packages.sh
source tools/install-packages.sh
# shellcheck disable=SC2086
install_missing_packages $PACKAGES

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q -e .
# Installed in place (-e): compile its bytecode now, as a regular install
# does, so that no CLI run, shim or agent build compiles it again where
# Python may not write its cache (PYTHONDONTWRITEBYTECODE).
.venv/bin/python -m compileall -q kata_zun > /dev/null

.venv/bin/kata-zun guest build
