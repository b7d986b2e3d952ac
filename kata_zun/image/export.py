"""Write images of the store as a ``docker save`` tarball, streaming.

The layout is the one ``docker save`` wrote before Docker 25 and that
every ``docker load`` reads::

    <v1 id>/VERSION, <v1 id>/json, <v1 id>/layer.tar   one per layer
    <config hex>.json                                   the image config
    manifest.json     [{"Config", "RepoTags", "Layers"}]
    repositories      {"repo": {"tag": "<top v1 id>"}}

v1 ids are chained from the parent's like Docker does, so a layer shared
by two saved images is written once.  The tar is produced as a sequence
of byte chunks (:func:`iter_chunks`): headers are built with
:class:`tarfile.TarInfo`, file data is copied from the store's blob files
in chunks, so memory use does not depend on the image size.
"""

import hashlib
import json
import os
import tarfile

from kata_zun import exception
from kata_zun.image import reference

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
CREATED = '1970-01-01T00:00:00Z'


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()


def _header(name, size=0, kind=tarfile.REGTYPE, mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding='utf-8',
                      errors='strict')


def _pad(size):
    rest = size % BLOCK
    return b'\0' * (BLOCK - rest) if rest else b''


def _member(name, data):
    return [_header(name, len(data)), data, _pad(len(data))]


def _file_member(name, fileobj):
    size = os.fstat(fileobj.fileno()).st_size
    yield _header(name, size)
    fileobj.seek(0)
    left = size
    while left:
        chunk = fileobj.read(min(CHUNK, left))
        if not chunk:
            raise exception.ImageError(
                reason='blob %s shrank while being exported' % name)
        left -= len(chunk)
        yield chunk
    yield _pad(size)


def _repo_tags(ref, record):
    """A name given as ``ref`` is the only tag; an id saves every name."""
    hexpart = ref[len('sha256:'):] if ref.startswith('sha256:') else ref
    if record.id.startswith('sha256:' + hexpart):
        return list(record.repo_tags)
    try:
        name = reference.parse(ref).name
    except exception.InvalidReference:
        return list(record.repo_tags)
    return [name] if name in record.repo_tags else list(record.repo_tags)


def iter_chunks(store, refs):
    """Yield the ``docker save`` tarball of ``refs`` as byte chunks.

    All blob files are opened before the first byte: a concurrent
    ``rmi`` cannot break the stream.

    :raises: ImageNotFound, ImageError (before the first chunk)
    """
    opened = []
    try:
        for ref in refs:
            record, config, layers = store.open_blobs(ref)
            opened.append((ref, record, config, layers))
        yield from _write(store, opened)
    finally:
        for _ref, _record, config, layers in opened:
            config.close()
            for _diff, f in layers:
                f.close()


def _write(store, opened):
    manifest = []
    repositories = {}
    written = set()
    for ref, record, config, layers in opened:
        parent = None
        names = []
        for diff_id, layer in layers:
            v1 = hashlib.sha256(('%s %s' % (parent, diff_id)).encode()
                                ).hexdigest()
            if v1 not in written:
                written.add(v1)
                meta = {'id': v1, 'created': CREATED}
                if parent:
                    meta['parent'] = parent
                yield _header(v1 + '/', kind=tarfile.DIRTYPE, mode=0o755)
                yield from _member(v1 + '/VERSION', b'1.0')
                yield from _member(v1 + '/json', _json(meta))
                yield from _file_member(v1 + '/layer.tar', layer)
            names.append(v1 + '/layer.tar')
            parent = v1
        hexid = record.id.split(':', 1)[1]
        if hexid + '.json' not in written:
            written.add(hexid + '.json')
            yield from _file_member(hexid + '.json', config)
        tags = _repo_tags(ref, record)
        for tag in tags:
            parsed = reference.parse(tag)
            repositories.setdefault(parsed.repo, {})[parsed.tag] = parent
        manifest.append({'Config': hexid + '.json',
                         'RepoTags': tags or None, 'Layers': names})
    yield from _member('manifest.json', _json(manifest))
    yield from _member('repositories', _json(repositories))
    yield b'\0' * (BLOCK * 2)


def write(store, refs, fileobj):
    """Write the tarball of :func:`iter_chunks` to ``fileobj``."""
    for chunk in iter_chunks(store, refs):
        if chunk:
            fileobj.write(chunk)


class ExportStream(object):
    """The tarball as a file-like object and an iterator of chunks.

    Not a generator on purpose: zun's Glance driver joins generators in
    memory, while a file-like object is streamed by glanceclient.
    """

    def __init__(self, store, refs):
        self._chunks = iter_chunks(store, refs)
        self._buf = b''
        self._done = False

    def __iter__(self):
        if self._buf:
            buf, self._buf = self._buf, b''
            yield buf
        for chunk in self._chunks:
            if chunk:
                yield chunk
        self._done = True

    def read(self, size=-1):
        if size is None or size < 0:
            return self._buf + b''.join(iter(self))
        while len(self._buf) < size and not self._done:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._done = True
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def close(self):
        self._chunks.close()
