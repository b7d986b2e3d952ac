"""Apply image layer tarballs, one after another, into one directory.

Layers are untrusted data.  Every path is resolved one component at a
time relative to a directory file descriptor, never following a symlink
(``O_NOFOLLOW``), so a member can never be written outside the root, even
through a symlink that an earlier member or layer created.  ``tarfile``
is only used as a parser: nothing goes through ``extract*``.

Whiteouts follow the OCI image spec: ``.wh.<name>`` and the opaque marker
``.wh..wh..opq`` hide what *lower* layers put there; entries of the same
layer stay, whatever their order in the tarball.
"""

import errno
import gzip
import hashlib
import itertools
import os
import sqlite3
import stat
import tarfile
import zlib

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import boundedtar

CONF = conf.CONF
LOG = logging.getLogger(__name__)

WHITEOUT_PREFIX = '.wh.'
OPAQUE = '.wh..wh..opq'
CHUNK = 1024 * 1024
MAX_HEADER_BYTES = boundedtar.MAX_HEADER_BYTES
# Bytes a tar stream may carry after its end-of-archive marker (blocking).
MAX_TRAILER_BYTES = 16 * 1024 * 1024
# Directory entries read at once while removing a tree.
_REMOVE_BATCH = 64

_GZIP_MAGIC = b'\x1f\x8b'
_OTHER_MAGIC = ((b'\x28\xb5\x2f\xfd', 'zstd'), (b'BZh', 'bzip2'),
                (b'\xfd7zXZ\x00', 'xz'))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Kept here for the callers that read tar streams through this module.
BoundedTarInfo = boundedtar.BoundedTarInfo
open_tar_stream = boundedtar.open_tar_stream
iter_members = boundedtar.iter_members
split_member_name = boundedtar.split_member_name


class _HashingReader(object):
    """Hashes (and counts) what is read through it."""

    def __init__(self, fileobj):
        self._f = fileobj
        self.sha256 = hashlib.sha256()
        self.count = 0

    def read(self, size=-1):
        data = self._f.read(size)
        self.sha256.update(data)
        self.count += len(data)
        return data


def _decompressed(raw, name):
    magic = raw.peek(6)[:6]
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode='rb')
    for prefix, kind in _OTHER_MAGIC:
        if magic.startswith(prefix):
            raise exception.ImageError(
                reason='layer %s: unsupported compression %s' % (name, kind))
    return raw


def _path_key(parts):
    return '/'.join(parts).encode('utf-8', 'surrogateescape')


class _DirMeta(object):
    """Metadata of the directories applied so far, kept on disk.

    Directory modes and times are set last (writing children changes
    mtimes, a read-only mode would stop later writes), so they must be
    remembered; an image may have hundreds of thousands of directories,
    so they live in a private temporary SQLite database, not in memory.
    Removing a tree forgets its directories with one indexed range.
    """

    def __init__(self):
        # '' is a private on-disk database that SQLite deletes on close.
        self._db = sqlite3.connect('', isolation_level=None)
        for pragma in ('cache_size=-256', 'temp_store=FILE',
                       'journal_mode=OFF', 'synchronous=OFF'):
            self._db.execute('PRAGMA ' + pragma)
        self._db.execute('CREATE TABLE dirs (path BLOB PRIMARY KEY, '
                         'depth INTEGER, mode INTEGER, uid INTEGER, '
                         'gid INTEGER, mtime REAL)')
        self._db.execute('BEGIN')

    def set(self, parts, meta):
        self._db.execute('INSERT OR REPLACE INTO dirs VALUES (?, ?, ?, ?, '
                         '?, ?)', (_path_key(parts), len(parts)) + meta)

    def forget(self, parts):
        """Forget ``parts`` and every directory below it."""
        key = _path_key(parts)
        # Below "a" is ["a/", "a0"): "0" follows "/" in ASCII.
        self._db.execute('DELETE FROM dirs WHERE path = ? OR (path >= ? AND '
                         'path < ?)', (key, key + b'/', key + b'0'))

    def deepest_first(self):
        for row in self._db.execute('SELECT path, mode, uid, gid, mtime '
                                    'FROM dirs ORDER BY depth DESC'):
            path = row[0].decode('utf-8', 'surrogateescape')
            yield (path.split('/') if path else []), row[1:]

    def close(self):
        self._db.close()


