"""Shared directories: one virtiofsd per exported directory (or file).

The VM's owner (root) starts each virtiofsd as its child, before QEMU:

* in a mount namespace of its own (made between fork and exec), where the
  exported directory is bind-mounted (not recursively: mounts below it
  are not exported) onto an empty directory of the sandbox's run
  directory, read-only for a read-only volume: the host refuses the
  guest's writes, whatever the guest kernel does. What is mounted is
  what was checked: the bind mount is made from a descriptor of the
  source (``O_PATH``, no symlink followed) that is the checked file;
* for a single shared file, the export is a tiny tmpfs made in that
  namespace, holding one empty file on which the host file is
  bind-mounted, then remounted read-only: the guest sees that one file
  (its writes land in it, in place) and nothing else of its directory,
  cannot create, rename or remove anything next to it, and nothing of
  this ever appears in the host's mount table, even if we crash;
* with virtiofsd's own sandbox (``-o sandbox=namespace``: new pid, mount
  and net namespaces and ``pivot_root`` into that directory, so a
  guest-made symlink or ``..`` resolves inside the export) and its
  built-in seccomp filter;
* in the sandbox's host cgroup with QEMU (memory, pids, CPU), when
  QEMU is jailed;
* killed by the kernel when its owner dies (``PR_SET_PDEATHSIG``).

virtiofsd listens on a unix socket it gets as a descriptor; the owner
connects to it at once and hands the connected end to QEMU (a jailed
QEMU cannot reach a path), then removes the path: nothing else can
connect. virtiofsd's messages go through a size-capped log.
"""

import ctypes
import errno
import os
import signal
import socket
import stat
import subprocess

from oslo_log import log as logging

from kata_zun import exception
from kata_zun.hypervisor.qemu import handles

LOG = logging.getLogger(__name__)

VIRTIOFSD = '/usr/lib/qemu/virtiofsd'
LOG_MAX_BYTES = 256 * 1024
STOP_GRACE = 5
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
# The export of a single file: its root and the file, nothing more.
FILE_EXPORT_OPTS = 'size=4k,nr_inodes=8,mode=0755'
MAX_FILE_NAME = 64

_libc = []


def _lib():
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    return _libc[0]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def _mount(lib, source, target, flags, fstype=None, data=None):
    def b(s):
        return None if s is None else os.fsencode(s)
    _check(lib.mount(b(source), b(target), b(fstype), flags, b(data)),
           'mount %s' % target)


