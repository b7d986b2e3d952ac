"""Commit a container's filesystem changes as a new image.

Like ``docker commit``: the new image is the container's image plus one
layer, the container's writable layer as the agent streams it
(``layer_diff``: overlayfs whiteouts become ``.wh.`` entries; the
container's processes are frozen while it is read), with the container's
effective configuration (Cmd, Entrypoint, Env, WorkingDir, User).

The container must have a running VM: its writable layer is an ext4 disk
that only the guest mounts.  Mounting it on the host would let a hostile
guest feed the host kernel a crafted file system, so a stopped container
cannot be committed (start it first).  A paused container is unpaused
for the commit and paused again.
"""

import datetime
import hashlib
import json
import os
import time

from oslo_log import log as logging

from kata_zun.agent import protocol
from kata_zun import conf
from kata_zun import exception
from kata_zun.image import reference
from kata_zun.runtime import faultpoint

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CONFIG_KEYS = ('Cmd', 'Entrypoint', 'Env', 'WorkingDir', 'User',
               'Labels', 'ExposedPorts', 'Volumes', 'StopSignal')
STREAM_TIMEOUT = 3600.0
IDLE_TIMEOUT = 300.0


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%S.%fZ')


def effective_config(image_config, spec):
    """The image ``config`` object of what the container runs.

    The image's Entrypoint is kept when the container's argv starts with
    it; otherwise the whole argv becomes Cmd and Entrypoint is cleared.
    """
    config = dict(image_config or {})
    argv = list(spec.get('argv') or [])
    entrypoint = list(config.get('Entrypoint') or [])
    if entrypoint and argv[:len(entrypoint)] == entrypoint:
        config['Cmd'] = argv[len(entrypoint):] or None
    else:
        config['Entrypoint'] = None
        config['Cmd'] = argv
    config['Env'] = list(spec.get('env') or [])
    config['WorkingDir'] = spec.get('workdir') or ''
    config['User'] = spec.get('user') or ''
    return config


def new_config(base, diff_id, container_config, comment=None):
    """The configuration document of the committed image."""
    doc = json.loads(json.dumps(base))
    created = _now()
    doc['created'] = created
    doc['config'] = container_config
    doc.setdefault('rootfs', {'type': 'layers', 'diff_ids': []})
    doc['rootfs']['diff_ids'] = list(doc['rootfs']['diff_ids']) + [diff_id]
    history = list(doc.get('history') or [])
    entry = {'created': created, 'created_by': 'kata-zun commit'}
    if comment:
        entry['comment'] = comment
    history.append(entry)
    doc['history'] = history
    doc.pop('container', None)
    doc.pop('container_config', None)
    return doc


def read_layer(rt, c, path, report=None):
    """Stream the container's writable layer into ``path``.

    :param report: optional progress callable (byte counts as
        :class:`kata_zun.image.progress.Update`).

    :returns: the diff id (``sha256:<hex>``) of the layer.
    :raises: Conflict, ImageLimitExceeded, KataZunException
    """
    limit = CONF.kata_image.max_unpacked_mb * 1024 * 1024
    sha = hashlib.sha256()
    size = 0
    err = bytearray()
    with rt.connect(c) as client, open(path, 'wb') as out:
        if report is not None:
            from kata_zun.image import progress
            out = progress.CountingWriter(
                out, report, 'Writable layer %s' % c.id[:12], 'Reading')
        result = rt._process_call(client, 'layer_diff', {})
        handle = result['proc']
        deadline = time.monotonic() + STREAM_TIMEOUT
        idle = time.monotonic() + IDLE_TIMEOUT
        while True:
            now = time.monotonic()
            if now > deadline or now > idle:
                raise exception.KataZunException(
                    'reading the writable layer of %s timed out' % c.id[:12])
            for frame in client.read_frames(1.0):
                if frame.type == protocol.STDOUT:
                    h, data = frame.stream()
                    if h != handle:
                        continue
                    size += len(data)
                    if size > limit:
                        raise exception.ImageLimitExceeded(
                            reason='the writable layer of %s is larger '
                            'than %d MiB' % (c.id[:12],
                                             CONF.kata_image.max_unpacked_mb))
                    sha.update(data)
                    out.write(data)
                    idle = time.monotonic() + IDLE_TIMEOUT
                elif frame.type == protocol.STDERR:
                    h, data = frame.stream()
                    if h == handle and len(err) < 65536:
                        err += data
                elif frame.type == protocol.EVENT:
                    event = frame.json()
                    if event.get('proc') != handle:
                        continue
                    code = event.get('exit_code')
                    if code != 0:
                        raise exception.KataZunException(
                            'reading the writable layer of %s failed: %s' % (
                                c.id[:12], err.decode('utf-8', 'replace')
                                .strip() or 'exit code %s' % code))
                    out.flush()
                    os.fsync(out.fileno())
                    return 'sha256:' + sha.hexdigest()


