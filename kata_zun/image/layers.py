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
import os
import shutil
import stat
import tarfile
import zlib

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception

CONF = conf.CONF
LOG = logging.getLogger(__name__)

WHITEOUT_PREFIX = '.wh.'
OPAQUE = '.wh..wh..opq'
CHUNK = 1024 * 1024
# pax/GNU long-name headers are read into memory by tarfile: bound them.
MAX_HEADER_BYTES = 1024 * 1024
# Bytes a tar stream may carry after its end-of-archive marker (blocking).
MAX_TRAILER_BYTES = 16 * 1024 * 1024

_GZIP_MAGIC = b'\x1f\x8b'
_OTHER_MAGIC = ((b'\x28\xb5\x2f\xfd', 'zstd'), (b'BZh', 'bzip2'),
                (b'\xfd7zXZ\x00', 'xz'))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized extended headers."""

    def _proc_member(self, tar):
        if (self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE,
                          tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                          tarfile.GNUTYPE_LONGLINK) and
                self.size > MAX_HEADER_BYTES):
            raise exception.ImageLimitExceeded(
                reason='tar extended header of %d bytes' % self.size)
        return super()._proc_member(tar)


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


def open_tar_stream(fileobj):
    """Open a tar stream for sequential reading, bounding its headers.

    :param fileobj: a binary file object positioned at the tar data.
    :returns: a ``tarfile.TarFile`` in stream mode.
    """
    return tarfile.open(fileobj=fileobj, mode='r|', tarinfo=BoundedTarInfo)


def iter_members(tar):
    """Yield the members of ``tar`` without keeping them all in memory."""
    while True:
        member = tar.next()
        if member is None:
            return
        # TarFile remembers every member it has read; we never look back.
        tar.members = []
        yield member


def split_member_name(name):
    """Split a member name into safe path components.

    :param name: a tar member (or hardlink target) name.
    :returns: a list of components; empty for the root itself.
    :raises: UnsafeLayerMember for absolute names, ``..`` or NUL bytes.
    """
    if '\0' in name:
        raise exception.UnsafeLayerMember(member=name, reason='NUL byte')
    if name.startswith('/'):
        raise exception.UnsafeLayerMember(member=name, reason='absolute path')
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise exception.UnsafeLayerMember(member=name,
                                          reason="'..' component")
    return parts


def _decompressed(raw, name):
    magic = raw.peek(6)[:6]
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode='rb')
    for prefix, kind in _OTHER_MAGIC:
        if magic.startswith(prefix):
            raise exception.ImageError(
                reason='layer %s: unsupported compression %s' % (name, kind))
    return raw


class LayerApplier(object):
    """Squashes layers into ``root``; limits count over the whole image.

    Use as a context manager, call :meth:`apply` for each layer from the
    bottom up, then :meth:`finish`.  After an exception the root holds a
    partial tree that the caller must discard.
    """

    def __init__(self, root, max_layers=None, max_entries=None,
                 max_bytes=None):
        """Prepare to apply layers.

        :param root: the (empty) directory to fill.
        :param max_layers: most layers; CONF.kata_image.max_layers.
        :param max_entries: most members in all layers;
            CONF.kata_image.max_entries.
        :param max_bytes: most member bytes in all layers;
            CONF.kata_image.max_unpacked_mb.
        """
        opts = CONF.kata_image
        self.max_layers = max_layers or opts.max_layers
        self.max_entries = max_entries or opts.max_entries
        self.max_bytes = max_bytes or opts.max_unpacked_mb * 1024 * 1024
        self.layers = 0
        self.entries = 0
        self.size = 0
        self._is_root = os.geteuid() == 0
        self._warned_owner = False
        # Directory metadata is set last: writing children changes mtimes
        # and a read-only mode would stop later writes.
        self._dir_meta = {}
        self._keep = set()
        self._root_fd = os.open(root, _DIR_FLAGS)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

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
        self._keep = set()
        try:
            with open(layer, 'rb') as raw:
                reader = _HashingReader(_decompressed(raw, name))
                with open_tar_stream(reader) as tar:
                    for member in iter_members(tar):
                        self._apply_member(tar, member)
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
        finally:
            self._keep = set()
        return 'sha256:' + reader.sha256.hexdigest()

    def finish(self):
        """Set directory modes and times, deepest first.

        :raises: ImageError
        """
        for key in sorted(self._dir_meta, key=len, reverse=True):
            parts = key.split('/') if key else []
            try:
                fd = self._open_dir(parts, create=False)
            except (OSError, exception.UnsafeLayerMember):
                continue
            try:
                self._set_meta_fd(fd, *self._dir_meta[key])
            except (OSError, OverflowError, ValueError) as e:
                raise exception.ImageError(
                    reason='setting metadata of %s: %s' % (key or '/', e))
            finally:
                os.close(fd)
        self._dir_meta = {}

    # Members.

    def _apply_member(self, tar, member):
        self.entries += 1
        if self.entries > self.max_entries:
            raise exception.ImageLimitExceeded(
                reason='more than %d entries' % self.max_entries)
        # Sizes of every member count: skipped data is still decompressed.
        self.size += member.size
        if self.size > self.max_bytes:
            raise exception.ImageLimitExceeded(
                reason='more than %d unpacked bytes' % self.max_bytes)
        parts = split_member_name(member.name)
        base = parts[-1] if parts else ''
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member.name, parts)
            return
        if member.ischr() or member.isblk():
            LOG.debug('Skipping device node %s', member.name)
            return
        if not parts:
            if not member.isdir():
                raise exception.UnsafeLayerMember(
                    member=member.name, reason='replaces the root directory')
            self._dir_meta[''] = self._meta(member)
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
        path = '/'.join(parts)
        for i in range(1, len(parts) + 1):
            self._keep.add('/'.join(parts[:i]))
        if member.isdir():
            self._dir_meta[path] = self._meta(member)

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
            self._hardlink(member, parent, base)
            return
        if existing is not None:
            self._remove(parent, base, existing, '/'.join(parts))
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

    def _hardlink(self, member, parent, base):
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
                self._remove(parent, base, existing, None)
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(tparent)

    def _whiteout(self, name, parts):
        """Hide lower-layer content named by a whiteout member."""
        base = parts[-1]
        hidden = base[len(WHITEOUT_PREFIX):]
        if base.startswith(WHITEOUT_PREFIX * 2) and base != OPAQUE:
            LOG.debug('Ignoring aufs metadata %s', name)
            return
        if base != OPAQUE and hidden in ('', '.', '..'):
            raise exception.UnsafeLayerMember(member=name,
                                              reason='invalid whiteout')
        try:
            parent = self._open_dir(parts[:-1], create=False, member=name)
        except FileNotFoundError:
            return
        prefix = '/'.join(parts[:-1])
        try:
            names = os.listdir(parent) if base == OPAQUE else [hidden]
            for child in names:
                path = prefix + '/' + child if prefix else child
                self._prune(parent, child, path)
        except OSError as e:
            raise exception.ImageError(
                reason='cannot apply whiteout %s: %s' % (name, e))
        finally:
            os.close(parent)

    def _prune(self, parent, base, path):
        """Remove what lower layers put at ``path``, keep this layer's."""
        st = self._lstat(base, parent)
        if st is None:
            return
        if path not in self._keep:
            self._remove(parent, base, st, path)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
            try:
                for child in os.listdir(fd):
                    self._prune(fd, child, path + '/' + child)
            finally:
                os.close(fd)

    def _remove(self, parent, base, st, path):
        if stat.S_ISDIR(st.st_mode):
            # rmtree with dir_fd works on file descriptors and does not
            # follow symlinks.
            shutil.rmtree(base, dir_fd=parent)
            if path is not None:
                prefix = path + '/'
                for key in [k for k in self._dir_meta
                            if k == path or k.startswith(prefix)]:
                    del self._dir_meta[key]
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
