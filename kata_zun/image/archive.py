"""Read image archives: ``docker save`` tarballs and OCI image layouts.

The archive is read once, member by member, and its files are copied to
a work directory (hashing them on the way), so neither layers nor the
archive are ever held in memory.  An image layout may also be a
directory (a pulled image): its files are hashed and used in place.
Then the JSON documents are parsed and every blob referenced by digest
is checked against its hash.  Layers of both formats are verified once
more when applied: the digest of each uncompressed layer must be the
config's diff id.
"""

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
import zlib

from oslo_log import log as logging

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import boundedtar
from kata_zun.image import reference

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MT_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MT_DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
MT_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MT_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
CONFIG_TYPES = ('application/vnd.oci.image.config.v1+json',
                'application/vnd.docker.container.image.v1+json')
LAYER_TYPES = (
    'application/vnd.oci.image.layer.v1.tar',
    'application/vnd.oci.image.layer.v1.tar+gzip',
    'application/vnd.oci.image.layer.nondistributable.v1.tar',
    'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
    'application/vnd.docker.image.rootfs.diff.tar',
    'application/vnd.docker.image.rootfs.diff.tar.gzip',
    'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
)
ZSTD_LAYER_TYPES = ('application/vnd.oci.image.layer.v1.tar+zstd',
                    'application/vnd.oci.image.layer.nondistributable.v1'
                    '.tar+zstd')
ANNOTATION_REF = 'org.opencontainers.image.ref.name'
ANNOTATION_CONTAINERD = 'io.containerd.image.name'
PLATFORM = ('linux', 'amd64')
MAX_INDEX_DEPTH = 4
MAX_LINK_HOPS = 16
CHUNK = 1024 * 1024
# Members of an archive (not of its layers): a docker save archive has
# about four per layer.  Their names are kept in memory, so both are
# bounded.
MAX_ARCHIVE_MEMBERS = 8192
MAX_MEMBER_NAME = 256
# JSON documents (manifests, configs, indexes): nesting, and values in
# all (each costs memory once parsed).
MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 16384

_SHA256 = re.compile(r'sha256:([0-9a-f]{64})\Z')
_HEX64 = re.compile(r'[0-9a-f]{64}\Z')


@dataclasses.dataclass
class Layer(object):
    """A layer blob extracted to the work directory."""

    path: str
    media_type: str = None


@dataclasses.dataclass
class ArchiveImage(object):
    """An image found in an archive, its blobs verified.

    ``id`` is ``sha256:<hex>`` of the configuration document, ``config``
    the whole document, ``repo_tags`` normalized names with a tag.
    """

    id: str
    config: dict
    repo_tags: list
    layers: list
    config_path: str = None

    @property
    def diff_ids(self):
        return self.config['rootfs']['diff_ids']


@dataclasses.dataclass
class _Blob(object):
    path: str
    size: int
    sha256: str


def _bad(reason):
    return exception.ImageError(reason=reason)


def _archive_path(name, what):
    """Check a path named by a document: relative, inside the archive."""
    if not isinstance(name, str) or not name:
        raise _bad('%s: missing path' % what)
    try:
        parts = boundedtar.split_member_name(name)
    except exception.UnsafeLayerMember:
        raise _bad('%s: %r is not a relative path inside the archive'
                   % (what, name))
    return '/'.join(parts)


def _digest_hex(digest, what):
    match = _SHA256.match(digest) if isinstance(digest, str) else None
    if not match:
        raise _bad('%s: unsupported digest %r' % (what, digest))
    return match.group(1)


