"""Crash-safe file helpers: what must survive a crash is written atomically.

Standard library only (the shim and the CLI must not need zun).
"""

import functools
import json
import os
import tempfile


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


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def write_json(path, obj, mode=0o600):
    """Atomically write ``obj`` as JSON (see :func:`write_atomic`)."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + '\n',
                 mode)


def read_json(path, limit=4 * 1024 * 1024):
    """Read a JSON document written by :func:`write_json`.

    :returns: the decoded object.
    :raises: OSError if missing, ValueError if corrupt or too large.
    """
    with open(path, 'rb') as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError('%s is larger than %d bytes' % (path, limit))
    return json.loads(data.decode('utf-8'))


def tail(path, size):
    """:returns: the last ``size`` bytes of a text file ('' if missing)."""
    try:
        with open(path, 'rb') as f:
            f.seek(max(os.path.getsize(path) - size, 0))
            return f.read().decode('utf-8', 'replace').strip()
    except OSError:
        return ''
