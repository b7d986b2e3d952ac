"""Concurrent operations on real VMs through the real CLI (issue 14):
pulls of the same and of different images from a real registry, commits
of one container, rm while a start is in flight, stop while an exec
streams, and two starts of one container.

Every outcome must be bounded and clear, and nothing may leak: no QEMU
or shim of this test's run path left, no record half-made.
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

from kata_zun.image import busybox
from kata_zun.runtime import faultpoint
from kata_zun.tests.functional import base
from kata_zun.tests.functional import registry_fixture as rf


class ConcurrencyTestCase(base.KataZunFunctionalTest):

    def setUp(self):
        super().setUp()
        self.load_busybox()

    def at_once(self, *argvs, timeout=base.CLI_TIMEOUT):
        """Run CLI commands at the same time.

        :returns: their :class:`base.Result` objects, in order.
        """
        with concurrent.futures.ThreadPoolExecutor(len(argvs)) as pool:
            futures = [pool.submit(self.kz, *argv, timeout=timeout)
                       for argv in argvs]
            return [f.result() for f in futures]

    def popen(self, *args, pause_at=None):
        """Start the CLI in the background.

        :param pause_at: a fault point (:mod:`kata_zun.runtime.faultpoint`)
            where it stops itself; :meth:`paused` waits for that.
        """
        env = dict(os.environ)
        if pause_at:
            env[faultpoint.ENV] = pause_at
        proc = subprocess.Popen(
            [sys.executable, '-m', 'kata_zun.cmd.cli', '--config-file',
             self.conf_file] + list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.addCleanup(self._reap, proc)
        return proc

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    def paused(self, proc, timeout=base.CLI_TIMEOUT):
        """Wait until ``proc`` stopped itself at its fault point."""
        os.set_blocking(proc.stderr.fileno(), True)
        line = b''
        deadline = time.monotonic() + timeout
        while faultpoint.MARKER not in line:
            self.assertLess(time.monotonic(), deadline)
            line = proc.stderr.readline()
            if not line:
                self.fail('exited before its fault point: %r'
                          % (proc.communicate(timeout=60),))
        # The marker is written just before SIGSTOP: wait for the stop.
        self.assertTrue(faultpoint.wait_stopped(
            proc.pid, max(0.0, deadline - time.monotonic())))

    def all_ids(self):
        """:returns: the id of every container this test created (from
            the host's event log: removed ones too).
        """
        r = self.kz('events', '--since', '0', '--until',
                    '%f' % (time.time() + 0.01), '--filter', 'event=create',
                    '--format', '{{json .}}', check=0)
        return {json.loads(line)['Actor']['ID']
                for line in r.text.splitlines()}

    def vms(self, ids=None):
        """:returns: pids of the QEMUs of containers ``ids`` (default:
            every container this test created).
        """
        names = set(b'kz-' + i[:12].encode()
                    for i in (ids or self.all_ids()))
        found = []
        for pid in _pids():
            argv = _cmdline(pid).split(b'\0')
            if argv[0].startswith(b'/usr/bin/qemu') or \
                    b'qemu-system' in argv[0]:
                # "-name kz-<id>,debug-threads=on": the name is the first
                # field of the option's value.
                if any(a.split(b',')[0] in names for a in argv[1:]):
                    found.append(pid)
        return found

    def assert_no_leak(self):
        """No QEMU or shim of this test left, no record half-made."""
        deadline = time.monotonic() + 30
        while (base.processes_under(self.run_path) or self.vms()) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual([], base.processes_under(self.run_path))
        self.assertEqual([], self.vms())
        containers = os.path.join(self.state_path, 'containers')
        for cid in os.listdir(containers):
            if cid.startswith('.'):
                continue
            self.assertTrue(os.path.exists(os.path.join(
                containers, cid, 'config.json')),
                'record %s is half-made: %s' % (
                    cid, os.listdir(os.path.join(containers, cid))))

    # ------------------------------------------------------------ starts
    def test_two_starts_of_one_container(self):
        # Regression (issue 14): two starts at once both found the
        # container stopped and both booted a VM. Now the second is told
        # at once that another request is starting it.
        cid = self.kz('create', '--name', 'twice', 'busybox', 'sleep',
                      '600', check=0).text.strip()
        first = self.popen('start', 'twice', pause_at='start-spawned')
        self.paused(first)            # its VM is up, its start not done
        # Told at once (the first is paused for good: a second start
        # that waited for it would time out).
        r = self.kz('start', 'twice')
        self.assertEqual(1, r.code, r)
        self.assertIn(b'is being started by another request', r.err)
        self.assertEqual(1, len(self.vms([cid])))
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=base.CLI_TIMEOUT)
        self.assertEqual(0, first.returncode, err)
        state = json.loads(self.kz('inspect', 'twice', check=0).out)[0]
        self.assertEqual('running', state['State']['Status'])
        # Racing for real: a start of a running container is refused
        # plainly, however many at once; still one VM.
        for r in self.at_once(('start', 'twice'), ('start', 'twice')):
            self.assertEqual(1, r.code, r)
            self.assertRegex(r.err.decode(), 'already running|being '
                             'started by another request')
        self.assertEqual(1, len(self.vms([cid])))
        self.kz('rm', '-f', 'twice', check=0)
        self.assert_no_leak()

    def test_rm_while_start_in_flight(self):
        cid = self.kz('create', '--name', 'doomed', 'busybox', 'sleep',
                      '600', check=0).text.strip()
        record = os.path.join(self.state_path, 'containers', cid)
        start = self.popen('start', 'doomed', pause_at='start-spawned')
        self.paused(start)
        # rm without -f is refused at once, saying why (the start is
        # paused for good: an rm that waited would time out).
        r = self.kz('rm', 'doomed')
        self.assertEqual(1, r.code, r)
        self.assertIn(b'is being started by another request', r.err)
        # rm -f waits for the start in flight (its VM would otherwise
        # outlive the record), then removes what it started.
        rm = self.popen('rm', '-f', 'doomed')
        time.sleep(2)
        # (No rm.communicate() in the message: it would be evaluated
        # first and wait for the rm, which waits for the paused start.)
        self.assertIsNone(rm.poll())
        self.assertTrue(os.path.exists(os.path.join(record,
                                                    'config.json')))
        os.kill(start.pid, signal.SIGCONT)
        out, err = rm.communicate(timeout=base.CLI_TIMEOUT)
        self.assertEqual(0, rm.returncode, err)
        start.communicate(timeout=base.CLI_TIMEOUT)
        self.assertEqual(0, start.returncode)
        self.assertFalse(os.path.exists(record))
        self.assertEqual(b'', self.kz('ps', '-a', '-q', check=0).out)
        self.assert_no_leak()

    def test_cli_killed_mid_start_leaves_no_stale_lock(self):
        # The lock is the kernel's: a start killed while holding it does
        # not block the next operation.
        self.kz('create', '--name', 'orphan', 'busybox', 'sleep', '600',
                check=0)
        start = self.popen('start', 'orphan', pause_at='start-spawned')
        self.paused(start)
        start.kill()
        start.communicate()
        # The booted sandbox is the container's: a start goes on with it.
        self.kz('start', 'orphan', check=0)
        self.kz('rm', '-f', 'orphan', check=0)
        self.assert_no_leak()

    # ------------------------------------------------------ stop vs exec
    def test_stop_while_exec_streams(self):
        self.kz('run', '-d', '--name', 'talker', 'busybox', 'sleep', '600',
                check=0)
        exec_proc = self.popen('exec', 'talker', 'sh', '-c',
                               'i=0; while true; do i=$((i+1)); '
                               'echo line $i; done')
        first = exec_proc.stdout.readline()
        self.assertTrue(first.startswith(b'line '), first)
        t = time.monotonic()
        self.kz('stop', '-t', '2', 'talker', check=0)
        stop_took = time.monotonic() - t
        # The exec ends with the VM, with a failure code, not a hang.
        out, err = exec_proc.communicate(timeout=60)
        self.assertNotEqual(0, exec_proc.returncode, err[-500:])
        self.assertLess(stop_took, 60)
        state = json.loads(self.kz('inspect', 'talker', check=0).out)[0]
        self.assertEqual('exited', state['State']['Status'])
        self.assert_no_leak()
        # And it starts again.
        self.kz('start', 'talker', check=0)
        self.kz('rm', '-f', 'talker', check=0)
        self.assert_no_leak()

    # ------------------------------------------------------------ commits
    def test_concurrent_commits_of_one_container(self):
        self.kz('run', '-d', '--name', 'src', 'busybox', 'sh', '-c',
                'echo made > /made; sleep 600', check=0)
        results = self.at_once(*[('commit', 'src', 'snap:%d' % i)
                                 for i in range(3)])
        for r in results:
            self.assertEqual(0, r.code, r)
            self.assertTrue(r.text.strip().startswith('sha256:'), r)
        # Each commit is a whole image: a container runs from it.
        images = self.kz('images', check=0).text
        for i in range(3):
            self.assertRegex(images, r'snap\s+%d\s' % i)
        r = self.kz('run', '--rm', 'snap:2', 'cat', '/made', check=0)
        self.assertEqual(b'made\n', r.out)
        self.kz('rm', '-f', 'src', check=0)
        self.assert_no_leak()

    # -------------------------------------------------------------- pulls
    def test_concurrent_pulls(self):
        reg = self.useFixture(rf.Registry('http'))
        tmp = self.useFixture(base.fixtures.TempDir()).path
        for name, motd in (('one', b'one\n'), ('two', b'two\n')):
            path = os.path.join(tmp, name + '.tar')
            busybox.write_oci_archive(path, extra_files={'etc/motd': motd})
            reg.push('oci-archive:' + path, 'library/%s:latest' % name)
        one = '%s/library/one:latest' % reg.address
        two = '%s/library/two:latest' % reg.address
        results = self.at_once(('pull', one), ('pull', one), ('pull', one),
                               ('pull', two), ('pull', two))
        for r in results:
            self.assertEqual(0, r.code, r)
        listed = self.kz('images', check=0).text
        self.assertEqual(1, listed.count('library/one'), listed)
        self.assertEqual(1, listed.count('library/two'), listed)
        # Each image is whole: its own file is there.
        for ref, motd in ((one, b'one\n'), (two, b'two\n')):
            r = self.kz('run', '--rm', ref, 'cat', '/etc/motd', check=0)
            self.assertEqual(motd, r.out)
        self.assert_no_leak()


def _pids():
    return [int(e) for e in os.listdir('/proc') if e.isdigit()]


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read()
    except OSError:
        return b''
