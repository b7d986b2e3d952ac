"""Client of a sandbox shim's unix-socket API.

Blocking, built on the ``socket`` module only, so it is green under
eventlet's monkey-patching (zun-compute) and plain in the CLI.
"""

import collections
import socket
import time

from kata_zun.agent import protocol
from kata_zun import exception


class ShimClient(object):
    """One connection to a shim.

    Frames that arrive while waiting for a response (output of attached
    processes, exit events) are kept in :attr:`backlog` in arrival order.
    """

    def __init__(self, path, timeout=30.0, max_frame=None):
        """Connect and shake hands.

        :param path: the shim's API socket.
        :param timeout: seconds for connecting and the handshake.
        :raises: ShimError if the shim does not answer.
        """
        self.path = path
        self.decoder = protocol.Decoder(max_frame or
                                        protocol.DEFAULT_MAX_FRAME)
        self.backlog = collections.deque()
        self._ready = collections.deque()   # decoded, not yet looked at
        self.next_id = 1
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
            self.sock.sendall(protocol.encode_json(
                protocol.HELLO, {'version': protocol.VERSION}))
            deadline = time.monotonic() + timeout
            while True:
                frame = self._next(deadline)
                if frame.type == protocol.HELLO:
                    break
        except OSError as exc:
            self.sock.close()
            raise exception.ShimError(reason='cannot talk to the shim at '
                                      '%s: %s' % (path, exc))

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, deadline):
        remaining = None if deadline is None else deadline - time.monotonic()
        # A deadline already passed still takes what is there right now.
        self.sock.settimeout(None if remaining is None
                             else max(remaining, 0.0))
        try:
            data = self.sock.recv(256 * 1024)
        except BlockingIOError:
            raise socket.timeout('timed out')
        if not data:
            raise exception.ShimError(reason='the shim closed the '
                                      'connection')
        try:
            return self.decoder.feed(data)
        except protocol.ProtocolError as exc:
            raise exception.ShimError(reason=str(exc))

    def _next(self, deadline):
        while not self._ready:
            self._ready.extend(self._fill(deadline))
        return self._ready.popleft()

    def call(self, op, args=None, timeout=30.0):
        """Send one request and wait for its response.

        :param op: operation name (see the shim's ``op_*`` methods).
        :param args: dict of arguments.
        :param timeout: seconds to wait, None for ever.
        :returns: the result dict.
        :raises: ShimError (including the shim's own error message),
                 Conflict when the container's state forbids ``op``.
        """
        rid = self.next_id
        self.next_id += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(protocol.encode_json(protocol.REQUEST, {
                'id': rid, 'op': op, 'args': args or {}}))
            while True:
                frame = self._next(deadline)
                if frame.type == protocol.RESPONSE:
                    msg = frame.json()
                    if msg.get('id') == rid:
                        break
                self.backlog.append(frame)
        except socket.timeout:
            raise exception.ShimError(reason='%s timed out after %s s' %
                                      (op, timeout))
        except (OSError, protocol.ProtocolError) as exc:
            raise exception.ShimError(reason='%s failed: %s' % (op, exc))
        error = msg.get('error')
        if error:
            text = (error.get('message') if isinstance(error, dict)
                    else str(error))
            if isinstance(error, dict) and error.get('code') == 'state':
                raise exception.Conflict(reason=text)
            raise exception.ShimError(reason='%s: %s' % (op, text))
        result = msg.get('result')
        return result if isinstance(result, dict) else {}

    def read_frames(self, timeout=None):
        """:returns: queued frames, else what arrives within ``timeout``.

        :raises: ShimError when the shim goes away.
        """
        if self.backlog:
            frames = list(self.backlog)
            self.backlog.clear()
            return frames
        if self._ready:
            frames = list(self._ready)
            self._ready.clear()
            return frames
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._fill(deadline)
        except socket.timeout:
            return []
        except OSError as exc:
            raise exception.ShimError(reason=str(exc))

    def send_stdin(self, handle, data):
        """Feed ``data`` to process ``handle``; empty data closes stdin."""
        self.sock.settimeout(None)
        for i in range(0, max(len(data), 1), protocol.STREAM_CHUNK):
            self.sock.sendall(protocol.encode_stream(
                protocol.STDIN, handle, data[i:i + protocol.STREAM_CHUNK]))

    def collect(self, handle, limit=16 * 1024 * 1024, timeout=300.0):
        """Gather a process's output until it exits.

        :param handle: the process handle.
        :param limit: most bytes kept per stream (the rest is dropped, the
                      process is never blocked by it).
        :param timeout: seconds the process may run.
        :returns: (stdout bytes, stderr bytes, exit code)
        :raises: ShimError on timeout or when the shim goes away.
        """
        out = {protocol.STDOUT: bytearray(), protocol.STDERR: bytearray()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.read_frames(min(1.0, max(
                    0.0, deadline - time.monotonic()))):
                if frame.type in out:
                    h, data = frame.stream()
                    buf = out[frame.type]
                    if h == handle and len(buf) < limit:
                        buf += data[:limit - len(buf)]
                elif frame.type == protocol.EVENT:
                    event = frame.json()
                    if event.get('proc') == handle:
                        code = event.get('exit_code')
                        return (bytes(out[protocol.STDOUT]),
                                bytes(out[protocol.STDERR]),
                                code if isinstance(code, int) else 255)
        raise exception.ShimError(reason='process %s did not finish within '
                                  '%s s' % (handle, timeout))
