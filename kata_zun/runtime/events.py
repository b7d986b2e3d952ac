"""The host's event log: what ``kata-zun events`` reads.

The runtime, the shims and the image store append one JSON line per
lifecycle event (container create, start, die, stop, kill, destroy, ...;
image pull, tag, untag, delete, load, commit) to ``events.log`` in
``[kata] state_path``.

* **Atomic append**: every line is written by one ``write()`` on an
  ``O_APPEND`` descriptor and is far below a page, so concurrent writers
  (several shims, the CLI, zun-compute) never interleave nor overwrite
  each other's lines.
* **Bounded**: attribute values are cut, a line never exceeds
  :data:`LINE_MAX`, and the log is rotated at ``[kata]
  events_log_max_bytes`` (one rotated file, ``events.log.1``, is kept).
* **Never in the way**: a failure to record an event is logged and
  forgotten; the operation it describes goes on.  Nothing here blocks
  (zun-compute is eventlet-patched): the rotation lock is only tried.
* **Untrusted readers' input**: a reader skips lines that are too long,
  not JSON, or not shaped like an event (the log lives in a root-only
  directory, but a damaged disk or a crash mid-write must not stop a
  listing).
"""

import fcntl
import json
import os
import time

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF
LOG = logging.getLogger(__name__)

#: Longest line written or read (bytes, newline included).
LINE_MAX = 2048
#: Longest attribute value kept, and most attributes per event.
VALUE_MAX = 256
ATTRS_MAX = 16
#: Event types, as Docker names them.
TYPES = ('container', 'image', 'volume')
FILE = 'events.log'


def log_path(state_path):
    """:returns: the event log of the host whose state is ``state_path``."""
    return os.path.join(state_path, FILE)


def _clean_attrs(attributes):
    out = {}
    for key in sorted(attributes or {})[:ATTRS_MAX]:
        value = attributes[key]
        if value is None:
            continue
        out[str(key)[:64]] = str(value)[:VALUE_MAX]
    return out


def _line(kind, action, actor, attributes, now):
    record = {'Type': kind, 'Action': str(action)[:64],
              'Actor': {'ID': str(actor)[:VALUE_MAX],
                        'Attributes': _clean_attrs(attributes)},
              'time': int(now), 'timeNano': int(now * 1e9)}
    data = (json.dumps(record, sort_keys=True) + '\n').encode()
    while len(data) > LINE_MAX and record['Actor']['Attributes']:
        # Too long even with cut values: drop attributes, largest first.
        attrs = record['Actor']['Attributes']
        del attrs[max(attrs, key=lambda k: len(attrs[k]))]
        data = (json.dumps(record, sort_keys=True) + '\n').encode()
    return data


def _rotate_if_needed(path, limit):
    """Rotate ``path`` once it reaches ``limit`` bytes.

    Only one writer rotates: the others find the lock taken and append to
    whichever file they opened (a line or two past the limit at most).
    """
    try:
        if os.stat(path).st_size < limit:
            return
    except FileNotFoundError:
        return
    fd = os.open(path + '.lock', os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    try:
        # Checked again under the lock: another writer may have rotated
        # between our stat and our lock.
        if os.stat(path).st_size >= limit:
            os.replace(path, path + '.1')
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def emit(state_path, kind, action, actor, attributes=None, now=None):
    """Append one event to the host's log; never raises.

    :param state_path: ``[kata] state_path`` of the host.
    :param kind: one of :data:`TYPES`.
    :param action: what happened (``create``, ``start``, ``die`` ...).
    :param actor: the container or image id.
    :param attributes: dict of strings (name, image, exitCode ...).
    :param now: the time of the event (default: now).
    """
    path = log_path(state_path)
    try:
        data = _line(kind, action, actor, attributes,
                     time.time() if now is None else now)
        _rotate_if_needed(path, CONF.kata.events_log_max_bytes)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                     os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except Exception as exc:      # an event must never fail its action
        LOG.warning('Could not record the %s event %s of %s: %s',
                    kind, action, actor, exc)


def _valid(record):
    if not isinstance(record, dict):
        return False
    actor = record.get('Actor')
    return (record.get('Type') in TYPES and
            isinstance(record.get('Action'), str) and
            isinstance(record.get('timeNano'), int) and
            isinstance(actor, dict) and isinstance(actor.get('ID'), str) and
            isinstance(actor.get('Attributes'), dict) and
            all(isinstance(v, str) for v in actor['Attributes'].values()))


def parse_lines(data):
    """:returns: the valid events of a chunk of the log, in order (an
        incomplete last line is not returned).
    """
    out = []
    for line in data.split(b'\n')[:-1]:
        if not line:
            continue
        record = _decode(line)
        if record is None:
            # A writer killed mid-line (or stopped by a full disk) left a
            # torn line with no newline: the next event was appended to
            # it. Every line starts with _RECORD_START (sorted keys): the
            # last such start may be that whole next event.
            start = line.rfind(_RECORD_START)
            if start > 0:
                record = _decode(line[start:])
        if _valid(record):
            out.append(record)
    return out


# How every line of the log starts (json.dumps with sorted keys). Inside
# a JSON string every '"' is escaped: these bytes only begin a record.
_RECORD_START = b'{"Action": '


def _decode(line):
    """:returns: the JSON value of ``line``, or None."""
    if len(line) >= LINE_MAX:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def read(state_path):
    """:returns: every event the log keeps, oldest first.
    :raises: KataZunException when the log exists but cannot be read.
    """
    path = log_path(state_path)
    events = []
    # Each file is read whole at most: both are bounded by rotation (a
    # little slack for writers that raced a rotation).
    limit = 2 * CONF.kata.events_log_max_bytes + 64 * LINE_MAX
    for name in (path + '.1', path):
        try:
            with open(name, 'rb') as f:
                data = f.read(limit)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise exception.KataZunException(
                'cannot read the event log %s: %s' % (name, exc))
        events.extend(parse_lines(data[:data.rfind(b'\n') + 1]))
    events.sort(key=lambda e: e['timeNano'])
    return events


class Follower(object):
    """New events as they are appended (``kata-zun events`` without
    ``--until``), across rotations.
    """

    def __init__(self, state_path):
        self.path = log_path(state_path)
        self._fd = None
        self._inode = None
        self._pending = b''
        self._open(at_end=True)

    def _open(self, at_end):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        st = os.fstat(fd)
        if at_end:
            os.lseek(fd, st.st_size, os.SEEK_SET)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._inode, self._pending = fd, st.st_ino, b''

    def poll(self):
        """:returns: the events appended since the last call."""
        out = []
        if self._fd is not None:
            out.extend(self._drain())
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != self._inode:
            # Rotated (or created): the rest of the old file was read
            # above, the new one is read from its start.
            self._open(at_end=False)
            out.extend(self._drain())
        return out

    def _drain(self):
        out = []
        while True:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                break
            data = self._pending + chunk
            cut = data.rfind(b'\n') + 1
            out.extend(parse_lines(data[:cut]))
            self._pending = data[cut:]
            if len(self._pending) >= LINE_MAX:
                # A line that long is not an event: skip to its end.
                self._pending = b''
        return out

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
