"""Per-sandbox host identities: a uid (= gid) leased from a range.

A lease is a file ``<lease_dir>/<uid>`` naming its holder (sandbox id,
shim pid and start time, host boot id), written whole then linked to its
name (which fails if it exists) so two shims can never take the same uid
and nobody sees a lease half-written. The lease directory is one per host
(``[kata_jail] lease_dir``, on a tmpfs: leases end with the boot), shared
by the CLI and zun-compute whatever their state paths. A uid that any
process on the host runs as is never leased; a lease whose holder is
gone (its QEMU died with its shim) is taken over.

A lease file is removed only under an exclusive flock on that very file,
after checking that its name still leads to it (:func:`_remove_if`):
two shims that both judged a lease stale would otherwise both remove
"it" (the second one removing the lease the first had just published)
and both lease the uid. Creating a lease needs no lock: linking fails
while the name exists.
"""

import contextlib
import fcntl
import json
import os
import tempfile

from kata_zun import exception
from kata_zun.runtime import fileutils

_MAX_LEASE = 4096


def _lease_dir(lease_dir):
    os.makedirs(lease_dir, mode=0o700, exist_ok=True)
    return lease_dir


def uids_in_use(proc='/proc'):
    """:returns: the set of uids that processes on this host run as (the
        owner of ``/proc/<pid>`` is the process's effective uid).
    :raises: OSError if /proc cannot be read.
    """
    found = set()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            found.add(os.stat(os.path.join(proc, name)).st_uid)
        except OSError:
            continue            # exited meanwhile
    return found


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


def _parse_lease(data):
    try:
        lease = json.loads(data) if len(data) <= _MAX_LEASE else None
    except ValueError:
        lease = None
    return lease if isinstance(lease, dict) else {}


def _read_lease(path):
    try:
        with open(path, 'rb') as f:
            data = f.read(_MAX_LEASE + 1)
    except OSError:
        return {}
    return _parse_lease(data)


@contextlib.contextmanager
def _locked_lease(path, wait):
    """Lock the lease file ``path`` names now, for removing it.

    Leases are never changed in place (a new lease is a new file), so
    the lock is on the file: whoever removes a lease holds it, and
    checks under it that ``path`` still names the same file.

    :param wait: wait for the lock (a holder only checks and unlinks);
        else give up at once when another process holds it.
    :returns: a context giving the lease's record, or None when there is
        no lease at ``path`` or (not waiting) someone else is removing it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if not same:
            # Removed (and maybe replaced) while we waited for the lock:
            # what we opened is no lease any more.
            yield None
            return
        # Its inode number is not reused while we keep it open, and no
        # one else unlinks it while we hold its lock: ``path`` names
        # this lease until we are done.
        yield _parse_lease(os.pread(fd, _MAX_LEASE + 1, 0))
    finally:
        os.close(fd)


def _remove_stale(path):
    """Remove the lease at ``path`` if its holder is gone.

    :returns: True if ``path`` names no lease now (the caller may publish
        its own: linking decides between racing shims), False if a live
        holder has it or another shim is taking it over right now.
    """
    if not os.path.lexists(path):
        return True
    with _locked_lease(path, wait=False) as lease:
        if lease is None:
            # Another shim holds it to take it over (or released it
            # meanwhile): free only if no lease is there now.
            return not os.path.lexists(path)
        if _holder_alive(lease):
            return False
        # A stale lease: its holder is gone and nothing runs as uid.
        os.unlink(path)
        return True


def _publish(directory, path, record):
    """Create the lease ``path`` holding ``record``, complete or not at
    all: written to a temporary file first, then hard-linked to its name
    (which fails if the name exists). A lease created empty and written
    afterwards would be seen empty by another shim in between (or for
    good, after a crash or a full disk), taken for stale, removed and the
    uid leased twice.

    :returns: True if the lease is ours, False if the name was taken.
    :raises: OSError
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False        # another shim took it just now
        return True
    finally:
        os.unlink(tmp)


def lease(lease_dir, sandbox, start, size, pid=None):
    """Lease the lowest free uid of ``[start, start + size)``.

    :param lease_dir: the host's lease directory.
    :param sandbox: the sandbox id (recorded in the lease).
    :param start: first uid of the range.
    :param size: number of uids in the range.
    :param pid: the holder's pid (default: this process).
    :returns: the uid.
    :raises: kata_zun.exception.JailError when the range is exhausted.
    """
    directory = _lease_dir(lease_dir)
    pid = pid or os.getpid()
    record = json.dumps({'sandbox': sandbox, 'pid': pid,
                         'started': _start_time(pid),
                         'boot_id': fileutils.boot_id()}).encode()
    taken = set()
    for name in os.listdir(directory):
        if name.isdigit():
            taken.add(int(name))
    running = uids_in_use()
    for uid in range(start, start + size):
        if uid in running:
            continue
        path = os.path.join(directory, str(uid))
        if uid in taken and not _remove_stale(path):
            continue
        if _publish(directory, path, record):
            return uid
    raise exception.JailError(
        reason='no free uid in [kata_jail] uid range %d-%d: %d sandboxes '
        'already run' % (start, start + size - 1, size))


def release(lease_dir, uid, sandbox):
    """Give ``uid`` back, if ``sandbox`` still holds it.

    :returns: None
    """
    path = os.path.join(lease_dir, str(int(uid)))
    if _read_lease(path).get('sandbox') != sandbox:
        return
    with _locked_lease(path, wait=True) as lease:
        if lease is not None and lease.get('sandbox') == sandbox:
            os.unlink(path)


def release_all(lease_dir, sandbox):
    """Give back every uid ``sandbox`` holds (after its shim died).

    :returns: None
    """
    try:
        names = os.listdir(lease_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit():
            release(lease_dir, int(name), sandbox)
