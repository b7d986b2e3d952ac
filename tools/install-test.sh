#!/bin/bash
# What the tests need on top of the base install (tools/install-base.sh,
# run first): the test-only system packages (a registry, a proxy, Open
# vSwitch, TLS and image tools), the test and end-to-end requirements in
# .venv (zun and the OpenStack services the end-to-end tests start), the
# documentation requirements (tools/run-tests.sh builds the docs),
# kata-zun with its zun extra, and neutron and cinder in virtualenvs of
# their own. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-base.sh

# The "test" packages of bindep.txt.
PACKAGES="skopeo docker-registry apache2-utils openssl pciutils tinyproxy
openvswitch-switch libfaketime"

# shellcheck source=tools/install-packages.sh
source tools/install-packages.sh
# shellcheck disable=SC2086
install_missing_packages $PACKAGES

# The tests also run the driver inside real zun-compute, so they get the
# zun extra and the OpenStack services of the end-to-end suite.
.venv/bin/pip install -q -r requirements.txt -r test-requirements.txt \
    -r e2e-requirements.txt -r doc/requirements.txt
.venv/bin/pip install -q -e '.[zun]'
# Installed in place (-e): compile its bytecode now, as a regular install
# does, so that no CLI run, shim or agent build compiles it again where
# Python may not write its cache (PYTHONDONTWRITEBYTECODE).
.venv/bin/python -m compileall -q kata_zun > /dev/null
# neutron for the real-Neutron tests, in a virtualenv of its own.
tools/install-neutron.sh
# cinder for the real-Cinder tests, in a virtualenv of its own.
tools/install-cinder.sh
