"""Progress of long work (pulls, commits, saves, guest builds) for the CLI.

Long operations report through a callable taking one message.  A message
may be an :class:`Update`: still a ``str`` (every existing reporter
prints it as before) that also names the line it belongs to (``key``:
a layer, a file) and, for byte counts, ``done`` and ``total``.

:class:`Terminal` shows them as Docker does:

* on a terminal, one line per key, redrawn in place, with bytes, a bar
  and the rate (``Layer 1/2 3f1a...: Downloading [====>   ] 1.2MB/3.4MB
  850kB/s``); other messages print above those lines;
* elsewhere (a pipe, a file, a CI log), byte counts are left out and
  the other messages are printed one a line: quiet, and no control
  characters in a log.

Reporters are called from download threads: the renderer locks.
"""

import collections
import sys
import threading
import time

#: Most lines redrawn; older finished ones scroll away.
MAX_LINES = 24
#: Least seconds between two redraws of a byte count.
REDRAW_INTERVAL = 0.1
_BAR = 30


class Update(str):
    """A progress message that is also a ``str``.

    :param text: the message as a plain line (what non-terminals print).
    :param key: the line it updates on a terminal (None: a line of its
        own).
    :param done: bytes done, for byte counts (left out off a terminal).
    :param total: bytes in all, when known.
    :param status: the short state shown on the line (``Downloading``).
    """

    def __new__(cls, text, key=None, done=None, total=None, status=None):
        self = super().__new__(cls, text)
        self.key, self.done, self.total = key, done, total
        self.status = status
        return self


def human(size):
    """Sizes as Docker's progress shows them: ``1.2MB``."""
    size = float(size)
    for unit in ('B', 'kB', 'MB', 'GB'):
        if size < 1000 or unit == 'GB':
            return ('%d%s' if unit == 'B' else '%.1f%s') % (size, unit)
        size /= 1000


class Terminal(object):
    """A reporter for :class:`Update` messages (see the module doc).

    :param stream: where to write (default: stderr, as Docker's progress
        goes with stdout kept for results).
    :param clock: seconds, monotonic (for rates; tests pass their own).
    """

    def __init__(self, stream=None, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.clock = clock
        self.lock = threading.Lock()
        self.lines = collections.OrderedDict()   # key -> rendered text
        self.starts = {}            # key -> (time, bytes) of the first count
        self.counted = set()        # keys whose byte count was drawn
        self.drawn = 0              # lines of the block on the screen
        self.last_draw = 0.0

    def __call__(self, message):
        with self.lock:
            if not self.tty:
                if getattr(message, 'done', None) is None:
                    self._write('%s\n' % message)
                return
            key = getattr(message, 'key', None)
            if key is None:
                self._write(self._clear() + '%s\n' % message + self._block())
                return
            self.lines[key] = self._render(message)
            self.lines.move_to_end(key)
            while len(self.lines) > MAX_LINES:
                self.lines.popitem(last=False)
            now = self.clock()
            # Counts are drawn at most every REDRAW_INTERVAL, except the
            # first of each line (a fast download still shows its bytes).
            if message.done is not None and key in self.counted and (
                    message.total is None or message.done < message.total) \
                    and now - self.last_draw < REDRAW_INTERVAL:
                return
            if message.done is not None:
                self.counted.add(key)
            self.last_draw = now
            self._write(self._clear() + self._block())

    def _render(self, m):
        if m.done is None:
            # A status (``downloading``, ``done``): the rate counts from
            # here.
            self.starts[m.key] = (self.clock(), 0)
            return str(m)
        now = self.clock()
        first = self.starts.setdefault(m.key, (now, m.done))
        elapsed = now - first[0]
        rate = (m.done - first[1]) / elapsed if elapsed > 0 else 0.0
        text = '%s: %s ' % (m.key, m.status or 'Downloading')
        if m.total:
            filled = int(_BAR * min(m.done, m.total) / m.total)
            text += '[%s%s%s] %s/%s' % (
                '=' * max(filled - 1, 0), '>' if filled else '',
                ' ' * (_BAR - filled), human(m.done), human(m.total))
        else:
            text += human(m.done)
        if rate > 0:
            text += '  %s/s' % human(rate)
        return text

    def _clear(self):
        # Up to the block's first line, and clear to the end of screen.
        text = '\r\x1b[%dA\x1b[J' % self.drawn if self.drawn else '\r\x1b[J'
        self.drawn = 0
        return text

    def _block(self):
        self.drawn = len(self.lines)
        return ''.join('%s\n' % line for line in self.lines.values())

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass        # a closed terminal never fails the work

    def close(self):
        """Forget the block: what is drawn stays on the screen."""
        with self.lock:
            self.lines.clear()
            self.drawn = 0


class CountingWriter(object):
    """A binary file wrapper reporting the bytes written (``save``).

    :param fileobj: the file written to.
    :param report: the progress callable.
    :param key: the line's key.
    """

    def __init__(self, fileobj, report, key, status='Writing'):
        self.fileobj, self.report, self.key = fileobj, report, key
        self.status = status
        self.done = 0

    def write(self, data):
        n = self.fileobj.write(data)
        self.done += len(data)
        self.report(Update('%s: %s' % (self.key, human(self.done)),
                           key=self.key, done=self.done,
                           status=self.status))
        return n

    def __getattr__(self, name):
        return getattr(self.fileobj, name)
