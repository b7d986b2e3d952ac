"""The local image store.

Layout under the store root::

    .lock               flock held while the store is changed
    tags.json           {"name:tag": "sha256:<hex>"}: the only tag record
    images/<hex>.json   one record per image, named by its config digest
    block/<hex>.img     the read-only block image, shared by every
                        container of the image
    blobs/sha256/<hex>  content-addressed blobs: image configurations
                        (named by the image id) and uncompressed layer
                        tars (named by their diff id), kept for commit
                        and export; a blob is referenced by the records
                        naming it and removed with the last of them
    tmp/<work>/         archives being loaded (flock held by the loader)
    registry/           pull locks and manifest digests (see
                        registry/pulling.py)
    projects/<key>/     tags.json and digests/ of one Zun project (see
                        :meth:`ImageStore.scoped`)

Directories are 0700, files 0600: images may hold tenants' secrets.

Files that must survive a crash are replaced atomically.  A load unpacks
and builds its block image in its work directory without the store lock
and only takes the lock to rename the result in and write the record and
tags, so a crash leaves at most a work directory, removed when the store
is next opened.
"""

import contextlib
import copy
import dataclasses
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import tempfile

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image import blockimage
from kata_zun.image import layers
from kata_zun.image import reference
from kata_zun.image import registry
from kata_zun.runtime import fileutils

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MIN_PREFIX = 4
_HEX = re.compile(r'[0-9a-f]+\Z')
_HEX64 = re.compile(r'[0-9a-f]{64}\Z')


@dataclasses.dataclass
class ImageRecord(object):
    """An image of the store.

    ``config`` is the ``config`` object of the OCI image configuration
    (Entrypoint, Cmd, Env, WorkingDir, User, ...); ``size`` the unpacked
    size in bytes.
    """

    id: str
    repo_tags: list
    config: dict
    architecture: str
    os: str
    created: str
    size: int
    block_image: str
    block_fs: str
    layers: list = dataclasses.field(default_factory=list)


def _hex_of(digest):
    hexpart = digest.split(':', 1)[1] if ':' in digest else digest
    if not _HEX64.match(hexpart):
        raise exception.ImageError(reason='bad digest %r' % digest)
    return hexpart


def _rmtree(path):
    if os.geteuid() != 0:
        # Without root, the contents of read-only image directories could
        # not be removed.
        for top, dirs, _files in os.walk(path):
            for name in dirs:
                sub = os.path.join(top, name)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _disk_bytes(path):
    """:returns: the bytes ``path`` takes on disk (sparse files count
        what they hold), 0 when it is gone.
    """
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def _fsync_file(path):
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


