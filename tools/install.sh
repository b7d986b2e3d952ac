#!/bin/bash
# Install everything kata-zun and its tests need on a Debian 12 host:
# the base install (tools/install-base.sh: compute-host packages, .venv
# with kata-zun, the guest kernel and initrd) and the test stack
# (tools/install-test.sh). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
exec tools/install-test.sh
