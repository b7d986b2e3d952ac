"""The kata-zun agent protocol: framing shared by host and guest.

This module is standard library only: it is copied into the guest initrd
and imported by the agent, and it is also what the shim uses to talk to
both the agent and its own API clients.

Wire format: every frame is a 5-byte header followed by a payload::

    +--------+----------------+----------------------+
    | type:1 | length:4 (BE)  | payload: length bytes|
    +--------+----------------+----------------------+

Control frames (HELLO, REQUEST, RESPONSE, EVENT) carry one JSON object.
Stream frames (STDIN, STDOUT, STDERR) carry a 4-byte big-endian process
handle followed by raw bytes; an empty STDIN body means end of input.

One connection multiplexes control requests and the stdio of every process.
The reader is the one who bounds a frame: a length above ``max_frame`` or an
unknown type raises :class:`ProtocolError` and the caller closes the link.
Nothing here ever blocks: :class:`Channel` works on non-blocking fds.
"""

import collections
import errno
import json
import os
import re
import struct

VERSION = 1

HELLO = 1
REQUEST = 2
RESPONSE = 3
EVENT = 4
STDIN = 5
STDOUT = 6
STDERR = 7

CONTROL_TYPES = (HELLO, REQUEST, RESPONSE, EVENT)
STREAM_TYPES = (STDIN, STDOUT, STDERR)
_ALL_TYPES = CONTROL_TYPES + STREAM_TYPES

HEADER = struct.Struct('>BI')
HANDLE = struct.Struct('>I')
# A stream frame's header and process handle, as one.
STREAM_HEAD = struct.Struct('>BII')

DEFAULT_MAX_FRAME = 1024 * 1024
# Output bytes the agent reads into one stream frame (it reads output in
# big chunks: kata_zun.agent.guestproc).
OUTPUT_READ = 512 * 1024
# The largest stream frame the agent sends (length as the header gives
# it: the process handle and a full read of output). A reader's
# ``max_frame`` must be at least this, or the first large output of a
# process closes the link.
MAX_AGENT_STREAM_FRAME = HANDLE.size + OUTPUT_READ
# Payload bytes the sender puts in one stream frame: well under any limit.
STREAM_CHUNK = 64 * 1024
# Deepest nesting of objects and arrays a control payload may have. The
# json module's decoder recurses once per level: a deeper document would
# cost stack (and, in C, a RecursionError) before any check could run, so
# it is refused by :func:`check_depth` before decoding.
MAX_JSON_DEPTH = 16
# A JSON string, escapes included (no backtracking: linear in its size).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPENERS = b'[{'
_CLOSERS = b']}'
_BRACKETS = bytes.maketrans(_OPENERS + _CLOSERS, b'(())')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b'[]{}')


class ProtocolError(Exception):
    """The peer broke the protocol; the link must be closed."""


class Frame(object):
    __slots__ = ('type', 'payload')

    def __init__(self, ftype, payload):
        self.type = ftype
        self.payload = payload

    def json(self):
        """:returns: the payload of a control frame as a dict.

        :raises: ProtocolError if it is not a JSON object.
        """
        return decode_json(self.payload)

    def stream(self):
        """:returns: (handle, data) of a stream frame.

        :raises: ProtocolError if the payload is shorter than a handle.
        """
        if len(self.payload) < HANDLE.size:
            raise ProtocolError('stream frame without a process handle')
        (handle,) = HANDLE.unpack_from(self.payload)
        return handle, self.payload[HANDLE.size:]

    def __repr__(self):
        return 'Frame(%d, %d bytes)' % (self.type, len(self.payload))


def check_depth(data, limit=MAX_JSON_DEPTH):
    """Refuse a JSON text nested deeper than ``limit``, without decoding it.

    Strings are blanked out, everything but brackets is dropped, then the
    innermost pairs are removed ``limit`` times: a pair left means a
    deeper level. Every step is a linear pass in C, so a hostile payload
    costs at most ``limit`` passes over its bytes (no recursion, no
    per-byte Python loop).

    :param data: the JSON text (bytes).
    :param limit: deepest nesting allowed.
    :raises: ProtocolError when it is nested deeper.
    """
    if data.count(b'[') + data.count(b'{') <= limit:
        # No deeper than it has openers: the common case, a small
        # request, costs two counts (the passes below cost more under
        # TCG than decoding it).
        return
    skeleton = _JSON_STRING.sub(b'""', data).translate(
        _BRACKETS, _NOT_BRACKETS)
    # ``limit + 1`` openers in a row are that deep whatever follows
    # (unclosed ones included: the decoder would recurse into them first).
    too_deep = b'(' * (limit + 1)
    for _level in range(limit):
        if too_deep in skeleton:
            break
        shorter = skeleton.replace(b'()', b'')
        if len(shorter) == len(skeleton):
            return
        skeleton = shorter
    else:
        if b'()' not in skeleton:
            return
    raise ProtocolError('JSON nested deeper than %d levels' % limit)


