"""Container log files: what the shim writes and ``logs`` reads.

A log is a sequence of binary records, one per output line (or per chunk
of a line longer than :data:`MAX_LINE`)::

    >dBI  time (float seconds), stream (1 stdout, 2 stderr), length
    ...   the bytes of the line, newline included when there was one

Binary records keep arbitrary output (not only UTF-8) byte-exact, and the
per-line timestamps serve ``--timestamps``, ``--since`` and ``--tail``.
When the file passes ``max_bytes`` it is rotated to ``<name>.1`` (one
rotated file is kept).
"""

import datetime
import os
import re
import struct
import time

RECORD = struct.Struct('>dBI')
STDOUT = 1
STDERR = 2
MAX_LINE = 16 * 1024


class LogWriter(object):
    """Splits a process's output into timestamped line records."""

    def __init__(self, path, max_bytes):
        self.path = path
        self.max_bytes = max_bytes
        self._partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self._f = open(path, 'ab')

    def write(self, stream, data, now=None):
        """Record output bytes of ``stream``; complete lines are written."""
        now = time.time() if now is None else now
        buf = self._partial[stream]
        buf += data
        while True:
            nl = buf.find(b'\n')
            if nl < 0 and len(buf) < MAX_LINE:
                break
            end = nl + 1 if 0 <= nl < MAX_LINE else MAX_LINE
            self._record(stream, bytes(buf[:end]), now)
            del buf[:end]
        self._f.flush()

    def _record(self, stream, line, now):
        if self._f.tell() >= self.max_bytes:
            self._f.close()
            os.replace(self.path, self.path + '.1')
            self._f = open(self.path, 'ab')
        self._f.write(RECORD.pack(now, stream, len(line)) + line)

    def close(self):
        """Write out partial lines and close the file."""
        now = time.time()
        for stream, buf in self._partial.items():
            if buf:
                self._record(stream, bytes(buf), now)
                buf.clear()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _read_records(f):
    while True:
        header = f.read(RECORD.size)
        if len(header) < RECORD.size:
            return
        ts, stream, length = RECORD.unpack(header)
        if stream not in (STDOUT, STDERR) or length > MAX_LINE:
            return                     # torn or foreign data: stop there
        data = f.read(length)
        if len(data) < length:
            return
        yield ts, stream, data


def read(path, stdout=True, stderr=True, since=None, tail=None):
    """Read a container log.

    :param path: the log file (its ``.1`` rotation is read first).
    :param stdout: include stdout records.
    :param stderr: include stderr records.
    :param since: epoch seconds; older records are left out.
    :param tail: keep only the last ``tail`` records (None for all).
    :returns: a list of (time, stream, bytes).
    """
    wanted = set()
    if stdout:
        wanted.add(STDOUT)
    if stderr:
        wanted.add(STDERR)
    out = []
    for name in (path + '.1', path):
        try:
            with open(name, 'rb') as f:
                for ts, stream, data in _read_records(f):
                    if stream in wanted and (since is None or ts >= since):
                        out.append((ts, stream, data))
        except FileNotFoundError:
            continue
    if tail is not None:
        out = out[-tail:] if tail > 0 else []
    return out


class Follower(object):
    """Yields new records as a live log grows (``logs -f``)."""

    def __init__(self, path, offset=None):
        self.path = path
        self._f = None
        self._offset = offset

    def poll(self):
        """:returns: records added since the last call."""
        if self._f is None:
            try:
                self._f = open(self.path, 'rb')
            except FileNotFoundError:
                return []
            if self._offset is None:
                self._f.seek(0, os.SEEK_END)
            else:
                self._f.seek(self._offset)
        pos = self._f.tell()
        if os.stat(self.path).st_size < pos:      # rotated under us
            self._f.close()
            self._f, self._offset = None, 0
            return self.poll()
        records = []
        while True:
            start = self._f.tell()
            got = list(_read_one(self._f))
            if not got:
                self._f.seek(start)
                return records
            records.extend(got)

    def close(self):
        if self._f is not None:
            self._f.close()


def _read_one(f):
    for rec in _read_records(f):
        yield rec
        return


_RELATIVE = re.compile(r'^(\d+(?:\.\d+)?)(s|m|h)$')


def parse_since(value, now=None):
    """Parse ``--since``: epoch seconds, a duration (10s, 5m, 2h) or a
    date (ISO 8601, or Zun's ``%Y-%m-%d %H:%M:%S,%f``).

    :returns: epoch seconds, or None when ``value`` is empty/'None'.
    :raises: ValueError for anything else.
    """
    if value in (None, '', 'None'):
        return None
    now = time.time() if now is None else now
    text = str(value).strip()
    match = _RELATIVE.match(text)
    if match:
        scale = {'s': 1, 'm': 60, 'h': 3600}[match.group(2)]
        return now - float(match.group(1)) * scale
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ('%Y-%m-%d %H:%M:%S,%f', '%Y-%m-%dT%H:%M:%S.%f%z',
                '%Y-%m-%dT%H:%M:%S%z', '%Y-%m-%dT%H:%M:%S.%f',
                '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d'):
        try:
            parsed = datetime.datetime.strptime(text.replace('Z', '+0000'),
                                                fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    raise ValueError('cannot parse time %r' % value)


def format_time(ts):
    """:returns: RFC 3339 with nanoseconds, like Docker's --timestamps."""
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return dt.strftime('%Y-%m-%dT%H:%M:%S.') + '%09dZ' % (
        int(round((ts % 1) * 1e9)) % 1000000000)