def commit(rt, ref, repo_tag=None, changes=None, comment=None,
           progress=None):
    """Commit container ``ref`` as image ``repo_tag``.

    :param rt: the :class:`kata_zun.runtime.manager.Runtime`.
    :param repo_tag: ``repo[:tag]`` of the new image, or None (untagged).
    :param changes: dict of image config keys (Cmd, Entrypoint, Env,
        WorkingDir, User, Labels, ...) overriding the container's.
    :returns: the :class:`kata_zun.image.store.ImageRecord`.
    :raises: ContainerNotFound, Conflict (no running VM), InvalidInput,
        ImageError, ImageLimitExceeded
    """
    from kata_zun.runtime import record
    report = progress or (lambda message: None)
    name = reference.parse(repo_tag).name if repo_tag else None
    for key in changes or {}:
        if key not in CONFIG_KEYS:
            raise exception.InvalidInput(reason='cannot change %r in a '
                                         'commit' % key)
    c = rt.get(ref)
    if not c.shim_alive or c.status not in (record.RUNNING,
                                            record.PAUSED,
                                            record.CREATED):
        raise exception.Conflict(
            reason='container %s is %s: commit needs its VM running (its '
            'writable layer is only mounted in the guest)' % (c.id[:12],
                                                              c.status))
    store = rt.images
    base_image, config_file, layers = store.open_blobs(
        c.config['image']['id'])
    try:
        base = json.loads(config_file.read().decode('utf-8'))
    finally:
        config_file.close()
        for _diff, f in layers:
            f.close()
    with store.workdir() as work:
        layout = os.path.join(work, 'image')
        os.makedirs(os.path.join(layout, 'layers'))
        layer_path = os.path.join(layout, 'layers', 'new.tar')
        repause = c.status == record.PAUSED
        if repause:
            rt.unpause(c.id)
        try:
            # The fault matrix kills here: a paused container's VM runs
            # for the read.
            faultpoint.reached('commit-read')
            report('Reading the writable layer of %s' % c.id[:12])
            diff_id = read_layer(rt, c, layer_path, report)
        finally:
            if repause:
                rt.pause(c.id)
        container_config = effective_config(base_image.config,
                                            c.config['agent_spec'])
        container_config.update(changes or {})
        doc = new_config(base, diff_id, container_config, comment)
        names = []
        for i, digest in enumerate(base_image.layers):
            dest = os.path.join(layout, 'layers', '%d.tar' % i)
            os.link(store.blob_path(digest), dest)
            names.append('layers/%d.tar' % i)
        names.append('layers/new.tar')
        data = json.dumps(doc, sort_keys=True,
                          separators=(',', ':')).encode()
        config_hex = hashlib.sha256(data).hexdigest()
        with open(os.path.join(layout, config_hex + '.json'), 'wb') as f:
            f.write(data)
        manifest = [{'Config': config_hex + '.json',
                     'RepoTags': [name] if name else None,
                     'Layers': names}]
        with open(os.path.join(layout, 'manifest.json'), 'w') as f:
            json.dump(manifest, f)
        images = store.load_archive(layout, progress=report)
    LOG.info('Committed container %s as %s %s', c.id, images[0].id,
             name or '')
    return images[0]
