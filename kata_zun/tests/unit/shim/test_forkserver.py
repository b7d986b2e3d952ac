"""The shim fork server: what a forked process gets, hostile requests,
when it exits, and the starter's decision when an answer is lost.

The server runs for real (a forked copy of this test process serving a
test entry point that reports what it got; one test starts the real
``python -m kata_zun.shim.forkserver``). The thin stand-ins are two
"servers" that lose their answer, the cases a real server only shows
when it is killed at the wrong moment.
"""

import errno
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from unittest import mock

import fixtures
from oslotest import base

from kata_zun.shim import forkserver

PROBE = 'kata_zun.tests.unit.shim.forkserver_probe'
WAIT = 60.0


def _read_all(fd):
    out = b''
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out
            out += chunk
    raise AssertionError('no end of file within %s s' % WAIT)


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open('/proc/%d/stat' % pid) as f:
        return f.read().rsplit(')', 1)[1].split()[0] == 'Z'


class ForkServerTestCase(base.BaseTestCase):

    idle_exit = 600.0

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(120, gentle=True))
        # Unix socket paths must stay short.
        self.run_path = tempfile.mkdtemp(prefix='kzfs', dir='/tmp')
        self.addCleanup(shutil.rmtree, self.run_path, True)
        self.path = os.path.join(self.run_path, forkserver.socket_name())
        self.server_pid = None

    def start_server(self, files=None):
        dir_fd = os.open(self.run_path, os.O_RDONLY | os.O_DIRECTORY)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(16)
        server = forkserver.Server(listener, dir_fd,
                                   forkserver.socket_name(),
                                   idle_exit=self.idle_exit, entry=PROBE)
        if files is not None:
            server.files = files
            server.fingerprint = forkserver._fingerprint(files)
        pid = os.fork()
        if pid == 0:
            try:
                server.serve()
            finally:
                os._exit(0)
        listener.close()
        os.close(dir_fd)
        self.server_pid = pid
        self.addCleanup(self._stop_server, pid)
        return pid

    def _stop_server(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass                    # it exited, and was reaped

    def wait_server_exit(self):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.server_pid, os.WNOHANG)
            if pid:
                self.server_pid = None
                return
            time.sleep(0.05)
        self.fail('the server did not exit')

    def probe(self, *args, python=sys.executable):
        """:returns: (spawn's verdict, the probe's report or None)."""
        read_fd, write_fd = os.pipe()
        try:
            ok = forkserver.spawn(
                self.run_path, [python, '-m', PROBE, str(write_fd)] +
                list(args), read_fd, write_fd)
            data = _read_all(read_fd)
        finally:
            os.close(read_fd)
        return ok, (json.loads(data) if data else None)

    def server_fds(self):
        return len(os.listdir('/proc/%d/fd' % self.server_pid))