class _Members(object):
    """The regular files of an archive, copied to a work directory.

    The archive may hold at most ``max_entries`` members and
    ``max_unpacked_mb`` of file data.
    """

    def __init__(self, path, workdir):
        self._files = {}
        self._links = {}
        self._budget = self._new_budget()
        try:
            with open(path, 'rb') as f:
                with boundedtar.open_tar_stream(f, self._budget,
                                                'r|*') as tar:
                    for member in boundedtar.iter_members(tar):
                        self._budget.charge(member.size)
                        self._add(tar, member, workdir,
                                  self._budget.entries)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise _bad('%s is not a valid archive: %s' % (path, e))

    @staticmethod
    def _new_budget():
        opts = CONF.kata_image
        return boundedtar.Budget(
            min(opts.max_entries, MAX_ARCHIVE_MEMBERS),
            opts.max_unpacked_mb * 1024 * 1024)

    def _add(self, tar, member, workdir, count):
        name = _archive_path(member.name, 'archive member')
        if not (member.isreg() or member.issym() or member.islnk()):
            return
        if len(name) > MAX_MEMBER_NAME or len(
                member.linkname) > MAX_MEMBER_NAME:
            raise exception.ImageLimitExceeded(
                reason='archive member %r: name or link longer than %d '
                'bytes' % (name[:MAX_MEMBER_NAME], MAX_MEMBER_NAME))
        if member.isreg():
            dest = os.path.join(workdir, 'blob-%d' % count)
            sha = hashlib.sha256()
            src = tar.extractfile(member)
            with open(dest, 'wb') as f:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    sha.update(chunk)
                    f.write(chunk)
            self._files[name] = _Blob(dest, member.size, sha.hexdigest())
            self._links.pop(name, None)
        else:
            # docker save links duplicate layers to the first copy.
            target = member.linkname
            if member.issym():
                target = posixpath.join(posixpath.dirname(name), target)
            self._links[name] = posixpath.normpath(target)
            self._files.pop(name, None)

    def has(self, name):
        return name in self._files or name in self._links

    def get(self, name):
        """The extracted file of a member, links resolved in the archive."""
        for _hop in range(MAX_LINK_HOPS):
            if name in self._files:
                return self._files[name]
            if name not in self._links:
                raise _bad('archive has no file %r' % name)
            name = self._links[name]
            if name.startswith(('/', '../')) or name == '..':
                raise _bad('archive link %r points outside' % name)
        raise _bad('too many links at %r' % name)

    def load_json(self, name):
        return _load_json(self.get(name))


class _DirMembers(_Members):
    """The regular files of an image layout directory, hashed in place."""

    def __init__(self, path):
        self._files = {}
        self._links = {}
        self._budget = self._new_budget()
        for top, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(top, name)
                st = os.lstat(full)
                rel = os.path.relpath(full, path).replace(os.sep, '/')
                if not stat.S_ISREG(st.st_mode):
                    raise _bad('%s: %s is not a regular file' % (path, rel))
                self._budget.charge(st.st_size)
                if len(rel) > MAX_MEMBER_NAME:
                    raise _bad('%s: name %r longer than %d bytes' % (
                        path, rel[:MAX_MEMBER_NAME], MAX_MEMBER_NAME))
                sha = hashlib.sha256()
                with open(full, 'rb') as f:
                    while True:
                        chunk = f.read(CHUNK)
                        if not chunk:
                            break
                        sha.update(chunk)
                self._files[rel] = _Blob(full, st.st_size, sha.hexdigest())


def _load_json(blob):
    limit = CONF.kata_image.max_manifest_bytes
    if blob.size > limit:
        raise exception.ImageLimitExceeded(
            reason='JSON document of %d bytes (limit %d)' % (blob.size,
                                                             limit))
    with open(blob.path, 'rb') as f:
        data = f.read(limit + 1)
    return parse_json(data, 'JSON document')


_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
_JSON_BRACKETS = re.compile(rb'[][{}]')


def parse_json(data, what):
    """Parse an untrusted JSON document of bounded size.

    Before parsing, its nesting and its number of values are checked on
    the text (strings blanked out): the parsed objects of a document
    built of tiny values would take many times its size, and deep
    nesting would end in a RecursionError.

    :param data: the document, bytes.
    :param what: how to call it in messages.
    :returns: the parsed document.
    :raises: ImageError, ImageLimitExceeded
    """
    skeleton = _JSON_STRING.sub(b'""', data)
    values = (skeleton.count(b',') + skeleton.count(b'[') +
              skeleton.count(b'{'))
    if values > MAX_JSON_VALUES:
        raise exception.ImageLimitExceeded(
            reason='%s has more than %d values' % (what, MAX_JSON_VALUES))
    depth = 0
    for match in _JSON_BRACKETS.finditer(skeleton):
        if match.group() in b'[{':
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise _bad('%s is nested deeper than %d levels' % (
                    what, MAX_JSON_DEPTH))
        else:
            depth -= 1
    del skeleton
    try:
        return json.loads(data.decode('utf-8'))
    except (ValueError, RecursionError) as e:
        raise _bad('%s is not valid JSON: %s' % (what, e))


