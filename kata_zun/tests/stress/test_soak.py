"""The soak (tools/soak.py), in a reduced form.

Real VMs through the standalone CLI, then through a real zun-api and
zun-compute (the Neutron stand-in): a few create/start/exec/logs/stop/rm
cycles each, every one must pass and every leak count must be 0 (QEMU,
shim and virtiofsd processes, run dirs, records, host cgroups, uid
leases, loop devices, taps, image store entries, the event log's bound,
zun's container rows). The soak first checks its probes see a running
sandbox, so a 0 here means "nothing left", not "nothing looked at".
"""

import json
import os
import subprocess
import sys

import fixtures
from oslotest import base

from kata_zun.tests.functional import base as fbase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
TOOL = os.path.join(REPO, 'tools', 'soak.py')


class SoakTestCase(base.BaseTestCase):

    def _soak(self, *args):
        self.useFixture(fixtures.Timeout(1200, gentle=True))
        guest_dir = os.environ.get('KATA_ZUN_GUEST_DIR',
                                   fbase.DEFAULT_GUEST_DIR)
        if not os.path.isdir(guest_dir):
            self.fail('guest assets missing in %s: run tools/install.sh' %
                      guest_dir)
        figures = os.path.join(self.useFixture(fixtures.TempDir()).path,
                               'soak.json')
        proc = subprocess.Popen([sys.executable, TOOL, '--json', figures] +
                                list(args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=REPO,
                                stdin=subprocess.DEVNULL)
        try:
            out, err = proc.communicate(timeout=1000)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the soak then stops its zun services and
            # removes its sandboxes (SIGKILL would leave them).
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        detail = (out.decode('utf-8', 'replace')[-6000:] +
                  err.decode('utf-8', 'replace')[-3000:])
        self.assertEqual(0, proc.returncode, detail)
        with open(figures) as f:
            return json.load(f), detail

    def _assert_clean(self, soak, cycles, detail):
        self.assertEqual((cycles, 0), (soak['cycles'], soak['failed']),
                         detail)
        self.assertTrue(soak['leaks'], detail)
        self.assertEqual({k: 0 for k in soak['leaks']}, soak['leaks'],
                         detail)
        self.assertEqual({k: 0 for k in soak['worst']}, soak['worst'],
                         detail)

    def test_cli_soak_leaves_nothing(self):
        (soak,), detail = self._soak('--cli-cycles', '6', '--zun-cycles',
                                     '0', '--check-every', '3')
        self._assert_clean(soak, 6, detail)
        for what in ('qemu', 'shim', 'cgroups', 'uid leases', 'records',
                     'loop devices', 'image store'):
            self.assertIn(what, soak['leaks'])

    def test_zun_soak_leaves_nothing(self):
        (soak,), detail = self._soak('--cli-cycles', '0', '--zun-cycles',
                                     '2', '--check-every', '2',
                                     '--zun-client', 'osc')
        self._assert_clean(soak, 2, detail)
        self.assertIn('zun db rows', soak['leaks'])
        # zun-compute was sampled at the start, the check and the end.
        self.assertEqual(3, len(soak['samples']), detail)
        self.assertTrue(all(rss and fds for _l, rss, fds
                            in soak['samples']), detail)
