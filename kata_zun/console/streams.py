"""The network end of a console session: raw bytes or websocket frames.

A stream reads what the peer types (:meth:`read` returns chunks of bytes
for the process's stdin, ``EOF`` once the peer is done) and writes the
process's output. Writes block on a slow peer: the session then stops
reading the shim, which stops reading the guest (back-pressure).
"""

import socket
import struct
import time

from kata_zun.console import websocket

EOF = None
READ_SIZE = 64 * 1024
# Time a peer gets to answer our close frame.
CLOSE_WAIT = 1.0


class PeerGone(Exception):
    """Writing to the peer failed: it is gone."""


class _SocketStream(object):
    """What both kinds share: the socket, bytes read ahead (after the
    HTTP request), and the end of input.
    """

    def __init__(self, sock, initial=b''):
        self.sock = sock
        self.pending = initial
        self.eof = False

    def fileno(self):
        return self.sock.fileno()

    def has_pending(self):
        """True when bytes are ready without the socket becoming readable
        (read ahead, or decrypted and buffered by TLS).
        """
        if self.pending:
            return True
        tls_pending = getattr(self.sock, 'pending', None)
        try:
            return bool(tls_pending and tls_pending())
        except (OSError, ValueError):
            return False

    def _recv(self):
        """Bytes from the peer: b'' at its end, None when none is ready."""
        if self.pending:
            data, self.pending = self.pending, b''
            return data
        try:
            return self.sock.recv(READ_SIZE)
        except (BlockingIOError, socket.timeout):
            return None
        except OSError:
            return b''

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except (socket.timeout, OSError) as exc:
            raise PeerGone(str(exc))


def _shutdown(sock):
    """End the connection; over TLS, first say so (close_notify), which
    TLS clients expect before the end of the stream.
    """
    if hasattr(sock, 'unwrap'):
        try:
            sock.settimeout(CLOSE_WAIT)
            sock = sock.unwrap()
        except (OSError, ValueError):
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class RawStream(_SocketStream):
    """Docker's hijacked connection (``exec start`` with a tty).

    :param multiplex: frame the output like Docker without a tty
        (8-byte header: stream, 0, 0, 0, big-endian length).
    """

    def __init__(self, sock, initial=b'', multiplex=False):
        super().__init__(sock, initial)
        self.multiplex = multiplex

    def read(self):
        data = self._recv()
        if data is None:
            return []
        if not data:
            self.eof = True
            return [EOF]
        return [data]

    def write(self, data, stream=1):
        if self.multiplex:
            data = struct.pack('>BxxxL', stream, len(data)) + data
        self._send(data)

    def finish(self, code=None, reason=''):
        """The process is done: close the connection like Docker does."""
        _shutdown(self.sock)


class WebSocketStream(_SocketStream):
    """A websocket (attach): stdin from data frames, output as binary.

    Pings are answered, a close frame is echoed and ends the session, a
    protocol error closes with the code RFC 6455 asks for.
    """

    def __init__(self, sock, initial=b'',
                 max_payload=websocket.DEFAULT_MAX_PAYLOAD):
        super().__init__(sock, initial)
        self.parser = websocket.FrameParser(max_payload)
        self.closing = False          # our close frame is sent

    def read(self):
        data = self._recv()
        if data is None:
            return []
        if not data:
            self.eof = True
            return [EOF]
        try:
            frames = self.parser.feed(data)
        except websocket.WebSocketError as exc:
            self.close(exc.code, exc.reason)
            self.eof = True
            return [EOF]
        chunks = []
        for frame in frames:
            if frame.opcode in websocket.DATA_OPCODES:
                if frame.payload:
                    chunks.append(frame.payload)
            elif frame.opcode == websocket.OP_PING:
                self._send(websocket.encode_frame(websocket.OP_PONG,
                                                  frame.payload))
            elif frame.opcode == websocket.OP_CLOSE:
                code, _reason = websocket.parse_close(frame.payload)
                self.close(code or websocket.CLOSE_NORMAL)
                self.eof = True
                chunks.append(EOF)
        return chunks

    def write(self, data, stream=1):
        for i in range(0, len(data), self.parser.max_payload):
            self._send(websocket.encode_frame(
                websocket.OP_BINARY, data[i:i + self.parser.max_payload]))

    def close(self, code=websocket.CLOSE_NORMAL, reason=''):
        """Send our close frame (once)."""
        if self.closing:
            return
        self.closing = True
        try:
            self._send(websocket.encode_frame(
                websocket.OP_CLOSE, websocket.close_payload(code, reason)))
        except PeerGone:
            pass

    def finish(self, code=websocket.CLOSE_NORMAL, reason=''):
        """Close the websocket and wait briefly for the peer's close."""
        self.close(code, reason)
        deadline = time.monotonic() + CLOSE_WAIT
        while not self.eof and not self.parser.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.sock.settimeout(remaining)
                data = self.sock.recv(READ_SIZE)
            except OSError:
                break
            if not data:
                break
            try:
                self.parser.feed(data)
            except websocket.WebSocketError:
                break
        _shutdown(self.sock)