def _pin(path, identity):
    """:returns: an ``O_PATH`` descriptor of ``path`` if it is still the
        file checked by the parent (``identity``: device, inode).
    :raises: OSError
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != identity:
        os.close(fd)
        raise OSError(errno.ESTALE, '%s changed under us' % path)
    return fd


def _child_setup(lib, parent, source, identity, mountpoint, read_only,
                 cgroup_procs, file_name=None):
    """Runs in the forked child before exec (no allocation-heavy work).

    :param identity: (device, inode) of the source the parent checked:
        the bind mount is made from a descriptor of that very file (a
        descriptor opened in our new namespace: mount(2) refuses one of
        another namespace).
    :param file_name: set for a single file: its name in the export.
    """
    for path in cgroup_procs:
        with open(path, 'w') as f:
            f.write('0')
    _check(lib.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0),
           'prctl')
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    _check(lib.unshare(CLONE_NEWNS), 'unshare')
    # Nothing below propagates to the host's mount table.
    _mount(lib, None, '/', MS_REC | MS_PRIVATE)
    source_fd = _pin(source, identity)
    source = '/proc/self/fd/%d' % source_fd
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
    if read_only:
        flags |= MS_RDONLY
    if file_name is None:
        _mount(lib, source, mountpoint, MS_BIND)
        os.close(source_fd)
        _mount(lib, None, mountpoint, flags)
        return
    _mount(lib, 'tmpfs', mountpoint, MS_NOSUID | MS_NODEV, 'tmpfs',
           FILE_EXPORT_OPTS)
    target = os.path.join(mountpoint, file_name)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    _mount(lib, source, target, MS_BIND)
    os.close(source_fd)
    _mount(lib, None, target, flags)
    # The guest can neither add nor remove anything next to the file
    # (and cannot unlink or rename it: it is a mount point).
    _mount(lib, None, mountpoint, MS_REMOUNT | MS_RDONLY | MS_NOSUID |
           MS_NODEV)


class Daemon(object):
    """A running virtiofsd."""

    def __init__(self, proc, drain, tag):
        self.proc = proc
        self.drain = drain
        self.tag = tag

    def stop(self, grace=STOP_GRACE):
        """Wait for it to exit (it does when QEMU goes), else kill it.

        :returns: None
        """
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            LOG.warning('virtiofsd %s (%s) outlived QEMU, killing it',
                        self.proc.pid, self.tag)
            self.proc.kill()
            self.proc.wait()
        self.drain.join(5)


def _check_source(shared):
    """Check the source (never through a symlink) and its type.

    :returns: its (device, inode): the child mounts that file only.
    :raises: kata_zun.exception.HypervisorError
    """
    what = 'shared file' if shared.file_name else 'shared directory'
    name = shared.file_name
    if name is not None and (
            not isinstance(name, str) or '/' in name or '\0' in name or
            name in ('', '.', '..') or len(name) > MAX_FILE_NAME):
        raise exception.HypervisorError(
            reason='bad file name %r for %s' % (name, shared.source))
    try:
        fd = os.open(shared.source,
                     os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise exception.HypervisorError(
            reason='%s %s: %s' % (what, shared.source, exc.strerror))
    st = os.fstat(fd)
    os.close(fd)
    if not (stat.S_ISREG(st.st_mode) if name else
            stat.S_ISDIR(st.st_mode)):
        raise exception.HypervisorError(
            reason='%s %s is not a %s' % (
                what, shared.source,
                'regular file' if name else 'directory'))
    return st.st_dev, st.st_ino


def start(shared, index, run_dir, virtiofsd=VIRTIOFSD, cgroup_procs=()):
    """Start the virtiofsd of one shared directory.

    :param shared: a :class:`kata_zun.hypervisor.base.SharedDir` (a
        directory, or one file when its ``file_name`` is set).
    :param index: its number in the VM (names its socket and mount point).
    :param run_dir: the VM's run directory (root-only).
    :param cgroup_procs: ``cgroup.procs`` files it joins (the sandbox's).
    :returns: (:class:`Daemon`, a socket connected to it, for QEMU).
    :raises: kata_zun.exception.HypervisorError
    """
    identity = _check_source(shared)
    sock_path = os.path.join(run_dir, 'vfs%d.sock' % index)
    mountpoint = os.path.join(run_dir, 'fs%d' % index)
    if ',' in mountpoint:
        raise exception.HypervisorError(
            reason='run directory %s holds a comma' % run_dir)
    os.makedirs(mountpoint, mode=0o700, exist_ok=True)
    listener = handles.listening_socket(sock_path)
    log_host, log_child = socket.socketpair()
    client = None
    try:
        lib = _lib()
        parent = os.getpid()
        procs = tuple(cgroup_procs)
        argv = [virtiofsd, '--fd=%d' % listener.fileno(),
                '-o', 'source=%s' % mountpoint, '-o', 'sandbox=namespace',
                '-o', 'cache=auto', '-o', 'no_posix_lock', '-o', 'no_xattr',
                '-o', 'log_level=warn', '--rlimit-nofile=4096']
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_child,
                stderr=subprocess.STDOUT, close_fds=True,
                pass_fds=(listener.fileno(),), env={'PATH': '/usr/bin:/bin'},
                preexec_fn=lambda: _child_setup(lib, parent, shared.source,
                                                identity, mountpoint,
                                                shared.read_only,
                                                procs, shared.file_name))
        except (OSError, subprocess.SubprocessError) as exc:
            raise exception.HypervisorError(
                reason='cannot start virtiofsd for %s: %s'
                % (shared.source, exc))
        drain = handles.ConsoleLog(log_host,
                                   os.path.join(run_dir,
                                                'virtiofsd-%d.log' % index),
                                   LOG_MAX_BYTES)
        log_host = None
        drain.start()
        daemon = Daemon(proc, drain, shared.tag)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Queued in the backlog until virtiofsd accepts it.
            client.connect(sock_path)
        except OSError as exc:
            proc.kill()
            daemon.stop(0)
            raise exception.HypervisorError(
                reason='cannot connect to virtiofsd: %s' % exc)
    except BaseException:
        if client is not None:
            client.close()
        raise
    finally:
        listener.close()
        log_child.close()
        if log_host is not None:
            log_host.close()
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
    return daemon, client
