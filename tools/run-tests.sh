#!/bin/bash
# Install what is needed (tools/install.sh: the base install of
# tools/quickstart.sh and the test stack), then run the style checks, the
# documentation build (warnings are errors), the unit tests and the
# functional tests (real QEMU VMs under TCG or KVM).
set -uo pipefail
cd "$(dirname "$0")/.."
tools/install.sh || exit 1
.venv/bin/flake8 || exit 1
.venv/bin/bashate -i E006 devstack/plugin.sh devstack/settings \
    devstack/lib/kata_zun tools/*.sh || exit 1
rm -rf doc/build
.venv/bin/sphinx-build -W --keep-going -q -b html doc/source \
    doc/build/html || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
OS_TEST_PATH=./kata_zun/tests/unit .venv/bin/stestr --test-path \
    ./kata_zun/tests/unit run 2>&1 | tee -a "$log" || status=1
# The functional suite boots VMs: two at a time on a 2-core host.
OS_TEST_PATH=./kata_zun/tests/functional .venv/bin/stestr --test-path \
    ./kata_zun/tests/functional run --concurrency 2 2>&1 | tee -a "$log" \
    || status=1

passed=$(grep -E '^ - Passed: ' "$log" | awk '{s+=$3} END {print s+0}')
failed=$(grep -E '^ - Failed: ' "$log" | awk '{s+=$3} END {print s+0}')
skipped=$(grep -E '^ - Skipped: ' "$log" | awk '{s+=$3} END {print s+0}')
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit $status
