"""The Zun fault matrix (tools/fault-matrix-zun.py), in its quick form.

Real zun-api and zun-compute (the stand-in Neutron of the other Zun
tests: no real Neutron here), real VMs: zun-compute, QEMU or the shim is
killed with SIGKILL at a chosen step of a container's life, landed there
by a fault point of the driver or runtime (zun-compute stops itself) or
by an event the tool observes, never after a guessed delay; every
container must stay explained, usable and removable without leaks. One
Zun environment serves every cell of the run.
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
TOOL = os.path.join(REPO, 'tools', 'fault-matrix-zun.py')


class ZunFaultMatrixTestCase(base.BaseTestCase):

    def test_quick_matrix_every_cell_passes(self):
        self.useFixture(fixtures.Timeout(2400, gentle=True))
        guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR',
                                   fbase.DEFAULT_GUEST_DIR)
        if not os.path.isdir(guest_dir):
            self.fail('guest assets missing in %s: run tools/install.sh' %
                      guest_dir)
        try:
            import zun  # noqa: F401
        except ImportError:
            self.fail('zun is not installed in %s: run tools/install.sh' %
                      sys.prefix)
        proc = subprocess.run([sys.executable, TOOL, '--quick'],
                              capture_output=True, timeout=2300, cwd=REPO,
                              stdin=subprocess.DEVNULL)
        out = proc.stdout.decode('utf-8', 'replace')
        detail = out + proc.stderr.decode('utf-8', 'replace')[-4000:]
        self.assertEqual(0, proc.returncode, detail)
        totals = re.search(r'^(\d+)/(\d+) cells passed', out, re.M)
        self.assertIsNotNone(totals, detail)
        quick = len(re.findall(r'^PASS |^FAIL ', out, re.M))
        # Every cell of the quick set ran, and passed.
        self.assertEqual(5, quick, detail)
        self.assertEqual(('5', '5'), totals.groups(), detail)
