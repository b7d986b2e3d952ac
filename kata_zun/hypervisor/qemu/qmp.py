"""A small synchronous QMP client.

Only ``socket`` and ``json``: no asyncio and no threads, so it behaves under
eventlet monkey-patching (the sockets become green) as well as without.
Every read is bounded in time (a deadline per call) and in size (one QMP
message may not exceed :data:`MAX_LINE` bytes).

Errors::

    kata_zun.exception.HypervisorError
     +-- QMPError              anything QMP
          +-- QMPConnectError    cannot connect, or the connection is gone
          +-- QMPTimeout         no answer within the deadline
          +-- QMPCommandError    QEMU answered with an error (class, desc)
          +-- QMPProtocolError   not QMP: bad greeting, bad JSON, huge line

After a timeout or a protocol error the client closes itself: the stream
position is unknown. A late answer to an earlier command cannot be taken
for the answer to a later one: every command carries its own ``id``.
"""

import collections
import errno
import json
import socket
import time

from kata_zun import exception

MAX_LINE = 1024 * 1024
MAX_EVENTS = 100


class QMPError(exception.HypervisorError):
    msg_fmt = 'QMP error: %(reason)s'


class QMPConnectError(QMPError):
    msg_fmt = 'QMP connection failed: %(reason)s'


class QMPTimeout(QMPError):
    msg_fmt = 'QMP: no answer to %(what)s within %(timeout)s s'


class QMPCommandError(QMPError):
    msg_fmt = 'QMP command %(cmd)s failed: %(error_class)s: %(desc)s'

    def __init__(self, cmd, error_class, desc):
        super().__init__(cmd=cmd, error_class=error_class, desc=desc)
        self.cmd = cmd
        self.error_class = error_class
        self.desc = desc


class QMPProtocolError(QMPError):
    msg_fmt = 'QMP protocol violation: %(reason)s'


class QMPClient:
    """One QMP session over a unix socket.

    Asynchronous events read while waiting for answers are kept in
    :attr:`events` (the newest :data:`MAX_EVENTS`).
    """

    def __init__(self, path, max_events=MAX_EVENTS):
        """:param path: the QMP unix socket.
        :param max_events: how many events to keep.
        """
        self.path = path
        self.greeting = None
        self.events = collections.deque(maxlen=max_events)
        self._sock = None
        self._buf = bytearray()
        self._next_id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def connected(self):
        """:returns: True while a session is open."""
        return self._sock is not None

    def connect(self, timeout=10.0, retry_while=None):
        """Connect, read the greeting and negotiate capabilities.

        QEMU creates the socket only once it runs, so a missing or refusing
        socket is retried until ``timeout``.

        :param timeout: seconds for the whole handshake.
        :param retry_while: optional callable; retrying stops as soon as it
            returns False (e.g. the QEMU process has exited).
        :returns: the greeting's ``QMP`` member (version, capabilities).
        :raises: QMPConnectError, QMPTimeout, QMPProtocolError,
            QMPCommandError
        """
        self.close()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                transient = (isinstance(exc, (FileNotFoundError,
                                              ConnectionRefusedError)) or
                             exc.errno in (errno.EAGAIN, errno.ENOENT))
                if not transient:
                    raise QMPConnectError(reason='%s: %s' % (self.path, exc))
                if retry_while is not None and not retry_while():
                    raise QMPConnectError(
                        reason='%s: gave up: %s' % (self.path, exc))
                if time.monotonic() + delay > deadline:
                    raise QMPConnectError(
                        reason='%s: not ready within %s s: %s'
                        % (self.path, timeout, exc))
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        self._sock = sock
        self._buf = bytearray()
        greeting = self._read_message(deadline, 'the greeting', timeout)
        if not isinstance(greeting.get('QMP'), dict):
            self.close()
            raise QMPProtocolError(reason='bad greeting %.200r' % greeting)
        try:
            self.execute('qmp_capabilities',
                         timeout=max(deadline - time.monotonic(), 0.001))
        except QMPError:
            self.close()
            raise
        self.greeting = greeting['QMP']
        return self.greeting

    def execute(self, cmd, args=None, timeout=10.0, fds=()):
        """Run one QMP command and wait for its answer.

        :param cmd: the command name, e.g. 'query-status'.
        :param args: a dict of arguments, or None.
        :param timeout: seconds to wait for the answer.
        :param fds: file descriptors passed along (SCM_RIGHTS), for
            ``getfd`` and ``add-fd``.
        :returns: the command's ``return`` value.
        :raises: QMPConnectError (not connected, or connection lost),
            QMPTimeout, QMPProtocolError, QMPCommandError
        """
        if self._sock is None:
            raise QMPConnectError(reason='%s: not connected' % self.path)
        self._next_id += 1
        cmd_id = self._next_id
        msg = {'execute': cmd, 'id': cmd_id}
        if args:
            msg['arguments'] = args
        deadline = time.monotonic() + timeout
        try:
            self._sock.settimeout(timeout)
            data = json.dumps(msg).encode() + b'\n'
            if fds:
                sent = socket.send_fds(self._sock, [data], list(fds))
                data = data[sent:]
            if data:
                self._sock.sendall(data)
        except socket.timeout:
            self.close()
            raise QMPTimeout(what=cmd, timeout=timeout)
        except OSError as exc:
            self.close()
            raise QMPConnectError(reason='%s: %s' % (self.path, exc))
        while True:
            reply = self._read_message(deadline, cmd, timeout)
            if 'event' in reply:
                self.events.append(reply)
            elif reply.get('id') != cmd_id:
                continue        # the late answer of a timed-out command
            elif 'error' in reply:
                err = reply['error'] if isinstance(reply['error'],
                                                   dict) else {}
                raise QMPCommandError(cmd, err.get('class', '?'),
                                      err.get('desc', repr(reply['error'])))
            elif 'return' in reply:
                return reply['return']
            else:
                self.close()
                raise QMPProtocolError(reason='reply to %s without return '
                                              'or error: %.200r' % (cmd,
                                                                    reply))

    def _read_message(self, deadline, what, timeout):
        """Read one JSON object; close the session on any failure."""
        try:
            line = self._read_line(deadline, what, timeout)
            try:
                msg = json.loads(line)
            except ValueError as exc:
                raise QMPProtocolError(reason='bad JSON (%s): %.200r'
                                              % (exc, bytes(line)))
            if not isinstance(msg, dict):
                raise QMPProtocolError(reason='not an object: %.200r' % msg)
            return msg
        except QMPError:
            self.close()
            raise

    def _read_line(self, deadline, what, timeout):
        while True:
            nl = self._buf.find(b'\n', 0, MAX_LINE + 1)
            if nl >= 0:
                line = self._buf[:nl]
                del self._buf[:nl + 1]
                if line.strip():
                    return line
                continue
            if len(self._buf) > MAX_LINE:
                raise QMPProtocolError(
                    reason='message longer than %d bytes' % MAX_LINE)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(what=what, timeout=timeout)
            try:
                self._sock.settimeout(left)
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise QMPTimeout(what=what, timeout=timeout)
            except OSError as exc:
                raise QMPConnectError(reason='%s: %s' % (self.path, exc))
            if not chunk:
                raise QMPConnectError(
                    reason='%s: connection closed by QEMU' % self.path)
            self._buf += chunk

    def close(self):
        """Close the session (idempotent).

        :returns: None
        """
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = bytearray()
