#!/bin/bash
# The on-demand reliability tests of kata_zun/tests/stress (issue 14):
# the reduced soak (CLI and Zun) and the infrastructure faults under Zun
# (a private RabbitMQ and MariaDB restarted, a full state disk, a clock
# step under libfaketime). Several minutes each; one at a time.
# Usage: tools/run-stress.sh [TEST-FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
exec .venv/bin/stestr --test-path ./kata_zun/tests/stress run \
    --concurrency 1 "$@"
