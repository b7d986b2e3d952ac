"""Build a small real image from the host's busybox-static.

The demo image of the quick start, and the test images of the unit
tests::

    python -m kata_zun.image.busybox busybox.tar [--oci] [--tag T]

Archives are reproducible (fixed times and owners, sorted JSON, gzip
without a timestamp), so an image id only changes with its content.

A layer is a list of entries ``(name, kind, data, mode[, uid, gid])``
(see :class:`Entry`); ``kind`` is one of :data:`KINDS`.  ``data`` is the
content of a ``file`` (bytes or str), the target of a ``symlink`` or
``hardlink``, and unused otherwise.  A ``whiteout`` entry hides ``name``
of lower layers, an ``opaque`` entry hides everything lower layers put
in directory ``name``.  Names are written as given, so tests can build
malicious layers too.
"""

import argparse
import collections
import gzip
import hashlib
import io
import json
import posixpath
import subprocess
import sys
import tarfile

from kata_zun.image import layers as layers_mod
from kata_zun.image import reference

BUSYBOX = '/bin/busybox'
MTIME = 1704067200  # 2024-01-01T00:00:00Z
CREATED = '2024-01-01T00:00:00Z'
PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
KINDS = ('file', 'dir', 'symlink', 'hardlink', 'fifo', 'whiteout', 'opaque')

MT_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MT_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MT_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
MT_OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'

PASSWD = (b'root:x:0:0:root:/root:/bin/sh\n'
          b'app:x:1000:1000:app:/home/app:/bin/sh\n'
          b'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n')
GROUP = b'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n'

Entry = collections.namedtuple('Entry', 'name kind data mode uid gid',
                               defaults=(None, None, 0, 0))
Entry.__doc__ = 'One layer member: see the module documentation.'

_DEFAULT_MODES = {'file': 0o644, 'dir': 0o755, 'symlink': 0o777,
                  'hardlink': 0o644, 'fifo': 0o644}
_TAR_TYPES = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE,
              'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE,
              'fifo': tarfile.FIFOTYPE, 'whiteout': tarfile.REGTYPE,
              'opaque': tarfile.REGTYPE}


def rootfs(busybox=BUSYBOX, extra_files=None):
    """The entries of the busybox root filesystem layer.

    :param busybox: path of a static busybox binary.
    :param extra_files: optional dict of path -> bytes added as files.
    :returns: a list of :class:`Entry`.
    """
    with open(busybox, 'rb') as f:
        binary = f.read()
    applets = subprocess.run([busybox, '--list'], check=True,
                             capture_output=True, text=True).stdout.split()
    entries = [Entry(d, 'dir') for d in
               ('bin', 'dev', 'etc', 'home', 'proc', 'sys', 'usr', 'var')]
    entries += [
        Entry('root', 'dir', mode=0o700),
        Entry('tmp', 'dir', mode=0o1777),
        Entry('home/app', 'dir', mode=0o755, uid=1000, gid=1000),
        Entry('bin/busybox', 'file', binary, 0o755),
        Entry('etc/passwd', 'file', PASSWD),
        Entry('etc/group', 'file', GROUP),
    ]
    entries += [Entry('bin/' + a, 'symlink', 'busybox')
                for a in sorted(set(applets)) if a != 'busybox']
    for name, data in sorted((extra_files or {}).items()):
        entries.append(Entry(name, 'file', data))
    return entries


def _tarinfo(name, kind, size=0, mode=None, uid=0, gid=0, target=''):
    info = tarfile.TarInfo(name)
    info.type = _TAR_TYPES[kind]
    info.size = size
    info.mode = _DEFAULT_MODES.get(kind, 0o644) if mode is None else mode
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    info.linkname = target
    return info


