"""Named volumes: sparse raw images under ``<state_path>/volumes/``.

Each volume is a directory ``volumes/NAME/`` holding ``disk.img`` (a
sparse raw image: no file system until the guest makes one on first
use; the host never formats or mounts it) and ``meta.json`` (written
last and atomically: a directory without it is an unfinished create and
is ignored).

Whether a volume is in use is the runtime's knowledge (container
records), so removal takes a callable that answers it.
"""

import os
import re
import shutil
import time

from kata_zun import exception
from kata_zun.runtime import fileutils
from kata_zun.volume import spec

DISK = 'disk.img'
META = 'meta.json'
DEFAULT_SIZE = 4 * 1024 ** 3
MIN_SIZE = 16 * 1024 ** 2
MAX_SIZE = 16 * 1024 ** 4
_SIZE_RE = re.compile(r'^(\d{1,16})([KMGT]?)(i?B)?$', re.IGNORECASE)
_UNITS = {'': 1, 'K': 1024, 'M': 1024 ** 2, 'G': 1024 ** 3, 'T': 1024 ** 4}


def parse_size(text):
    """Parse ``512M``, ``10G``, ``1TiB`` or a byte count.

    :returns: bytes (int), within [MIN_SIZE, MAX_SIZE].
    :raises: InvalidInput
    """
    match = _SIZE_RE.match(str(text).strip())
    if not match:
        raise exception.InvalidInput(reason='invalid size %r' % (text,))
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise exception.InvalidInput(
            reason='volume size must be between 16 MiB and 16 TiB')
    return size


class VolumeStore(object):
    """The named volumes of one host."""

    def __init__(self, root):
        self.root = root

    def _dir(self, name):
        return os.path.join(self.root, spec.check_name(name))

    def create(self, name, size=None):
        """Create an empty (all-zero, sparse) volume.

        :param name: the volume name.
        :param size: bytes, or None for :data:`DEFAULT_SIZE`.
        :returns: the volume's description (see :meth:`get`).
        :raises: InvalidInput, Conflict if it exists.
        """
        size = DEFAULT_SIZE if size is None else int(size)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise exception.InvalidInput(
                reason='volume size must be between 16 MiB and 16 TiB')
        directory = self._dir(name)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if os.path.exists(os.path.join(directory, META)):
                raise exception.Conflict(reason='volume %s exists' % name)
            # An unfinished create: start again.
        try:
            fd = os.open(os.path.join(directory, DISK),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            fileutils.write_json(os.path.join(directory, META),
                                 {'name': name, 'size': size,
                                  'created': time.time(),
                                  'driver': 'block'})
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return self.get(name)

    def get(self, name):
        """:returns: {'name', 'size', 'created', 'driver', 'disk',
            'used_bytes'}.
        :raises: NotFound, InvalidInput
        """
        directory = self._dir(name)
        try:
            meta = fileutils.read_json(os.path.join(directory, META),
                                       limit=64 * 1024)
        except (OSError, ValueError):
            raise exception.NotFound(what='volume %s' % name)
        disk = os.path.join(directory, DISK)
        try:
            used = os.stat(disk).st_blocks * 512
        except OSError:
            raise exception.NotFound(what='volume %s (its disk)' % name)
        return {'name': name, 'size': meta.get('size'),
                'created': meta.get('created'),
                'driver': meta.get('driver', 'block'), 'disk': disk,
                'used_bytes': used}

    def list(self):
        """:returns: the descriptions of every complete volume, by name."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not spec.NAME_RE.match(name):
                continue
            try:
                out.append(self.get(name))
            except exception.NotFound:
                continue
        return out

    def remove(self, name, users):
        """Delete a volume and its data.

        :param name: the volume name.
        :param users: callable name -> list of container ids using it.
        :returns: None
        :raises: NotFound, Conflict if a container uses it.
        """
        self.get(name)
        using = users(name)
        if using:
            raise exception.Conflict(
                reason='volume %s is in use by container(s) %s'
                % (name, ', '.join(c[:12] for c in using)))
        directory = self._dir(name)
        # meta.json first: a crash half-way leaves an unfinished volume,
        # never a listed one without its data.
        os.unlink(os.path.join(directory, META))
        shutil.rmtree(directory)
