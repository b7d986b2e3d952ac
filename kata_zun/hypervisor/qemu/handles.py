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