def layer_tar(entries):
    """Build an uncompressed layer tarball.

    :param entries: :class:`Entry` objects or plain tuples.
    :returns: the tarball as bytes.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        for entry in entries:
            e = Entry(*entry)
            if e.kind not in KINDS:
                raise ValueError('unknown entry kind %r' % e.kind)
            name, data, target = e.name, b'', ''
            if e.kind == 'whiteout':
                head, base = posixpath.split(e.name)
                name = posixpath.join(head, layers_mod.WHITEOUT_PREFIX + base)
            elif e.kind == 'opaque':
                name = posixpath.join(e.name, layers_mod.OPAQUE)
            elif e.kind == 'file':
                data = e.data.encode() if isinstance(e.data, str) else e.data
            elif e.kind in ('symlink', 'hardlink'):
                target = e.data
            info = _tarinfo(name, e.kind,
                            len(data), e.mode, e.uid, e.gid, target)
            t.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()


def _digest(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def _image_layers(busybox, extra_files, layers):
    tars = []
    if busybox:
        tars.append(layer_tar(rootfs(busybox, extra_files)))
    elif extra_files:
        tars.append(layer_tar(Entry(n, 'file', d)
                              for n, d in sorted(extra_files.items())))
    tars += [layer_tar(layer) for layer in layers]
    if not tars:
        raise ValueError('an image needs at least one layer')
    return tars


def image_config(diff_ids, config_overrides=None):
    """The image configuration document of an image.

    :param diff_ids: digests of the uncompressed layers, bottom first.
    :param config_overrides: dict merged into the ``config`` object
        (e.g. ``{'Entrypoint': [...], 'User': 'app'}``).
    :returns: the configuration as a dict.
    """
    config = {'Cmd': ['sh'], 'Env': [PATH_ENV]}
    config.update(config_overrides or {})
    return {
        'architecture': 'amd64',
        'os': 'linux',
        'created': CREATED,
        'config': config,
        'rootfs': {'type': 'layers', 'diff_ids': list(diff_ids)},
        'history': [{'created': CREATED,
                     'created_by': 'kata-zun busybox layer %d' % i}
                    for i in range(len(diff_ids))],
    }


def _add(tar, name, data=None):
    if data is None:
        tar.addfile(_tarinfo(name, 'dir'))
    else:
        tar.addfile(_tarinfo(name, 'file', len(data)), io.BytesIO(data))


def write_docker_archive(path, repo_tags=('busybox:latest',),
                         extra_files=None, config_overrides=None,
                         layers=(), busybox=BUSYBOX):
    """Write a ``docker save`` style archive.

    :param path: the output file.
    :param repo_tags: names of the image (``repo:tag``).
    :param extra_files: dict of path -> bytes added to the base layer.
    :param config_overrides: see :func:`image_config`.
    :param layers: more layers (lists of entries) on top of the base.
    :param busybox: the busybox binary; None builds no base layer.
    :returns: the image id, ``sha256:<hex>`` of the configuration.
    """
    tars = _image_layers(busybox, extra_files, layers)
    diff_ids = [_digest(t) for t in tars]
    config = _json(image_config(diff_ids, config_overrides))
    config_hex = _digest(config).split(':')[1]
    layer_names, parent = [], None
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as out:
        for diff_id, data in zip(diff_ids, tars):
            # Like docker: a v1 layer id chained from the parent's.
            layer_id = hashlib.sha256(
                ('%s %s' % (parent, diff_id)).encode()).hexdigest()
            v1 = {'id': layer_id, 'created': CREATED}
            if parent:
                v1['parent'] = parent
            _add(out, layer_id)
            _add(out, layer_id + '/VERSION', b'1.0')
            _add(out, layer_id + '/json', _json(v1))
            _add(out, layer_id + '/layer.tar', data)
            layer_names.append(layer_id + '/layer.tar')
            parent = layer_id
        _add(out, config_hex + '.json', config)
        manifest = [{'Config': config_hex + '.json',
                     'RepoTags': list(repo_tags) or None,
                     'Layers': layer_names}]
        _add(out, 'manifest.json', _json(manifest))
        repositories = {}
        for tag in repo_tags:
            ref = reference.parse(tag)
            repositories.setdefault(ref.repo, {})[ref.tag] = parent
        _add(out, 'repositories', _json(repositories))
    return 'sha256:' + config_hex


def write_oci_archive(path, ref_name='latest', image_name='busybox:latest',
                      extra_files=None, config_overrides=None, layers=(),
                      busybox=BUSYBOX, nested=False):
    """Write an OCI image-layout archive with gzip layers.

    :param path: the output file.
    :param ref_name: ``org.opencontainers.image.ref.name`` annotation, or
        None.
    :param image_name: ``io.containerd.image.name`` annotation, or None.
    :param extra_files: see :func:`write_docker_archive`.
    :param config_overrides: see :func:`image_config`.
    :param layers: see :func:`write_docker_archive`.
    :param busybox: see :func:`write_docker_archive`.
    :param nested: reference the manifest through a multi-platform index
        (with an arm64 entry whose blobs are absent).
    :returns: the image id.
    """
    tars = _image_layers(busybox, extra_files, layers)
    config = _json(image_config([_digest(t) for t in tars],
                                config_overrides))
    blobs = {}

    def descriptor(media_type, data, **extra):
        blobs[_digest(data)] = data
        return dict(mediaType=media_type, digest=_digest(data),
                    size=len(data), **extra)

    layer_descs = [descriptor(MT_OCI_LAYER_GZIP, gzip.compress(t, mtime=0))
                   for t in tars]
    manifest = {'schemaVersion': 2, 'mediaType': MT_OCI_MANIFEST,
                'config': descriptor(MT_OCI_CONFIG, config),
                'layers': layer_descs}
    annotations = {}
    if ref_name:
        annotations['org.opencontainers.image.ref.name'] = ref_name
    if image_name:
        annotations['io.containerd.image.name'] = image_name
    top = descriptor(MT_OCI_MANIFEST, _json(manifest),
                     platform={'architecture': 'amd64', 'os': 'linux'})
    if nested:
        arm64 = {'mediaType': MT_OCI_MANIFEST, 'size': 2,
                 'digest': _digest(b'{}'),
                 'platform': {'architecture': 'arm64', 'os': 'linux'}}
        top = descriptor(MT_OCI_INDEX, _json(
            {'schemaVersion': 2, 'mediaType': MT_OCI_INDEX,
             'manifests': [arm64, top]}))
    top['annotations'] = annotations
    index = {'schemaVersion': 2, 'mediaType': MT_OCI_INDEX,
             'manifests': [top]}
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as out:
        _add(out, 'oci-layout', _json({'imageLayoutVersion': '1.0.0'}))
        _add(out, 'blobs')
        _add(out, 'blobs/sha256')
        for digest in sorted(blobs):
            _add(out, 'blobs/sha256/' + digest.split(':')[1], blobs[digest])
        _add(out, 'index.json', _json(index))
    return _digest(config)


def main(argv=None):
    """Command line: write the busybox demo image archive."""
    parser = argparse.ArgumentParser(
        prog='python -m kata_zun.image.busybox',
        description='Write a busybox image archive built from the host '
                    'busybox-static binary.')
    parser.add_argument('output', help='archive file to write')
    parser.add_argument('--oci', action='store_true',
                        help='write an OCI image layout instead of the '
                             '"docker save" format')
    parser.add_argument('--tag', default='busybox:latest',
                        help='image name (default: %(default)s)')
    parser.add_argument('--busybox', default=BUSYBOX,
                        help='busybox binary (default: %(default)s)')
    args = parser.parse_args(argv)
    ref = reference.parse(args.tag)
    if args.oci:
        image_id = write_oci_archive(args.output, ref_name=ref.tag,
                                     image_name=ref.name,
                                     busybox=args.busybox)
    else:
        image_id = write_docker_archive(args.output, repo_tags=[ref.name],
                                        busybox=args.busybox)
    print(image_id)
    return 0


if __name__ == '__main__':
    sys.exit(main())
