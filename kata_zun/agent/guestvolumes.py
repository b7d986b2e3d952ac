"""Volumes inside the guest: mounted into a container's root at create.

The host hands each volume to the VM as a device and describes it in the
``volumes`` list of ``create_container``:

``{'type': 'block', 'serial': S, 'target': '/data', 'readonly': bool}``
    a virtio-blk disk found by its serial. A blank disk (its first
    :data:`BLANK_HEAD_BYTES` all zero) gets an ext4 file system first, as
    Zun does with ``[volume] fstype``; the host never mounts it.
``{'type': 'virtiofs', 'tag': T, 'target': '/data', 'readonly': bool}``
    a shared directory served by the host's virtiofsd, found by its tag.
``{'type': 'virtiofs', 'tag': T, 'file': NAME, 'target': '/etc/a.conf',
'readonly': bool}``
    a single shared file: the export holds that one file, named NAME
    (one path component). The tag is mounted on a staging directory of
    the agent, outside the container's root (gone from the container's
    view when it pivots into its root), and the file is bind-mounted on
    the target: an empty file is made there if missing, its parents as
    directories; a directory there is refused. Writes go to the host
    file in place; a host-side replace by rename is not seen (the mount
    holds the old inode), as with Docker.

Mounts are made in the agent's namespace on top of the container's root
before any container process exists; each process's mount namespace is
a copy, so exec'd processes see them too. Targets are resolved as a
chroot would (:func:`kata_zun.agent.guestroot.resolve`: image symlinks
never lead outside the root), and the mount is made on a descriptor of
the resolved path, checked to be that path: a link swapped in meanwhile
(a shared directory is writable by others) cannot redirect it.

Stdlib only, like the rest of the agent.
"""

import os
import re
import select
import signal
import time

from kata_zun.agent import guestroot

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MAX_VOLUMES = 16
MAX_TARGET = 4096
BLANK_HEAD_BYTES = 128 * 1024
MKE2FS = '/sbin/mke2fs'
MKFS_TIMEOUT = 300
_SERIAL_RE = re.compile(r'^[A-Za-z0-9_-]{1,20}$')
# virtio-fs tags are at most 36 bytes.
_TAG_RE = re.compile(r'^[A-Za-z0-9_-]{1,36}$')
# The name of a shared file in its export: one path component.
_FILE_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$')


class VolumeError(Exception):
    """A volume cannot be mounted; the message says which and why."""


def parse(specs):
    """Validate the host's volume list.

    :param specs: the ``volumes`` value of ``create_container`` (a list of
        dicts, or None).
    :returns: list of normalised dicts, parents before their children.
    :raises: VolumeError
    """
    if specs is None:
        return []
    if not isinstance(specs, list) or len(specs) > MAX_VOLUMES:
        raise VolumeError('volumes must be a list of at most %d'
                          % MAX_VOLUMES)
    out = []
    seen = set()
    for spec in specs:
        if not isinstance(spec, dict):
            raise VolumeError('a volume must be an object')
        kind = spec.get('type')
        target = spec.get('target')
        readonly = spec.get('readonly', False)
        if not isinstance(readonly, bool):
            raise VolumeError('readonly must be a boolean')
        target = check_target(target)
        if target in seen:
            raise VolumeError('two volumes at %s' % target)
        seen.add(target)
        if kind == 'block':
            serial = spec.get('serial')
            if not isinstance(serial, str) or not _SERIAL_RE.match(serial):
                raise VolumeError('bad disk serial for %s' % target)
            out.append({'type': kind, 'serial': serial, 'target': target,
                        'readonly': readonly})
        elif kind == 'virtiofs':
            tag = spec.get('tag')
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise VolumeError('bad virtio-fs tag for %s' % target)
            vol = {'type': kind, 'tag': tag, 'target': target,
                   'readonly': readonly}
            if 'file' in spec:
                name = spec['file']
                if not isinstance(name, str) or not _FILE_RE.match(name):
                    raise VolumeError('bad shared file name for %s'
                                      % target)
                vol['file'] = name
            out.append(vol)
        else:
            raise VolumeError('unknown volume type %r' % (kind,))
    out.sort(key=lambda v: v['target'].count('/'))
    return out


def check_target(target):
    """:returns: ``target`` normalised (absolute, no '.', '..' or '//').
    :raises: VolumeError
    """
    if (not isinstance(target, str) or not target.startswith('/') or
            len(target) > MAX_TARGET or '\0' in target):
        raise VolumeError('volume target must be an absolute path')
    parts = [p for p in target.split('/') if p not in ('', '.')]
    if not parts:
        raise VolumeError('a volume cannot be mounted at /')
    if '..' in parts:
        raise VolumeError('volume target %r contains ..' % target)
    return '/' + '/'.join(parts)


