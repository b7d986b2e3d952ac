"""Read untrusted tar streams with bounded memory and work.

``tarfile`` reads some headers whole into memory and keeps state across
members: GNU long names and links, pax extended headers (whose keys are
copied into the member), pax global headers (whose keys are copied into
*every* later member and accumulate for the whole archive), and GNU
sparse maps (extension blocks read in a loop, and pax sparse maps read
from the member data).  Each extended header also reads the next header
recursively, holding its buffer, so a chain of them grows the stack and
the heap.  Here every such header counts against the caller's entry and
byte :class:`Budget`, is capped in size and number, and sparse members
are refused: no image needs them.
"""

import tarfile

from kata_zun import exception

# One pax extended header (xattrs, long names, times): real ones are a
# few hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
# A path or link target; Linux's PATH_MAX.
MAX_NAME_BYTES = 4096
# Components of a path: no real image nests this deep, and removal
# recurses once per level.
MAX_PATH_DEPTH = 128
# Keys of one pax header, and of all global headers together.
MAX_PAX_KEYS = 128
# All pax global headers of one archive: their keys stay for the rest of
# the archive.
MAX_GLOBAL_HEADER_BYTES = 16 * 1024
# Extended headers before one member (pax + long name + long link is 3).
MAX_HEADER_CHAIN = 4

_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_HEADER_TYPES = _PAX_TYPES + _LONG_TYPES + (tarfile.XGLTYPE,)


def _limit(reason):
    return exception.ImageLimitExceeded(reason=reason)


class Budget(object):
    """Entries and bytes that a tar stream (or a whole image) may use."""

    def __init__(self, max_entries, max_bytes):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries = 0
        self.size = 0

    def charge(self, nbytes):
        """Count one entry (a member or a header) of ``nbytes``.

        :raises: ImageLimitExceeded
        """
        self.entries += 1
        self.size += max(nbytes, 0)
        if self.entries > self.max_entries:
            raise _limit('more than %d entries' % self.max_entries)
        if self.size > self.max_bytes:
            raise _limit('more than %d unpacked bytes' % self.max_bytes)

    def remaining(self):
        """A new budget for what this one has left."""
        return Budget(self.max_entries - self.entries,
                      self.max_bytes - self.size)


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that bounds extended headers and refuses sparse files.

    ``budget`` (set by :func:`open_tar_stream` on a subclass) is charged
    for every header; without one, only the caps apply.
    """

    budget = None

    @classmethod
    def fromtarfile(cls, tar):
        # Extended headers read the next header recursively: bound the
        # chain before one member.
        depth = getattr(tar, '_kz_depth', 0)
        if depth >= MAX_HEADER_CHAIN:
            raise _limit('more than %d extended tar headers before one '
                         'member' % MAX_HEADER_CHAIN)
        tar._kz_depth = depth + 1
        try:
            return super().fromtarfile(tar)
        finally:
            tar._kz_depth = depth

    def _proc_member(self, tar):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise exception.UnsafeLayerMember(
                member=self.name, reason='sparse tar members are not '
                'supported')
        if self.type not in _HEADER_TYPES:
            return super()._proc_member(tar)
        if self.type in _PAX_TYPES and self.size > MAX_HEADER_BYTES:
            raise _limit('tar extended header of %d bytes (limit %d)' % (
                self.size, MAX_HEADER_BYTES))
        if self.type in _LONG_TYPES and self.size > MAX_NAME_BYTES + 1:
            raise _limit('tar long name of %d bytes (limit %d)' % (
                self.size, MAX_NAME_BYTES))
        if self.type == tarfile.XGLTYPE:
            total = getattr(tar, '_kz_global', 0) + self.size
            if total > MAX_GLOBAL_HEADER_BYTES:
                raise _limit('tar global headers of %d bytes (limit %d)' % (
                    total, MAX_GLOBAL_HEADER_BYTES))
            tar._kz_global = total
        if self.budget is not None:
            self.budget.charge(self.size)
        member = super()._proc_member(tar)
        if (len(tar.pax_headers) > MAX_PAX_KEYS or
                len(member.pax_headers) > MAX_PAX_KEYS):
            raise _limit('more than %d tar pax keys' % MAX_PAX_KEYS)
        return member

    # Sparse files, also when a pax header announces them.
    def _refuse_sparse(self, *args):
        raise exception.UnsafeLayerMember(
            member=self.name, reason='sparse tar members are not supported')

    _proc_sparse = _refuse_sparse
    _proc_gnusparse_00 = _refuse_sparse
    _proc_gnusparse_01 = _refuse_sparse
    _proc_gnusparse_10 = _refuse_sparse


def open_tar_stream(fileobj, budget=None, mode='r|'):
    """Open a tar stream for sequential reading, bounding its headers.

    :param fileobj: a binary file object positioned at the tar data.
    :param budget: a :class:`Budget` charged for every extended header
        (the caller charges the members).
    :param mode: ``r|`` or ``r|*`` (compressed).
    :returns: a ``tarfile.TarFile`` in stream mode.
    """
    info = type('BudgetTarInfo', (BoundedTarInfo,), {'budget': budget})
    return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=info)


def iter_members(tar):
    """Yield the members of ``tar`` without keeping them all in memory."""
    while True:
        member = tar.next()
        if member is None:
            return
        # TarFile remembers every member it has read; we never look back.
        tar.members = []
        yield member


def check_link(member):
    """Refuse a link target longer than a path may be.

    :raises: UnsafeLayerMember
    """
    if len(member.linkname) > MAX_NAME_BYTES:
        raise exception.UnsafeLayerMember(
            member=member.name[:256], reason='link target longer than %d '
            'bytes' % MAX_NAME_BYTES)


def split_member_name(name):
    """Split a member name into safe path components.

    :param name: a tar member (or hardlink target) name.
    :returns: a list of components; empty for the root itself.
    :raises: UnsafeLayerMember for absolute names, ``..``, NUL bytes, or
        paths longer or deeper than a file system path may be.
    """
    if len(name) > MAX_NAME_BYTES:
        raise exception.UnsafeLayerMember(
            member=name[:256] + '...', reason='longer than %d bytes'
            % MAX_NAME_BYTES)
    if '\0' in name:
        raise exception.UnsafeLayerMember(member=name, reason='NUL byte')
    if name.startswith('/'):
        raise exception.UnsafeLayerMember(member=name, reason='absolute path')
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise exception.UnsafeLayerMember(member=name,
                                          reason="'..' component")
    if len(parts) > MAX_PATH_DEPTH:
        raise exception.UnsafeLayerMember(
            member=name[:256] + '...', reason='more than %d components'
            % MAX_PATH_DEPTH)
    return parts
