"""Per-sandbox host identities: a uid (= gid) leased from a range.

A lease is a file ``<state_path>/jail/uids/<uid>`` naming its holder
(sandbox id, shim pid, host boot id), created with ``O_EXCL`` so two
shims can never take the same uid. A lease whose holder is gone (another
boot, or its shim died: its QEMU died with it) is taken over, but only
when no process on this host runs as that uid any more.
"""

import errno
import json
import os

from kata_zun import exception
from kata_zun.runtime import fileutils

LEASE_DIR = 'jail/uids'
_MAX_LEASE = 4096


def _lease_dir(state_path):
    path = os.path.join(state_path, LEASE_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def uid_in_use(uid, proc='/proc'):
    """:returns: True if a process on this host runs as ``uid``.

    The owner of ``/proc/<pid>`` is the process's effective uid.
    """
    try:
        names = os.listdir(proc)
    except OSError:
        return True             # cannot tell: assume the worst
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat(os.path.join(proc, name)).st_uid == uid:
                return True
        except OSError:
            continue            # exited meanwhile
    return False


def _start_time(pid):
    """:returns: the start time of ``pid`` (clock ticks since boot), or
        None if it does not run.
    """
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read(4096)
        return int(stat[stat.rindex(b')') + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _holder_alive(lease):
    """The holder is the very process that took the lease (pid and
    start time), on this boot of the host.
    """
    pid = lease.get('pid')
    if (lease.get('boot_id') != fileutils.boot_id() or
            not isinstance(pid, int) or pid <= 0):
        return False
    started = _start_time(pid)
    return started is not None and started == lease.get('started')


def _read_lease(path):
    try:
        with open(path, 'rb') as f:
            data = f.read(_MAX_LEASE + 1)
        lease = json.loads(data) if len(data) <= _MAX_LEASE else None
    except (OSError, ValueError):
        lease = None
    return lease if isinstance(lease, dict) else {}


def lease(state_path, sandbox, start, size, pid=None):
    """Lease the lowest free uid of ``[start, start + size)``.

    :param state_path: kata-zun's state directory.
    :param sandbox: the sandbox id (recorded in the lease).
    :param start: first uid of the range.
    :param size: number of uids in the range.
    :param pid: the holder's pid (default: this process).
    :returns: the uid.
    :raises: kata_zun.exception.JailError when the range is exhausted.
    """
    directory = _lease_dir(state_path)
    pid = pid or os.getpid()
    record = json.dumps({'sandbox': sandbox, 'pid': pid,
                         'started': _start_time(pid),
                         'boot_id': fileutils.boot_id()}).encode()
    taken = set()
    for name in os.listdir(directory):
        if name.isdigit():
            taken.add(int(name))
    for uid in range(start, start + size):
        path = os.path.join(directory, str(uid))
        if uid in taken:
            held = _read_lease(path)
            if _holder_alive(held) or uid_in_use(uid):
                continue
            # A stale lease: its holder is gone and nothing runs as uid.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue        # another shim took it just now
            raise
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        return uid
    raise exception.JailError(
        reason='no free uid in [kata_jail] uid range %d-%d: %d sandboxes '
        'already run' % (start, start + size - 1, size))


def release(state_path, uid, sandbox):
    """Give ``uid`` back, if ``sandbox`` still holds it.

    :returns: None
    """
    path = os.path.join(state_path, LEASE_DIR, str(int(uid)))
    if _read_lease(path).get('sandbox') == sandbox:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
