"""Just enough HTTP/1.1 for the console: one bounded request per connection.

Every connection carries one request; the answer either closes it
(``Connection: close``) or turns it into a stream (websocket upgrade,
Docker's hijacked ``exec start``). Anything outside the small subset
served here is refused with a clear status instead of being guessed at.
"""

import json
import re
import socket
import time
from urllib import parse

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_TARGET = 4096
MAX_BODY = 64 * 1024

_METHOD_RE = re.compile(r'^[A-Z]{1,16}$')
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION_RE = re.compile(r'^HTTP/1\.[01]$')

REASONS = {
    101: 'Switching Protocols', 200: 'OK', 400: 'Bad Request',
    403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
    408: 'Request Timeout', 409: 'Conflict', 411: 'Length Required',
    413: 'Payload Too Large', 414: 'URI Too Long',
    426: 'Upgrade Required', 431: 'Request Header Fields Too Large',
    500: 'Internal Server Error', 501: 'Not Implemented',
    503: 'Service Unavailable', 505: 'HTTP Version Not Supported',
}


class HttpError(Exception):
    """Answer the request with ``status`` and ``message``."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Request(object):
    """One parsed request.

    :ivar headers: lower-cased names to values (repeated headers joined
        with ", ").
    :ivar rest: bytes received after the head and body (the start of a
        stream).
    """

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        split = parse.urlsplit(target)
        self.path = split.path
        try:
            self.query = parse.parse_qs(split.query, strict_parsing=False,
                                        max_num_fields=32)
        except ValueError:
            raise HttpError(400, 'too many query parameters')
        self.body = b''
        self.rest = b''
        #: True once the answer turned the connection into a stream.
        self.streaming = False

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def header_tokens(self, name):
        """:returns: the lower-cased comma-separated tokens of a header."""
        return {t.strip().lower() for t in
                self.header(name, '').split(',') if t.strip()}

    def query_value(self, name):
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise HttpError(400, 'query parameter %r given more than once' %
                            name)
        return values[0]


def parse_head(head):
    """Parse a request line and headers (without the final blank line).

    :param head: bytes.
    :returns: a :class:`Request`.
    :raises: HttpError
    """
    try:
        text = head.decode('ascii')
    except UnicodeDecodeError:
        raise HttpError(400, 'request head is not ASCII')
    lines = text.split('\r\n')
    parts = lines[0].split(' ')
    if len(parts) != 3:
        raise HttpError(400, 'malformed request line')
    method, target, version = parts
    if not _METHOD_RE.match(method):
        raise HttpError(400, 'malformed method')
    if not _VERSION_RE.match(version):
        raise HttpError(505, 'only HTTP/1.0 and HTTP/1.1 are served')
    if len(target) > MAX_TARGET:
        raise HttpError(414, 'request target longer than %d bytes' %
                        MAX_TARGET)
    if not target.startswith('/') or any(c in target for c in ' \t#'):
        raise HttpError(400, 'malformed request target')
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, 'more than %d header fields' % MAX_HEADERS)
    headers = {}
    for line in lines[1:]:
        if not line or line[0] in ' \t':
            raise HttpError(400, 'malformed or folded header line')
        name, sep, value = line.partition(':')
        if not sep or not _TOKEN_RE.match(name):
            raise HttpError(400, 'malformed header field')
        value = value.strip(' \t')
        if any(ord(c) < 32 and c != '\t' for c in value):
            raise HttpError(400, 'control character in a header value')
        key = name.lower()
        if key in headers:
            if key in ('content-length', 'host', 'sec-websocket-key'):
                raise HttpError(400, 'header %s given more than once' %
                                name)
            headers[key] += ', ' + value
        else:
            headers[key] = value
    return Request(method, target, version, headers)


def _recv(sock, size, deadline):
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout('timed out')
        sock.settimeout(remaining)
    return sock.recv(size)


def read_request(sock, max_head=MAX_HEAD_BYTES, max_body=MAX_BODY,
                 deadline=None):
    """Read one request from a blocking socket.

    :param deadline: time.monotonic() by which the whole request must
        have arrived (a slow sender cannot hold a connection), or None.
    :returns: a :class:`Request`, or None if the peer closed the
        connection before sending anything.
    :raises: HttpError; socket.timeout, OSError from the socket.
    """
    buf = bytearray()
    while True:
        end = buf.find(b'\r\n\r\n')
        if end >= 0:
            break
        if len(buf) > max_head:
            raise HttpError(431, 'request head longer than %d bytes' %
                            max_head)
        data = _recv(sock, 4096, deadline)
        if not data:
            if buf:
                raise HttpError(400, 'connection closed inside the '
                                'request head')
            return None
        buf += data
    if end > max_head:
        raise HttpError(431, 'request head longer than %d bytes' % max_head)
    request = parse_head(bytes(buf[:end]))
    rest = bytes(buf[end + 4:])
    if request.header('transfer-encoding') is not None:
        raise HttpError(501, 'Transfer-Encoding is not supported: send '
                        'Content-Length')
    length = request.header('content-length')
    if length is not None:
        if not length.isdigit() or len(length) > 12:
            raise HttpError(400, 'malformed Content-Length')
        length = int(length)
        if length > max_body:
            raise HttpError(413, 'request body longer than %d bytes' %
                            max_body)
        body = bytearray(rest[:length])
        rest = rest[length:]
        while len(body) < length:
            data = _recv(sock, min(65536, length - len(body)), deadline)
            if not data:
                raise HttpError(400, 'connection closed inside the body')
            body += data
        request.body = bytes(body)
    request.rest = rest
    return request


def response_head(status, headers=None, reason=None):
    """:returns: the bytes of a status line and headers."""
    lines = ['HTTP/1.1 %d %s' % (status, reason or
                                 REASONS.get(status, 'Unknown'))]
    for name, value in (headers or {}).items():
        lines.append('%s: %s' % (name, value))
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')


def response(status, body=b'', content_type='text/plain; charset=utf-8',
             headers=None):
    """:returns: the bytes of a complete response that closes the
    connection.
    """
    if isinstance(body, str):
        body = body.encode('utf-8')
    all_headers = {'Content-Type': content_type,
                   'Content-Length': str(len(body)),
                   'Connection': 'close'}
    all_headers.update(headers or {})
    return response_head(status, all_headers) + body


def json_response(status, obj, headers=None):
    return response(status, json.dumps(obj).encode('utf-8'),
                    content_type='application/json', headers=headers)


def error_response(error):
    """:returns: the response for an :class:`HttpError`, in the Docker
    Engine API's error shape (``{"message": ...}``).
    """
    return json_response(error.status, {'message': error.message},
                         headers=error.headers)


def send_quietly(sock, data):
    """Send a final answer; a peer that went away is no error."""
    try:
        sock.sendall(data)
    except (socket.timeout, OSError):
        pass