def resolve(root, target, create='dir'):
    """Resolve ``target`` inside ``root`` as a chroot would ('..' stops at
    the root, absolute symlinks restart from it) and create what is
    missing (directories; the last component an empty file for
    ``create='file'``).

    :returns: the agent-side path of the mount point (canonical: no
        symlink in it): a directory, or a regular file for
        ``create='file'``.
    :raises: VolumeError
    """
    try:
        inner = guestroot.resolve(root, target, create=create)
    except guestroot.ResolveError as exc:
        raise VolumeError('volume target %s: %s' % (target, exc))
    if inner == '/':
        raise VolumeError('volume target %s leaves the container root'
                          % target)
    path = os.path.realpath(root) + inner
    # Nothing of the container runs yet, but a shared directory mounted
    # above may change under us: _Pinned checks again at the mount.
    if os.path.realpath(path) != path:
        raise VolumeError('volume target %s leaves the container root'
                          % target)
    if create == 'file':
        if os.path.isdir(path):
            raise VolumeError('volume target %s is a directory: a file '
                              'cannot be mounted there' % target)
        if not os.path.isfile(path):
            raise VolumeError('volume target %s is not a regular file'
                              % target)
    elif not os.path.isdir(path):
        raise VolumeError('volume target %s is not a directory' % target)
    return path


class _Pinned(object):
    """An ``O_PATH`` descriptor of the canonical ``path``, checked to
    still be ``path`` (no symlink swapped in since it was resolved):
    mounting on ``/proc/self/fd/N`` mounts on that very file.
    """

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW |
                          os.O_CLOEXEC)
        where = '/proc/self/fd/%d' % self.fd
        if os.readlink(where) != self.path:
            os.close(self.fd)
            raise VolumeError('volume mount point %s changed while it was '
                              'being mounted' % self.path)
        return where

    def __exit__(self, *exc):
        os.close(self.fd)


def _mount_file(vol, path, staging, mount, flags):
    """Mount the shared file of ``vol`` on the regular file ``path``."""
    stage = os.path.join(staging, vol['tag'])
    os.makedirs(stage, 0o700, exist_ok=True)
    mount(vol['tag'], stage, 'virtiofs', flags)
    source = os.path.join(stage, vol['file'])
    if os.path.islink(source) or not os.path.isfile(source):
        raise VolumeError('shared file for %s is missing from its export'
                          % vol['target'])
    # The bind mount keeps the staging mount's flags (ro, nodev).
    with _Pinned(path) as where:
        mount(source, where, None, MS_BIND)


def is_blank(device):
    """:returns: True if the device's head is all zero (never formatted).
    """
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, BLANK_HEAD_BYTES, 0)
    finally:
        os.close(fd)
    return not head.strip(b'\0')


def make_fs(device, timeout=MKFS_TIMEOUT):
    """Make an ext4 file system on ``device`` with e2fsprogs' mke2fs.

    :raises: VolumeError with mke2fs's last words on failure or timeout.
    """
    argv = [MKE2FS, '-q', '-F', '-t', 'ext4', '-m', '0', '-E',
            'lazy_itable_init=1,lazy_journal_init=1', device]
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execve(argv[0], argv, {'PATH': '/sbin:/bin'})
        finally:
            os._exit(127)
    os.close(w)
    out = b''
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise VolumeError('mke2fs %s took more than %d s'
                                  % (device, timeout))
            ready, _, _ = select.select([r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                out = (out + chunk)[-2000:]
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    if os.waitstatus_to_exitcode(status) != 0:
        raise VolumeError('mke2fs %s failed: %s' % (
            device, out.decode('utf-8', 'replace').strip()))


def mount_all(root, specs, find_disk, mount, staging=None):
    """Mount every volume of a container.

    :param root: the container's root (mounted).
    :param specs: the host's ``volumes`` list (validated here).
    :param find_disk: callable serial -> /dev path.
    :param mount: callable (source, target, fstype, flags, data).
    :param staging: a directory outside ``root`` where shared files'
        exports are mounted (needed when there is one).
    :returns: list of {'target', 'formatted'} (formatted: a blank block
        volume got its file system now).
    :raises: VolumeError
    """
    done = []
    for vol in parse(specs):
        is_file = 'file' in vol
        if is_file and (staging is None or os.path.realpath(
                staging).startswith(os.path.realpath(root) + '/')):
            raise VolumeError('no staging directory outside the root for '
                              'the file at %s' % vol['target'])
        path = resolve(root, vol['target'], 'file' if is_file else 'dir')
        flags = MS_RDONLY if vol['readonly'] else 0
        formatted = False
        try:
            if vol['type'] == 'block':
                device = find_disk(vol['serial'])
                if is_blank(device):
                    if vol['readonly']:
                        raise VolumeError(
                            'volume at %s is blank and read-only: nothing '
                            'to mount' % vol['target'])
                    make_fs(device)
                    formatted = True
                with _Pinned(path) as where:
                    try:
                        mount(device, where, 'ext4', flags | MS_NODEV)
                    except OSError:
                        if not vol['readonly']:
                            raise
                        # A read-only disk cannot replay its journal.
                        mount(device, where, 'ext4', flags | MS_NODEV,
                              'noload')
            elif is_file:
                _mount_file(vol, path, staging, mount, flags | MS_NODEV)
            else:
                with _Pinned(path) as where:
                    mount(vol['tag'], where, 'virtiofs', flags | MS_NODEV)
        except OSError as exc:
            raise VolumeError('cannot mount the volume at %s: %s'
                              % (vol['target'], exc))
        done.append({'target': vol['target'], 'formatted': formatted})
    return done
