#!/bin/bash
# Install what the real-Neutron tests need (see
# kata_zun/tests/functional/neutron_env.py): Open vSwitch from Debian and
# a virtualenv of its own with neutron, PyMySQL and gunicorn.
#
# neutron gets its own virtualenv (.venv-neutron) so that it can never
# move a package that zun, keystone, placement or glance in .venv depend
# on. (A dry run shows neutron 29.0.0 would fit into .venv today without
# changing any installed version, but the two sets of pins are free to
# diverge.)
#
# Idempotent: a second run only checks. Variables:
#   NEUTRON_VENV  the virtualenv to use (default: .venv-neutron)
#   PYTHON        the Python that creates it (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

NEUTRON_VERSION=29.0.0
NEUTRON_VENV=${NEUTRON_VENV:-.venv-neutron}
PYTHON=${PYTHON:-python3}

# The system packages (openvswitch-switch: ovsdb-server, ovs-vswitchd
# and ovs-vsctl; the tests start their own daemons with the netdev
# datapath, not the Debian service) come from tools/install.sh.
if ! command -v ovs-vswitchd >/dev/null; then
    echo "openvswitch-switch is missing: run tools/install.sh" >&2
    exit 1
fi

if [ ! -x "$NEUTRON_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$NEUTRON_VENV"
    "$NEUTRON_VENV/bin/pip" install -q -U pip
fi
installed=$("$NEUTRON_VENV/bin/pip" list --format=freeze 2>/dev/null \
    | grep -i '^neutron==' || true)
if [ "$installed" != "neutron==$NEUTRON_VERSION" ] \
        || [ ! -x "$NEUTRON_VENV/bin/gunicorn" ]; then
    echo "Installing neutron $NEUTRON_VERSION into $NEUTRON_VENV"
    "$NEUTRON_VENV/bin/pip" install -q "neutron==$NEUTRON_VERSION" \
        'PyMySQL>=1.0.0' 'gunicorn>=22.0.0'
fi
"$NEUTRON_VENV/bin/python" -c 'import neutron.server, pymysql' \
    2>/dev/null || {
    echo "neutron in $NEUTRON_VENV does not import" >&2
    exit 1
}
echo "neutron $NEUTRON_VERSION in $NEUTRON_VENV, $(ovs-vsctl --version \
    | head -1)"
