"""One container's operation lock: a ``flock`` on a file in its record.

Two ``start`` of one container at once (two CLIs, a CLI and zun-compute,
two zun-compute requests) must not both find it stopped and both boot a
VM, and ``rm`` must not delete a record whose VM a start is booting. The
host-wide records lock (:meth:`kata_zun.runtime.manager.Runtime._lock`)
cannot be held that long: a boot takes seconds to minutes, and every
other container's operations would wait. So each record has its own
lock file, ``<record>/op.lock``, taken with ``flock``: the kernel drops
it when its holder dies (SIGKILL of a CLI mid-start leaves no stale
lock), and it works across processes (the CLI and zun-compute share a
state path).

The lock is polled, never a blocking ``flock()``: zun-compute is
eventlet-patched and a blocking call would stop every green thread,
including the one that holds the lock (``time.sleep`` yields).
"""

import contextlib
import os
import time

from kata_zun import exception
from kata_zun.runtime import fileutils

LOCK_FILE = 'op.lock'
_MAX_WORD = 32
# Looks, 10 ms apart, at a lock file its new holder has not written yet.
_WORD_LOOKS = 20


@contextlib.contextmanager
def held(record_dir, cid, doing, wait=0.0):
    """Hold the operation lock of one container.

    :param record_dir: the container's record directory.
    :param cid: the container id (for the error message).
    :param doing: what the holder does, in words ('started'): the
        error another request gets names it.
    :param wait: seconds to wait for another holder; 0 fails at once.
    :raises: Conflict if another operation holds it past ``wait``;
             ContainerNotFound if the record is gone.
    """
    try:
        fd = os.open(os.path.join(record_dir, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
    except FileNotFoundError:
        raise exception.ContainerNotFound(ref=cid[:12])
    try:
        if not fileutils.poll_flock(fd, time.monotonic() + wait,
                                    interval=0.1, first=0.005):
            holder = _holder_word(fd) or 'changed'
            raise exception.Conflict(
                reason='container %s is being %s by another request: try '
                'again when it is done' % (cid[:12], holder))
        if not os.path.exists(os.path.join(record_dir, 'config.json')):
            # An rm removed the record while we waited: our open made a
            # new lock file in its dying directory; leave nothing behind.
            _unlink_record_lock(record_dir)
            raise exception.ContainerNotFound(ref=cid[:12])
        # What we do, for the error of whoever comes next: one write of
        # a fixed width, so that it is never seen half-replaced.
        os.pwrite(fd, doing.encode('ascii')[:_MAX_WORD].ljust(_MAX_WORD),
                  0)
        yield
    finally:
        os.close(fd)


def _holder_word(fd):
    """:returns: what the lock's holder said it does, '' if nothing.

    A new holder writes its word right after it got the lock: a request
    that looks in between finds the file empty (CI, stop 16: "being
    changed" for a start), so an empty file is read again for a moment.
    """
    for _ in range(_WORD_LOOKS):
        word = os.pread(fd, _MAX_WORD, 0).decode('ascii', 'replace').strip()
        if word:
            return word
        time.sleep(0.01)
    return ''


def _unlink_record_lock(record_dir):
    for remove, path in ((os.unlink, os.path.join(record_dir, LOCK_FILE)),
                         (os.rmdir, record_dir)):
        try:
            remove(path)
        except OSError:
            pass