class ServedTestCase(ForkServerTestCase):

    def test_the_starters_process_attributes(self):
        self.start_server()
        self.useFixture(fixtures.EnvironmentVariable('KZ_FS_TEST', 'v 1'))
        where = self.useFixture(fixtures.TempDir()).path
        cwd = os.getcwd()
        os.chdir(where)
        self.addCleanup(os.chdir, cwd)
        old_mask = os.umask(0o027)
        self.addCleanup(os.umask, old_mask)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (900, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE,
                        (soft, hard))
        ok, report = self.probe()
        self.assertTrue(ok)
        self.assertEqual('v 1', report['env']['KZ_FS_TEST'])
        self.assertEqual(dict(os.environ), report['env'])
        self.assertEqual(0o027, report['umask'])
        self.assertEqual(os.path.realpath(where), report['cwd'])
        self.assertEqual([900, hard], report['nofile'])
        # stdin from /dev/null, stdout ours, the ready fd at its number
        # and nothing else of the server's or of the request's.
        fd = int(report['argv'][1])
        self.assertEqual([0, 1, 2, fd], report['fds'])
        self.assertTrue(report['inheritable'])
        self.assertEqual('/dev/null', report['stdin'])
        st = os.fstat(1)
        self.assertEqual([st.st_dev, st.st_ino], report['stdout'])
        self.assertTrue(report['sigterm_default'])
        # What ps and the runtime's pid checks see.
        self.assertEqual(' '.join([sys.executable, '-m', PROBE, str(fd)]),
                         report['cmdline'])

    def test_serves_again_and_reaps(self):
        self.start_server()
        for _ in range(3):
            ok, report = self.probe()
            self.assertTrue(ok)
            self.assertIsNotNone(report)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            children = subprocess.run(
                ['pgrep', '-P', str(self.server_pid)],
                capture_output=True).stdout.split()
            if not children:
                break
            time.sleep(0.1)
        self.assertEqual([], children)

    def _raw(self, body, fds, wait_answer=True):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(WAIT)
        try:
            sock.connect(self.path)
            socket.send_fds(sock, [body], fds)
            return json.loads(sock.recv(4096) or b'null') \
                if wait_answer else None
        finally:
            sock.close()

    def _refused(self, body, nfds=4):
        """Send ``body`` with ``nfds`` descriptors, all the write end of
        one pipe: :returns: the refusal, once no process holds the pipe
        (nothing was forked, the server closed what it got).
        """
        read_fd, write_fd = os.pipe()
        try:
            answer = self._raw(body, [write_fd] * nfds)
            os.close(write_fd)
            write_fd = None
            self.assertEqual(b'', _read_all(read_fd))
        finally:
            os.close(read_fd)
            if write_fd is not None:
                os.close(write_fd)
        self.assertIsInstance(answer, dict)
        return answer['refused']

    def _body(self, **changes):
        doc = {'argv': [sys.executable, '-m', PROBE, '5'],
               'env': {'A': 'b'}, 'umask': 0o22,
               'rlimits': [[resource.RLIMIT_NOFILE, 64, 64]], 'fds': [5]}
        doc.update(changes)
        return json.dumps(doc).encode()

    def test_hostile_requests(self):
        self.start_server()
        before = self.server_fds()
        cases = [
            (b'not json', 'not JSON'),
            (b'[' * 60000, 'not JSON'),
            (b'"a string"', 'not an object'),
            (self._body(argv=[sys.executable, '-c', 'print(1)']),
             'not a shim'),
            (self._body(argv=[sys.executable, '-m', 'os']), 'not a shim'),
            (self._body(argv=['/bin/sh', '-m', PROBE]), 'not a shim'),
            (self._body(argv=['', '-m', PROBE]), 'not a shim'),
            (self._body(argv='python'), 'bad argv'),
            (self._body(argv=[sys.executable, '-m', PROBE] + ['a'] * 300),
             'bad argv'),
            (self._body(argv=[sys.executable, '-m', PROBE, 'a\0b']),
             'bad argv'),
            (self._body(env={'A=B': 'c'}), 'bad environment'),
            (self._body(env={'A': 1}), 'bad environment'),
            (self._body(env={str(i): '' for i in range(2000)}),
             'bad environment'),
            (self._body(umask=0o1000), 'bad umask'),
            (self._body(umask=True), 'bad umask'),
            (self._body(rlimits=[[999, 1, 1]]), 'bad resource limits'),
            (self._body(rlimits=[[0, '1', 1]]), 'bad resource limits'),
            (self._body(fds=[1]), 'bad descriptor numbers'),
            (self._body(fds=[5, 5]), 'bad descriptor numbers'),
            (self._body(fds=[5, 6]), '4 descriptors for 5'),
            # Larger than a request may be: cut by the kernel, refused.
            (b' ' * (forkserver.MAX_REQUEST + 1), 'truncated'),
        ]
        for body, why in cases:
            self.assertIn(why, self._refused(body), body[:80])
        # More descriptors than a request may carry: refused, and the
        # ones the kernel delivered closed.
        self.assertIn('truncated', self._refused(
            self._body(fds=list(range(3, 3 + forkserver.MAX_FDS))),
            nfds=forkserver.MAX_FDS + 3))
        # (Each connection is closed just after its answer.)
        deadline = time.monotonic() + WAIT
        while self.server_fds() != before:
            self.assertLess(time.monotonic(), deadline, self.server_fds())
            time.sleep(0.05)
        # And it still serves.
        ok, report = self.probe()
        self.assertTrue(ok)
        self.assertIsNotNone(report)

    def test_another_spelling_of_the_interpreter_is_served(self):
        # A CLI run as .venv/bin/python3 and zun-compute's .venv/bin/python
        # share the server (a second one cost 15 MiB in a benchmark).
        self.start_server()
        link = os.path.join(self.run_path, 'python-link')
        os.symlink(sys.executable, link)
        ok, report = self.probe(python=link)
        self.assertTrue(ok)
        self.assertIsNotNone(report)

    def test_a_peer_of_another_uid_is_not_served(self):
        self.start_server()
        os.chmod(self.run_path, 0o711)
        os.chmod(self.path, 0o777)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                got = self._raw(self._body(fds=[write_fd]),
                                [0, 1, 2, write_fd])
                os._exit(0 if got is None else 3)
            except OSError as exc:
                # The server closed the connection before we sent.
                os._exit(0 if exc.errno in (errno.EPIPE, errno.ECONNRESET)
                         else 5)
            except BaseException:
                os._exit(4)
        os.close(write_fd)
        _, status = os.waitpid(pid, 0)
        # No answer, nothing forked (no process holds the pipe).
        self.assertEqual(0, os.waitstatus_to_exitcode(status))
        self.assertEqual(b'', _read_all(read_fd))
        os.close(read_fd)

    def test_a_silent_peer_is_dropped(self):
        self.useFixture(fixtures.MockPatchObject(
            forkserver, 'REQUEST_TIMEOUT', 0.3))
        self.start_server()
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        silent.connect(self.path)
        self.addCleanup(silent.close)
        started = time.monotonic()
        ok, report = self.probe()
        self.assertTrue(ok)
        self.assertIsNotNone(report)
        # The silent peer held the server for its request timeout only.
        self.assertLess(time.monotonic() - started, WAIT)
        silent.settimeout(WAIT)
        self.assertEqual(b'', silent.recv(10))


