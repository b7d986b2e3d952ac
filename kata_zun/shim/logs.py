"""Container log files: what the shim writes and ``logs`` reads.

A log starts with :data:`MAGIC`, then holds binary records, one per
output line (or per chunk of a line longer than :data:`MAX_LINE`)::

    >dBI  time (float seconds), stream (1 stdout, 2 stderr), length
    ...   the bytes of the line, newline included when there was one
    >I    the length again, so that the log can be read from its end

Binary records keep arbitrary output (not only UTF-8) byte-exact, and the
per-line timestamps serve ``--timestamps``, ``--since`` and ``--tail``.
``--tail`` reads from the end: its cost is the records it returns, not
the size of the log. When the file passes ``max_bytes`` it is rotated to
``<name>.1`` (one rotated file is kept), so a container's logs take at
most twice ``max_bytes`` (plus a line) on disk, however much it writes.

Logs written before the trailer existed have no :data:`MAGIC`; they are
read forwards (a ``--tail`` then keeps only the last records in memory).
"""

import collections
import datetime
import os
import re
import struct
import time

MAGIC = b'KZLOG2\n'
RECORD = struct.Struct('>dBI')
TRAILER = struct.Struct('>I')
STDOUT = 1
STDERR = 2
MAX_LINE = 16 * 1024


class LogWriter(object):
    """Splits a process's output into timestamped line records."""

    def __init__(self, path, max_bytes):
        self.path = path
        self.max_bytes = max_bytes
        self._partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self._f = None
        self._open()

    def _open(self):
        self._f = open(self.path, 'ab')
        if self._f.tell() == 0:
            self._f.write(MAGIC)
            return
        with open(self.path, 'rb') as f:
            magic = f.read(len(MAGIC))
        if magic != MAGIC:
            # A log of the old format: rotated, never mixed with records
            # of this one.
            self._f.close()
            os.replace(self.path, self.path + '.1')
            self._f = open(self.path, 'ab')
            self._f.write(MAGIC)

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
            self._open()
        self._f.write(RECORD.pack(now, stream, len(line)) + line +
                      TRAILER.pack(len(line)))

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


def _has_magic(f):
    """:returns: whether ``f`` (at its start) is a log with trailers; it
    is left at its first record either way.
    """
    head = f.read(len(MAGIC))
    if head == MAGIC:
        return True
    f.seek(0)
    return False


def _read_records(f, trailers):
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
        if trailers:
            trailer = f.read(TRAILER.size)
            if len(trailer) < TRAILER.size or \
                    TRAILER.unpack(trailer)[0] != length:
                return
        yield ts, stream, data


def _read_backwards(f, size):
    """Yield the records of a log with trailers, newest first.

    :returns: on a record that does not check out (a torn end), stops
              with ``f`` unusable: the caller then reads forwards.
    :raises: ValueError on such a record.
    """
    end = size
    while end > len(MAGIC):
        if end - len(MAGIC) < RECORD.size + TRAILER.size:
            raise ValueError('torn log')
        f.seek(end - TRAILER.size)
        (length,) = TRAILER.unpack(f.read(TRAILER.size))
        start = end - TRAILER.size - length - RECORD.size
        if length > MAX_LINE or start < len(MAGIC):
            raise ValueError('torn log')
        f.seek(start)
        record = f.read(RECORD.size + length)
        ts, stream, length2 = RECORD.unpack_from(record)
        if length2 != length or stream not in (STDOUT, STDERR):
            raise ValueError('torn log')
        yield ts, stream, record[RECORD.size:]
        end = start


def _tail_of(name, wanted, since, count, budget):
    """The last ``count`` records of one file within ``budget`` bytes.

    :returns: (records oldest first, whether output was left out for the
               budget, whether older files may hold more wanted records).
    """
    with open(name, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        picked, used = [], 0
        if _has_magic(f):
            try:
                for ts, stream, data in _read_backwards(f, size):
                    if since is not None and ts < since:
                        return picked[::-1], False, False
                    if stream not in wanted:
                        continue
                    if len(picked) >= count:
                        return picked[::-1], False, False
                    if used + len(data) > budget:
                        return picked[::-1], True, False
                    picked.append((ts, stream, data))
                    used += len(data)
                return picked[::-1], False, True
            except ValueError:
                f.seek(len(MAGIC))
                trailers = True
        else:
            trailers = False
        # Forwards, keeping only the last ``count`` records that fit.
        kept = collections.deque()
        used, truncated = 0, False
        for ts, stream, data in _read_records(f, trailers):
            if stream not in wanted or (since is not None and ts < since):
                continue
            kept.append((ts, stream, data))
            used += len(data)
            if len(kept) > count:
                used -= len(kept.popleft()[2])
            while used > budget:
                used -= len(kept.popleft()[2])
                truncated = True
        return (list(kept), truncated,
                not truncated and len(kept) < count)


def read(path, stdout=True, stderr=True, since=None, tail=None,
         max_bytes=None):
    """Read a container log.

    :param path: the log file (its ``.1`` rotation is read first).
    :param stdout: include stdout records.
    :param stderr: include stderr records.
    :param since: epoch seconds; older records are left out.
    :param tail: keep only the last ``tail`` records (None for all).
    :param max_bytes: most bytes of output returned (None: no limit):
                      the newest records that fit are kept.
    :returns: a list of (time, stream, bytes); with ``max_bytes``, a
              tuple (that list, whether older output was left out).
    """
    wanted = set()
    if stdout:
        wanted.add(STDOUT)
    if stderr:
        wanted.add(STDERR)
    count = tail if tail is not None else float('inf')
    budget = max_bytes if max_bytes is not None else float('inf')
    out, truncated = [], False
    if count > 0:
        for name in (path, path + '.1'):
            try:
                records, cut, more = _tail_of(
                    name, wanted, since, count - len(out),
                    budget - sum(len(r[2]) for r in out))
            except FileNotFoundError:
                continue
            out[:0] = records
            truncated = truncated or cut
            if not more:
                break
    if max_bytes is not None:
        return out, truncated
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
            self._trailers = _has_magic(self._f)
            if self._offset is None:
                self._f.seek(0, os.SEEK_END)
            elif self._offset > self._f.tell():
                self._f.seek(self._offset)
        pos = self._f.tell()
        if os.stat(self.path).st_size < pos:      # rotated under us
            self._f.close()
            self._f, self._offset = None, 0
            return self.poll()
        records = []
        while True:
            start = self._f.tell()
            got = list(_read_one(self._f, self._trailers))
            if not got:
                self._f.seek(start)
                return records
            records.extend(got)

    def close(self):
        if self._f is not None:
            self._f.close()


def _read_one(f, trailers):
    for rec in _read_records(f, trailers):
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