def _check_config(config, nlayers, what):
    if not isinstance(config, dict):
        raise _bad('%s: the image config is not an object' % what)
    rootfs = config.get('rootfs')
    diff_ids = rootfs.get('diff_ids') if isinstance(rootfs, dict) else None
    if (not isinstance(diff_ids, list) or rootfs.get('type') != 'layers' or
            not all(isinstance(d, str) and _SHA256.match(d)
                    for d in diff_ids)):
        raise _bad('%s: config has no valid rootfs.diff_ids' % what)
    if len(diff_ids) != nlayers:
        raise _bad('%s: %d layers but %d diff ids' % (what, nlayers,
                                                      len(diff_ids)))
    if nlayers > CONF.kata_image.max_layers:
        raise exception.ImageLimitExceeded(
            reason='%d layers (limit %d)' % (nlayers,
                                             CONF.kata_image.max_layers))
    if not isinstance(config.get('config') or {}, dict):
        raise _bad('%s: config.config is not an object' % what)


def _tags(names, what):
    """Normalize image names; names without a tag are dropped."""
    tags = []
    for name in names or ():
        try:
            ref = reference.parse(name)
        except exception.InvalidReference as e:
            raise _bad('%s: %s' % (what, e))
        if ref.digest:
            LOG.warning('%s: ignoring digest reference %s', what, name)
        elif ref.name not in tags:
            tags.append(ref.name)
    return tags


def _docker_images(members):
    manifest = members.load_json('manifest.json')
    if not isinstance(manifest, list):
        raise _bad('manifest.json is not a list')
    images = []
    for i, entry in enumerate(manifest):
        what = 'manifest.json entry %d' % i
        if not isinstance(entry, dict):
            raise _bad('%s is not an object' % what)
        config_name = _archive_path(entry.get('Config'), what)
        config_hex = posixpath.basename(config_name)
        if config_hex.endswith('.json'):
            config_hex = config_hex[:-len('.json')]
        if not _HEX64.match(config_hex):
            raise _bad('%s: config %r is not named by its digest'
                       % (what, config_name))
        blob = members.get(config_name)
        if blob.sha256 != config_hex:
            raise _bad('%s: digest mismatch of config %s' % (what,
                                                             config_name))
        layer_names = entry.get('Layers')
        if not isinstance(layer_names, list):
            raise _bad('%s: Layers is not a list' % what)
        config = _load_json(blob)
        _check_config(config, len(layer_names), what)
        layers = [Layer(members.get(_archive_path(n, what)).path)
                  for n in layer_names]
        tags = entry.get('RepoTags')
        if tags is not None and not isinstance(tags, list):
            raise _bad('%s: RepoTags is not a list' % what)
        images.append(ArchiveImage('sha256:' + config_hex, config,
                                   _tags(tags, what), layers, blob.path))
    return images