class ImageStore(object):
    """Images loaded from archives, as block images ready for guests."""

    def __init__(self, root):
        """Open (and create) the store, removing leftovers of crashes.

        :param root: the store directory, e.g. /var/lib/kata-zun/images.
        """
        self.root = os.path.abspath(root)
        self._images = os.path.join(self.root, 'images')
        self._block = os.path.join(self.root, 'block')
        self._tmp = os.path.join(self.root, 'tmp')
        self._tags_path = os.path.join(self.root, 'tags.json')
        self._blobs = os.path.join(self.root, 'blobs', 'sha256')
        self._projects = os.path.join(self.root, 'projects')
        self.scope = None
        # The state path whose event log records pulls, loads, tags and
        # deletions (set by the runtime; None: no events).
        self.events_path = None
        self.digests_dir = os.path.join(self.root, 'registry', 'digests')
        # Images are private to the host (tenants' images, credentials
        # in their configs): no other user may read the store.
        for path in (self.root, self._images, self._block, self._tmp,
                     os.path.dirname(self._blobs), self._blobs,
                     self._projects, os.path.dirname(self.digests_dir)):
            os.makedirs(path, mode=0o700, exist_ok=True)
            if os.stat(path).st_mode & 0o077:
                try:
                    os.chmod(path, 0o700)
                except PermissionError as e:
                    LOG.warning('The image store stays readable by others: '
                                '%s', e)
        self._cleanup()

    def scoped(self, project):
        """This store as one project sees it.

        Names (tags, and images pulled by digest) that the project
        creates are its own: a name another project gave never satisfies
        a lookup of this one.  The host operator's names (those of the
        CLI: images it loaded or pulled for every project) are found
        after the project's own, and a project cannot remove them.
        Content is shared: an image already in the store is not loaded
        again, only named for the project.

        :param project: the project id (any string).
        :returns: an :class:`ImageStore` on the same root.
        """
        view = copy.copy(self)
        view.scope = project
        key = hashlib.sha256(project.encode('utf-8')).hexdigest()[:32]
        directory = os.path.join(self._projects, key)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        view._tags_path = os.path.join(directory, 'tags.json')
        view.digests_dir = os.path.join(directory, 'digests')
        return view

    # Public API.

    def load_archive(self, path, progress=None):
        """Load every image of a ``docker save`` or OCI archive.

        An OCI image layout may also be a directory.

        Images already in the store are not unpacked again; their tags
        are updated.  A tag naming another image moves to the new one.
        Images are committed one by one: when one fails, those before it
        stay loaded.

        :param path: the archive file or layout directory.
        :param progress: optional callable receiving progress messages.
        :returns: list of :class:`ImageRecord`, one per image.
        :raises: ImageError (and its subclasses), OSError
        """
        report = progress or (lambda message: None)
        with self._workdir() as work:
            blobs = os.path.join(work, 'blobs')
            os.mkdir(blobs)
            report('Reading %s' % path)
            images = archive.read_archive(path, blobs)
            records = [self._load(image, work, report) for image in images]
        for record in records:
            self._event('load', record.id,
                        name=','.join(record.repo_tags or ()) or None)
        return records

    def _event(self, action, image_id, **attributes):
        if self.events_path is not None:
            from kata_zun.runtime import events
            events.emit(self.events_path, 'image', action, image_id,
                        attributes)

    def pull(self, ref, policy='ifnotpresent', credentials=None,
             progress=None):
        """Pull an image from its registry (see :mod:`registry`).

        Concurrent pulls of one reference share the work: the later ones
        wait and find the image.

        :param ref: an image reference; ``busybox`` means
            ``library/busybox:latest`` of ``[kata_image] default_registry``.
        :param policy: ``ifnotpresent`` pulls unless the store has the
            image; ``never`` only looks in the store; ``always`` fetches
            the manifest and downloads the image unless the store has it.
        :param credentials: dict with ``username`` and ``password``, or
            None for ``[kata_image] credentials_file`` or anonymous.
        :param progress: optional callable receiving progress messages.
        :returns: :class:`ImageRecord`
        :raises: ImageNotFound, ImageError (and its subclasses),
            registry.RegistryError, InvalidInput, OSError
        """
        had = None
        if policy != 'always' and self.events_path is not None:
            # Docker records a pull only when it pulls.
            try:
                had = self.get(ref).id
            except exception.KataZunException:
                had = None
        record = registry.pull(self, ref, policy=policy,
                               credentials=credentials, progress=progress)
        if record.id != had:
            self._event('pull', record.id, name=ref)
        return record

    def tag(self, ref, name):
        """Name an image; a name of another image moves to this one.

        :param ref: as for :meth:`get`.
        :param name: an image name, e.g. ``busybox:1.36``.
        :returns: :class:`ImageRecord`
        :raises: ImageNotFound, InvalidReference
        """
        name = reference.parse(name).name
        with self._lock():
            hexid = self._resolve(ref, self._read_tags())[0]
            self._tag('sha256:' + hexid, [name])
            record = self._record(hexid, self._read_tags())
        self._event('tag', record.id, name=name)
        return record

    def workdir(self):
        """A context manager: a new work directory on the store's file
        system, removed at exit or, after a crash, when the store is next
        opened.
        """
        return self._workdir()

    def get(self, ref):
        """Find an image.

        :param ref: a name (``busybox``, ``repo:tag``), a full id
            ``sha256:<hex>`` or a unique prefix of at least 4 hex digits.
        :returns: :class:`ImageRecord`
        :raises: ImageNotFound
        """
        tags = self._read_tags()
        return self._record(self._resolve(ref, tags)[0], tags)

    def list(self):
        """All images of the store, newest first.

        :returns: list of :class:`ImageRecord`.
        """
        tags = self._read_tags()
        records = []
        for hexid in self._ids():
            try:
                records.append(self._record(hexid, tags))
            except exception.KataZunException as e:
                LOG.warning('Skipping image %s: %s', hexid, e)
        records.sort(key=lambda r: (r.created or '', r.id), reverse=True)
        return records

    def remove(self, ref, users=()):
        """Untag or delete an image.

        A name of an image that has other names is only untagged;
        otherwise the image and all its names are deleted.

        :param ref: as for :meth:`get`.
        :param users: ids of the containers using the image.
        :returns: True if the image was deleted, False if only untagged.
        :raises: ImageNotFound, ImageInUse
        """
        with self._lock():
            tags = self._read_tags()
            hexid, tag = self._resolve(ref, tags)
            users = sorted(users)
            if users:
                raise exception.ImageInUse(ref=ref,
                                           containers=', '.join(users))
            image_id = 'sha256:' + hexid
            names = [t for t, i in tags.items() if i == image_id]
            if tag and len(names) > 1:
                del tags[tag]
                self._write_tags(tags)
                LOG.info('Untagged %s', tag)
                self._event('untag', image_id, name=tag)
                return False
            for name in names:
                del tags[name]
            if names:
                self._write_tags(tags)
            if self._named_elsewhere(image_id):
                if self.scope is not None or tag:
                    # Another project (or the CLI) still names it: only
                    # this one's names go.
                    LOG.info('Untagged %s of %s', ', '.join(names) or '-',
                             image_id)
                    self._event('untag', image_id,
                                name=','.join(names) or None)
                    return False
                # The host's operator deletes by id: every project's
                # names go with it.
                self._unname_everywhere(image_id)
            # The record goes first: a block image without one is removed
            # as a leftover when the store is next opened.
            os.unlink(self._record_path(hexid))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._block_path(hexid))
            fileutils.fsync_dir(self._images)
            self._remove_unused_blobs()
            LOG.info('Deleted image %s', image_id)
            self._event('delete', image_id, name=','.join(names) or None)
            return True

    def named_by_projects(self, image_id):
        """:returns: whether a Zun project names the image (what the
            host's CLI must not prune).
        """
        for key in os.listdir(self._projects):
            try:
                tags = fileutils.read_json(
                    os.path.join(self._projects, key, 'tags.json'))
            except (OSError, ValueError):
                continue
            if isinstance(tags, dict) and image_id in tags.values():
                return True
        return False

    def _named_elsewhere(self, image_id):
        """Whether a tag file other than this view's names the image."""
        paths = [os.path.join(self.root, 'tags.json')]
        paths += [os.path.join(self._projects, d, 'tags.json')
                  for d in os.listdir(self._projects)]
        for path in paths:
            if path == self._tags_path:
                continue
            try:
                tags = fileutils.read_json(path)
            except (OSError, ValueError):
                continue
            if isinstance(tags, dict) and image_id in tags.values():
                return True
        return False

    def _unname_everywhere(self, image_id):
        """Under the lock: drop every project's names of the image."""
        for key in os.listdir(self._projects):
            path = os.path.join(self._projects, key, 'tags.json')
            try:
                tags = fileutils.read_json(path)
            except (OSError, ValueError):
                continue
            if isinstance(tags, dict) and image_id in tags.values():
                fileutils.write_json(path, {
                    t: i for t, i in tags.items() if i != image_id}, 0o600)

    def blob_path(self, digest):
        """The file of blob ``sha256:<hex>`` (which may not exist)."""
        return os.path.join(self._blobs, _hex_of(digest))

    def open_blobs(self, ref):
        """Open the configuration and the layer tars of an image.

        Open files survive a concurrent removal of the image.

        :returns: (record, config file, [(diff id, layer file), ...]); the
            caller closes the files.
        :raises: ImageNotFound, ImageError (an image loaded before the
            store kept blobs)
        """
        files = []
        with self._lock():
            tags = self._read_tags()
            record = self._record(self._resolve(ref, tags)[0], tags)
            if not self._has_blobs(record.id.split(':', 1)[1]):
                raise exception.ImageError(
                    reason='image %s was loaded before the store kept its '
                    'layers: load or pull it again to export or commit '
                    'it' % record.id)
            try:
                for digest in [record.id] + record.layers:
                    files.append(open(self.blob_path(digest), 'rb'))
            except BaseException:
                for f in files:
                    f.close()
                raise
        return record, files[0], list(zip(record.layers, files[1:]))

    def export(self, refs, fileobj):
        """Write a ``docker save`` tarball of images to ``fileobj``.

        Streams the blobs: no image is held in memory.  See
        :mod:`kata_zun.image.export`.

        :param refs: image references (as for :meth:`get`).
        :raises: ImageNotFound, ImageError
        """
        from kata_zun.image import export
        export.write(self, refs, fileobj)

    def gc(self):
        """Remove what no image uses: blobs no record references,
        block images without a record, leftovers of failed loads.

        :returns: dict with the lists of removed ``blobs`` and ``block``
            images.
        """
        with self._lock():
            blobs = self._remove_unused_blobs()
            ids = set(self._ids())
            block = []
            for name in os.listdir(self._block):
                if not (name.endswith('.img') and name[:-4] in ids):
                    os.unlink(os.path.join(self._block, name))
                    block.append(name)
        self._cleanup()
        for name in blobs + block:
            LOG.info('Garbage collected %s', name)
        return {'blobs': blobs, 'block': block}

    def usage(self):
        """What the store takes on disk (``kata-zun system df``).

        Read without the store's lock: a concurrent load or removal makes
        the figures a moment old, never wrong on disk.

        :returns: dict with ``images`` ({image id: bytes of its block
            image}), ``cache`` (bytes of blobs no image references and
            of leftover work directories: what ``image-gc`` frees).
        """
        images = {}
        for hexid in self._ids():
            images['sha256:' + hexid] = _disk_bytes(self._block_path(hexid))
        used = self._referenced_blobs()
        cache = 0
        for name in os.listdir(self._blobs):
            if name not in used:
                cache += _disk_bytes(os.path.join(self._blobs, name))
        for root, _dirs, files in os.walk(self._tmp):
            cache += sum(_disk_bytes(os.path.join(root, f)) for f in files)
        return {'images': images, 'cache': cache}

    # Blobs.

    def _has_blobs(self, hexid):
        try:
            doc = fileutils.read_json(self._record_path(hexid))
        except (OSError, ValueError):
            return False
        digests = ['sha256:' + hexid] + list(doc.get('layers') or [])
        return bool(doc.get('layers')) and all(
            os.path.exists(self.blob_path(d)) for d in digests)

    def _stage_blob(self, path, work, digest):
        """A verified, uncompressed copy (or link) of a blob in the work
        directory, to be kept by :meth:`_keep_blob`.
        """
        hexdigest = _hex_of(digest)
        staged = os.path.join(work, 'keep-' + hexdigest)
        if os.path.exists(staged):
            return staged
        with contextlib.suppress(FileNotFoundError):
            # Linked, so a concurrent gc cannot take it away.
            os.link(self.blob_path(digest), staged)
            return staged
        with open(path, 'rb') as f:
            compressed = f.read(2) == b'\x1f\x8b'
        if not compressed:
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            return staged
        sha = hashlib.sha256()
        with gzip.open(path, 'rb') as src, open(staged + '.part',
                                                'wb') as dst:
            while True:
                chunk = src.read(archive.CHUNK)
                if not chunk:
                    break
                sha.update(chunk)
                dst.write(chunk)
        if sha.hexdigest() != hexdigest:
            raise exception.ImageError(
                reason='layer %s decompresses to sha256:%s' % (
                    digest, sha.hexdigest()))
        os.rename(staged + '.part', staged)
        return staged

    def _keep_blob(self, digest, staged):
        dest = self.blob_path(digest)
        if os.path.exists(dest) or not os.path.exists(staged):
            return
        os.chmod(staged, 0o600)
        _fsync_file(staged)
        try:
            os.link(staged, dest)
        except FileExistsError:
            pass

    def _referenced_blobs(self):
        used = set()
        for hexid in self._ids():
            try:
                doc = fileutils.read_json(self._record_path(hexid))
            except (OSError, ValueError):
                continue
            used.add(hexid)
            used.update(_hex_of(d) for d in doc.get('layers') or ()
                        if isinstance(d, str) and d.startswith('sha256:'))
        return used

    def _remove_unused_blobs(self):
        """Under the lock: remove blobs that no record references."""
        used = self._referenced_blobs()
        removed = []
        for name in os.listdir(self._blobs):
            if name not in used:
                os.unlink(os.path.join(self._blobs, name))
                removed.append('sha256:' + name)
        if removed:
            fileutils.fsync_dir(self._blobs)
        return removed

    # Loading.

    def _load(self, image, work, report):
        hexid = image.id.split(':', 1)[1]
        with self._lock():
            if self._complete(hexid) and self._has_blobs(hexid):
                self._tag(image.id, image.repo_tags)
                report('Image %s is already loaded' % image.id)
                return self._record(hexid, self._read_tags())

        staging = os.path.join(work, 'rootfs-' + hexid)
        os.mkdir(staging)
        os.chmod(staging, 0o755)
        count = len(image.layers)
        staged = {}
        if image.config_path:
            staged[image.id] = self._stage_blob(image.config_path, work,
                                                image.id)
        with layers.LayerApplier(staging) as applier:
            for i, (layer, diff_id) in enumerate(
                    zip(image.layers, image.diff_ids), 1):
                report('Loading layer %d/%d (%s)' % (i, count, diff_id))
                actual = applier.apply(layer.path, name=diff_id)
                if actual != diff_id:
                    raise exception.ImageError(
                        reason='layer %d/%d is %s, the config says %s' % (
                            i, count, actual, diff_id))
                staged[diff_id] = self._stage_blob(layer.path, work,
                                                   diff_id)
            applier.finish()
            size = applier.size
        fs_type = CONF.kata_image.block_fs
        report('Building the %s block image' % fs_type)
        built = os.path.join(work, hexid + '.img')
        blockimage.build(staging, built, fs_type)
        os.chmod(built, 0o600)
        _fsync_file(built)
        _rmtree(staging)

        config = image.config
        doc = {'id': image.id,
               'config': config.get('config') or {},
               'architecture': config.get('architecture'),
               'os': config.get('os'),
               'created': config.get('created'),
               'size': size,
               'block_fs': fs_type,
               'layers': list(image.diff_ids) if image.config_path else []}
        with self._lock():
            for digest, path in staged.items():
                self._keep_blob(digest, path)
            fileutils.fsync_dir(self._blobs)
            # A concurrent load of the same image may have won the race.
            if not self._complete(hexid):
                os.replace(built, self._block_path(hexid))
                fileutils.fsync_dir(self._block)
                fileutils.write_json(self._record_path(hexid), doc, 0o600)
            elif not self._has_blobs(hexid):
                # Loaded before the store kept blobs: now it has them.
                fileutils.write_json(self._record_path(hexid), doc, 0o600)
            self._tag(image.id, image.repo_tags)
            record = self._record(hexid, self._read_tags())
        report('Loaded image %s %s' % (image.id, ' '.join(image.repo_tags)))
        return record

    def _complete(self, hexid):
        return (os.path.exists(self._record_path(hexid)) and
                os.path.exists(self._block_path(hexid)))

    def _tag(self, image_id, names):
        tags = self._read_tags()
        changed = False
        for name in names:
            old = tags.get(name)
            if old != image_id:
                if old:
                    LOG.info('Moving tag %s from %s to %s', name, old,
                             image_id)
                tags[name] = image_id
                changed = True
        if changed:
            self._write_tags(tags)

    # Records and tags.

    def _record_path(self, hexid):
        return os.path.join(self._images, hexid + '.json')

    def _block_path(self, hexid):
        return os.path.join(self._block, hexid + '.img')

    def _ids(self):
        return sorted(name[:-5] for name in os.listdir(self._images)
                      if name.endswith('.json') and _HEX64.match(name[:-5]))

    def _record(self, hexid, tags):
        try:
            doc = fileutils.read_json(self._record_path(hexid))
        except FileNotFoundError:
            raise exception.ImageNotFound(ref='sha256:' + hexid)
        except (OSError, ValueError) as e:
            raise exception.ImageError(
                reason='unreadable record of sha256:%s: %s' % (hexid, e))
        image_id = 'sha256:' + hexid
        return ImageRecord(
            id=image_id,
            repo_tags=sorted(t for t, i in tags.items() if i == image_id),
            config=doc.get('config') or {},
            architecture=doc.get('architecture'),
            os=doc.get('os'),
            created=doc.get('created'),
            size=doc.get('size', 0),
            block_image=self._block_path(hexid),
            block_fs=doc.get('block_fs'),
            layers=list(doc.get('layers') or []))

    def _resolve(self, ref, tags):
        """Find the image id of a reference.

        :returns: (hex id, the tag if ``ref`` is a name, else None).
        :raises: ImageNotFound
        """
        if not isinstance(ref, str) or not ref:
            raise exception.ImageNotFound(ref=ref)
        hexpart = ref[len('sha256:'):] if ref.startswith('sha256:') else ref
        if _HEX64.match(hexpart) and hexpart in self._ids():
            return hexpart, None
        if not ref.startswith('sha256:'):
            try:
                name = reference.parse(ref).name
            except exception.InvalidReference:
                name = None
            # A short name of an image pulled from the default registry.
            qualified = registry.qualified_name(ref)
            # A project sees its own names, then the host operator's (the
            # CLI's: `kata-zun load`, pull, tag), never another project's.
            views = [tags]
            if self.scope is not None:
                views.append(self._operator_tags())
            for view in views:
                for candidate in (name, qualified):
                    if candidate and candidate in view:
                        return view[candidate].split(':', 1)[1], candidate
        if len(hexpart) >= MIN_PREFIX and _HEX.match(hexpart):
            matches = [h for h in self._ids() if h.startswith(hexpart)]
            if len(matches) == 1:
                return matches[0], None
            if matches:
                raise exception.ImageNotFound(
                    ref='%s (ambiguous id prefix)' % ref)
        raise exception.ImageNotFound(ref=ref)

    def _operator_tags(self):
        try:
            tags = fileutils.read_json(os.path.join(self.root, 'tags.json'))
        except (OSError, ValueError):
            return {}
        return tags if isinstance(tags, dict) else {}

    def _read_tags(self):
        try:
            tags = fileutils.read_json(self._tags_path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise exception.ImageError(reason='unreadable %s: %s' % (
                self._tags_path, e))
        return tags if isinstance(tags, dict) else {}

    def _write_tags(self, tags):
        fileutils.write_json(self._tags_path, tags, 0o600)

    # Locking and leftovers.

    @contextlib.contextmanager
    def _lock(self):
        fd = os.open(os.path.join(self.root, '.lock'),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _workdir(self):
        # Created and locked under the store lock, so that _cleanup never
        # sees it unlocked.
        with self._lock():
            path = tempfile.mkdtemp(prefix='load-', dir=self._tmp)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            _rmtree(path)
            os.close(fd)

    def _cleanup(self):
        with self._lock():
            for name in os.listdir(self._tmp):
                path = os.path.join(self._tmp, name)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY |
                                 os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    os.unlink(path)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a load in progress
                LOG.info('Removing the leftover of a failed load: %s', path)
                _rmtree(path)
                os.close(fd)
            ids = set(self._ids())
            leftovers = [os.path.join(self._block, n)
                         for n in os.listdir(self._block)
                         if not (n.endswith('.img') and n[:-4] in ids)]
            # Temporary files of interrupted atomic writes.
            for directory in (self.root, self._images):
                leftovers += [os.path.join(directory, n)
                              for n in os.listdir(directory)
                              if n.startswith('.tmp-')]
            for path in leftovers:
                LOG.info('Removing leftover %s', path)
                os.unlink(path)
