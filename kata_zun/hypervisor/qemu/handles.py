"""What the privileged side opens for QEMU: sockets, disks, taps, console.

A jailed QEMU cannot open a host file or a tap by name (see
:mod:`kata_zun.jail`); the VM's owner opens each with the rights it
needs and QEMU inherits the descriptors. The guest console goes to a
socket whose other end :class:`ConsoleLog` drains into a size-capped
log, so a guest that prints without end cannot fill the host disk.
"""

import fcntl
import os
import socket
import struct
import threading

from oslo_log import log as logging

from kata_zun import exception

LOG = logging.getLogger(__name__)

TUN_DEVICE = '/dev/net/tun'
TUNSETIFF = 0x400454ca
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def listening_socket(path):
    """Bind and listen on a unix socket that only root can connect to.

    :returns: the socket (its fd is inherited by QEMU).
    :raises: kata_zun.exception.HypervisorError
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise exception.HypervisorError(reason='cannot listen on %s: %s'
                                        % (path, exc))
    return sock


def open_disk(path, read_only):
    """Open a disk image for QEMU and lock it for the VM's life.

    The lock (``flock``: shared for a read-only disk, exclusive for a
    writable one) belongs to the open file, which QEMU inherits: it
    holds as long as QEMU runs. Two VMs never write one file system at
    once (that corrupts it), and a read-only user keeps writers out.

    :returns: an fd on the disk image (read-only when the guest must
        not write it: QEMU then cannot either, whatever it is told).
    :raises: kata_zun.exception.HypervisorError
    """
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        raise exception.HypervisorError(reason='cannot open disk %s: %s'
                                        % (path, exc))
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) |
                    fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise exception.HypervisorError(
            reason='disk %s is in use by another VM (%s)' % (
                path, exc.strerror))
    return fd


def open_tap(name):
    """Attach to an existing tap device.

    :returns: the tap's fd (with virtio-net headers, as QEMU sets up a
        tap it opens itself).
    :raises: kata_zun.exception.HypervisorError
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack('16sH22x', name.encode(),
                          IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except (OSError, UnicodeError) as exc:
        os.close(fd)
        raise exception.HypervisorError(reason='cannot open tap %s: %s'
                                        % (name, exc))
    return fd


class ConsoleLog(threading.Thread):
    """Drains the guest console into ``path``, keeping at most
    ``max_bytes`` in it: beyond that the file moves to ``path.1``
    (replacing the previous one) and a new one starts. The newest output,
    which explains a failure, is always kept; at most twice
    ``max_bytes`` are on disk.
    """

    def __init__(self, sock, path, max_bytes):
        super().__init__(name='console-log', daemon=True)
        self.sock = sock
        self.path = path
        self.max_bytes = max(4096, int(max_bytes))
        self.written = 0

    def _open(self):
        return open(self.path, 'ab', buffering=0,
                    opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW,
                                                0o600))

    def run(self):
        try:
            out = self._open()
            self.written = out.seek(0, os.SEEK_END)
        except OSError as exc:
            # Still drained (a guest blocked on its console would hang),
            # just not kept.
            LOG.warning('guest console log %s: %s', self.path, exc)
            out = None
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if out is None:
                    continue
                if self.written + len(data) > self.max_bytes:
                    out.close()
                    os.replace(self.path, self.path + '.1')
                    out = self._open()
                    self.written = 0
                    data = data[-self.max_bytes:]
                out.write(data)
                self.written += len(data)
        except OSError as exc:
            LOG.warning('guest console log %s: %s', self.path, exc)
        finally:
            if out is not None:
                out.close()
            self.sock.close()


class VMHandles(object):
    """Everything one VM inherits, opened by its owner.

    :meth:`open` makes the QMP and agent listening sockets, the console
    socket pair, opens (and locks) the disks, attaches the taps and starts
    a virtiofsd per shared directory; :meth:`for_argv` names the
    descriptors for :func:`kata_zun.hypervisor.qemu.argv.build_argv`.
    Once QEMU runs, :meth:`close` drops the owner's copies (QEMU keeps
    its own); :meth:`abort` also stops the virtiofsd daemons when QEMU
    could not be started.
    """

    def __init__(self):
        self._fds = []
        self._sockets = []
        self.qmp = self.agent = self.console_host = self.console_vm = None
        self.disk_fds = ()
        self.tap_fds = ()
        self.fs_fds = ()
        #: the running virtiofsd daemons (:class:`..volume.virtiofs.Daemon`)
        self.helpers = []

    @classmethod
    def open(cls, config, qmp_path, agent_path, cgroup_procs=()):
        """:param config: the :class:`kata_zun.hypervisor.base.VMConfig`.
        :param cgroup_procs: ``cgroup.procs`` files the virtiofsd daemons
            join (the sandbox's host cgroup).
        :returns: a :class:`VMHandles`.
        :raises: kata_zun.exception.HypervisorError
        """
        self = cls()
        try:
            self.qmp = self._sock(listening_socket(qmp_path))
            self.agent = self._sock(listening_socket(agent_path))
            self.console_host, self.console_vm = (
                self._sock(s) for s in socket.socketpair())
            self.disk_fds = tuple(self._fd(open_disk(d.path, d.read_only))
                                  for d in config.disks)
            self.tap_fds = tuple(self._fd(open_tap(n.tap))
                                 for n in config.nics)
            fs_fds = []
            if config.shared_dirs:
                from kata_zun.volume import virtiofs
            for i, shared in enumerate(config.shared_dirs):
                daemon, conn = virtiofs.start(shared, i, config.run_dir,
                                              cgroup_procs=cgroup_procs)
                self.helpers.append(daemon)
                fs_fds.append(self._sock(conn).fileno())
            self.fs_fds = tuple(fs_fds)
        except BaseException:
            self.abort()
            raise
        return self

    def _sock(self, sock):
        self._sockets.append(sock)
        return sock

    def _fd(self, fd):
        self._fds.append(fd)
        return fd

    def for_argv(self, kernel, initrd):
        """:returns: the :class:`kata_zun.hypervisor.qemu.argv.Handles`."""
        from kata_zun.hypervisor.qemu import argv
        return argv.Handles(kernel, initrd, self.qmp.fileno(),
                            self.agent.fileno(), self.console_vm.fileno(),
                            self.disk_fds, self.tap_fds, self.fs_fds)

    def take_console(self):
        """:returns: the owner's end of the console; :meth:`close` leaves
            it open (a :class:`ConsoleLog` drains it).
        """
        self._sockets.remove(self.console_host)
        return self.console_host

    def close(self):
        """Close the owner's copies of what QEMU inherited."""
        for fd in self._fds:
            os.close(fd)
        for sock in self._sockets:
            sock.close()
        self._fds, self._sockets = [], []

    def abort(self):
        """Close everything and stop the virtiofsd daemons."""
        self.close()
        for helper in self.helpers:
            helper.proc.kill()
            helper.stop(0)
        self.helpers = []
