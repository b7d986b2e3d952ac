"""End to end: interactive exec and attach through the real zun-wsproxy.

``openstack appcontainer exec --interactive`` / ``run --interactive`` /
``attach`` run in a pseudo-terminal like a user's: python-zunclient asks
zun-api, which asks zun-compute (the kata driver registers the exec or
makes an attach URL on its console), and connects to zun-wsproxy, which
connects to the console on the compute host (docker-py for exec, a
websocket for attach); the console bridges to the VM through the shim.
"""

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from unittest import mock

from kata_zun.tests.functional import test_zun_e2e
from kata_zun.tests.functional import zun_env

PROMPT = b'press Enter to continue'


class Terminal(object):
    """A command in a pseudo-terminal of ``rows`` x ``cols``."""

    def __init__(self, argv, env, rows=33, cols=101):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ,
                    struct.pack('HHHH', rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave,
                                     stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.output = b''

    def expect(self, marker, timeout=120):
        """Read until ``marker`` shows up; :returns: all output so far."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('%r not seen in %r' % (marker,
                                                            self.output))
            if not self._read(min(remaining, 1.0)) and \
                    self.proc.poll() is not None:
                raise AssertionError('exited (%s) before %r: %r' % (
                    self.proc.returncode, marker, self.output))
        return self.output

    def _read(self, timeout):
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:               # EIO: the other side is closed
            data = b''
        self.output += data
        return bool(data)

    def wait_raw(self, timeout=60):
        """Wait until the client puts the terminal in raw mode: input
        typed before is flushed (tty.setraw uses TCSAFLUSH).
        """
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.master)[3] & termios.ICANON:
            if time.monotonic() > deadline:
                raise AssertionError('no raw mode: %r' % self.output)
            self._read(0.1)

    def type(self, text):
        os.write(self.master, text)

    def wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError('still running: %r' % self.output)
            self._read(0.2)
        while self._read(0):
            pass
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None


class ZunConsoleTest(test_zun_e2e.ZunEndToEndBase):

    def setUp(self):
        self.console_port = zun_env._free_port()
        real = zun_env.ZunEnvironment

        def environment(*args, **kwargs):
            # zun-wsproxy, and the console where zun expects Docker.
            extra = kwargs.setdefault('extra_conf', {})
            extra['kata_console'] = {'listen_host': zun_env.HOST_IP,
                                     'listen_port': self.console_port}
            extra['docker'] = {'docker_remote_api_port': self.console_port}
            return real(*args, wsproxy=True, **kwargs)
        with mock.patch.object(zun_env, 'ZunEnvironment', environment):
            super().setUp()

    def terminal(self, *args):
        argv = [self.env._bin('openstack'), '--os-container-api-version',
                zun_env.CONTAINER_API_VERSION] + list(args)
        term = Terminal(argv, self.env._env(**self.env.os_environ()))
        self.addCleanup(term.close)
        return term

    def test_interactive_exec_and_attach(self):
        # run --interactive: creates, starts, and attaches at once.
        term = self.terminal('appcontainer', 'run', '--name', 'c1',
                             '--interactive', '--image-pull-policy',
                             'ifnotpresent', 'busybox', 'sh')
        term.expect(PROMPT)
        term.wait_raw()
        term.type(b'echo att$((40+2))ached\r')
        term.expect(b'att42ached')
        term.type(b'stty size\r')
        term.expect(b'33 101')        # zunclient resized the main tty
        # The user goes away: detached, the container keeps running.
        term.close()
        time.sleep(2)
        self.assertEqual('Running', self.show('c1')['status'])

        # exec --interactive: a new shell through docker-py's exec start.
        term = self.terminal('appcontainer', 'exec', '--interactive', 'c1',
                             'sh')
        term.expect(PROMPT)
        term.wait_raw()
        term.type(b'stty size; echo ex$((6*7))ec; exit 3\r')
        term.expect(b'ex42ec')
        self.assertIn(b'33 101', term.output)   # execute_resize
        self.assertEqual(0, term.wait())        # the session ended
        self.assertEqual('Running', self.show('c1')['status'])

        # attach again; the main process exits under it.
        term = self.terminal('appcontainer', 'attach', 'c1')
        term.expect(PROMPT)
        term.wait_raw()
        term.type(b'echo ag$((1+1))ain\r')
        term.expect(b'ag2ain')
        term.type(b'exit 5\r')
        self.assertEqual(0, term.wait())
        info = self.wait_status('c1', ('Stopped',))
        self.assertIn('Exited(5)', info['status_detail'])
        self.os('appcontainer', 'delete', 'c1')