class ExitTestCase(ForkServerTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MockPatchObject(forkserver, 'CHECK_EVERY',
                                                 0.05))

    def test_stale_code_is_refused_and_the_server_leaves(self):
        code = os.path.join(self.run_path, 'module.py')
        with open(code, 'w') as f:
            f.write('x = 1\n')
        self.start_server(files=[code])
        ok, report = self.probe()
        self.assertTrue(ok)
        with open(code, 'a') as f:
            f.write('x = 2\n')
        ok, report = self.probe()
        self.assertFalse(ok)
        self.assertIsNone(report)
        self.wait_server_exit()
        self.assertFalse(os.path.exists(self.path))

    def test_socket_removed(self):
        self.start_server()
        os.unlink(self.path)
        self.wait_server_exit()

    def test_idle(self):
        self.idle_exit = 0.2
        self.start_server()
        self.wait_server_exit()
        self.assertFalse(os.path.exists(self.path))
        # And then the starter starts shims on its own.
        read_fd, write_fd = os.pipe()
        self.assertFalse(forkserver.spawn(self.run_path, ['x'], read_fd,
                                          write_fd))
        self.assertRaises(OSError, os.fstat, write_fd)
        os.close(read_fd)


class LostAnswerTestCase(ForkServerTestCase):
    """A server that dies or hangs before it answers: the starter decides
    from its ready pipe (these two "servers" are stand-ins that lose the
    answer on purpose).
    """

    def _stand_in(self, keep):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(1)
        pid = os.fork()
        if pid == 0:
            try:
                conn, _ = listener.accept()
                _body, fds, _f, _a = socket.recv_fds(conn, 65536, 8)
                if keep:
                    time.sleep(30)
            finally:
                os._exit(0)
        listener.close()
        self.addCleanup(self._stop_server, pid)
        return pid

    def test_no_process_holds_the_pipe(self):
        self._stand_in(keep=False)
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        self.assertFalse(forkserver.spawn(
            self.run_path, [sys.executable, '-m', PROBE, str(write_fd)],
            read_fd, write_fd, timeout=WAIT))

    def test_a_process_holds_the_pipe(self):
        pid = self._stand_in(keep=True)
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        self.assertTrue(forkserver.spawn(
            self.run_path, [sys.executable, '-m', PROBE, str(write_fd)],
            read_fd, write_fd, timeout=0.3))
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(b'', _read_all(read_fd))

    def test_no_server(self):
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        self.assertFalse(forkserver.spawn(self.run_path, ['x'], read_fd,
                                          write_fd))
        e = self.assertRaises(OSError, os.fstat, write_fd)
        self.assertEqual(errno.EBADF, e.errno)


