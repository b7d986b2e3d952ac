"""Client of a sandbox shim's unix-socket API.

Blocking, built on the ``socket`` module only, so it is green under
eventlet's monkey-patching (zun-compute) and plain in the CLI.
"""

import collections
import select
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
        :raises: ShimUnresponsive if it does not answer within
            ``timeout``, ShimError if it cannot be reached.
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
        except socket.timeout as exc:
            self.sock.close()
            raise exception.ShimUnresponsive(
                reason='the shim at %s did not answer within %.0f s: %s' % (
                    path, timeout, exc))
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
        return self.exchange(handle, None, limit, limit, timeout)

    def exchange(self, handle, data=None, limit=16 * 1024 * 1024,
                 err_limit=64 * 1024, timeout=300.0, stop_over=False):
        """Feed ``data`` to a process (then end its input) while gathering
        its output, until it exits.

        Input goes out one :data:`protocol.STREAM_CHUNK` frame at a time,
        and only while the socket takes it: output is read in between, so
        a process that writes while it reads never stalls against us, and
        ``data`` is never copied whole.

        :param data: bytes (or a memoryview) for its stdin; None to send
                     nothing (its stdin is left alone).
        :param limit: most stdout bytes kept.
        :param err_limit: most stderr bytes kept.
        :param stop_over: return as soon as stdout passes ``limit`` (the
                          exit code is then None: the caller decides what
                          becomes of the process).
        :returns: (stdout bytes, stderr bytes, exit code or None)
        :raises: ShimError on timeout or when the shim goes away.
        """
        out = {protocol.STDOUT: bytearray(), protocol.STDERR: bytearray()}
        limits = {protocol.STDOUT: limit, protocol.STDERR: err_limit}
        chunks = self._stdin_frames(handle, data)
        current, sent = next(chunks, None), 0
        deadline = time.monotonic() + timeout
        frames = list(self.backlog) + list(self._ready)
        self.backlog.clear()
        self._ready.clear()
        while True:
            for frame in frames:
                if frame.type in out:
                    h, chunk = frame.stream()
                    if h != handle:
                        continue
                    buf = out[frame.type]
                    room = max(limits[frame.type] - len(buf), 0)
                    buf += chunk[:room]
                    if stop_over and frame.type == protocol.STDOUT and \
                            len(chunk) > room:
                        return (bytes(out[protocol.STDOUT]),
                                bytes(out[protocol.STDERR]), None)
                elif frame.type == protocol.EVENT:
                    event = frame.json()
                    if event.get('proc') == handle:
                        code = event.get('exit_code')
                        return (bytes(out[protocol.STDOUT]),
                                bytes(out[protocol.STDERR]),
                                code if isinstance(code, int) else 255)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exception.ShimError(
                    reason='process %s did not finish within %s s' %
                    (handle, timeout))
            writers = [self.sock] if current is not None else []
            try:
                readable, writable, _ = select.select(
                    [self.sock], writers, [], min(remaining, 1.0))
            except (OSError, ValueError) as exc:
                raise exception.ShimError(reason=str(exc))
            frames = []
            if readable:
                try:
                    frames = self._fill(deadline)
                except socket.timeout:
                    frames = []
                except OSError as exc:
                    raise exception.ShimError(reason=str(exc))
            if writable and current is not None:
                try:
                    self.sock.settimeout(0.0)
                    sent += self.sock.send(current[sent:])
                except (BlockingIOError, socket.timeout):
                    pass
                except OSError as exc:
                    raise exception.ShimError(reason='sending input: %s' %
                                              exc)
                if sent == len(current):
                    current, sent = next(chunks, None), 0

    @staticmethod
    def _stdin_frames(handle, data):
        if data is None:
            return
        view = memoryview(data)
        for i in range(0, len(view), protocol.STREAM_CHUNK):
            yield memoryview(protocol.encode_stream(
                protocol.STDIN, handle, view[i:i + protocol.STREAM_CHUNK]))
        yield memoryview(protocol.encode_stream(protocol.STDIN, handle,
                                                b''))
