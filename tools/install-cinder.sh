#!/bin/bash
# Install what the real-Cinder tests need (see
# kata_zun/tests/functional/cinder_env.py): a virtualenv of its own with
# cinder (cinder-api, cinder-scheduler, cinder-volume; os-brick comes
# with it), PyMySQL and gunicorn.
#
# cinder gets its own virtualenv (.venv-cinder) for the same reason as
# neutron (tools/install-neutron.sh): it can never move a package that
# zun, keystone, placement or glance in .venv depend on.
#
# Idempotent: a second run only checks. Variables:
#   CINDER_VENV  the virtualenv to use (default: .venv-cinder)
#   PYTHON       the Python that creates it (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

CINDER_VERSION=29.0.0
CINDER_VENV=${CINDER_VENV:-.venv-cinder}
PYTHON=${PYTHON:-python3}

# The test backend (kata_zun/tests/functional/cinder_backend.py) hands
# volumes over as loop devices.
if ! command -v losetup >/dev/null; then
    echo "losetup (util-linux) is missing" >&2
    exit 1
fi

if [ ! -x "$CINDER_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$CINDER_VENV"
    "$CINDER_VENV/bin/pip" install -q -U pip
fi
installed=$("$CINDER_VENV/bin/pip" list --format=freeze 2>/dev/null \
    | grep -i '^cinder==' || true)
if [ "$installed" != "cinder==$CINDER_VERSION" ] \
        || [ ! -x "$CINDER_VENV/bin/gunicorn" ]; then
    echo "Installing cinder $CINDER_VERSION into $CINDER_VENV"
    "$CINDER_VENV/bin/pip" install -q "cinder==$CINDER_VERSION" os-brick \
        'PyMySQL>=1.0.0' 'gunicorn>=22.0.0'
fi
# What cinder-volume imports, the test driver's base class among it.
"$CINDER_VENV/bin/python" -c 'import cinder.objects
cinder.objects.register_all()
import cinder.volume.driver, os_brick.initiator.connector, pymysql' \
    2>/dev/null || {
    echo "cinder in $CINDER_VENV does not import" >&2
    exit 1
}
echo "cinder $CINDER_VERSION in $CINDER_VENV"
