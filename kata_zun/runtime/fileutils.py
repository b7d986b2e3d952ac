"""Crash-safe file helpers: what must survive a crash is written atomically.

Standard library only (the shim and the CLI must not need zun).
"""

import fcntl
import functools
import json
import os
import tempfile
import time

from kata_zun.runtime import faultpoint

#: Name prefix of the temporary file of :func:`write_atomic` (a crashed
#: writer may leave one behind: never read as a record).
TEMP_PREFIX = '.tmp-'
#: Largest JSON record written by :func:`write_json` and read by
#: :func:`read_json`: the writer refuses what the reader would.
RECORD_LIMIT = 4 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def boot_id():
    """This boot of the host (``/proc/sys/kernel/random/boot_id``), or
    None: a process or VM recorded under another boot id is gone because
    the host restarted. Read once per process: it cannot change under a
    running process, and every record's status asks for it.
    """
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip() or None
    except OSError:
        return None


def _fsync_path(path, flags):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    """fsync a directory: a rename or new file in it survives a crash.

    :raises: OSError
    """
    _fsync_path(path, os.O_DIRECTORY)


def fsync_path(path):
    """fsync the file ``path`` (written by someone else, e.g. a child
    process) before it is renamed into place (see :func:`fsync_file`).

    :raises: OSError (ELOOP for a symbolic link)
    """
    _fsync_path(path, os.O_NOFOLLOW)


def fsync_file(f):
    """Flush and fsync an open file before it is renamed into place: a
    rename can reach the disk before the data does, and a crash then
    leaves the final name with empty or short contents.

    :param f: a file object open for writing.
    :raises: OSError
    """
    f.flush()
    os.fsync(f.fileno())


def fsync_tree(top):
    """fsync every regular file and directory under ``top`` (``top``
    too), before ``top`` is renamed into place (see :func:`fsync_file`;
    the caller then fsyncs the directory it was renamed in). Symbolic
    links are not followed.

    :raises: OSError
    """
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fsync_path(path)
        fsync_dir(dirpath)


def poll_flock(fd, deadline=None, interval=0.05, first=None):
    """Take an exclusive ``flock`` on ``fd``, polling.

    Never a blocking ``flock()``: in zun-compute (eventlet) it would stop
    every green thread, and ``time.sleep`` is green there.

    :param fd: an open descriptor of the lock file.
    :param deadline: ``time.monotonic()`` value to give up at, or None to
        wait for ever.
    :param interval: seconds between tries (the longest wait, with
        ``first``).
    :param first: seconds before the second try, doubled at each try up
        to ``interval``: a lock held briefly is taken soon after it is
        free, one held long is not polled hot. None: ``interval``.
    :returns: True once locked, False when the deadline passed.
    """
    delay = interval if first is None else min(first, interval)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            time.sleep(delay if deadline is None
                       else max(0.0, min(delay, deadline - now)))
            delay = min(delay * 2, interval)


def write_atomic(path, data, mode=0o600):
    """Replace ``path`` with ``data`` so that a crash leaves old or new.

    :param path: target file.
    :param data: bytes or str.
    :param mode: permission bits of the new file.
    :returns: None
    :raises: OSError
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            # The fault points let a test kill a writer at each step and
            # check that readers see the old content or the new one.
            faultpoint.reached('atomic-write-half')
            f.write(data[half:])
            fsync_file(f)
        os.chmod(tmp, mode)
        faultpoint.reached('atomic-write-replace')
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    faultpoint.reached('atomic-write-replaced')
    fsync_dir(directory)


def write_json(path, obj, mode=0o600, limit=RECORD_LIMIT):
    """Atomically write ``obj`` as JSON (see :func:`write_atomic`).

    :param limit: most bytes written; the default is what
                  :func:`read_json` accepts, so a record written is a
                  record that can be read back.
    :raises: OSError; ValueError (nothing written) if the document would
             be larger than ``limit``.
    """
    data = (json.dumps(obj, indent=1, sort_keys=True) + '\n').encode()
    if len(data) > limit:
        raise ValueError('%s would be %d bytes, more than the limit of %d'
                         % (path, len(data), limit))
    write_atomic(path, data, mode)


def read_json(path, limit=RECORD_LIMIT):
    """Read a JSON document written by :func:`write_json`.

    :returns: the decoded object.
    :raises: OSError if missing, ValueError if corrupt, too large or
             nested too deeply to decode.
    """
    with open(path, 'rb') as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError('%s is larger than %d bytes' % (path, limit))
    try:
        return json.loads(data.decode('utf-8'))
    except RecursionError:
        raise ValueError('%s is nested too deeply' % path)


def proc_stat_fields(pid):
    """:returns: the fields of ``/proc/<pid>/stat`` after the command
        name (the first is the state, field 3 of proc(5)), or None when
        the process is gone.
    """
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            data = f.read(4096)
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields
    # start after the last ')'.
    return data[data.rfind(b')') + 2:].split()


def open_pidfd(pid):
    """:returns: a pidfd of process ``pid`` (the caller closes it; it
        polls readable once the process has exited), or None when there
        is none to have: no such process, or no pidfds (Linux before
        5.3).
    """
    try:
        return os.pidfd_open(int(pid))
    except (AttributeError, OSError, TypeError, ValueError):
        return None


def tail(path, size):
    """:returns: the last ``size`` bytes of a text file ('' if missing)."""
    try:
        with open(path, 'rb') as f:
            f.seek(max(os.path.getsize(path) - size, 0))
            return f.read().decode('utf-8', 'replace').strip()
    except OSError:
        return ''
