"""The server side of RFC 6455 websockets: handshake and framing.

Only what a terminal needs: data frames (text or binary, fragmented or
not) carry bytes, ping is answered with pong, close is echoed. Text frames
are NOT checked for UTF-8: zun-wsproxy sends the raw bytes a user typed in
text frames (websocket-client's default opcode), and a terminal needs them
as they are.

The parser is incremental and bounded: a frame longer than ``max_payload``
or any breach of the framing rules (unmasked client frame, reserved bits,
unknown opcode, fragmented or long control frame, continuation out of
sequence, malformed close payload) raises :class:`WebSocketError` carrying
the close code to answer with.
"""

import base64
import hashlib
import struct

GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

DEFAULT_MAX_PAYLOAD = 1024 * 1024
MAX_CONTROL_PAYLOAD = 125


class WebSocketError(Exception):
    """The peer broke the protocol; close with ``code``."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key):
    """:returns: the Sec-WebSocket-Accept value for a client's key."""
    digest = hashlib.sha1((key + GUID).encode('ascii')).digest()
    return base64.b64encode(digest).decode('ascii')


def valid_key(key):
    """:returns: True if ``key`` is base64 of 16 bytes, as RFC 6455 says."""
    if not key or len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key.encode('ascii'),
                                    validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def _xor(data, mask):
    if not data:
        return b''
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, 'big') ^
            int.from_bytes(key, 'big')).to_bytes(n, 'big')


def encode_frame(opcode, payload=b'', fin=True, mask=None):
    """:returns: the bytes of one frame.

    :param mask: 4 bytes to mask with (clients must mask, servers must
                 not), or None.
    """
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack('>H', n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack('>Q', n)
    if mask is not None:
        return bytes(head) + mask + _xor(payload, mask)
    return bytes(head) + payload


def close_payload(code, reason=''):
    """:returns: a close frame body; the reason is cut to fit 125 bytes."""
    data = reason.encode('utf-8')[:MAX_CONTROL_PAYLOAD - 2]
    return struct.pack('>H', code) + data.decode(
        'utf-8', 'ignore').encode('utf-8')


def _valid_close_code(code):
    return (code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                     1012, 1013, 1014) or 3000 <= code <= 4999)


def parse_close(payload):
    """:returns: (code, reason) of a close frame body.

    :raises: WebSocketError if it is malformed.
    """
    if not payload:
        return None, ''
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, 'close frame of 1 byte')
    (code,) = struct.unpack_from('>H', payload)
    if not _valid_close_code(code):
        raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                             'invalid close code %d' % code)
    try:
        reason = payload[2:].decode('utf-8')
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA,
                             'close reason is not UTF-8')
    return code, reason


class Frame(object):
    __slots__ = ('opcode', 'fin', 'payload')

    def __init__(self, opcode, fin, payload):
        self.opcode = opcode
        self.fin = fin
        self.payload = payload

    def __repr__(self):
        return 'Frame(op=%d, fin=%s, %d bytes)' % (self.opcode, self.fin,
                                                   len(self.payload))


class FrameParser(object):
    """Incremental parser of the frames a client sends.

    :param max_payload: largest frame payload accepted.
    :param require_mask: RFC 6455 requires every client frame masked.
    """

    def __init__(self, max_payload=DEFAULT_MAX_PAYLOAD, require_mask=True):
        self.max_payload = max_payload
        self.require_mask = require_mask
        self._buf = bytearray()
        self._in_message = False      # a fragmented message is open
        self.closed = False           # a close frame was received

    def feed(self, data):
        """Add received bytes.

        :returns: a list of complete, unmasked :class:`Frame` objects.
            Continuation frames keep ``OP_CONT``; nothing after a close
            frame is returned.
        :raises: WebSocketError
        """
        self._buf += data
        frames = []
        while not self.closed:
            frame = self._one()
            if frame is None:
                break
            frames.append(frame)
        if self.closed:
            self._buf.clear()
        return frames

    def _one(self):
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if b0 & 0x70:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                 'reserved bits set without an extension')
        if opcode not in DATA_OPCODES + CONTROL_OPCODES:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                 'unknown opcode %d' % opcode)
        masked = bool(b1 & 0x80)
        if self.require_mask and not masked:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                 'client frames must be masked')
        length = b1 & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from('>H', buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from('>Q', buf, 2)
            if length >> 63:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                     'frame length with the high bit set')
            offset = 10
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                     'fragmented control frame')
            if length > MAX_CONTROL_PAYLOAD:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                     'control frame longer than 125 bytes')
        elif length > self.max_payload:
            raise WebSocketError(CLOSE_TOO_BIG,
                                 'frame of %d bytes exceeds the limit of %d'
                                 % (length, self.max_payload))
        if masked:
            offset += 4
        end = offset + length
        if len(buf) < end:
            return None
        payload = bytes(buf[offset:end])
        if masked:
            payload = _xor(payload, bytes(buf[offset - 4:offset]))
        del buf[:end]
        if opcode == OP_CONT:
            if not self._in_message:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                     'continuation frame without a message')
            self._in_message = not fin
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._in_message:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR,
                                     'new message inside a fragmented one')
            self._in_message = not fin
        elif opcode == OP_CLOSE:
            parse_close(payload)          # validate it now
            self.closed = True
        return Frame(opcode, fin, payload)
