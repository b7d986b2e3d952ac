"""Shims forked by the shim fork server, with real VMs through the CLI.

The first start of a run path starts its shim on its own and the server
for the next starts; later shims are forked from the server, share its
imported code's memory, and outlive it.
"""

import json
import os
import signal
import time

from kata_zun.shim import forkserver
from kata_zun.tests.functional import base

WAIT = 120


def _rollup(pid):
    """:returns: smaps_rollup's fields of ``pid``, in KiB."""
    fields = {}
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == 'kB':
                fields[parts[0].rstrip(':')] = int(parts[1])
    return fields


def _stat(pid):
    """:returns: /proc/PID/stat's fields from the third (state) on, as
        ints where they are.
    """
    with open('/proc/%d/stat' % pid) as f:
        return [int(v) if v.lstrip('-').isdigit() else v
                for v in f.read().rsplit(')', 1)[1].split()]


def _server_pid(run_path):
    """:returns: the pid of the run path's fork server (which holds the
        run path open), or None.
    """
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if b'kata_zun.shim.forkserver' not in f.read():
                    continue
            for fd in os.listdir('/proc/%s/fd' % pid):
                if os.readlink('/proc/%s/fd/%s' % (pid, fd)) == run_path:
                    return int(pid)
        except OSError:
            continue
    return None


class ShimForkServerTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.socket = os.path.join(self.run_path, forkserver.socket_name())

    def _wait_server(self, other_than=None):
        # The socket path is the old server's (renamed over) until the
        # new one is in place: wait for a listener that is not the old.
        deadline = time.monotonic() + WAIT
        while True:
            pid = _server_pid(self.run_path) if os.path.exists(
                self.socket) else None
            if pid and pid != other_than:
                return pid
            self.assertLess(time.monotonic(), deadline,
                            'no shim fork server in %s' % self.run_path)
            time.sleep(0.1)

    def _shim(self, ref):
        info = json.loads(self.kz('inspect', ref, check=0).out)[0]
        return info['State']['ShimPid'], info['Id']

    def test_forked_shims_share_code_and_outlive_the_server(self):
        self.load_busybox()
        self.kz('run', '-d', '--name', 'first', 'busybox', 'sleep', '600',
                check=0)
        server = self._wait_server()
        for name in ('second', 'third'):
            self.kz('run', '-d', '--name', name, 'busybox', 'sleep', '600',
                    check=0)
        shims = {}
        for name in ('second', 'third'):
            pid, cid = self._shim(name)
            shims[name] = pid
            # Known by its command line (ps, pgrep and the runtime's own
            # pid checks), daemonized like a shim started on its own.
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                cmdline = f.read()
            self.assertIn(b'-m kata_zun.cmd.shim --state-dir ', cmdline)
            self.assertIn(cid.encode(), cmdline)
            self.assertIn(self.run_path.encode(), cmdline)
            ppid, sid = _stat(pid)[1], _stat(pid)[3]
            self.assertNotEqual(server, ppid)
            self.assertNotIn(sid, (_stat(server)[3], os.getsid(0)))
            # Its code's pages are shared with the server and the other
            # forked shim (a shim started on its own shares no dirty
            # anonymous page with anyone).
            self.assertGreater(_rollup(pid)['Shared_Dirty'], 4096)
        self.assertLess(_rollup(self._shim('first')[0])['Shared_Dirty'],
                        1024)
        # The server holds no sandbox: killed, its shims go on.
        os.kill(server, signal.SIGKILL)
        r = self.kz('exec', 'second', 'echo', 'still here', check=0)
        self.assertEqual('still here\n', r.text)
        # The next start starts its shim on its own, and a new server
        # in place of the dead one's socket.
        self.kz('run', '-d', '--name', 'fourth', 'busybox', 'sleep', '600',
                check=0)
        self._wait_server(other_than=server)
        self.kz('rm', '-f', 'first', 'second', 'third', 'fourth', check=0)
        deadline = time.monotonic() + WAIT
        while base.processes_under(self.run_path):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.2)


class ShimForkServerOffTestCase(base.KataZunFunctionalTest):

    extra_config = '[kata]\nshim_forkserver = false\n'

    def test_no_server(self):
        self.load_busybox()
        for _ in range(2):
            r = self.kz('run', '--rm', 'busybox', 'echo', 'on its own',
                        check=0)
            self.assertEqual('on its own\n', r.text)
        self.assertEqual(
            [], [n for n in os.listdir(self.run_path)
                 if n.startswith('shim-forkserver')])