def _remove_tree(parent, name):
    """Remove directory ``name`` of ``parent`` and all it holds.

    Unlike shutil.rmtree, never lists a whole directory into memory;
    follows no symlink.
    """
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _empty_dir(fd):
    while True:
        # A new listing each time: entries go as they are read, so the
        # work stays linear.
        with os.scandir(fd) as it:
            batch = [(e.name, e.is_dir(follow_symlinks=False))
                     for e in itertools.islice(it, _REMOVE_BATCH)]
        if not batch:
            return
        for child, is_dir in batch:
            if is_dir:
                _remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)


class LayerApplier(object):
    """Squashes layers into ``root``; limits count over the whole image.

    Use as a context manager, call :meth:`apply` for each layer from the
    bottom up, then :meth:`finish`.  After an exception the root holds a
    partial tree that the caller must discard.

    Memory and work stay linear in the entries, whatever the layers'
    shape: nothing is kept per entry in memory (directory metadata goes
    to disk, see :class:`_DirMeta`), and a layer is read twice instead
    of remembering what it created: first its whiteouts are applied
    (they hide only what lower layers put there), then its other
    members.
    """

    def __init__(self, root, max_layers=None, max_entries=None,
                 max_bytes=None):
        """Prepare to apply layers.

        :param root: the (empty) directory to fill.
        :param max_layers: most layers; CONF.kata_image.max_layers.
        :param max_entries: most members and extended headers in all
            layers; CONF.kata_image.max_entries.
        :param max_bytes: most member bytes in all layers;
            CONF.kata_image.max_unpacked_mb.
        """
        opts = CONF.kata_image
        self.max_layers = max_layers or opts.max_layers
        self.budget = boundedtar.Budget(
            max_entries or opts.max_entries,
            max_bytes or opts.max_unpacked_mb * 1024 * 1024)
        self.layers = 0
        self._is_root = os.geteuid() == 0
        self._warned_owner = False
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._dir_meta = _DirMeta()

    @property
    def entries(self):
        return self.budget.entries

    @property
    def size(self):
        return self.budget.size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
            self._dir_meta.close()

    def apply(self, layer, name=None):
        """Apply one layer on top of what is already in the root.

        :param layer: path of a tar file, uncompressed or gzip.
        :param name: how to call the layer in messages.
        :returns: ``sha256:<hex>`` of the uncompressed tar (the diff id).
        :raises: ImageError, UnsafeLayerMember, ImageLimitExceeded
        """
        name = name or os.path.basename(layer)
        self.layers += 1
        if self.layers > self.max_layers:
            raise exception.ImageLimitExceeded(
                reason='more than %d layers' % self.max_layers)
        if self.layers > 1:
            # The first pass may use what the image has left; the second
            # charges the image.
            self._read(layer, name, self._whiteout_member,
                       self.budget.remaining())
        return self._read(layer, name, self._apply_member, self.budget)

    def _read(self, layer, name, func, budget):
        """Call ``func(tar, member, budget)`` for each member of a layer.

        :returns: the diff id.
        """
        try:
            with open(layer, 'rb') as raw:
                reader = _HashingReader(_decompressed(raw, name))
                with open_tar_stream(reader, budget) as tar:
                    for member in iter_members(tar):
                        func(tar, member, budget)
                # The diff id covers the padding after the end marker too.
                limit = reader.count + MAX_TRAILER_BYTES
                while reader.read(CHUNK):
                    if reader.count > limit:
                        raise exception.ImageError(
                            reason='layer %s: data after the tar end' % name)
        except (tarfile.TarError, EOFError, zlib.error,
                gzip.BadGzipFile) as e:
            raise exception.ImageError(
                reason='layer %s is not a valid tar: %s' % (name, e))
        return 'sha256:' + reader.sha256.hexdigest()

    def finish(self):
        """Set directory modes and times, deepest first.

        :raises: ImageError
        """
        for parts, meta in self._dir_meta.deepest_first():
            try:
                fd = self._open_dir(parts, create=False)
            except (OSError, exception.UnsafeLayerMember):
                continue
            try:
                self._set_meta_fd(fd, *meta)
            except (OSError, OverflowError, ValueError) as e:
                raise exception.ImageError(
                    reason='setting metadata of %s: %s' % (
                        '/'.join(parts) or '/', e))
            finally:
                os.close(fd)

    # Members.

    def _whiteout_member(self, tar, member, budget):
        """First pass: only whiteouts, against the lower layers."""
        budget.charge(member.size)
        parts = split_member_name(member.name)
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(member.name, parts)

    def _apply_member(self, tar, member, budget):
        # Sizes of every member count: skipped data is still decompressed.
        budget.charge(member.size)
        parts = split_member_name(member.name)
        boundedtar.check_link(member)
        base = parts[-1] if parts else ''
        if base.startswith(WHITEOUT_PREFIX):
            # Applied by the first pass (and hides nothing in the first
            # layer).
            self._check_whiteout(member.name, base)
            return
        if member.ischr() or member.isblk():
            LOG.debug('Skipping device node %s', member.name)
            return
        if not parts:
            if not member.isdir():
                raise exception.UnsafeLayerMember(
                    member=member.name, reason='replaces the root directory')
            self._dir_meta.set([], self._meta(member))
            return
        try:
            parent = self._open_dir(parts[:-1], create=True,
                                    member=member.name)
            try:
                self._create(tar, member, parent, parts)
            finally:
                os.close(parent)
        except (OSError, OverflowError, ValueError) as e:
            raise exception.ImageError(
                reason='cannot apply %s: %s' % (member.name, e))
        if member.isdir():
            self._dir_meta.set(parts, self._meta(member))

    def _create(self, tar, member, parent, parts):
        base = parts[-1]
        existing = self._lstat(base, parent)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                if existing is not None:
                    os.unlink(base, dir_fd=parent)
                os.mkdir(base, 0o700, dir_fd=parent)
            return
        if member.islnk():
            # Resolve the target first: replacing it would break the link.
            self._hardlink(member, parent, base, parts)
            return
        if existing is not None:
            self._remove(parent, base, existing, parts)
        if member.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
            try:
                src = tar.extractfile(member)
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    self._write_all(fd, chunk)
                self._set_meta_fd(fd, *self._meta(member))
            finally:
                os.close(fd)
        elif member.issym():
            # The target is image data, it is not resolved here; nothing
            # is ever written through it (see _open_dir).
            os.symlink(member.linkname, base, dir_fd=parent)
            self._chown(member, base, parent)
            os.utime(base, ns=(int(member.mtime * 10 ** 9),) * 2,
                     dir_fd=parent, follow_symlinks=False)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            fd = os.open(base, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW |
                         os.O_CLOEXEC, dir_fd=parent)
            try:
                self._set_meta_fd(fd, *self._meta(member))
            finally:
                os.close(fd)
        else:
            LOG.warning('Skipping %s of unsupported tar type %r',
                        member.name, member.type)

    @staticmethod
    def _write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _hardlink(self, member, parent, base, parts):
        target = split_member_name(member.linkname)
        if not target:
            raise exception.UnsafeLayerMember(
                member=member.name, reason='hardlink to the root')
        unsafe = exception.UnsafeLayerMember(
            member=member.name, reason='hardlink target %r is not an '
            'extracted regular file' % member.linkname)
        try:
            tparent = self._open_dir(target[:-1], create=False,
                                     member=member.name)
        except FileNotFoundError:
            raise unsafe
        try:
            st = self._lstat(target[-1], tparent)
            if st is None or not stat.S_ISREG(st.st_mode):
                raise unsafe
            existing = self._lstat(base, parent)
            if existing is not None:
                if (existing.st_dev, existing.st_ino) == (st.st_dev,
                                                          st.st_ino):
                    return
                self._remove(parent, base, existing, parts)
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(tparent)

    @staticmethod
    def _check_whiteout(name, base):
        """:returns: False for aufs metadata, which is ignored."""
        if base.startswith(WHITEOUT_PREFIX * 2) and base != OPAQUE:
            return False
        hidden = base[len(WHITEOUT_PREFIX):]
        if base != OPAQUE and hidden in ('', '.', '..'):
            raise exception.UnsafeLayerMember(member=name,
                                              reason='invalid whiteout')
        return True

    def _whiteout(self, name, parts):
        """Hide lower-layer content named by a whiteout member."""
        base = parts[-1]
        if not self._check_whiteout(name, base):
            LOG.debug('Ignoring aufs metadata %s', name)
            return
        try:
            parent = self._open_dir(parts[:-1], create=False, member=name)
        except FileNotFoundError:
            return
        try:
            if base == OPAQUE:
                for child_parts in self._children(parent, parts[:-1]):
                    self._dir_meta.forget(child_parts)
                _empty_dir(parent)
            else:
                hidden = base[len(WHITEOUT_PREFIX):]
                st = self._lstat(hidden, parent)
                if st is not None:
                    self._remove(parent, hidden, st,
                                 parts[:-1] + [hidden])
        except OSError as e:
            raise exception.ImageError(
                reason='cannot apply whiteout %s: %s' % (name, e))
        finally:
            os.close(parent)

    @staticmethod
    def _children(fd, parts):
        """The directories of directory ``fd`` (at ``parts``), streamed."""
        with os.scandir(fd) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    yield parts + [entry.name]

    def _remove(self, parent, base, st, parts):
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(parent, base)
            self._dir_meta.forget(parts)
        else:
            os.unlink(base, dir_fd=parent)

    # Paths and metadata.

    def _open_dir(self, parts, create, member=None):
        """Open the directory ``parts`` below the root, following nothing.

        :raises: UnsafeLayerMember if a component is not a directory,
            FileNotFoundError if it is missing and ``create`` is False.
        """
        fd = os.dup(self._root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    new = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    new = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = self._lstat(part, fd)
                    what = ('a symlink' if st and stat.S_ISLNK(st.st_mode)
                            else 'not a directory')
                    raise exception.UnsafeLayerMember(
                        member=member or '/'.join(parts),
                        reason='%s is %s' % ('/'.join(parts[:i + 1]), what))
                os.close(fd)
                fd = new
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _lstat(name, dir_fd):
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def _meta(member):
        return member.mode & 0o7777, member.uid, member.gid, member.mtime

    def _may_chown(self):
        if self._is_root:
            return True
        if not self._warned_owner:
            LOG.warning('Not running as root: file ownership in image '
                        'layers is ignored')
            self._warned_owner = True
        return False

    def _chown(self, member, base, parent):
        if self._may_chown():
            os.chown(base, member.uid, member.gid, dir_fd=parent,
                     follow_symlinks=False)

    def _set_meta_fd(self, fd, mode, uid, gid, mtime):
        # chown first: it clears setuid/setgid bits that chmod then sets.
        if self._may_chown():
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(int(mtime * 10 ** 9),) * 2)


def apply_layers(root, layers):
    """Apply layer files into ``root`` (see :class:`LayerApplier`).

    :param root: an existing, empty directory.
    :param layers: paths of layer tarballs, bottom layer first.
    :returns: list of the diff ids (``sha256:<hex>``) of the layers.
    :raises: ImageError, UnsafeLayerMember, ImageLimitExceeded
    """
    with LayerApplier(root) as applier:
        diff_ids = [applier.apply(layer) for layer in layers]
        applier.finish()
    return diff_ids
