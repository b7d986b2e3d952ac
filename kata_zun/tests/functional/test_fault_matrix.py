"""The fault matrix (tools/fault-matrix.py), in its quick form.

It kills QEMU, the shim or the CLI itself with SIGKILL at chosen steps
of a container's life, with real VMs, and checks every container is
explained, recoverable and leaves nothing behind. Each kill lands at a
step the tool observes (a fault point of the CLI, a pid the shim
records, a line the container prints), never after a guessed delay: a
slow or loaded host changes how long a cell takes, not what it hits.
"""

import os
import re
import subprocess
import sys

import fixtures
from oslotest import base

from kata_zun.tests.functional import base as fbase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
TOOL = os.path.join(REPO, 'tools', 'fault-matrix.py')


class FaultMatrixTestCase(base.BaseTestCase):

    def test_quick_matrix_every_cell_passes(self):
        self.useFixture(fixtures.Timeout(2400, gentle=True))
        guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR',
                                   fbase.DEFAULT_GUEST_DIR)
        if not os.path.isdir(guest_dir):
            self.fail('guest assets missing in %s: run tools/install.sh' %
                      guest_dir)
        proc = subprocess.run([sys.executable, TOOL, '--quick'],
                              capture_output=True, timeout=2300, cwd=REPO,
                              stdin=subprocess.DEVNULL)
        out = proc.stdout.decode('utf-8', 'replace')
        detail = out + proc.stderr.decode('utf-8', 'replace')[-4000:]
        self.assertEqual(0, proc.returncode, detail)
        totals = re.search(r'^(\d+)/(\d+) cells passed', out, re.M)
        self.assertIsNotNone(totals, detail)
        # Every cell of the quick set (seven since stop 14's attach
        # cell) ran, and passed.
        self.assertEqual(('7', '7'), totals.groups(), detail)
        self.assertEqual(7, len(re.findall(r'^PASS ', out, re.M)), detail)
