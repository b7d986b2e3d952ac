#!/bin/bash
# Set up kata-zun on this host and run a container in a micro-VM.
# Needs no OpenStack: embedded defaults, local state in /var/lib/kata-zun.
# Installs only the base (tools/install-base.sh); tools/run-tests.sh adds
# what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-base.sh
KZ=.venv/bin/kata-zun
$KZ check || true
demo=$(mktemp --suffix=.tar)
trap 'rm -f "$demo"' EXIT
# A real image archive made from this host's busybox-static (no registry
# is reachable from a fresh machine, and no Docker daemon is needed).
.venv/bin/python -m kata_zun.image.busybox "$demo" --tag busybox:latest
$KZ load -i "$demo"
$KZ run --rm busybox sh -c \
    'echo "Hello from $(hostname), a container in its own VM:"; uname -srm'
