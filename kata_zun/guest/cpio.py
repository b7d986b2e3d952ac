"""A writer for the ``newc`` cpio format the kernel unpacks as initramfs.

Written here rather than driving ``cpio -o`` so that owners, modes, device
nodes (``/dev/console`` must exist before devtmpfs is mounted) and mtimes
come out exactly as wanted without root privileges or a staging tree that
mirrors them. Every mtime is 0 so that equal inputs give an equal image.
"""

import os
import stat

_MAGIC = b'070701'
_TRAILER = 'TRAILER!!!'


def _pad(n):
    return b'\0' * (-n % 4)


class NewcWriter:
    """Appends entries to a binary file object; :meth:`close` ends it.

    Names are written relative (``bin/sh``), as the kernel expects.
    """

    def __init__(self, fileobj):
        """:param fileobj: a binary file object open for writing."""
        self._f = fileobj
        self._ino = 0
        self._seen = set()

    def _header(self, name, mode, size=0, nlink=1, rdev=(0, 0)):
        name = name.strip('/') or '.'
        if name in self._seen:
            raise ValueError('duplicate cpio member %r' % name)
        self._seen.add(name)
        self._ino += 1
        bname = name.encode() + b'\0'
        fields = (self._ino, mode, 0, 0, nlink, 0, size, 0, 0,
                  rdev[0], rdev[1], len(bname), 0)
        hdr = _MAGIC + b''.join(b'%08X' % v for v in fields)
        self._f.write(hdr + bname + _pad(len(hdr) + len(bname)))

    def add_dir(self, name, mode=0o755):
        """Add a directory.

        :param name: path inside the archive.
        :param mode: permission bits.
        :returns: None
        :raises: ValueError on a duplicate name.
        """
        self._header(name, stat.S_IFDIR | mode, nlink=2)

    def add_bytes(self, name, data, mode=0o644):
        """Add a regular file from memory.

        :param name: path inside the archive.
        :param data: the content (bytes or str).
        :param mode: permission bits.
        :returns: None
        :raises: ValueError on a duplicate name.
        """
        if isinstance(data, str):
            data = data.encode()
        self._header(name, stat.S_IFREG | mode, len(data))
        self._f.write(data + _pad(len(data)))

    def add_file(self, name, src, mode=None):
        """Add a regular file copied from the host.

        :param name: path inside the archive.
        :param src: host file (symlinks are followed).
        :param mode: permission bits; None keeps the source's.
        :returns: None
        :raises: OSError if ``src`` cannot be read; ValueError on a
            duplicate name.
        """
        with open(src, 'rb') as f:
            st = os.fstat(f.fileno())
            if mode is None:
                mode = stat.S_IMODE(st.st_mode)
            self._header(name, stat.S_IFREG | mode, st.st_size)
            left = st.st_size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError('%s shrank while archived' % src)
                self._f.write(chunk)
                left -= len(chunk)
        self._f.write(_pad(st.st_size))

    def add_symlink(self, name, target):
        """Add a symbolic link.

        :param name: path inside the archive.
        :param target: the link's target.
        :returns: None
        :raises: ValueError on a duplicate name.
        """
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self._f.write(data + _pad(len(data)))

    def add_chardev(self, name, major, minor, mode=0o600):
        """Add a character device node.

        :param name: path inside the archive.
        :param major: device major number.
        :param minor: device minor number.
        :param mode: permission bits.
        :returns: None
        :raises: ValueError on a duplicate name.
        """
        self._header(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self):
        """Write the trailer; the file object stays open.

        :returns: None
        """
        self._header(_TRAILER, 0, nlink=1)