class _OCILayout(object):
    """Walks index.json down to image manifests, checking every blob."""

    def __init__(self, members):
        self.members = members

    def blob(self, desc, what, media_types=None):
        if not isinstance(desc, dict):
            raise _bad('%s: descriptor is not an object' % what)
        if media_types and desc.get('mediaType') not in media_types:
            raise _bad('%s: unexpected media type %r'
                       % (what, desc.get('mediaType')))
        hexdigest = _digest_hex(desc.get('digest'), what)
        blob = self.members.get('blobs/sha256/' + hexdigest)
        if blob.sha256 != hexdigest:
            raise _bad('%s: digest mismatch of blob sha256:%s'
                       % (what, hexdigest))
        if 'size' in desc and desc['size'] != blob.size:
            raise _bad('%s: blob sha256:%s has %d bytes, not %r'
                       % (what, hexdigest, blob.size, desc['size']))
        return blob

    def document(self, desc, what, media_types):
        doc = _load_json(self.blob(desc, what, media_types))
        if not isinstance(doc, dict):
            raise _bad('%s is not an object' % what)
        if doc.get('mediaType', desc['mediaType']) != desc['mediaType']:
            raise _bad('%s: media type differs from its descriptor' % what)
        return doc

    def manifest(self, desc, what, depth=0):
        """Follow indexes down to the linux/amd64 image manifest."""
        if desc.get('mediaType') in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise _bad('%s: indexes nested too deep' % what)
            index = self.document(desc, what, INDEX_TYPES)
            for i, sub in enumerate(_manifests(index, what)):
                platform = sub.get('platform') or {}
                if (platform.get('os'), platform.get('architecture')) == \
                        PLATFORM:
                    return self.manifest(sub, '%s/%d' % (what, i), depth + 1)
            raise _bad('%s: no %s/%s image' % ((what,) + PLATFORM))
        return self.document(desc, what, MANIFEST_TYPES)

    def image(self, desc, what):
        manifest = self.manifest(desc, what)
        config_blob = self.blob(manifest.get('config'), what + ' config',
                                CONFIG_TYPES)
        layer_descs = manifest.get('layers')
        if not isinstance(layer_descs, list):
            raise _bad('%s: layers is not a list' % what)
        config = _load_json(config_blob)
        _check_config(config, len(layer_descs), what)
        layers = []
        for i, ldesc in enumerate(layer_descs):
            lwhat = '%s layer %d' % (what, i)
            media_type = ldesc.get('mediaType') if isinstance(
                ldesc, dict) else None
            if media_type in ZSTD_LAYER_TYPES:
                raise _bad('%s: unsupported compression zstd' % lwhat)
            if media_type not in LAYER_TYPES:
                raise _bad('%s: unknown layer media type %r'
                           % (lwhat, media_type))
            layers.append(Layer(self.blob(ldesc, lwhat).path, media_type))
        annotations = desc.get('annotations') or {}
        name = annotations.get(ANNOTATION_CONTAINERD)
        if not name:
            name = annotations.get(ANNOTATION_REF)
            # A bare tag ("latest") names no repository.
            if name and not re.search('[:/@]', name):
                LOG.warning('%s: ref name %r has no repository, the image '
                            'is loaded untagged', what, name)
                name = None
        return ArchiveImage('sha256:' + config_blob.sha256, config,
                            _tags([name] if name else [], what), layers,
                            config_blob.path)


def _manifests(index, what):
    manifests = index.get('manifests')
    if not isinstance(manifests, list) or not all(
            isinstance(m, dict) for m in manifests):
        raise _bad('%s: manifests is not a list of descriptors' % what)
    return manifests


def _oci_images(members):
    layout = members.load_json('oci-layout')
    if not isinstance(layout, dict) or not str(
            layout.get('imageLayoutVersion', '')).startswith('1.'):
        raise _bad('unsupported OCI layout version')
    index = members.load_json('index.json')
    if not isinstance(index, dict):
        raise _bad('index.json is not an object')
    oci = _OCILayout(members)
    return [oci.image(desc, 'index.json manifest %d' % i)
            for i, desc in enumerate(_manifests(index, 'index.json'))]


def read_archive(path, workdir):
    """Read an image archive, extracting its files into ``workdir``.

    A ``docker save`` archive (``manifest.json``) is read as such, even
    when it is also an OCI layout (Docker 25 and later write both).

    :param path: the archive file (tar, possibly compressed), or an OCI
        image layout directory whose files are used in place.
    :param workdir: an empty directory that the caller removes later; the
        layer paths of the result point into it (or into ``path``).
    :returns: list of :class:`ArchiveImage`.
    :raises: ImageError, ImageLimitExceeded, OSError (writing the work
        directory)
    """
    if os.path.isdir(path):
        members = _DirMembers(path)
    else:
        members = _Members(path, workdir)
    if members.has('manifest.json'):
        images = _docker_images(members)
    elif members.has('oci-layout') and members.has('index.json'):
        images = _oci_images(members)
    else:
        raise _bad('%s is neither a docker save archive nor an OCI image '
                   'layout' % path)
    if not images:
        raise _bad('%s holds no image' % path)
    return images