def decode_json(payload):
    """Decode a control payload.

    :param payload: bytes.
    :returns: a dict.
    :raises: ProtocolError if it is not UTF-8 JSON holding an object, or
             if it nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    check_depth(payload)
    try:
        obj = json.loads(payload.decode('utf-8'))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError('malformed JSON payload: %s' % exc)
    if not isinstance(obj, dict):
        raise ProtocolError('JSON payload is not an object')
    return obj


def encode(ftype, payload):
    """:returns: the bytes of one frame."""
    return HEADER.pack(ftype, len(payload)) + payload


def encode_json(ftype, obj):
    """:returns: the bytes of one control frame holding ``obj``."""
    return encode(ftype, json.dumps(obj, separators=(',', ':')).encode())


def encode_stream(ftype, handle, data):
    """:returns: the bytes of one stream frame (data must be small)."""
    return encode(ftype, HANDLE.pack(handle) + data)


def read_stream(fd, ftype, handle, buf):
    """Read from ``fd`` into a whole stream frame in ``buf``.

    The bytes land after room left for the header, so the frame goes out
    as one buffer without being copied (output is the bulk of the
    traffic, and the guest pays for every copy and every write).

    :param fd: a (non-blocking) fd to read.
    :param ftype: STDOUT or STDERR.
    :param handle: the process handle.
    :param buf: a bytearray of :data:`STREAM_HEAD` ``.size`` plus the
        most bytes to read (keep that under the peer's frame limit).
    :returns: the frame (a memoryview of ``buf``: the buffer is in use
        while the view lives), None at end of file.
    :raises: OSError (BlockingIOError when nothing is there).
    """
    view = memoryview(buf)
    n = os.readv(fd, [view[STREAM_HEAD.size:]])
    if not n:
        view.release()
        return None
    STREAM_HEAD.pack_into(buf, 0, ftype, HANDLE.size + n, handle)
    return view[:STREAM_HEAD.size + n]


class Decoder(object):
    """Incremental frame decoder with a hard size limit."""

    def __init__(self, max_frame=DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data):
        """Add received bytes.

        :param data: bytes as read from the link.
        :returns: a list of complete :class:`Frame` objects.
        :raises: ProtocolError on an unknown type or oversized frame.
        """
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            ftype, length = HEADER.unpack_from(self._buf)
            if ftype not in _ALL_TYPES:
                raise ProtocolError('unknown frame type %d' % ftype)
            if length > self.max_frame:
                raise ProtocolError('frame of %d bytes exceeds the limit '
                                    'of %d' % (length, self.max_frame))
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            with memoryview(self._buf) as view:
                payload = bytes(view[HEADER.size:end])
            frames.append(Frame(ftype, payload))
            del self._buf[:end]
        return frames

    @property
    def pending(self):
        """:returns: bytes of an incomplete frame held back."""
        return len(self._buf)


class Channel(object):
    """Frames over one non-blocking file descriptor (socket or port).

    Reads go through a :class:`Decoder`; writes are queued and flushed when
    the fd is writable, so a slow peer never blocks the caller. The caller
    applies back-pressure by looking at :attr:`pending_out`. Queued chunks
    go out with ``writev`` so stream data is never copied into a frame.
    """

    READ_SIZE = 256 * 1024
    _WRITEV_MAX = 64

    def __init__(self, fd, max_frame=DEFAULT_MAX_FRAME, owns_fd=True):
        self.fd = fd
        self.owns_fd = owns_fd
        self.decoder = Decoder(max_frame)
        self._out = collections.deque()
        self._out_bytes = 0
        self._in = None
        self.closed = False

    def fileno(self):
        return self.fd

    def read(self):
        """Read what is available.

        :returns: (frames, eof) where eof tells the peer closed the link.
        :raises: ProtocolError (see :class:`Decoder`), OSError.
        """
        if self._in is None:
            # One buffer for every read: a fresh READ_SIZE bytes object
            # per read (os.read) cost a large allocation each time, about
            # half a millisecond per request in a guest under TCG.
            self._in = bytearray(self.READ_SIZE)
        try:
            n = os.readv(self.fd, [self._in])
        except BlockingIOError:
            return [], False
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                return [], True
            raise
        if not n:
            return [], True
        with memoryview(self._in) as view:
            return self.decoder.feed(view[:n]), False

    def send(self, *chunks):
        """Queue the bytes of encoded frames and try to write them now."""
        for chunk in chunks:
            if chunk:
                self._out.append(chunk)
                self._out_bytes += len(chunk)
        self.flush()

    def send_stream(self, ftype, handle, data):
        """Queue one stream frame without copying ``data``."""
        self.send(HEADER.pack(ftype, HANDLE.size + len(data)) +
                  HANDLE.pack(handle), data)

    def flush(self):
        """Write as much queued data as the fd takes.

        :returns: True when everything queued has been written.
        :raises: OSError if the peer went away.
        """
        out = self._out
        while out:
            batch = [out[i] for i in range(min(len(out), self._WRITEV_MAX))]
            try:
                n = os.writev(self.fd, batch)
            except BlockingIOError:
                return False
            if n <= 0:
                return False
            self._out_bytes -= n
            while n:
                head = out[0]
                if n >= len(head):
                    n -= len(head)
                    out.popleft()
                else:
                    out[0] = memoryview(head)[n:]
                    n = 0
        return True

    @property
    def pending_out(self):
        return self._out_bytes

    def close(self):
        if not self.closed:
            self.closed = True
            if not self.owns_fd:
                return
            try:
                os.close(self.fd)
            except OSError:
                pass
