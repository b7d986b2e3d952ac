"""Host memory admission with real VMs through the real CLI (issue 14:
43 cold VMs started at once ran the host out of memory; a start that
cannot fit must get a clear resource error, and a start that fits once
the starts in flight are done must wait for them, not fail).

The test plays "a start in flight" itself by holding a claim in the
host's admission ledger (the same ``flock``-ed file a shim holds while it
boots); the starts it judges are real shims booting real QEMU VMs.
"""

import json
import os
import subprocess
import sys
import time
import uuid

from kata_zun.jail import cgroup
from kata_zun.runtime import admission
from kata_zun.tests.functional import base


class MemoryAdmissionTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()
        self.ledger_dir = os.path.join(self.run_path, admission.LEDGER_DIR)

    def set_kata(self, **options):
        """Later values of a section win in oslo.config."""
        with open(self.conf_file, 'a') as f:
            f.write('[kata]\n' + ''.join('%s = %s\n' % kv
                                         for kv in options.items()))

    def state(self, ref):
        return json.loads(self.kz('inspect', ref, check=0).out)[0]['State']

    def hold_claim(self):
        """Be a start in flight that holds more than the host has.

        Its own judge reads a MemAvailable big enough to admit it; the
        shims judge against the real one.
        """
        meminfo = os.path.join(self.state_path, 'meminfo-of-the-claim')
        with open(meminfo, 'w') as f:
            f.write('MemAvailable: %d kB\n' % (2 << 40))
        claim = admission.Ledger(self.ledger_dir, reserve_mib=0,
                                 enabled=True, meminfo=meminfo
                                 ).reservation('kz-test-claim')
        claim.need(1 << 30)
        self.addCleanup(claim.release)
        return claim

    def claims(self):
        return sorted(n for n in os.listdir(self.ledger_dir)
                      if n != admission.LEDGER_LOCK)

    def assert_no_vm(self):
        """No QEMU ran, and nothing of the refused start is left: its
        shim exits right after it reported the refusal, and may still be
        on its way out (CI, stop 16) when the CLI has returned.
        """
        deadline = time.monotonic() + 30
        while True:
            left = {}
            for pid in base.processes_under(self.run_path):
                if pid == os.getpid():
                    continue
                try:
                    with open('/proc/%d/cmdline' % pid, 'rb') as f:
                        left[pid] = f.read().replace(b'\0', b' ')
                except OSError:
                    continue
            self.assertEqual([], [c for c in left.values()
                                  if b'qemu' in c.split(b' ')[0]])
            if not left:
                return
            self.assertLess(time.monotonic(), deadline, left)
            time.sleep(0.1)

    def test_a_start_that_cannot_fit_is_refused_at_once(self):
        self.set_kata(host_memory_reserve_mb=1 << 30)
        r = self.kz('run', '-d', '--name', 'big', 'busybox', 'sleep', '300')
        self.assertNotEqual(0, r.code, r)
        self.assertRegex(
            r.err.decode(), r'Insufficient resources: not enough host '
            r'memory to start kz-[0-9a-f]{12}: it needs \d+ MiB, the host '
            r'has \d+ MiB available and keeps 1073741824 MiB free')
        # Nothing ran, nothing is held, and the container stays created
        # with the reason (as Docker keeps one whose start failed).
        self.assert_no_vm()
        self.assertEqual([], self.claims())
        state = self.state('big')
        self.assertEqual('created', state['Status'])
        self.assertIn('not enough host memory', state['Error'])
        cid = json.loads(self.kz('inspect', 'big', check=0).out)[0]['Id']
        # No guest ever wrote a console.
        self.assertFalse(os.path.exists(os.path.join(
            self.state_path, 'containers', cid, 'console.log')))
        # Once the host has room, the same container starts.
        self.set_kata(host_memory_reserve_mb=0)
        self.kz('start', 'big', check=0)
        self.assertEqual('running', self.state('big')['Status'])
        self.assertEqual([], self.claims())
        r = self.kz('exec', 'big', 'echo', 'fits', check=0)
        self.assertEqual(b'fits\n', r.out)

    def test_a_start_waits_for_the_starts_in_flight(self):
        self.set_kata(host_memory_reserve_mb=0)
        claim = self.hold_claim()
        proc = subprocess.Popen(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf_file, 'run', '-d', '--name', 'waiter', 'busybox',
             'sleep', '300'], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        # Its shim says it waits, and no QEMU runs meanwhile.
        deadline = time.monotonic() + base.CLI_TIMEOUT
        waiting = None
        while waiting is None:
            self.assertLess(time.monotonic(), deadline, 'no shim waits')
            if proc.poll() is not None:
                self.fail('the start ended before it waited: %s' %
                          proc.communicate()[1].decode()[-3000:])
            for cid in os.listdir(os.path.join(self.state_path,
                                               'containers')):
                log = os.path.join(self.state_path, 'containers', cid,
                                   'shim.log')
                if os.path.exists(log) and 'waits for starts in flight' \
                        in base.tail_file(log, 65536):
                    waiting = log
            time.sleep(0.2)
        self.assertIn('1 start(s) in flight hold 1073741824 MiB',
                      base.tail_file(waiting, 65536))
        self.assertFalse([p for p in base.processes_under(self.run_path)
                          if b'qemu' in open('/proc/%d/cmdline' % p,
                                             'rb').read().split(b'\0')[0]])
        # The start in flight is done: the waiter is admitted and boots.
        claim.release()
        out, err = proc.communicate(timeout=base.CLI_TIMEOUT)
        self.assertEqual(0, proc.returncode, err.decode()[-3000:])
        self.assertEqual('running', self.state('waiter')['Status'])
        self.assertIn('admitted after waiting',
                      base.tail_file(waiting, 65536))
        self.assertEqual([], self.claims())

    def test_a_wait_is_bounded_by_half_the_shim_start_timeout(self):
        self.set_kata(host_memory_reserve_mb=0, shim_start_timeout=10)
        self.hold_claim()
        r = self.kz('run', '-d', '--name', 'late', 'busybox', 'true')
        self.assertNotEqual(0, r.code, r)
        self.assertRegex(r.err.decode(),
                         r'Insufficient resources: not enough host '
                         r'memory .* 1 start\(s\) in flight hold 1073741824 '
                         r'MiB, and they were not done after 5 s')
        self.assert_no_vm()
        self.assertEqual('created', self.state('late')['Status'])
        self.assertEqual(1, len(self.claims()))      # the test's own

    def capped_parent(self, limit_mib):
        """A cgroup parent of the test's own with a memory limit, named
        in the test's config; removed at the end (its processes, the
        shims and the run path's fork server, moved out first).

        :returns: a function that sets another limit (MiB).
        """
        parent = 'kz-cap-%s' % uuid.uuid4().hex[:8]
        kind, where = cgroup.detect()
        roots = [where] if kind == 'v2' else sorted(
            {where[c] for c in cgroup.CONTROLLERS})
        memory = os.path.join(where if kind == 'v2' else where['memory'],
                              parent)
        limit_file = os.path.join(memory, 'memory.max' if kind == 'v2'
                                  else 'memory.limit_in_bytes')
        os.makedirs(memory)

        def set_limit(mib):
            with open(limit_file, 'w') as f:
                f.write(str(mib * 1024 * 1024))

        def remove():
            self._remove_all()
            deadline = time.monotonic() + 60
            for root in roots:
                top = os.path.join(root, parent)
                for d in sorted((d for d, _s, _f in os.walk(top)),
                                key=len, reverse=True):
                    while os.path.isdir(d):
                        with open(os.path.join(d, 'cgroup.procs')) as f:
                            for pid in f.read().split():
                                try:
                                    with open(os.path.join(
                                            root, 'cgroup.procs'),
                                            'w') as out:
                                        out.write(pid)
                                except OSError:
                                    pass       # gone meanwhile
                        try:
                            os.rmdir(d)
                        except OSError:
                            self.assertLess(time.monotonic(), deadline, d)
                            time.sleep(0.2)
        self.addCleanup(remove)
        set_limit(limit_mib)
        with open(self.conf_file, 'a') as f:
            f.write('[kata_jail]\ncgroup_parent = %s\n' % parent)
        return parent, set_limit

    def test_the_sandboxes_cgroup_memory_limit_is_judged(self):
        """An operator caps all sandboxes together with a memory limit on
        their parent cgroup: a start the host has room for, but that
        cgroup has not, is refused with the reason (not run to be
        OOM-killed there); it starts once the limit allows it.
        """
        self.set_kata(host_memory_reserve_mb=0)
        # A restore claims [kata_jail] memory_overhead_mb (256), a cold
        # boot more; the shims in the cgroup take a few tens of MiB.
        parent, set_limit = self.capped_parent(200)
        r = self.kz('run', '-d', '--name', 'capped', 'busybox', 'sleep',
                    '300')
        self.assertNotEqual(0, r.code, r)
        self.assertRegex(
            r.err.decode(), r'Insufficient resources: not enough host '
            r'memory to start kz-[0-9a-f]{12}: it needs \d+ MiB, the '
            r"sandboxes' cgroup %s has \d+ MiB left under its memory "
            r'limit' % parent)
        self.assert_no_vm()
        self.assertEqual([], self.claims())
        self.assertEqual('created', self.state('capped')['Status'])
        set_limit(4096)
        self.kz('start', 'capped', check=0)
        self.assertEqual('running', self.state('capped')['Status'])
        r = self.kz('exec', 'capped', 'echo', 'fits', check=0)
        self.assertEqual(b'fits\n', r.out)
