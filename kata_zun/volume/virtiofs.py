"""Shared directories: one virtiofsd per exported directory.

The VM's owner (root) starts each virtiofsd as its child, before QEMU:

* in a mount namespace of its own (made between fork and exec), where the
  exported directory is bind-mounted (not recursively: mounts below it
  are not exported) onto an empty directory of the sandbox's run
  directory, read-only for a read-only volume: the host refuses the
  guest's writes, whatever the guest kernel does;
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
import os
import signal
import socket
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

_libc = []


def _lib():
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    return _libc[0]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))


def _mount(lib, source, target, flags):
    def b(s):
        return None if s is None else os.fsencode(s)
    _check(lib.mount(b(source), b(target), None, flags, None),
           'mount %s' % target)


def _child_setup(lib, parent, source, mountpoint, read_only,
                 cgroup_procs):
    """Runs in the forked child before exec (no allocation-heavy work)."""
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
    _mount(lib, source, mountpoint, MS_BIND)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
    if read_only:
        flags |= MS_RDONLY
    _mount(lib, None, mountpoint, flags)


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


def _check_source(source):
    try:
        st = os.lstat(source)
    except OSError as exc:
        raise exception.HypervisorError(
            reason='shared directory %s: %s' % (source, exc.strerror))
    import stat
    if not stat.S_ISDIR(st.st_mode):
        raise exception.HypervisorError(
            reason='shared directory %s is not a directory' % source)


def start(shared, index, run_dir, virtiofsd=VIRTIOFSD, cgroup_procs=()):
    """Start the virtiofsd of one shared directory.

    :param shared: a :class:`kata_zun.hypervisor.base.SharedDir`.
    :param index: its number in the VM (names its socket and mount point).
    :param run_dir: the VM's run directory (root-only).
    :param cgroup_procs: ``cgroup.procs`` files it joins (the sandbox's).
    :returns: (:class:`Daemon`, a socket connected to it, for QEMU).
    :raises: kata_zun.exception.HypervisorError
    """
    _check_source(shared.source)
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
                                                mountpoint,
                                                shared.read_only,
                                                procs))
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
