"""Pulling an image into the store: one pull of a name at a time (a
file lock), within ``[kata_image] pull_timeout``; the manifest checked,
the blobs fetched a few at a time into an OCI layout in a work directory
of the store, which the store loads like any archive.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import threading
import time

from kata_zun import conf
from kata_zun import exception
from kata_zun.image import archive
from kata_zun.image import progress
from kata_zun.image.registry import client
from kata_zun.image.registry import errors
from kata_zun.image.registry import manifests
from kata_zun.image.registry import names
from kata_zun.runtime import fileutils

CONF = conf.CONF

POLICIES = ('never', 'always', 'ifnotpresent')
LOCK_POLL = 0.1


def _mb(size):
    return '%.1f MB' % (size / 1e6)


class _Progress(object):
    """Byte counts of one blob (:class:`progress.Update`), at most every
    :data:`progress.REDRAW_INTERVAL` s: a terminal shows them as a
    line per layer, other reporters leave them out.
    """

    def __init__(self, report, label, size):
        self.report, self.label, self.size = report, label, size
        # The first count is reported at once: every blob of more than
        # one read shows its bytes at least once.
        self.last = float('-inf')

    def __call__(self, done, restarted_at):
        if restarted_at is not None:
            self.report('%s: the registry ignored the Range request, '
                        'restarting (had %s)' % (self.label,
                                                 _mb(restarted_at)))
        now = time.monotonic()
        if now - self.last >= progress.REDRAW_INTERVAL and done < self.size:
            self.last = now
            self.report(progress.Update(
                '%s: %s / %s' % (self.label, _mb(done), _mb(self.size)),
                key=self.label, done=done, total=self.size))


def _download(repo, config, layers, directory, report):
    """Fetch blobs concurrently into ``directory``, named by digest."""
    unique = {config['digest']: ('Config', config)}
    for i, desc in enumerate(layers, 1):
        unique.setdefault(desc['digest'], (
            'Layer %d/%d' % (i, len(layers)), desc))
    abort = threading.Event()

    def fetch(label, desc):
        label += ' ' + desc['digest'][7:19]
        report(progress.Update('%s: downloading %s' % (
            label, _mb(desc['size'])), key=label))
        repo.fetch_blob(desc, os.path.join(directory, desc['digest'][7:]),
                        _Progress(report, label, desc['size']), abort)
        report(progress.Update('%s: done' % label, key=label))

    workers = min(CONF.kata_image.max_concurrent_downloads, len(unique))
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        jobs = [pool.submit(fetch, label, desc)
                for label, desc in unique.values()]
        try:
            for job in concurrent.futures.as_completed(jobs):
                job.result()
        except BaseException:
            abort.set()
            for job in jobs:
                job.cancel()
            raise


@contextlib.contextmanager
def _file_lock(path, report, what, deadline):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Polled (flock also excludes this process's threads): one try,
        # then say why we wait.
        if not fileutils.poll_flock(fd, deadline=0):
            report('Waiting for another pull of %s' % what)
            if not fileutils.poll_flock(fd, deadline, LOCK_POLL):
                raise errors.PullTimeout(registry=what.registry,
                                         seconds=CONF.kata_image.pull_timeout)
        yield
    finally:
        os.close(fd)


def _by_digest(store, digest):
    """The image pulled earlier by a manifest digest, if still there."""
    try:
        with open(os.path.join(store.digests_dir,
                               digest[len('sha256:'):])) as f:
            return store.get(f.read(80).strip())
    except (OSError, exception.ImageNotFound):
        return None


def _remember(store, digests, image_id):
    directory = store.digests_dir
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for digest in digests:
        fileutils.write_atomic(os.path.join(directory, digest[7:]),
                               image_id + '\n', 0o600)


def _local(store, ref, remote):
    try:
        return store.get(ref)
    except exception.ImageNotFound:
        return _by_digest(store, remote.digest) if remote.digest else None


def _write_layout(layout, manifest, name):
    with open(os.path.join(layout, 'blobs', 'sha256', manifest.digest[7:]),
              'wb') as f:
        f.write(manifest.data)
    desc = {'mediaType': manifest.media_type, 'digest': manifest.digest,
            'size': len(manifest.data)}
    if name:
        desc['annotations'] = {archive.ANNOTATION_CONTAINERD: name}
    for filename, doc in (('oci-layout', {'imageLayoutVersion': '1.0.0'}),
                          ('index.json', {'schemaVersion': 2,
                                          'mediaType': archive.MT_OCI_INDEX,
                                          'manifests': [desc]})):
        with open(os.path.join(layout, filename), 'w') as f:
            json.dump(doc, f)


def _pull(store, remote, credentials, report, deadline):
    name = str(remote)
    report('Pulling %s' % name)
    if not credentials:
        # The CLI's logins (kata-zun login), never for a Zun project.
        from kata_zun.image import logins
        credentials = logins.lookup(store, remote.registry)
    repo = client.Client(remote.registry, remote.repository, credentials,
                         host_credentials=store.scope is None)
    repo.deadline = deadline
    top = repo.get_manifest(remote.digest or remote.tag, name)
    manifest = top
    if top.media_type in archive.INDEX_TYPES:
        desc = manifests.check_descriptor(
            manifests.select_platform(top.doc, name), name,
            archive.MANIFEST_TYPES)
        manifest = repo.get_manifest(desc['digest'], name)
        if manifest.media_type not in archive.MANIFEST_TYPES:
            raise errors.bad('%s: %s is not an image manifest' % (
                name, desc['digest']))
    report('Digest: %s' % top.digest)
    config, layers = manifests.check_manifest(manifest.doc, name)
    try:
        record = store.get(config['digest'])
        report('Image %s is up to date' % record.id)
        if remote.name:
            record = store.tag(record.id, remote.name)
    except exception.ImageNotFound:
        with store.workdir() as work:
            layout = os.path.join(work, 'layout')
            os.makedirs(os.path.join(layout, 'blobs', 'sha256'))
            _download(repo, config, layers,
                      os.path.join(layout, 'blobs', 'sha256'), report)
            _write_layout(layout, manifest, remote.name)
            record = store.load_archive(layout, progress=report)[0]
    _remember(store, {top.digest, manifest.digest}, record.id)
    return record


def pull(store, ref, policy='ifnotpresent', credentials=None, progress=None):
    """Pull an image into the store: see :meth:`ImageStore.pull`."""
    report = progress or (lambda message: None)
    deadline = time.monotonic() + CONF.kata_image.pull_timeout
    if policy not in POLICIES:
        raise exception.InvalidInput(reason='unknown pull policy %r (%s)' % (
            policy, ', '.join(POLICIES)))
    remote = None
    if not (isinstance(ref, str) and ref.startswith('sha256:')):
        # (An image id is never pulled.)
        remote = names.resolve(ref)
        if remote.digest and not manifests.SHA256.match(remote.digest):
            raise exception.InvalidReference(
                ref=ref, reason='only sha256 digests can be pulled')
    if policy != 'always' or remote is None:
        record = _local(store, ref, remote) if remote else store.get(ref)
        if record:
            return record
        if policy == 'never':
            raise exception.ImageNotFound(ref=ref)
    locks = os.path.join(store.root, 'registry', 'locks')
    os.makedirs(locks, mode=0o700, exist_ok=True)
    key = hashlib.sha256(str(remote).encode('utf-8')).hexdigest()[:32]
    with _file_lock(os.path.join(locks, key), report, remote, deadline):
        # A concurrent pull of the same image may have done the work.
        record = _local(store, ref, remote) if policy != 'always' else None
        return record or _pull(store, remote, credentials, report,
                               deadline)
