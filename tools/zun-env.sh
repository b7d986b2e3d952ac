#!/bin/bash
# Bring a real OpenStack Zun (keystone, placement, a fake Neutron, zun-api,
# zun-compute) up on 127.0.0.1, or down again, for manual end-to-end work.
#
#   tools/zun-env.sh --workdir /tmp/zun up [--venv V] [--driver kata]
#                    [--conf kata.some_option=value ...]
#   source /tmp/zun/openrc; openstack appcontainer run --name c1 busybox
#   tools/zun-env.sh --workdir /tmp/zun down
#
# --venv defaults to .venv, which then needs the OpenStack services:
#   .venv/bin/pip install zun==18.0.0 keystone==30.0.0 \
#       openstack-placement==16.0.0 python-zunclient \
#       python-openstackclient gunicorn pymysql
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m kata_zun.tests.functional.zun_env "$@"