class RealServerTestCase(ForkServerTestCase):
    """``python -m kata_zun.shim.forkserver`` as :func:`ensure` starts
    it, serving the real shim entry point.
    """

    def _server_pids(self):
        out = subprocess.run(['pgrep', '-f', 'kata_zun.shim.forkserver'],
                             capture_output=True).stdout.split()
        mine = []
        for pid in out:
            try:
                if os.readlink('/proc/%s/cwd' % int(pid)) == '/' and \
                        os.path.exists(self.path) and any(
                            os.path.realpath('/proc/%s/fd/%s' % (
                                int(pid), fd)) == self.run_path
                            for fd in os.listdir('/proc/%s/fd' % int(pid))):
                    mine.append(int(pid))
            except OSError:
                pass
        return mine

    def test_started_once_serves_the_shim_and_leaves_with_its_run_path(self):
        forkserver.ensure(self.run_path)
        deadline = time.monotonic() + WAIT
        while not os.path.exists(self.path):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        forkserver.ensure(self.run_path)       # there already
        pids = self._server_pids()
        self.assertEqual(1, len(pids), pids)
        # The real shim's entry point, with our stderr: it has no state
        # dir, so it stops at its argument check.
        err = os.path.join(self.run_path, 'stderr')
        saved = os.dup(2)
        try:
            with open(err, 'wb') as f:
                os.dup2(f.fileno(), 2)
            read_fd, write_fd = os.pipe()
            ok = forkserver.spawn(
                self.run_path, [sys.executable, '-m', forkserver.SHIM_MODULE,
                                '--ready-fd', str(write_fd)],
                read_fd, write_fd)
            data = _read_all(read_fd)
            os.close(read_fd)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        self.assertTrue(ok)
        self.assertEqual(b'', data)
        with open(err) as f:
            self.assertIn('the following arguments are required: '
                          '--state-dir, --run-dir', f.read())
        with open(os.path.join(self.run_path, forkserver.LOG_NAME)) as f:
            self.assertIn('serving', f.read())
        shutil.rmtree(self.run_path)
        deadline = time.monotonic() + WAIT
        while not all(_gone(p) for p in pids):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)


class KeyTestCase(base.BaseTestCase):
    """One installation, one server, however its interpreter is named."""

    def test_spellings_of_one_environment_share_a_key(self):
        here = forkserver.key()
        with mock.patch.object(sys, 'executable', sys.executable + '3'):
            self.assertEqual(here, forkserver.key())
        with mock.patch.object(sys, 'prefix', sys.prefix + '/./'):
            self.assertEqual(here, forkserver.key())

    def test_another_environment_has_another_key(self):
        here = forkserver.key()
        with mock.patch.object(sys, 'prefix', '/opt/other-venv'):
            self.assertNotEqual(here, forkserver.key())
