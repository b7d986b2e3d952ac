"""A container's writable layer: its size, its checks, its filesystem.

Every container gets its own sparse ext4 image (``rw.img`` in its record
directory), handed to the VM as a virtio-blk disk. The agent mounts it
and uses it as the overlay's upper directory, so inside the container
``df /`` shows this filesystem: its size is the container's disk size,
and a full layer is ENOSPC for the container and nothing else (its
record, its logs and its shim live on the host, outside of it).

Sizes are MiB. Docker's ``--storage-opt size=5G`` and Zun's ``--disk``
(GiB) are both turned into MiB before they reach the runtime.
"""

import os
import re
import subprocess

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF
MiB = 1024 * 1024

# The smallest layer, as for ``[kata] writable_layer_mb``: ext4's journal
# and metadata still leave most of 16 MiB to the container.
MIN_MB = 16

# Docker's units.RAMInBytes: a number, an optional binary unit (k, m, g,
# t, p; 1024-based), optionally followed by "i" and/or "b".
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?",
                      re.IGNORECASE | re.ASCII)
_UNITS = {None: 1, 'k': 1024, 'm': 1024 ** 2, 'g': 1024 ** 3,
          't': 1024 ** 4, 'p': 1024 ** 5}
# Longer than any size anyone writes: what is longer is refused unread.
_SIZE_MAX_CHARS = 32
STORAGE_OPTS = ('size',)


def _shown(value):
    """A user's value in an error message, bounded."""
    text = repr(value)
    return text if len(text) <= 64 else text[:60] + '...'


def parse_size(text):
    """Parse a size as Docker does (``512M``, ``5G``, ``1.5g``, ``1GiB``,
    a bare number is bytes).

    :param text: the size as the user wrote it.
    :returns: MiB, rounded up to a whole MiB.
    :raises: InvalidInput
    """
    match = (_SIZE_RE.fullmatch(text.strip())
             if isinstance(text, str) and len(text) <= _SIZE_MAX_CHARS
             else None)
    if not match:
        raise exception.InvalidInput(
            reason='invalid size %s (a number with an optional unit: '
            'b, k, m, g, t or p, e.g. 512m or 5G)' % _shown(text))
    number, unit = match.groups()
    multiplier = _UNITS[unit.lower() if unit else None]
    whole, _dot, fraction = number.partition('.')
    # Exact arithmetic: no float rounding for a fractional size.
    num = int(whole + fraction) * multiplier
    den = 10 ** len(fraction)
    size_bytes = -(-num // den)
    return -(-size_bytes // MiB)


def parse_storage_opts(opts):
    """Parse Docker's ``--storage-opt KEY=VALUE`` list.

    Only ``size`` is known (the writable layer's size); the last one
    given wins, as with Docker.

    :param opts: iterable of ``KEY=VALUE`` strings.
    :returns: {'size_mb': MiB or None}
    :raises: InvalidInput for anything else.
    """
    size_mb = None
    for opt in opts or ():
        key, sep, value = str(opt).partition('=')
        key = key.strip().lower()
        if not sep or not key:
            raise exception.InvalidInput(
                reason='invalid storage option %s (want size=SIZE)'
                % _shown(opt))
        if key not in STORAGE_OPTS:
            raise exception.InvalidInput(
                reason='unknown storage option %s: only size=SIZE (the '
                'writable layer\'s size) is supported' % _shown(key))
        size_mb = parse_size(value)
    return {'size_mb': size_mb}


def filesystem_mb(path):
    """:returns: (total, free) MiB of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize // MiB, st.f_bavail * st.f_frsize // MiB


def check_size(disk_mb, where):
    """Check a requested writable layer size.

    The layer is a sparse file: it takes host space only as the
    container writes, so many layers may add up to more than the host
    has (as thin provisioning does; placement accounts Zun's requests).
    A single layer larger than the filesystem it lives on could never be
    filled, so it is refused.

    :param disk_mb: the size asked for, in MiB (None: the default).
    :param where: a directory on the filesystem that holds the layers.
    :returns: the size to make, in MiB.
    :raises: InvalidInput
    """
    if disk_mb is None:
        return CONF.kata.writable_layer_mb
    if isinstance(disk_mb, bool) or not isinstance(disk_mb, int):
        raise exception.InvalidInput(
            reason='disk size must be a whole number of MiB, not %r'
            % (disk_mb,))
    if disk_mb < MIN_MB:
        raise exception.InvalidInput(
            reason='disk size must be at least %d MiB (asked: %d MiB)'
            % (MIN_MB, disk_mb))
    total_mb, _free = filesystem_mb(where)
    if disk_mb > total_mb:
        raise exception.InvalidInput(
            reason='a disk of %d MiB is larger than the %d MiB filesystem '
            'that holds the writable layers' % (disk_mb, total_mb))
    return disk_mb


def make(path, size_mb):
    """Make a sparse ext4 writable layer of ``size_mb`` MiB at ``path``.

    No blocks are reserved for root (``-m 0``): inside the guest the
    container's writes reach the layer through overlayfs with the
    agent's credentials, so a root reserve would not hold anything back.
    The inode tables and journal are initialised lazily, so making even
    a big layer writes a few MiB.

    :raises: KataZunException if mkfs.ext4 fails.
    """
    with open(path, 'wb') as f:
        f.truncate(size_mb * MiB)
    try:
        subprocess.run(['mkfs.ext4', '-q', '-F', '-m', '0',
                        '-E', 'lazy_itable_init=1,lazy_journal_init=1',
                        '-L', 'kz-rw', path],
                       check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise exception.KataZunException(
            'mkfs.ext4 failed: %s' % exc.stderr.decode(errors='replace'))


def size_mb_of(config, directory):
    """The layer size of a record: what it says, else (a record from
    before sizes were recorded) the size of its image file.

    :returns: MiB, or None if neither is known.
    """
    size = config.get('disk_mb')
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    try:
        return os.stat(os.path.join(directory, 'rw.img')).st_size // MiB
    except OSError:
        return None
